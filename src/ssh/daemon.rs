//! A job's SSH server process — imsctl's equivalent of the IMS job pod's SSH container.
//!
//! `jobs create --public-key-id` starts it detached (`imsctl internal-ssh-server JOB`) and
//! returns once it listens. The server holds the job's sandbox open (one holding session; every
//! SSH session enters it) and serves until:
//! - the user touches the complete file: it closes every session and packs and publishes the
//!   job, as the IMS pod does (its log: `<work>/ssh/server.log`);
//! - the user touches the failed file: it closes the sessions and ends the job in error;
//! - `jobs complete|fail|delete` stop it (SIGTERM): it closes the sessions and exits, and that
//!   command goes on in the foreground.
//!
//! The record's `ssh_containers[0]` tells where it listens (`connection_info`), its status
//! (pending → ready → closed, or error if serving failed; packing then sets complete or error),
//! its pid, the sandbox's pid 1 and the host key's fingerprint.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use uuid::Uuid;

use super::keys;
use super::server::{Server, Spawner};
use crate::root::{self, Signal};
use crate::sandbox;
use crate::store::{JobRecord, JobStatus, PublicKeyRecord, Store};

/// What the server needs from the job layer, handed in by the caller: the server runs sessions
/// and never reaches up into the job code.
pub struct JobHooks<'a> {
    /// The job's sandbox, held for the server's lifetime.
    pub sandbox: sandbox::SandboxConfig,
    /// The environment every session gets (IMS_JOB_ID, IMS_ARCH, ...).
    pub environment: Vec<(String, String)>,
    /// Called once when the user signalled the end through the complete or failed file.
    pub end: Box<dyn FnOnce(SessionsEnd) -> Result<()> + 'a>,
}

/// How the user ended the sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionsEnd {
    /// The complete file: package and publish the image.
    Complete,
    /// The failed file: mark the job failed.
    Failed,
}

/// Where a job's server listens unless told otherwise: loopback, a free port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:0";
const SERVER_PID: &str = "server_pid";
const SANDBOX_PID: &str = "sandbox_pid";
const HOST_KEY: &str = "host_key_fingerprint";
const READY_LINE: &str = "ready";
/// How often the server looks for a signal file.
const SIGNAL_POLL: Duration = Duration::from_millis(200);
/// After a signal file, the sessions close once none has been open this long (Ansible opens
/// one more to remove its temp dir after the task that wrote the file)…
const QUIET: Duration = Duration::from_secs(1);
/// …or this long after the signal file, whatever is still open.
const CLOSE_AFTER: Duration = Duration::from_secs(10);
/// How long `jobs complete|fail|delete` wait for a server to close its sessions and exit.
const STOP_GRACE: Duration = Duration::from_secs(20);

fn ssh_dir(store: &Store, job: &JobRecord) -> PathBuf {
    job.work_dir
        .clone()
        .unwrap_or_else(|| store.work_dir(job.id))
        .join("ssh")
}

/// The server's log: what it did after `jobs create` returned (sessions, packaging).
pub fn log_path(store: &Store, job: &JobRecord) -> PathBuf {
    ssh_dir(store, job).join("server.log")
}

/// Start the job's server and wait until it listens. `forward` are the global options the
/// server needs again (store, S3) and the pack options for the complete file.
pub fn start(
    store: &Store,
    job: &JobRecord,
    listen: &str,
    forward: &[String],
) -> Result<JobRecord> {
    let listen: SocketAddr = listen
        .parse()
        .with_context(|| format!("--ssh-listen '{listen}' is not ADDRESS:PORT"))?;
    let dir = ssh_dir(store, job);
    std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let log_file = log_path(store, job);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_file)
        .with_context(|| format!("failed to open {}", log_file.display()))?;
    let exe = std::env::current_exe().context("failed to find this executable (/proc/self/exe)")?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("--store")
        .arg(store.root())
        .arg("internal-ssh-server")
        .arg(job.id.to_string())
        .arg("--listen")
        .arg(listen.to_string())
        .args(forward)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log);
    // SAFETY: setsid only; the server must not get the terminal's signals (Ctrl-C in the shell
    // that ran `jobs create`) nor die with that shell.
    // Descriptors the caller left open (a shell's `exec 7</`, a jobserver pipe) must not reach
    // the server, and through it the sessions: close all but the standard ones.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to start the SSH server ({})", exe.display()))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    if line.trim() != READY_LINE {
        let _ = child.kill();
        let _ = child.wait();
        let why = last_error_line(&log_file).unwrap_or_else(|| "no reason given".into());
        bail!(
            "the SSH server of job {} did not start: {why} (log: {})",
            job.id,
            log_file.display()
        );
    }
    // The server is its own session leader; nobody waits for it but the kernel's reaper
    // (init) once this process exits.
    std::mem::forget(child);
    Ok(store.get_by_id(job.id)?)
}

fn last_error_line(log: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim_start_matches("imsctl: error: ").to_string())
}

/// The pid of the job's live server, if one runs.
pub fn running_server(job: &JobRecord) -> Option<i32> {
    let c = job.ssh_containers.first()?;
    if c.status != "ready" {
        return None;
    }
    let pid = c.extra.get(SERVER_PID)?.as_i64()? as i32;
    is_our_server(pid, job.id).then_some(pid)
}

/// The holder of the sandbox of the job's live server (to enter it), if one runs.
pub fn running_sandbox(job: &JobRecord) -> Option<i32> {
    running_server(job)?;
    let pid = job
        .ssh_containers
        .first()?
        .extra
        .get(SANDBOX_PID)?
        .as_i64()?;
    Some(pid as i32)
}

/// A pid recorded earlier may be reused: check it is this job's server.
fn is_our_server(pid: i32, id: Uuid) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.contains(&&b"internal-ssh-server"[..]) && args.contains(&id.to_string().as_bytes())
}

/// Run `argv` in the sandbox the job's server holds (`jobs exec` while it serves), with this
/// process's standard streams.
pub fn exec_in(
    target: &sandbox::enter::Target,
    job_env: &[(String, String)],
    argv: &[String],
) -> Result<std::process::ExitStatus> {
    let exe = std::env::current_exe().context("failed to find this executable (/proc/self/exe)")?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("internal-enter").args(target.args());
    cmd.arg("--").args(argv);
    cmd.env_clear()
        .envs(session_env_from_host())
        .envs(job_env.iter().cloned());
    cmd.status()
        .with_context(|| format!("failed to run {} internal-enter", exe.display()))
}

/// The environment `jobs exec` passes in: what a login would set, plus TERM and the locale.
fn session_env_from_host() -> Vec<(String, String)> {
    let mut env = super::server::login_env();
    env.extend(std::env::vars().filter(|(k, _)| k == "TERM" || super::server::accepted_env(k)));
    env
}

/// Stop the job's server if one runs (it closes the sessions and releases the sandbox) and wait
/// until it is gone. Returns whether one was running.
pub fn stop(store: &Store, job: &JobRecord) -> Result<bool> {
    let Some(pid) = running_server(job) else {
        return Ok(false);
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).with_context(|| {
        format!(
            "failed to stop the SSH server of job {} (signal pid {pid})",
            job.id
        )
    })?;
    let started = Instant::now();
    while is_our_server(pid.as_raw(), job.id) {
        if started.elapsed() > STOP_GRACE {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(200));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if is_our_server(pid.as_raw(), job.id) {
        bail!(
            "the SSH server of job {} (pid {pid}) does not stop; see {}",
            job.id,
            log_path(store, job).display()
        );
    }
    mark(store, job.id, "closed", |_| {})?;
    Ok(true)
}

fn mark(
    store: &Store,
    id: Uuid,
    status: &str,
    more: impl FnOnce(&mut crate::store::SshContainer),
) -> Result<JobRecord> {
    Ok(store.update::<JobRecord>(id, |j| {
        if let Some(c) = j.ssh_containers.first_mut() {
            c.status = status.into();
            more(c);
        }
        Ok(())
    })?)
}

/// What ended the serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Signal(Signal),
    Stopped,
    /// The job's work dir was removed under the server (its store deleted): nothing to serve.
    WorkDirGone,
    /// The held sandbox's pid 1 died: sessions cannot enter any more.
    SandboxGone,
}

/// The server process itself (`internal-ssh-server`). Prints the ready line on stdout once it
/// listens, then keeps only its log.
pub fn serve(
    store: &Store,
    job: &JobRecord,
    listen: SocketAddr,
    accept_key_file: Option<&std::path::Path>,
    hooks: JobHooks<'_>,
) -> Result<()> {
    if job.status != JobStatus::WaitingOnUser {
        bail!("job {} is not waiting_on_user", job.id);
    }
    let accepted = match accept_key_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("failed to read the public key {}", path.display()))?;
            keys::parse_authorized_key(&text)
                .with_context(|| format!("public key {}", path.display()))?
        }
        None => {
            let key_id = job
                .public_key_id
                .ok_or_else(|| anyhow!("job {} has no public key (--public-key-id)", job.id))?;
            let key_record: PublicKeyRecord = store.get_by_id(key_id)?;
            keys::parse_authorized_key(&key_record.public_key)
                .with_context(|| format!("public key {key_id}"))?
        }
    };
    let host_key = keys::load_or_create_host_key(&ssh_dir(store, job).join("host_ed25519_key"))?;
    let JobHooks {
        sandbox: cfg,
        environment,
        end,
    } = hooks;
    // Before any thread exists: the sandbox forks.
    let held = sandbox::hold_session(&cfg)?;
    let listener =
        TcpListener::bind(listen).with_context(|| format!("failed to listen on {listen}"))?;
    let local = listener
        .local_addr()
        .with_context(|| format!("failed to read the address bound for {listen}"))?;
    let fingerprint = keys::fingerprint(host_key.public_key());
    let holder = held.holder();
    mark(store, job.id, "ready", |c| {
        c.connection_info = connection_info(local);
        c.extra.insert(SERVER_PID.into(), std::process::id().into());
        c.extra.insert(SANDBOX_PID.into(), holder.into());
        c.extra.insert(HOST_KEY.into(), fingerprint.clone().into());
    })?;
    eprintln!(
        "imsctl ssh: job {} listening on {local} (host key {fingerprint}), sandbox holder pid {holder}",
        job.id
    );
    announce_ready()?;
    let spawner = Spawner {
        // Always this very binary, even if the file was replaced since the server started.
        exe: PathBuf::from("/proc/self/exe"),
        target: sandbox::enter::Target {
            holder,
            jailed: cfg.jailed,
            confinement: cfg.confinement,
        },
        job_env: environment,
    };
    let server = Server {
        accepted: Arc::new(accepted),
        spawner: Arc::new(spawner),
        activity: Arc::default(),
        local,
    };
    let ending = run_until_signal(listener, host_key, server, &cfg, holder);
    let released = held.release();
    if matches!(ending, Ok(Ending::WorkDirGone)) {
        eprintln!("imsctl ssh: job {}: its work dir is gone; stopping", job.id);
        return Ok(());
    }
    let status = if ending.is_ok() && released.is_ok() {
        "closed"
    } else {
        "error"
    };
    mark(store, job.id, status, |_| {})?;
    let ending = ending?;
    released?;
    if ending == Ending::SandboxGone {
        bail!(
            "the sandbox of job {} (holder pid {holder}) ended under the server",
            job.id
        );
    }
    eprintln!("imsctl ssh: job {}: sessions closed ({ending:?})", job.id);
    match ending {
        Ending::Signal(Signal::Complete) => end(SessionsEnd::Complete),
        Ending::Signal(Signal::Failed) => end(SessionsEnd::Failed),
        Ending::Stopped | Ending::WorkDirGone | Ending::SandboxGone => Ok(()),
    }
}

/// IMS shows where to reach the job for users outside and inside the cluster; here both are
/// the address the server listens on.
fn connection_info(local: SocketAddr) -> std::collections::BTreeMap<String, serde_json::Value> {
    let entry = serde_json::json!({ "host": local.ip().to_string(), "port": local.port() });
    [
        ("cluster.local".to_string(), entry.clone()),
        ("customer_access".to_string(), entry),
    ]
    .into_iter()
    .collect()
}

/// Tell `jobs create` the server listens, then point stdout at the log (stderr).
fn announce_ready() -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{READY_LINE}")
        .and_then(|()| out.flush())
        .context("failed to report readiness")?;
    // SAFETY: dup2 of our own stderr onto stdout; closes the pipe to `jobs create`.
    if unsafe { libc::dup2(std::io::stderr().as_raw_fd(), 1) } < 0 {
        return Err(std::io::Error::last_os_error())
            .context("failed to redirect stdout to the log");
    }
    Ok(())
}

/// Serve until a signal file appears or SIGTERM/SIGINT/SIGHUP arrives; then disconnect everyone.
fn run_until_signal(
    listener: TcpListener,
    host_key: russh::keys::PrivateKey,
    server: Server,
    cfg: &sandbox::SandboxConfig,
    holder: i32,
) -> Result<Ending> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the SSH server's event loop")?;
    let ending = runtime.block_on(async {
        listener
            .set_nonblocking(true)
            .context("failed to make the listening socket non-blocking")?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .context("failed to register the listening socket")?;
        let activity = server.activity.clone();
        let running = server.serve(listener, host_key);
        let stopper = running.handle();
        let mut term = signal_stream(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = signal_stream(tokio::signal::unix::SignalKind::interrupt())?;
        let mut hup = signal_stream(tokio::signal::unix::SignalKind::hangup())?;
        let watch = watch_signal_files(cfg, holder);
        tokio::pin!(running);
        tokio::pin!(watch);
        let ending = tokio::select! {
            ending = &mut watch => {
                match ending {
                    // Let the client finish what it was doing when it wrote the file; a stop
                    // request meanwhile (`jobs fail|complete|delete`) wins over the file.
                    Ending::Signal(_) => tokio::select! {
                        () = settle(&activity) => ending,
                        _ = term.recv() => Ending::Stopped,
                        _ = int.recv() => Ending::Stopped,
                    },
                    other => other,
                }
            }
            _ = term.recv() => Ending::Stopped,
            _ = int.recv() => Ending::Stopped,
            _ = hup.recv() => Ending::Stopped,
            served = &mut running => {
                served.context("the SSH server failed")?;
                Ending::Stopped
            }
        };
        stopper.shutdown(match ending {
            Ending::Signal(Signal::Complete) => "the job is complete: packing the image".into(),
            Ending::Signal(Signal::Failed) => "the job failed (failed file)".into(),
            Ending::Stopped | Ending::WorkDirGone | Ending::SandboxGone => {
                "the job's SSH server is stopping".into()
            }
        });
        // Let the disconnect messages go out before the sessions' processes are killed.
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut running).await;
        Ok::<_, anyhow::Error>(ending)
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    ending
}

fn signal_stream(kind: tokio::signal::unix::SignalKind) -> Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind).context("failed to install a signal handler")
}

/// After a signal file: wait until no session has been open for [`QUIET`], at most
/// [`CLOSE_AFTER`] (then the sessions still open are closed, as IMS closes them).
async fn settle(activity: &super::server::Activity) {
    let deadline = tokio::time::Instant::now() + CLOSE_AFTER;
    while tokio::time::Instant::now() < deadline {
        if activity.idle_for().is_some_and(|idle| idle >= QUIET) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Until a signal file appears, or the job's work dir disappears (deleted with its store).
async fn watch_signal_files(cfg: &sandbox::SandboxConfig, holder: i32) -> Ending {
    let mut tick = tokio::time::interval(SIGNAL_POLL);
    loop {
        tick.tick().await;
        if !sandbox::enter::is_sandbox(holder) {
            return Ending::SandboxGone;
        }
        if let Some(signal) = root::signal_raised(&cfg.layout, &cfg.source) {
            return Ending::Signal(signal);
        }
        if !cfg.layout.work().exists() {
            return Ending::WorkDirGone;
        }
    }
}
