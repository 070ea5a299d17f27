//! The customize job: the IMS state machine that walks a record through the pipeline,
//! creating → fetching_image → waiting_on_user → packaging_artifacts → success | error.
//!
//! Each step is a function that reads the record, does its work and writes the next status, so a
//! job can be driven by several imsctl invocations (`jobs create`, `jobs shell`, `jobs complete`)
//! as IMS drives it through several pods. A failure always leaves the record in `error` with the
//! reason, and never a registered half-made image.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use anyhow::{Context as _, Result, anyhow, bail};
use uuid::Uuid;

use crate::archive::{self, DirOptions};
use crate::artifacts::{self, ArtifactKind, CustomizeResult};
use crate::context::{Context, CounterTicker};
use crate::publish::{ImageMeta, Published};
use crate::repack::{BaseAwareSink, BaseIndex, ExtractIndex, Provenance, base_index};
use crate::root::{self, ImageSource, LowerVia, Signal, WorkLayout};
use crate::s3::Settled;
use crate::sandbox::{self, Network, SandboxConfig};
use crate::squashfs::reader::Image;
use crate::squashfs::writer::{Writer, WriterOptions};
use crate::store::{
    ChangeReport, ImageRecord, JobNetwork, JobRecord, JobStatus, PackSpec, RootMode, SshContainer,
    Store,
};

/// What `jobs create` and `customize` ask for.
#[derive(Clone, Debug, Default)]
pub struct CreateSpec {
    pub artifact_id: String,
    pub image_root_archive_name: String,
    pub kernel_file_name: Option<String>,
    pub initrd_file_name: Option<String>,
    pub jail: bool,
    pub enable_debug: bool,
    pub public_key_id: Option<String>,
    pub mode: Option<RootMode>,
    pub network: Network,
    pub ca_cert: Option<PathBuf>,
    /// Also put the CA certificate in the image's trust store (`--ca-trust`).
    pub ca_trust: bool,
    /// `s3://BUCKET[/prefix]` to publish to; the local store otherwise.
    pub publish: Option<String>,
    /// Capabilities the sandbox's processes keep beyond the default set (`--cap-add`).
    pub cap_add: Vec<sandbox::Capability>,
    /// How the image is packed when the job completes without being told (the SSH server's
    /// complete file).
    pub pack: Option<PackSpec>,
}

/// The writer's options for a pack spec (its `reuse_base` is the packer's business, not the
/// writer's). The superblock time is the spec's, else now.
pub fn writer_options(spec: &PackSpec) -> Result<WriterOptions> {
    let algorithm: crate::squashfs::Algorithm =
        spec.compressor.parse().map_err(anyhow::Error::msg)?;
    let mut opts =
        WriterOptions::new(algorithm, spec.level, spec.block_size).map_err(anyhow::Error::msg)?;
    opts.mkfs_time = match spec.mkfs_time {
        Some(t) => t,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
    };
    opts.fragments = spec.fragments;
    opts.tail_ends = spec.tail_ends;
    opts.xattrs = spec.xattrs;
    opts.exportable = spec.exportable;
    opts.threads = spec.threads;
    Ok(opts)
}

/// Adds the injected CA certificate to the image's trust store with the image's own tool.
const CA_TRUST_SCRIPT: &str = r#"ca=/etc/cray/ca/certificate_authority.crt
if command -v update-ca-certificates >/dev/null 2>&1; then
    if [ -d /etc/pki/trust/anchors ]; then dir=/etc/pki/trust/anchors; else dir=/usr/local/share/ca-certificates; fi
    mkdir -p "$dir" && cp "$ca" "$dir/cray-site-ca.crt" && exec update-ca-certificates
elif command -v update-ca-trust >/dev/null 2>&1; then
    mkdir -p /etc/pki/ca-trust/source/anchors && cp "$ca" /etc/pki/ca-trust/source/anchors/cray-site-ca.crt && exec update-ca-trust extract
fi
echo "--ca-trust: the image has no CA trust tool (update-ca-certificates or update-ca-trust)" >&2
exit 127"#;

/// The base image's SquashFS in the store.
fn base_rootfs(store: &Store, image_id: Uuid) -> PathBuf {
    store.image_artifacts_dir(image_id).join("rootfs")
}

/// How the job's image root is opened. Mount mode uses the kernel as root and squashfuse in a
/// user namespace otherwise; extract mode is always possible.
fn image_source(mode: RootMode, base: &Path) -> ImageSource {
    match mode {
        RootMode::Extract => ImageSource::Extracted,
        RootMode::Mount => {
            let via = if sandbox::userns::is_real_root() {
                LowerVia::KernelLoop
            } else {
                LowerVia::Squashfuse
            };
            ImageSource::Mount {
                base: base.to_path_buf(),
                via,
            }
        }
    }
}

/// The mode used when none is asked for: mount when it can work here, else extract.
fn default_mode(base: &Path) -> RootMode {
    match root::auto_source(base) {
        ImageSource::Extracted => RootMode::Extract,
        _ => RootMode::Mount,
    }
}

fn network_of(job: &JobRecord) -> Network {
    match job.settings.network {
        JobNetwork::None => Network::None,
        JobNetwork::Host => Network::Host,
    }
}

fn confinement_of(job: &JobRecord) -> sandbox::Confinement {
    let added: Vec<sandbox::Capability> = job
        .settings
        .cap_add
        .iter()
        .filter_map(|name| sandbox::Capability::parse(name))
        .collect();
    sandbox::Confinement::with_added(&added)
}

fn jailed(job: &JobRecord) -> bool {
    job.ssh_containers.first().is_some_and(|c| c.jail)
}

fn work_layout(store: &Store, job: &JobRecord) -> WorkLayout {
    WorkLayout::new(
        job.work_dir
            .clone()
            .unwrap_or_else(|| store.work_dir(job.id)),
    )
}

/// The sandbox a job's sessions run in.
pub fn sandbox_config(store: &Store, job: &JobRecord) -> SandboxConfig {
    let base = base_rootfs(store, job.artifact_id);
    let source = image_source(job.mode.unwrap_or(RootMode::Extract), &base);
    let mut cfg = SandboxConfig::new(
        work_layout(store, job),
        source,
        &job.image_root_archive_name,
    );
    cfg.jailed = jailed(job);
    cfg.network = network_of(job);
    cfg.confinement = confinement_of(job);
    cfg.env.extend(ims_environment(job));
    cfg
}

/// What IMS's customization environment sets for the user's commands.
pub fn ims_environment(job: &JobRecord) -> Vec<(String, String)> {
    vec![
        ("IMS_JOB_ID".into(), job.id.to_string()),
        ("IMS_ARCH".into(), job.arch.to_string()),
        // No DKMS environment here: that needs a privileged IMS pod, which imsctl never gives.
        ("IMS_DKMS_ENABLED".into(), "False".into()),
    ]
}

fn set_status(store: &Store, id: Uuid, status: JobStatus) -> Result<JobRecord> {
    Ok(store.update::<JobRecord>(id, |j| {
        j.status = status;
        Ok(())
    })?)
}

/// End a job in error because of `err` (its environment removed unless debugging), and return
/// the error to report.
pub fn fail_with(store: &Store, id: Uuid, err: anyhow::Error) -> anyhow::Error {
    fail_job(store, id, &err)
}

/// Record a failure on the job and clear its environment unless debugging was asked for.
fn fail_job(store: &Store, id: Uuid, err: &anyhow::Error) -> anyhow::Error {
    let message = format!("{err:#}");
    let updated = store.update::<JobRecord>(id, |j| {
        j.status = JobStatus::Error;
        j.error_message = Some(message.clone());
        if let Some(c) = j.ssh_containers.first_mut() {
            c.status = "error".into();
        }
        Ok(())
    });
    match updated {
        Ok(job) if !job.enable_debug => {
            if let Err(e) = remove_work_dir(store, &job) {
                return anyhow!(
                    "{message}; and cleaning up the job environment also failed: {e:#}"
                );
            }
        }
        Ok(_) => {}
        Err(e) => {
            return anyhow!("{message}; and recording the failure on job {id} also failed: {e:#}");
        }
    }
    anyhow!("{message}")
}

fn remove_work_dir(store: &Store, job: &JobRecord) -> Result<()> {
    let work = work_layout(store, job);
    let _lock = root::JobLock::acquire(&work).ok();
    match fs::remove_dir_all(work.work()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("failed to remove {}", work.work().display())),
    }
}

/// Create a customize job and prepare its environment; it ends in `waiting_on_user`.
pub fn create(ctx: &Context, store: &Store, spec: &CreateSpec) -> Result<JobRecord> {
    let image: ImageRecord = store.get(&spec.artifact_id)?;
    let base = base_rootfs(store, image.id);
    if !base.is_file() {
        bail!(
            "image {} has no rootfs artifact at {}",
            image.id,
            base.display()
        );
    }
    if let Some(key) = &spec.public_key_id {
        store.get::<crate::store::PublicKeyRecord>(key)?;
    }
    let mut job = JobRecord::new_customize(image.id, &spec.image_root_archive_name, image.arch);
    if let Some(k) = &spec.kernel_file_name {
        artifacts::boot::check_boot_file_name(k, "kernel")?;
        job.kernel_file_name = k.clone();
    }
    if let Some(i) = &spec.initrd_file_name {
        artifacts::boot::check_boot_file_name(i, "initrd")?;
        job.initrd_file_name = i.clone();
    }
    job.settings.boot_file_names_given =
        spec.kernel_file_name.is_some() || spec.initrd_file_name.is_some();
    job.enable_debug = spec.enable_debug;
    job.public_key_id = match &spec.public_key_id {
        Some(k) => Some(Store::parse_id(crate::store::RecordKind::PublicKey, k)?),
        None => None,
    };
    job.mode = Some(spec.mode.unwrap_or_else(|| default_mode(&base)));
    job.work_dir = Some(store.work_dir(job.id));
    job.settings.network = match spec.network {
        Network::None => JobNetwork::None,
        Network::Host => JobNetwork::Host,
    };
    job.settings.cap_add = spec.cap_add.iter().map(|c| c.name().to_string()).collect();
    if let Some(pack) = &spec.pack {
        writer_options(pack)?;
        job.settings.pack = Some(pack.clone());
    }
    job.ssh_containers = vec![SshContainer {
        status: "pending".into(),
        jail: spec.jail,
        name: "customize".into(),
        connection_info: Default::default(),
        extra: Default::default(),
    }];
    if let Some(dest) = &spec.publish {
        crate::s3::S3Url::parse(dest)?;
        job.settings.publish = Some(crate::publish::target_of(dest, &ctx.s3));
    }
    store.insert(&job)?;
    ctx.info(format!(
        "job {} created for image {} ({:?} mode)",
        job.id,
        image.id,
        job.mode.unwrap_or(RootMode::Extract)
    ));
    prepare(ctx, store, job.id, spec.ca_cert.as_deref(), spec.ca_trust)
        .map_err(|e| fail_job(store, job.id, &e))
}

fn prepare(
    ctx: &Context,
    store: &Store,
    id: Uuid,
    ca_cert: Option<&Path>,
    ca_trust: bool,
) -> Result<JobRecord> {
    let job = set_status(store, id, JobStatus::FetchingImage)?;
    let cfg = sandbox_config(store, &job);
    root::prepare_work_dir(&cfg.layout, &cfg.source)?;
    if cfg.source == ImageSource::Extracted {
        let base = base_rootfs(store, job.artifact_id);
        let image = Image::open(&base)?;
        let bar = ctx.bytes_bar("extracting", None);
        root::populate_extracted(&cfg.layout, |dir| {
            let opts = crate::squashfs::extract::ExtractOptions {
                skip_devices: true,
                progress: Some(crate::squashfs::extract::Progress::new({
                    let bar = bar.clone();
                    move |n| bar.inc(n)
                })),
                ..Default::default()
            };
            crate::squashfs::extract::extract(&image, dir, &opts).map(drop)
        })?;
        bar.finish_and_clear();
        let index_file = extract_index_path(&cfg.layout);
        if !index_file.exists() {
            ExtractIndex::record(&cfg.layout.root(), &image)?.save(&index_file)?;
        }
    }
    let ca = artifacts::ca_cert_source(
        ca_cert,
        std::env::var_os("IMSCTL_CA_CERT"),
        &store.config()?,
    );
    if let Some(ca) = ca {
        // IMS puts the CA certificate in place before the user's session opens.
        let held = sandbox::hold_root(&cfg)?;
        let placed = artifacts::inject_ca_cert(&held.path(), &ca);
        held.release()?;
        let placed = placed?;
        ctx.info(format!(
            "CA certificate {} copied to {}",
            ca.display(),
            placed.display()
        ));
        if ca_trust {
            add_ca_to_trust_store(&cfg)?;
        }
    } else if ca_trust {
        bail!(
            "--ca-trust needs a CA certificate: give --ca-cert, set IMSCTL_CA_CERT or ca_cert in the store's config.toml"
        );
    }
    Ok(store.update::<JobRecord>(id, |j| {
        j.status = JobStatus::WaitingOnUser;
        Ok(())
    })?)
}

/// Run the image's own trust-store tool on the injected certificate, inside the image root.
fn add_ca_to_trust_store(cfg: &SandboxConfig) -> Result<()> {
    let argv = ["/bin/sh".to_string(), "-c".into(), CA_TRUST_SCRIPT.into()];
    run_step_in(
        &inside_image(cfg),
        &argv,
        None,
        "adding the CA certificate to the image's trust store",
    )
}

/// The job's sandbox with the command started inside the image root, whatever the shell's jail
/// setting: scripts, playbook-free steps and image tools all expect `/` to be the image.
pub fn inside_image(cfg: &SandboxConfig) -> SandboxConfig {
    let mut jailed = cfg.clone();
    jailed.jailed = true;
    jailed
}

/// Run one unattended step in a sandbox: its output goes to stderr (stdout carries only the JSON
/// result, for scripts), `stdin` is optional, and a failure names `what` and how it ended.
pub fn run_step_in(
    cfg: &SandboxConfig,
    argv: &[String],
    stdin: Option<std::os::fd::OwnedFd>,
    what: &str,
) -> Result<()> {
    let stderr = std::os::fd::AsFd::as_fd(&std::io::stderr())
        .try_clone_to_owned()
        .context("failed to duplicate stderr")?;
    let stdio = sandbox::Stdio::Streams {
        stdin,
        stdout: Some(stderr),
        stderr: None,
    };
    let status = sandbox::run_with(cfg, argv, stdio)?;
    if !status.success() {
        if cfg.ids.single_id_inside() {
            bail!(
                "{what} {}\nhint: {}",
                describe_status(status),
                sandbox::userns::SINGLE_ID_HINT
            );
        }
        bail!("{what} {}", describe_status(status));
    }
    Ok(())
}

/// "exited with status 3", "was killed by signal 9".
pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended abnormally".into(),
    }
}

/// A job that can take a session: waiting for the user.
fn waiting_job(store: &Store, id: &str) -> Result<JobRecord> {
    let job: JobRecord = store.get(id)?;
    if job.status != JobStatus::WaitingOnUser {
        bail!(
            "job {} is {}, not waiting_on_user",
            job.id,
            status_name(job.status)
        );
    }
    Ok(job)
}

fn status_name(s: JobStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| format!("{s:?}"))
}

/// What a session's end means for the job.
pub enum AfterSession {
    /// No signal file: the job keeps waiting (the shell may be entered again).
    StillWaiting(ExitStatus),
    Completed(Box<CustomizeResult>),
    Failed,
}

/// Open the interactive shell (again and again, as with IMS ssh); a signal file ends the job.
pub fn shell(ctx: &Context, store: &Store, id: &str, pack: &PackSpec) -> Result<AfterSession> {
    let job = waiting_job(store, id)?;
    if crate::ssh::daemon::running_server(&job).is_some() {
        bail!(
            "job {} is served over SSH ({}): use ssh, or `imsctl jobs exec`",
            job.id,
            ssh_address(&job)
        );
    }
    let cfg = sandbox_config(store, &job);
    let status = sandbox::shell(&cfg)?;
    after_session(ctx, store, &job, &cfg, status, pack)
}

/// Run one command in the job's sandbox.
pub fn exec(
    ctx: &Context,
    store: &Store,
    id: &str,
    argv: &[String],
    pack: &PackSpec,
) -> Result<AfterSession> {
    let job = waiting_job(store, id)?;
    if let Some(holder) = crate::ssh::daemon::running_sandbox(&job) {
        // The SSH server holds the sandbox: join it; the server acts on the signal files.
        let cfg = sandbox_config(store, &job);
        let target = sandbox::enter::Target {
            holder,
            jailed: cfg.jailed,
            confinement: cfg.confinement,
        };
        let status = crate::ssh::daemon::exec_in(&target, &ims_environment(&job), argv)?;
        return Ok(AfterSession::StillWaiting(status));
    }
    let cfg = sandbox_config(store, &job);
    let status = sandbox::run(&cfg, argv)?;
    after_session(ctx, store, &job, &cfg, status, pack)
}

/// A waiting job made ready for (another) SSH server: none may run; `key` replaces its public
/// key, and it must have one.
pub fn prepare_ssh(store: &Store, id: &str, key: Option<&str>) -> Result<JobRecord> {
    let job = waiting_job(store, id)?;
    if crate::ssh::daemon::running_server(&job).is_some() {
        bail!(
            "job {} is already served over SSH ({})",
            job.id,
            ssh_address(&job)
        );
    }
    let Some(key) = key else {
        if job.public_key_id.is_none() {
            bail!("job {} has no public key: give --public-key-id", job.id);
        }
        return Ok(job);
    };
    let record: crate::store::PublicKeyRecord = store.get(key)?;
    Ok(store.update::<JobRecord>(job.id, |j| {
        j.public_key_id = Some(record.id);
        Ok(())
    })?)
}

/// "127.0.0.1:40022", from the record's connection_info.
fn ssh_address(job: &JobRecord) -> String {
    job.ssh_containers
        .first()
        .and_then(|c| c.connection_info.get("customer_access"))
        .map(|info| format!("{}:{}", info["host"].as_str().unwrap_or("?"), info["port"]))
        .unwrap_or_else(|| "address unknown".into())
}

fn after_session(
    ctx: &Context,
    store: &Store,
    job: &JobRecord,
    cfg: &SandboxConfig,
    status: ExitStatus,
    pack: &PackSpec,
) -> Result<AfterSession> {
    match root::signal_raised(&cfg.layout, &cfg.source) {
        Some(Signal::Complete) => Ok(AfterSession::Completed(Box::new(complete(
            ctx,
            store,
            &job.id.to_string(),
            pack,
        )?))),
        Some(Signal::Failed) => {
            fail(
                store,
                &job.id.to_string(),
                "the user signalled failure (failed file)",
            )?;
            Ok(AfterSession::Failed)
        }
        None => Ok(AfterSession::StillWaiting(status)),
    }
}

/// End a job without publishing: it goes to `error`.
pub fn fail(store: &Store, id: &str, why: &str) -> Result<JobRecord> {
    let mut job = waiting_job(store, id)?;
    if crate::ssh::daemon::stop(store, &job)? {
        // The server may have acted on a signal file before it stopped.
        job = waiting_job(store, id)?;
    }
    let _ = fail_job(store, job.id, &anyhow!("{why}"));
    Ok(store.get_by_id(job.id)?)
}

/// Pack the image root, publish rootfs + kernel + initrd + manifest.json, register the image.
pub fn complete(
    ctx: &Context,
    store: &Store,
    id: &str,
    pack: &PackSpec,
) -> Result<CustomizeResult> {
    let job: JobRecord = store.get(id)?;
    let layout = work_layout(store, &job);
    let _packing = match job.status {
        JobStatus::WaitingOnUser => {
            // As in IMS: completing closes the SSH sessions first.
            if crate::ssh::daemon::stop(store, &job)? {
                // The server may have acted on a signal file before it stopped.
                waiting_job(store, id)?;
            }
            root::JobLock::acquire_packing(&layout)?
        }
        JobStatus::PackagingArtifacts => {
            // Packed before, by a process that is gone (killed, crashed, machine rebooted):
            // pack again. A live packer holds the lock: that is an error naming it.
            let lock = root::JobLock::acquire_packing(&layout).map_err(|e| match e {
                sandbox::Error::Locked { pid: 0, .. } => {
                    anyhow!("job {} is being packed by another process", job.id)
                }
                sandbox::Error::Locked { pid, .. } => {
                    anyhow!("job {} is being packed by process {pid}", job.id)
                }
                other => other.into(),
            })?;
            ctx.info(format!(
                "job {} was left in packaging_artifacts by an interrupted run: packing again",
                job.id
            ));
            lock
        }
        _ => bail!(
            "job {} is {}, not waiting_on_user",
            job.id,
            status_name(job.status)
        ),
    };
    let job = set_status(store, job.id, JobStatus::PackagingArtifacts)?;
    match package(ctx, store, &job, pack) {
        Ok(result) => Ok(result),
        Err(e) => Err(fail_job(store, job.id, &e)),
    }
}

fn package(
    ctx: &Context,
    store: &Store,
    job: &JobRecord,
    pack: &PackSpec,
) -> Result<CustomizeResult> {
    let cfg = sandbox_config(store, job);
    // The image's own resolv.conf back in place, and no signal file in the image.
    sandbox::settle(&cfg)?;
    let base = Image::open(&base_rootfs(store, job.artifact_id))?;
    let base_paths = base_index(&base)?;
    let report = change_report(&base_paths, &cfg);
    let held = sandbox::hold_root(&cfg)?;
    let root_view = held.path();
    let (kernel_name, initrd_name) = if job.settings.boot_file_names_given {
        (
            Some(job.kernel_file_name.as_str()),
            Some(job.initrd_file_name.as_str()),
        )
    } else {
        (None, None)
    };
    // Errors speak of paths inside the image, not of the temporary view of it.
    let boot = artifacts::find_boot_files(&root_view, job.arch, kernel_name, initrd_name).map_err(
        |e| {
            anyhow!(
                "{}",
                e.to_string().replace(&root_view.display().to_string(), "")
            )
        },
    )?;
    ctx.info(boot.to_string());
    let staging = cfg.layout.work().join("staging");
    fs::create_dir_all(&staging)
        .with_context(|| format!("failed to create {}", staging.display()))?;
    let rootfs = staging.join("rootfs");
    let kernel = staging.join("kernel");
    let initrd = staging.join("initrd");
    fs::copy(&boot.kernel, &kernel)
        .with_context(|| format!("failed to copy the kernel {}", boot.kernel.display()))?;
    fs::copy(&boot.initrd, &initrd)
        .with_context(|| format!("failed to copy the initrd {}", boot.initrd.display()))?;
    let image_id = Uuid::new_v4();
    let backend = crate::publish::backend(ctx, store, job.settings.publish.as_ref())?;
    let meta = ImageMeta {
        name: Some(job.image_root_archive_name.clone()),
        job_id: Some(job.id),
    };
    // Dropped on an error below, the publication removes whatever it had sent.
    let mut publishing =
        backend.begin(image_id, &meta, Some(&cfg.layout.work().join("s3-uploads")))?;
    pack_root(
        ctx,
        (&base, base_paths),
        &root_view,
        &rootfs,
        (writer_options(pack)?, pack.reuse_base),
        &cfg,
        &mut |settled| publishing.follow(ArtifactKind::Rootfs, &rootfs, settled, ctx),
    )?;
    held.release()?;
    for (kind, path) in [
        (ArtifactKind::Rootfs, &rootfs),
        (ArtifactKind::Kernel, &kernel),
        (ArtifactKind::Initrd, &initrd),
    ] {
        publishing.upload(kind, path, ctx)?;
    }
    let Published {
        ims_image_artifacts,
        record: image,
    } = publishing.finish(&job.image_root_archive_name, job.arch)?;
    let job = store.update::<JobRecord>(job.id, |j| {
        j.status = JobStatus::Success;
        j.resultant_image_id = Some(image.id);
        j.kernel_file_name = boot.kernel_file_name.clone();
        j.initrd_file_name = boot.initrd_file_name.clone();
        j.change_report = report.clone();
        if let Some(c) = j.ssh_containers.first_mut() {
            c.status = "complete".into();
        }
        Ok(())
    })?;
    if !job.enable_debug {
        remove_work_dir(store, &job)?;
    }
    Ok(CustomizeResult {
        ims_image_artifacts,
        ims_image_record: image,
        ims_job_record: job,
        result: "success".into(),
    })
}

/// Pack the held image root, taking every certainly-unchanged entry from the base image: its
/// metadata always (owners and capabilities an unprivileged run could not set on disk), its
/// compressed blocks when the compressor and block size match (see `repack`). `follow` is
/// handed the writer's settled offset as soon as the image file exists.
fn pack_root(
    ctx: &Context,
    (base, base_paths): (&Image, BaseIndex),
    root_view: &Path,
    out: &Path,
    (opts, reuse_base): (WriterOptions, bool),
    cfg: &SandboxConfig,
    follow: &mut dyn FnMut(Settled) -> Result<()>,
) -> Result<()> {
    let provenance = if cfg.source.is_overlay() {
        Provenance::Overlay {
            upper: cfg.layout.upper(),
        }
    } else {
        Provenance::extracted(ExtractIndex::load(&extract_index_path(&cfg.layout))?)
    };
    let reuse =
        reuse_base && *base.compressor() == opts.compressor && base.block_size() == opts.block_size;
    let mut writer = Writer::create(out, opts)?;
    // Whoever follows the file (an upload) starts now; should packing fail, it is dropped,
    // which undoes what it did.
    follow(writer.settled())?;
    let _ticker = CounterTicker::start(ctx.bytes_bar("packing", None), writer.progress());
    let mut sink = BaseAwareSink::new(
        &mut writer,
        base,
        base_paths,
        root_view,
        provenance,
        reuse,
        cfg.ids.clone(),
    )?;
    let report = archive::dir_into(root_view, &mut sink, &DirOptions::default())?;
    sink.restore_skipped()?;
    let stats = sink.stats.clone();
    ctx.warn_all(&report.warnings);
    let summary = writer.finish()?;
    ctx.info(format!(
        "packed {} inodes into {} bytes; {} entries unchanged from the base, {} files ({} bytes) and {} fragment blocks reused without recompressing",
        summary.inodes, summary.bytes_used, stats.unchanged_entries, stats.reused_files, stats.reused_bytes, stats.reused_fragments
    ));
    Ok(())
}

/// Where extract mode keeps what each entry looked like right after extraction.
fn extract_index_path(layout: &WorkLayout) -> PathBuf {
    layout.work().join("extract.index")
}

/// Files the customization added, changed and removed: read off the overlay's upper directory
/// (whiteouts are removals) against the base image's paths. Extract mode has no upper directory
/// to read, so no report.
fn change_report(base_paths: &BaseIndex, cfg: &SandboxConfig) -> Option<ChangeReport> {
    if !cfg.source.is_overlay() {
        return None;
    }
    let mut report = ChangeReport::default();
    let upper = cfg.layout.upper();
    match walk_upper(&upper, &upper, base_paths, &mut report) {
        Ok(()) => Some(report),
        Err(e) => {
            eprintln!("imsctl: warning: no change report: {e:#}");
            None
        }
    }
}

fn walk_upper(
    top: &Path,
    dir: &Path,
    in_base: &BaseIndex,
    report: &mut ChangeReport,
) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("failed to list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let rel = path.strip_prefix(top).unwrap_or(&path);
        let key = rel.as_os_str().as_bytes().to_vec();
        let shown = format!("/{}", rel.display());
        let ft = entry
            .file_type()
            .with_context(|| format!("failed to stat {}", path.display()))?;
        let whiteout = ft.is_char_device()
            && entry
                .metadata()
                .map(|m| std::os::unix::fs::MetadataExt::rdev(&m) == 0)
                .unwrap_or(false);
        if whiteout {
            report.removed.push(shown);
        } else if ft.is_dir() {
            if !in_base.contains_key(&key) {
                report.added.push(shown);
            }
            walk_upper(top, &path, in_base, report)?;
        } else if let Some(base_inode) = in_base.get(&key) {
            let base_target = match &base_inode.kind {
                crate::squashfs::reader::InodeKind::Symlink(t) => Some(t.clone()),
                _ => None,
            };
            // A symlink put back as it was (resolv.conf after the session) is no change.
            let same_link = ft.is_symlink()
                && base_target.as_deref()
                    == fs::read_link(&path)
                        .ok()
                        .as_deref()
                        .map(|t| t.as_os_str().as_bytes());
            if !same_link {
                report.changed.push(shown);
            }
        } else {
            report.added.push(shown);
        }
    }
    Ok(())
}

/// Remove every trace of a job: its environment (nothing stays mounted: mounts live only in the
/// sessions' namespaces) and its record.
pub fn delete(store: &Store, id: &str) -> Result<JobRecord> {
    let job: JobRecord = store.get(id)?;
    crate::ssh::daemon::stop(store, &job)?;
    remove_work_dir(store, &job)?;
    Ok(store.remove::<JobRecord>(job.id)?)
}
