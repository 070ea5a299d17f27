//! Command-line definitions, and nothing else: clap parsing lives here, the work in `commands`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "imsctl",
    version,
    about = "Customize boot images locally, the IMS way, with no cluster"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Store directory (records and artifacts). Default: $IMSCTL_HOME, else /var/lib/imsctl as
    /// root and $XDG_DATA_HOME/imsctl otherwise.
    #[arg(long, global = true, env = "IMSCTL_HOME")]
    pub store: Option<PathBuf>,
    /// More step logs on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(flatten)]
    pub s3: S3Args,
}

/// Where and how to reach S3 (for `--store s3://…`, `images publish`, `images import s3://…`).
/// Region and credentials come from the environment and ~/.aws, as for the AWS CLI.
#[derive(Args, Debug, Clone, Default)]
pub struct S3Args {
    /// S3 endpoint, e.g. http://127.0.0.1:9000 (default: $AWS_ENDPOINT_URL, else AWS).
    #[arg(long = "s3-endpoint", global = true, value_name = "URL")]
    pub endpoint: Option<String>,
    /// PEM file of the CA certificates to trust for the endpoint (default: $AWS_CA_BUNDLE).
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,
    /// Bucket addressing: auto (path-style for custom endpoints), path or virtual.
    #[arg(
        long = "s3-addressing-style",
        global = true,
        default_value = "auto",
        value_name = "STYLE"
    )]
    pub addressing_style: imsctl::s3::AddressingStyle,
    /// Multipart part size, 5M to 5G [default: 16M].
    #[arg(long, global = true, value_parser = parse_size_u64, value_name = "SIZE")]
    pub part_size: Option<u64>,
    /// Parallel requests per object [default: 8].
    #[arg(long, global = true, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Upload the rootfs while it is being packed (pays when the upload is network-bound; the
    /// md5sum metadata then costs a server-side copy). Also IMSCTL_S3_STREAM=1.
    #[arg(long = "s3-stream", global = true)]
    pub stream: bool,
    /// How long a failing S3 request is retried (exponential backoff with jitter): seconds, or
    /// 500ms, 30s, 2m [default: 30s; also IMSCTL_S3_RETRY_BUDGET].
    #[arg(long, global = true, value_parser = imsctl::s3::config::parse_duration, value_name = "DURATION")]
    pub retry_budget: Option<std::time::Duration>,
}

impl S3Args {
    /// The S3 options the command line gives (the rest comes from the environment).
    pub fn options(&self) -> imsctl::s3::S3Options {
        imsctl::s3::S3Options {
            endpoint: self.endpoint.clone(),
            region: None,
            profile: None,
            ca_bundle: self.ca_bundle.clone(),
            addressing_style: self.addressing_style,
            part_size: self.part_size,
            concurrency: self.concurrency,
            stream: self.stream,
            retry_budget: self.retry_budget,
        }
    }
}

pub use imsctl::output::OutputFormat;

/// `--format`: the names of [`OutputFormat`], listed in the help.
fn format_parser() -> impl clap::builder::TypedValueParser<Value = OutputFormat> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["toml", "json"]).map(|name| match name.as_str() {
        "json" => OutputFormat::Json,
        _ => OutputFormat::Toml,
    })
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Convert a .txz/.tar[.gz|.xz|.zst] or SquashFS image into a SquashFS image, in one pass.
    Convert(ConvertArgs),
    /// Pack a directory tree into a SquashFS image (like mksquashfs DIR OUT).
    Pack(PackArgs),
    /// Extract a SquashFS image into a directory (like unsquashfs -d DIR IMG).
    Extract(ExtractArgs),
    /// List a SquashFS image (the format of unsquashfs -lln).
    Ls(LsArgs),
    /// Image records and their artifacts (as `cray ims images`).
    #[command(subcommand)]
    Images(ImagesCommand),
    /// Public keys for the customization shell (as `cray ims public-keys`).
    #[command(subcommand)]
    PublicKeys(PublicKeysCommand),
    /// Customize jobs (as `cray ims jobs`): create, shell, exec, complete, fail, list, describe, delete.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// One shot for scripts and CI: import SRC (a file) or take an image id, run the steps in the
    /// order given, pack, publish, and print the result as ims_python_helper does.
    Customize(CustomizeArgs),
    /// Serve SFTP on stdin/stdout; the job's SSH server runs it inside the sandbox per channel.
    #[command(hide = true)]
    InternalSftpServer {
        /// Where relative paths and "~" point ("/" if this directory is missing).
        #[arg(long, default_value = "/root", value_name = "DIR")]
        home: PathBuf,
    },
    /// A job's SSH server (started detached by `jobs create --public-key-id`).
    #[command(hide = true)]
    InternalSshServer(SshServerArgs),
    /// Run a session inside the sandbox held by a job's SSH server.
    #[command(hide = true)]
    InternalEnter(EnterArgs),
}

#[derive(Args, Debug)]
pub struct SshServerArgs {
    /// Job id.
    pub id: String,
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// Accept this OpenSSH public key instead of the job's public-key record (the one-off
    /// server `customize --ansible` runs its playbook through).
    #[arg(long)]
    pub accept_key_file: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["login_shell", "command", "sftp", "argv"])))]
pub struct EnterArgs {
    /// The holding session's holder process.
    #[arg(long)]
    pub pid: i32,
    /// Start inside the image root.
    #[arg(long)]
    pub jail: bool,
    /// A capability the sandbox's processes keep beyond the default set.
    #[arg(long = "cap-add", value_parser = parse_capability)]
    pub cap_add: Vec<imsctl::sandbox::Capability>,
    #[arg(long)]
    pub login_shell: bool,
    /// Run `$SHELL -c COMMAND`.
    #[arg(long)]
    pub command: Option<String>,
    /// Serve SFTP on stdin/stdout.
    #[arg(long)]
    pub sftp: bool,
    /// Run this program and its arguments directly (after `--`).
    #[arg(last = true)]
    pub argv: Vec<String>,
    /// Run the session on a terminal of the sandbox, of this size (ROWSxCOLS[xXPIXxYPIX]).
    #[arg(long, value_parser = parse_winsize, conflicts_with = "sftp")]
    pub pty: Option<WindowSize>,
    /// Descriptor on which window sizes arrive (with --pty).
    #[arg(long, requires = "pty")]
    pub control_fd: Option<i32>,
}

/// A terminal window size.
#[derive(Clone, Copy, Debug)]
pub struct WindowSize(pub nix::pty::Winsize);

/// A capability by name (`NET_RAW`, `CAP_NET_RAW`) or number.
pub fn parse_capability(s: &str) -> Result<imsctl::sandbox::Capability, String> {
    imsctl::sandbox::Capability::parse(s)
        .ok_or_else(|| format!("'{s}' is not a Linux capability (e.g. NET_RAW, SYS_PTRACE)"))
}

/// "ROWSxCOLS" or "ROWSxCOLSxXPIXxYPIX".
pub fn parse_winsize(s: &str) -> Result<WindowSize, String> {
    let parts: Vec<u16> = s
        .split('x')
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| format!("'{s}' is not ROWSxCOLS"))
        })
        .collect::<Result<_, _>>()?;
    let at = |i: usize| parts.get(i).copied().unwrap_or(0);
    if parts.len() != 2 && parts.len() != 4 {
        return Err(format!("'{s}' is not ROWSxCOLS"));
    }
    Ok(WindowSize(nix::pty::Winsize {
        ws_row: at(0),
        ws_col: at(1),
        ws_xpixel: at(2),
        ws_ypixel: at(3),
    }))
}

/// `true`/`false` in any of the spellings `cray ims` users type (`True`, `False`, `1`, `0`).
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("'{s}' is not true or false")),
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ModeArg {
    /// The base SquashFS mounted read-only under an overlay (the default where possible).
    Mount,
    /// The base extracted into the job's work directory.
    Extract,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, Default)]
pub enum NetworkArg {
    /// The host's network (as IMS).
    #[default]
    Host,
    /// No network: only a loopback interface.
    None,
}

/// How a job's environment is made (shared by `jobs create` and `customize`).
#[derive(Args, Debug, Clone)]
pub struct EnvironmentArgs {
    /// Kernel under /boot to publish (default: vmlinuz, Image on aarch64, else detected).
    #[arg(long)]
    pub kernel_file_name: Option<String>,
    /// Initrd under /boot to publish (default: initrd, else detected).
    #[arg(long)]
    pub initrd_file_name: Option<String>,
    /// Keep the job's environment after it ends, for inspection.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = parse_bool)]
    pub enable_debug: bool,
    /// How to open the image root (default: mount when possible, else extract).
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Network inside the sandbox.
    #[arg(long, value_enum, default_value_t)]
    pub network: NetworkArg,
    /// CA certificate to put at /etc/cray/ca/certificate_authority.crt (else $IMSCTL_CA_CERT,
    /// else the store's configured one).
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// Also add the CA certificate to the image's trust store and run its update tool inside
    /// the sandbox (update-ca-certificates on Debian/SUSE, update-ca-trust on RHEL).
    #[arg(long)]
    pub ca_trust: bool,
    /// Publish the artifacts to S3 (s3://BUCKET[/prefix]) instead of the local store; the image
    /// record (in the local store) links to the manifest there.
    #[arg(long, value_name = "s3://BUCKET[/PREFIX]")]
    pub publish: Option<String>,
    /// Let the sandbox's processes keep this capability too (e.g. NET_RAW for ping, SYS_PTRACE
    /// for strace); repeatable. The default set is Docker's without NET_RAW.
    #[arg(long = "cap-add", value_name = "CAPABILITY", value_parser = parse_capability)]
    pub cap_add: Vec<imsctl::sandbox::Capability>,
}

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// Create a customize job; it waits for the user (shell, exec, complete).
    Create(JobCreateArgs),
    /// Open the job's interactive shell (again and again). Touching the complete file packs and
    /// publishes when the shell exits; the failed file ends the job in error.
    Shell(JobSessionArgs),
    /// Run one command in the job's sandbox.
    Exec(JobExecArgs),
    /// Pack and publish the job's image root (as touching the complete file does).
    Complete(JobSessionArgs),
    /// End the job in error without publishing (as touching the failed file does).
    Fail(IdArg),
    /// List job records.
    List(FormatArg),
    /// Show one job record.
    Describe(IdFormatArgs),
    /// Delete a job: its environment and its record.
    Delete(IdArg),
    /// Start the job's SSH server: again after a reboot or a kill, or for a job created without
    /// one (give --public-key-id then).
    Ssh(JobSshArgs),
}

#[derive(Args, Debug)]
pub struct JobSshArgs {
    /// Job id.
    pub id: String,
    /// Public key record to accept (replaces the job's).
    #[arg(long)]
    pub public_key_id: Option<String>,
    /// Where the SSH server listens; port 0 picks a free one.
    #[arg(long, default_value = imsctl::ssh::daemon::DEFAULT_LISTEN, value_name = "ADDR:PORT")]
    pub ssh_listen: String,
    /// How the image is packed when the complete file ends an SSH session.
    #[command(flatten)]
    pub pack: PackOptions,
    #[command(flatten)]
    pub format: FormatArg,
}

#[derive(Args, Debug)]
pub struct JobCreateArgs {
    /// Job type (only customize).
    #[arg(long, default_value = "customize", value_parser = ["customize"])]
    pub job_type: String,
    /// The image to customize.
    #[arg(long)]
    pub artifact_id: String,
    /// Name of the resulting image.
    #[arg(long)]
    pub image_root_archive_name: String,
    /// Jailed: the shell starts inside the image root (signal files /tmp/complete, /tmp/failed).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false", value_parser = parse_bool)]
    pub ssh_containers_jail: bool,
    /// Public key record for SSH access: starts the job's SSH server, which accepts this key
    /// only (`ssh -p PORT root@HOST`, scp, sftp, Ansible; see ssh_containers in the record).
    #[arg(long)]
    pub public_key_id: Option<String>,
    /// Where the SSH server listens; port 0 picks a free one.
    #[arg(long, default_value = imsctl::ssh::daemon::DEFAULT_LISTEN, value_name = "ADDR:PORT")]
    pub ssh_listen: String,
    #[command(flatten)]
    pub env: EnvironmentArgs,
    /// How the image is packed when the complete file ends an SSH session.
    #[command(flatten)]
    pub pack: PackOptions,
    #[command(flatten)]
    pub format: FormatArg,
}

#[derive(Args, Debug)]
pub struct JobSessionArgs {
    /// Job id.
    pub id: String,
    #[command(flatten)]
    pub pack: PackOptions,
}

#[derive(Args, Debug)]
pub struct JobExecArgs {
    /// Job id.
    pub id: String,
    /// Command and arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
    #[command(flatten)]
    pub pack: PackOptions,
}

#[derive(Args, Debug)]
pub struct CustomizeArgs {
    /// A .txz/.tar*/.sqsh/directory to import first, or the id of an image in the store.
    pub src: String,
    /// Name of the resulting image.
    #[arg(long)]
    pub name: String,
    /// A shell command to run inside the image root (repeatable; steps run in the order given).
    #[arg(long, value_name = "CMD")]
    pub run: Vec<String>,
    /// A script file to run inside the image root (repeatable; its #! line chooses the interpreter).
    #[arg(long, value_name = "FILE")]
    pub script: Vec<PathBuf>,
    /// An Ansible playbook run with ansible-playbook against the environment (IMS layout:
    /// the image at /mnt/image/image-root).
    #[arg(long, value_name = "PLAYBOOK")]
    pub ansible: Option<PathBuf>,
    /// Open an interactive shell after the other steps.
    #[arg(long)]
    pub shell: bool,
    /// Jailed environment for --shell: it starts inside the image root.
    #[arg(long)]
    pub jail: bool,
    /// Rebuild the initrd for the published kernel (dracut or update-initramfs inside the image).
    #[arg(long)]
    pub regenerate_initrd: bool,
    /// Also write the change report (files added, changed, removed) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub env: EnvironmentArgs,
    #[command(flatten)]
    pub pack: PackOptions,
}

/// One step of `customize`, in command-line order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Run(String),
    Script(PathBuf),
}

/// The --run and --script steps of `customize` in the order they were given.
pub fn customize_steps(matches: &clap::ArgMatches) -> Vec<Step> {
    let Some(m) = matches.subcommand_matches("customize") else {
        return Vec::new();
    };
    let mut steps: Vec<(usize, Step)> = Vec::new();
    if let (Some(idx), Some(vals)) = (m.indices_of("run"), m.get_many::<String>("run")) {
        steps.extend(idx.zip(vals).map(|(i, v)| (i, Step::Run(v.clone()))));
    }
    if let (Some(idx), Some(vals)) = (m.indices_of("script"), m.get_many::<PathBuf>("script")) {
        steps.extend(idx.zip(vals).map(|(i, v)| (i, Step::Script(v.clone()))));
    }
    steps.sort_by_key(|(i, _)| *i);
    steps.into_iter().map(|(_, s)| s).collect()
}

/// `--format` of every list/describe.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct FormatArg {
    /// Output format: toml (as `cray ims`) or json (sorted keys, stable for scripts).
    #[arg(long, value_parser = format_parser(), default_value = "toml")]
    pub format: OutputFormat,
}

/// A record id, and the output format.
#[derive(Args, Debug, Clone)]
pub struct IdFormatArgs {
    /// The record's id (UUID).
    pub id: String,
    #[command(flatten)]
    pub format: FormatArg,
}

/// A record id.
#[derive(Args, Debug, Clone)]
pub struct IdArg {
    /// The record's id (UUID).
    pub id: String,
}

#[derive(Subcommand, Debug)]
pub enum ImagesCommand {
    /// List image records.
    List(FormatArg),
    /// Show one image record.
    Describe(IdFormatArgs),
    /// Delete an image: its record and its artifacts in the store.
    Delete(IdArg),
    /// Re-hash an image's artifacts against its manifest; non-zero exit on any mismatch.
    Verify(VerifyArgs),
    /// Store SRC (.txz, .tar*, .sqsh, a directory, or s3://BUCKET/ID[/manifest.json]) as a
    /// SquashFS base image and register it.
    Import(ImportArgs),
    /// Upload an image of the local store to s3://BUCKET[/PREFIX]/ID (the IMS layout) and
    /// register it in that bucket's catalogue.
    Publish(PublishArgs),
    /// S3 catalogue (--store s3://…): remove what runs that died left behind: artifacts and
    /// manifests without a record, their multipart uploads, and stale leases.
    Repair(RepairArgs),
}

#[derive(Args, Debug, Clone)]
pub struct RepairArgs {
    /// Leases younger than this belong to runs that may still be going on: their image is left
    /// alone. 0 when you know no publish is running.
    #[arg(long, default_value = "1h", value_parser = parse_age, value_name = "DURATION")]
    pub older_than: std::time::Duration,
    /// Only list what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

/// `30m`, `1h`, `2d`, or what `--retry-budget` takes.
fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let (number, unit) = match (t.strip_suffix('h'), t.strip_suffix('d')) {
        (Some(n), _) => (n, 3600.0),
        (_, Some(n)) => (n, 86_400.0),
        _ => return imsctl::s3::config::parse_duration(t),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 0, 30m, 1h, 2d)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("{text:?}: expected a positive duration"));
    }
    Ok(std::time::Duration::from_secs_f64(value * unit))
}

#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    /// The image's id (UUID).
    pub id: String,
    /// S3 images: download and re-hash every object (default: compare ETag and md5sum metadata).
    #[arg(long)]
    pub deep: bool,
}

#[derive(Args, Debug, Clone)]
pub struct PublishArgs {
    /// The image's id in the local store.
    pub id: String,
    /// Destination: s3://BUCKET[/PREFIX].
    pub dest: String,
    /// Start over instead of resuming an interrupted upload of the same image.
    #[arg(long)]
    pub no_resume: bool,
    #[command(flatten)]
    pub format: FormatArg,
}

#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// The image to import: an archive, a SquashFS file or a directory.
    pub src: String,
    /// Name of the image record (default: SRC's file name).
    #[arg(long)]
    pub name: Option<String>,
    /// Architecture of the image: x86_64 or aarch64 (default: this machine's).
    #[arg(long)]
    pub arch: Option<imsctl::store::Arch>,
    #[command(flatten)]
    pub format: FormatArg,
}

#[derive(Subcommand, Debug)]
pub enum PublicKeysCommand {
    /// Register an SSH public key (an OpenSSH `.pub` file).
    Create(PublicKeyCreateArgs),
    /// List public-key records.
    List(FormatArg),
    /// Show one public-key record.
    Describe(IdFormatArgs),
    /// Delete a public-key record.
    Delete(IdArg),
}

#[derive(Args, Debug, Clone)]
pub struct PublicKeyCreateArgs {
    /// Name of the record, e.g. "username public key".
    #[arg(long)]
    pub name: String,
    /// The public key file, e.g. ~/.ssh/id_ed25519.pub.
    #[arg(long = "public-key", value_name = "FILE")]
    pub public_key: PathBuf,
    #[command(flatten)]
    pub format: FormatArg,
}

/// How to build a SquashFS image. Defaults are mksquashfs' (and IMS'): gzip level 9, 128 KiB.
#[derive(Args, Debug, Clone)]
pub struct PackOptions {
    /// Compressor.
    #[arg(long, default_value = "gzip", value_parser = ["gzip", "xz", "zstd", "lz4"])]
    pub comp: String,
    /// Compression level (gzip 1-9, xz 0-9, zstd 1-22); the compressor's mksquashfs default if unset.
    #[arg(long)]
    pub level: Option<u32>,
    /// Block size: bytes or with a K/M suffix, a power of two from 4K to 1M.
    #[arg(long, default_value = "128K", value_parser = parse_size)]
    pub block_size: u32,
    /// Superblock time (seconds since the epoch). Default: $SOURCE_DATE_EPOCH, else now.
    #[arg(long, env = "SOURCE_DATE_EPOCH")]
    pub mkfs_time: Option<u32>,
    /// Store small files in blocks of their own instead of shared fragments.
    #[arg(long)]
    pub no_fragments: bool,
    /// Also pack the last partial block of larger files into fragments.
    #[arg(long)]
    pub tail_ends: bool,
    /// Drop extended attributes.
    #[arg(long)]
    pub no_xattrs: bool,
    /// Leave out the NFS export table.
    #[arg(long)]
    pub no_exports: bool,
    /// Compression threads, 1 to 256 (default, or 0: one per core; more than 4 per core are
    /// not started, as they only contend).
    #[arg(long, default_value_t = 0, value_parser = parse_threads)]
    pub threads: usize,
    /// Customize jobs: compress every file again instead of copying unchanged files' blocks
    /// from the base image (needed to change compressor, level or block size; also for comparison).
    #[arg(long)]
    pub full_repack: bool,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Input: .txz, .tar, .tar.gz, .tar.zst (detected by content) or a SquashFS image.
    pub input: PathBuf,
    /// Output SquashFS image.
    pub output: PathBuf,
    #[command(flatten)]
    pub pack: PackOptions,
}

#[derive(Args, Debug)]
pub struct PackArgs {
    /// Directory to pack.
    pub dir: PathBuf,
    /// Output SquashFS image.
    pub output: PathBuf,
    /// Do not descend into other filesystems mounted below DIR.
    #[arg(long)]
    pub one_file_system: bool,
    #[command(flatten)]
    pub pack: PackOptions,
}

#[derive(Args, Debug)]
pub struct ExtractArgs {
    /// SquashFS image.
    pub image: PathBuf,
    /// Target directory (created if missing; must be empty).
    pub dir: PathBuf,
    /// Skip device nodes that cannot be created (as non-root) with a warning instead of failing.
    #[arg(long)]
    pub skip_devices: bool,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// SquashFS image.
    pub image: PathBuf,
}

/// `--threads`: 0 (one per core) to [`MAX_THREADS`](imsctl::squashfs::writer::MAX_THREADS).
/// 100000 threads would spend minutes starting and contending before any work.
pub fn parse_threads(s: &str) -> Result<usize, String> {
    use imsctl::squashfs::writer::MAX_THREADS;
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of threads"))?;
    if n > MAX_THREADS {
        return Err(format!(
            "{n} threads is more than the {MAX_THREADS} imsctl allows (0 means one per core)"
        ));
    }
    Ok(n)
}

/// Parse `131072`, `128K`, `1M`.
pub fn parse_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1024u64),
        Some((i, 'm' | 'M')) => (&t[..i], 1024 * 1024),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 131072, 128K, 1M)"))?;
    u32::try_from(n * mult).map_err(|_| format!("'{s}' is too large"))
}

/// Parse `16777216`, `16M`, `1G` (K, M, G: powers of 1024).
pub fn parse_size_u64(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 16777216, 16M, 1G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn s3_options_parse() {
        let cli = Cli::try_parse_from([
            "imsctl",
            "images",
            "publish",
            "--part-size",
            "32M",
            "--concurrency",
            "3",
            "--s3-endpoint",
            "http://127.0.0.1:9000",
            "--retry-budget",
            "2m",
            "0000",
            "s3://b/p",
        ])
        .expect("parse");
        assert_eq!(
            cli.global.s3.retry_budget,
            Some(std::time::Duration::from_secs(120))
        );
        assert_eq!(cli.global.s3.part_size, Some(32 << 20));
        assert_eq!(cli.global.s3.concurrency, Some(3));
        assert!(
            matches!(cli.command, Command::Images(ImagesCommand::Publish(ref p)) if p.dest == "s3://b/p")
        );
        assert_eq!(parse_size_u64("1G"), Ok(1 << 30));
        assert!(parse_size_u64("x").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn customize_steps_keep_command_line_order() {
        let m = Cli::command().get_matches_from([
            "imsctl",
            "customize",
            "x",
            "--name",
            "n",
            "--script",
            "a.sh",
            "--run",
            "true",
            "--script",
            "b.sh",
        ]);
        assert_eq!(
            customize_steps(&m),
            vec![
                Step::Script("a.sh".into()),
                Step::Run("true".into()),
                Step::Script("b.sh".into())
            ]
        );
    }

    #[test]
    fn ims_style_booleans_parse() {
        let m = Cli::try_parse_from([
            "imsctl",
            "jobs",
            "create",
            "--artifact-id",
            "x",
            "--image-root-archive-name",
            "y",
            "--ssh-containers-jail",
            "True",
            "--enable-debug",
            "False",
        ])
        .unwrap();
        let Command::Jobs(JobsCommand::Create(a)) = m.command else {
            panic!("parsed as jobs create")
        };
        assert!(a.ssh_containers_jail);
        assert!(!a.env.enable_debug);
    }

    #[test]
    fn threads_are_bounded_everywhere_they_are_accepted() {
        assert_eq!(parse_threads("0"), Ok(0));
        assert_eq!(parse_threads("256"), Ok(256));
        let err = parse_threads("100000").expect_err("too many");
        assert!(err.contains("100000") && err.contains("256"), "{err}");
        for argv in [
            &["imsctl", "pack", "d", "o", "--threads", "100000"][..],
            &["imsctl", "convert", "i", "o", "--threads", "100000"],
            &[
                "imsctl",
                "customize",
                "x",
                "--name",
                "n",
                "--threads",
                "100000",
            ],
            &["imsctl", "jobs", "complete", "j", "--threads", "100000"],
            &[
                "imsctl",
                "jobs",
                "exec",
                "j",
                "--threads",
                "100000",
                "--",
                "true",
            ],
            &["imsctl", "jobs", "shell", "j", "--threads", "100000"],
            &[
                "imsctl",
                "jobs",
                "create",
                "--artifact-id",
                "a",
                "--image-root-archive-name",
                "n",
                "--threads",
                "100000",
            ],
            &["imsctl", "jobs", "ssh", "j", "--threads", "100000"],
        ] {
            let err = Cli::try_parse_from(argv).expect_err("refused").to_string();
            assert!(err.contains("more than the 256"), "{argv:?}: {err}");
        }
    }

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("128K"), Ok(131072));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("big").is_err());
    }
}
