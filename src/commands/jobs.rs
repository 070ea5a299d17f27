//! `imsctl jobs …` (as `cray ims jobs`) and the one-shot `imsctl customize`.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::cli::{
    CustomizeArgs, EnvironmentArgs, JobsCommand, ModeArg, NetworkArg, PackOptions, Step,
};
use crate::commands::squashfs::{import_source, pack_spec, writer_options};
use imsctl::context::Context;
use imsctl::job::{self, AfterSession, CreateSpec};
use imsctl::output::{python_json, render_list, render_one};
use imsctl::sandbox::{self, Network};
use imsctl::store::PackSpec;
use imsctl::store::{ImageRecord, JobRecord, RootMode, Store};

fn spec_from(
    env: &EnvironmentArgs,
    artifact_id: String,
    name: String,
    jail: bool,
    public_key_id: Option<String>,
    pack: &PackOptions,
) -> CreateSpec {
    CreateSpec {
        artifact_id,
        image_root_archive_name: name,
        kernel_file_name: env.kernel_file_name.clone(),
        initrd_file_name: env.initrd_file_name.clone(),
        jail,
        enable_debug: env.enable_debug,
        public_key_id,
        mode: env.mode.map(|m| match m {
            ModeArg::Mount => RootMode::Mount,
            ModeArg::Extract => RootMode::Extract,
        }),
        network: match env.network {
            NetworkArg::Host => Network::Host,
            NetworkArg::None => Network::None,
        },
        ca_cert: env.ca_cert.clone(),
        ca_trust: env.ca_trust,
        publish: env.publish.clone(),
        cap_add: env.cap_add.clone(),
        pack: Some(pack_spec(pack)),
    }
}

/// The pack flags as a spec, refused now if the writer would refuse them later.
fn checked_pack_spec(pack: &PackOptions) -> Result<PackSpec> {
    let spec = pack_spec(pack);
    job::writer_options(&spec)?;
    Ok(spec)
}

fn write_out(out: &mut dyn Write, text: &str) -> Result<()> {
    out.write_all(text.as_bytes())
        .context("failed to write the output")
}

/// What a session's end printed for the user.
fn report_session(out: &mut dyn Write, after: AfterSession) -> Result<()> {
    match after {
        AfterSession::StillWaiting(status) => {
            if !status.success() {
                bail!(
                    "the command {}; the job keeps waiting_on_user",
                    job::describe_status(status)
                );
            }
            Ok(())
        }
        AfterSession::Completed(result) => write_out(out, &(result.to_json()? + "\n")),
        AfterSession::Failed => bail!("the job ended in error: the failed file was touched"),
    }
}

pub fn run(ctx: &Context, store: &Store, cmd: &JobsCommand, out: &mut dyn Write) -> Result<()> {
    match cmd {
        JobsCommand::Create(a) => {
            let spec = spec_from(
                &a.env,
                a.artifact_id.clone(),
                a.image_root_archive_name.clone(),
                a.ssh_containers_jail,
                a.public_key_id.clone(),
                &a.pack,
            );
            if a.public_key_id.is_some() {
                // Checked before the (long) preparation of the environment.
                a.ssh_listen
                    .parse::<std::net::SocketAddr>()
                    .with_context(|| {
                        format!("--ssh-listen '{}' is not ADDRESS:PORT", a.ssh_listen)
                    })?;
                writer_options(&a.pack)?;
            }
            let mut job = job::create(ctx, store, &spec)?;
            if a.public_key_id.is_some() {
                let forward = crate::commands::ssh::server_args(ctx);
                job = imsctl::ssh::daemon::start(store, &job, &a.ssh_listen, &forward)
                    .map_err(|e| job::fail_with(store, job.id, e))?;
            }
            write_out(out, &render_one(&job, a.format.format)?)
        }
        JobsCommand::Shell(a) => report_session(
            out,
            job::shell(ctx, store, &a.id, &checked_pack_spec(&a.pack)?)?,
        ),
        JobsCommand::Exec(a) => report_session(
            out,
            job::exec(ctx, store, &a.id, &a.command, &checked_pack_spec(&a.pack)?)?,
        ),
        JobsCommand::Complete(a) => {
            let result = job::complete(ctx, store, &a.id, &checked_pack_spec(&a.pack)?)?;
            write_out(out, &(result.to_json()? + "\n"))
        }
        JobsCommand::Fail(a) => {
            job::fail(store, &a.id, "ended by `imsctl jobs fail`")?;
            Ok(())
        }
        JobsCommand::List(a) => {
            write_out(out, &render_list(&store.list::<JobRecord>()?, a.format)?)
        }
        JobsCommand::Describe(a) => write_out(
            out,
            &render_one(&store.get::<JobRecord>(&a.id)?, a.format.format)?,
        ),
        JobsCommand::Delete(a) => {
            job::delete(store, &a.id)?;
            Ok(())
        }
        JobsCommand::Ssh(a) => {
            let pack = checked_pack_spec(&a.pack)?;
            let job = job::prepare_ssh(store, &a.id, a.public_key_id.as_deref())?;
            // The server packs as this command says, when the user touches the complete file.
            let job = store.update::<JobRecord>(job.id, |j| {
                j.settings.pack = Some(pack.clone());
                Ok(())
            })?;
            let forward = crate::commands::ssh::server_args(ctx);
            let job = imsctl::ssh::daemon::start(store, &job, &a.ssh_listen, &forward)?;
            write_out(out, &render_one(&job, a.format.format)?)
        }
    }
}

/// The image to customize: an id in the store, or a file/directory imported first.
fn source_image(ctx: &Context, store: &Store, src: &str) -> Result<ImageRecord> {
    if Path::new(src).exists() {
        let name = Path::new(src)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| src.to_string());
        let convert =
            |s: &str, dest: &Path, leave_out: &[&Path]| import_source(ctx, s, dest, leave_out);
        let args = crate::cli::ImportArgs {
            src: src.to_string(),
            name: Some(name),
            arch: None,
            format: Default::default(),
        };
        let record = crate::commands::images::import(store, &args, &convert)?;
        ctx.info(format!("imported {src} as image {}", record.id));
        return Ok(record);
    }
    store
        .get::<ImageRecord>(src)
        .with_context(|| format!("'{src}' is neither a file nor an image id"))
}

/// Run one step in the job's sandbox, inside the image root; a failing step fails the job.
fn run_step(store: &Store, job: &JobRecord, step: &Step) -> Result<()> {
    let cfg = job::inside_image(&job::sandbox_config(store, job));
    match step {
        Step::Run(cmd) => {
            let argv = ["/bin/sh".into(), "-c".into(), cmd.clone()];
            job::run_step_in(&cfg, &argv, None, &format!("--run '{cmd}'"))
        }
        Step::Script(path) => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("failed to open the script {}", path.display()))?;
            let what = format!("--script {}", path.display());
            job::run_step_in(&cfg, &script_argv(path)?, Some(file.into()), &what)
        }
    }
}

/// How to run a script handed over on stdin: its #! interpreter, reading /proc/self/fd/0.
fn script_argv(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read(path)
        .with_context(|| format!("failed to read the script {}", path.display()))?;
    let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut argv: Vec<String> = match first.strip_prefix(b"#!") {
        Some(rest) => String::from_utf8_lossy(rest)
            .split_whitespace()
            .map(String::from)
            .collect(),
        None => Vec::new(),
    };
    if argv.is_empty() {
        argv.push("/bin/sh".into());
    }
    argv.push("/proc/self/fd/0".into());
    Ok(argv)
}

/// `ansible-playbook` in the IMS layout: run in the environment (not jailed: host tools, the
/// image at /mnt/image/image-root, /mnt/image/complete as the signal file), against localhost.
/// `--ansible`: the playbook runs as IMS runs one, from outside, against the job's environment
/// over SSH. ansible-playbook runs on this host (the controller: the playbook's files, roles and
/// vaults stay here, out of the sandbox's reach); the job is managed through a one-off SSH server
/// of its own (an ephemeral key, 127.0.0.1, stopped afterwards), its modules run by the host's
/// /usr/bin/python3 in the non-jailed view, with the image at /mnt/image/image-root. The
/// inventory names the job `localhost`, so plays for `hosts: localhost` and `hosts: all` apply.
fn run_ansible(store: &Store, job: &JobRecord, playbook: &Path) -> Result<()> {
    let playbook = std::fs::canonicalize(playbook)
        .with_context(|| format!("failed to find the playbook {}", playbook.display()))?;
    let ansible = imsctl::root::find_program("ansible-playbook")
        .context("--ansible needs ansible-playbook on this host (pip install ansible-core)")?;
    for tool in ["ssh", "ssh-keygen"] {
        if imsctl::root::find_program(tool).is_none() {
            bail!("--ansible runs the playbook over SSH: it needs {tool} (openssh-client)");
        }
    }
    if !Path::new("/usr/bin/python3").is_file() {
        bail!(
            "--ansible: the job's environment runs Ansible's modules with the host's /usr/bin/python3, which is missing (install python3)"
        );
    }
    let dir = store.work_dir(job.id).join("ansible");
    std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let key = dir.join("id_ed25519");
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(key.with_extension("pub"));
    let keygen = std::process::Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "imsctl-ansible",
            "-f",
        ])
        .arg(&key)
        .output()
        .context("failed to run ssh-keygen")?;
    if !keygen.status.success() {
        bail!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&keygen.stderr).trim()
        );
    }
    let forward = vec![
        "--accept-key-file".to_string(),
        key.with_extension("pub").display().to_string(),
    ];
    let served = imsctl::ssh::daemon::start(store, job, "127.0.0.1:0", &forward)?;
    let played = play_over_ssh(&ansible, &playbook, &served, &key, &dir);
    let stopped = imsctl::ssh::daemon::stop(store, &served);
    played?;
    stopped?;
    let after: JobRecord = store.get_by_id(job.id)?;
    if after.status != imsctl::store::JobStatus::WaitingOnUser {
        bail!(
            "the playbook ended the job (a complete or failed file): it is {:?} now",
            after.status
        );
    }
    Ok(())
}

fn play_over_ssh(
    ansible: &Path,
    playbook: &Path,
    job: &JobRecord,
    key: &Path,
    dir: &Path,
) -> Result<()> {
    let port = job
        .ssh_containers
        .first()
        .and_then(|c| c.connection_info.get("customer_access"))
        .and_then(|info| info["port"].as_u64())
        .context("the job's SSH server reported no port")?;
    let inventory = dir.join("inventory");
    std::fs::write(
        &inventory,
        format!(
            "localhost ansible_connection=ssh ansible_host=127.0.0.1 ansible_port={port} ansible_user=root ansible_ssh_private_key_file={} ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR' ansible_python_interpreter=/usr/bin/python3\n",
            key.display()
        ),
    )
    .with_context(|| format!("failed to write {}", inventory.display()))?;
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("failed to duplicate stderr")?;
    let status = std::process::Command::new(ansible)
        .arg("-i")
        .arg(&inventory)
        .arg(playbook)
        .current_dir(playbook.parent().unwrap_or(Path::new("/")))
        .env("ANSIBLE_LOCAL_TEMP", dir.join("tmp"))
        .env("ANSIBLE_SSH_CONTROL_PATH_DIR", dir.join("cp"))
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
        .stdin(std::process::Stdio::null())
        .stdout(stderr)
        .status()
        .with_context(|| format!("failed to run {}", ansible.display()))?;
    if !status.success() {
        bail!(
            "ansible-playbook {} {}",
            playbook.display(),
            job::describe_status(status)
        );
    }
    Ok(())
}

/// Rebuild the initrd inside the image for the kernel that will be published.
fn regenerate_initrd(store: &Store, job: &JobRecord) -> Result<()> {
    let cfg = job::sandbox_config(store, job);
    let version = {
        let held = sandbox::hold_root(&cfg)?;
        let boot = imsctl::artifacts::find_boot_files(&held.path(), job.arch, None, None);
        held.release()?;
        boot?
            .kernel_version
            .context("cannot tell the kernel version to build the initrd for")?
    };
    let script = "if command -v dracut >/dev/null 2>&1; then exec dracut --force --kver \"$1\"; \
                  elif command -v update-initramfs >/dev/null 2>&1; then exec update-initramfs -u -k \"$1\"; \
                  else echo 'neither dracut nor update-initramfs is in the image' >&2; exit 127; fi";
    let argv = [
        "/bin/sh".into(),
        "-c".into(),
        script.into(),
        "sh".into(),
        version.clone(),
    ];
    let what = format!("regenerating the initrd for kernel {version}");
    job::run_step_in(&job::inside_image(&cfg), &argv, None, &what)
}

pub fn customize(
    ctx: &Context,
    store: &Store,
    args: &CustomizeArgs,
    steps: &[Step],
    out: &mut dyn Write,
) -> Result<()> {
    let pack = checked_pack_spec(&args.pack)?;
    if let Some(path) = &args.report {
        // Refused before the job runs, not after it has published.
        imsctl::fsutil::check_output_path(path)?;
    }
    let image = source_image(ctx, store, &args.src)?;
    let spec = spec_from(
        &args.env,
        image.id.to_string(),
        args.name.clone(),
        args.jail,
        None,
        &args.pack,
    );
    let job = job::create(ctx, store, &spec)?;
    let id = job.id.to_string();
    let work = || -> Result<()> {
        for step in steps {
            ctx.info(format!("step: {step:?}"));
            run_step(store, &job, step)?;
        }
        if let Some(playbook) = &args.ansible {
            run_ansible(store, &job, playbook)?;
        }
        if args.shell {
            let cfg = job::sandbox_config(store, &job);
            sandbox::shell(&cfg)?;
            if let Some(imsctl::root::Signal::Failed) =
                imsctl::root::signal_raised(&cfg.layout, &cfg.source)
            {
                bail!("the failed file was touched in the shell");
            }
        }
        if args.regenerate_initrd {
            regenerate_initrd(store, &job)?;
        }
        Ok(())
    };
    if let Err(e) = work() {
        let _ = job::fail(store, &id, &format!("{e:#}"));
        return Err(e.context(format!("customize job {id} failed")));
    }
    let result = job::complete(ctx, store, &id, &pack)?;
    if let Some(path) = &args.report {
        let report = result
            .ims_job_record
            .change_report
            .clone()
            .unwrap_or_default();
        let text = python_json(&report)? + "\n";
        // Like the image: a complete file or none, and never over a device, FIFO or symlink.
        imsctl::fsutil::write_atomically(path, |tmp| {
            std::fs::write(tmp, &text)
                .with_context(|| format!("failed to write the report {}", tmp.display()))
        })?;
    }
    write_out(out, &(result.to_json()? + "\n"))
}
