//! The sandbox: run a command or an interactive shell inside a job's image root.
//!
//! Plan, then execute: [`plan::plan`] turns a [`SandboxConfig`] into mount steps (pure data);
//! [`process`] forks into new namespaces (mount, pid, uts, ipc; network when
//! `Network::None`; user when not root) and executes them there. Nothing is mounted in the host's
//! namespace, so a session that dies in any way leaves nothing behind (see [`crate::root`]).

pub mod caps;
pub mod confine;
pub mod enter;
pub mod error;
pub mod exec;
pub mod idmap;
mod message;
pub mod plan;
pub mod process;
pub mod pty;
pub mod root;
pub mod seccomp;
pub mod userns;

#[cfg(test)]
mod tests;

pub use caps::{CapSet, Capability};
pub use confine::Confinement;
pub use error::{Error, Result};
pub use idmap::{IdMapping, SubIdRange};
pub use plan::{MountStep, plan, plan_image_only};
pub use process::{Command, Stdio};

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::process::ExitStatus;

use crate::root::{ImageSource, JobLock, WorkLayout};

/// The network the sandbox sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// The host's network (the default, as in IMS).
    #[default]
    Host,
    /// A private network namespace with only lo.
    None,
}

/// Everything a session needs to know about a job.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub layout: WorkLayout,
    pub source: ImageSource,
    /// Jailed: the command starts inside the image root. Not jailed (IMS default): the host's
    /// tree read-only, the image at /mnt/image/image-root, signal files in /mnt/image.
    pub jailed: bool,
    pub network: Network,
    pub ids: IdMapping,
    pub hostname: String,
    /// Shown in the shell's prompt.
    pub job_name: String,
    /// Passed through as TERM inside.
    pub term: Option<String>,
    /// Passed through as LANG inside.
    pub lang: Option<String>,
    /// Extra environment variables inside (after PATH, HOME, PS1, TERM, LANG).
    pub env: Vec<(String, String)>,
    /// What every process inside holds at most.
    pub confinement: Confinement,
}

impl SandboxConfig {
    /// A configuration with the defaults: not jailed, host network, id mapping detected for this
    /// process, hostname `imsctl-<job>`, TERM from the environment.
    pub fn new(layout: WorkLayout, source: ImageSource, job_name: &str) -> SandboxConfig {
        let short: String = job_name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(40)
            .collect();
        SandboxConfig {
            layout,
            source,
            jailed: false,
            network: Network::Host,
            ids: IdMapping::detect(),
            hostname: format!("imsctl-{short}"),
            job_name: job_name.to_string(),
            term: std::env::var("TERM").ok(),
            lang: std::env::var("LANG").ok().filter(|l| is_locale_name(l)),
            env: Vec::new(),
            confinement: Confinement::default(),
        }
    }
}

/// A locale name as LANG holds one (`C.UTF-8`, `en_US.UTF-8@euro`): nothing else is passed in.
fn is_locale_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
}

/// Run `argv` inside the sandbox with inherited stdin/stdout/stderr; returns its exit status.
/// Takes the job's lock for the duration (so the caller must not hold a [`JobLock`] itself).
pub fn run(cfg: &SandboxConfig, argv: &[String]) -> Result<ExitStatus> {
    run_with(cfg, argv, Stdio::Inherit)
}

/// [`run`] with explicit standard streams, e.g. a file or pipe to capture the command's output
/// (a pipe must be read while the command runs, from another thread).
pub fn run_with(cfg: &SandboxConfig, argv: &[String], stdio: Stdio) -> Result<ExitStatus> {
    let _lock = begin(cfg)?;
    let steps = plan(cfg);
    process::spawn(cfg, &steps, Command::Argv(argv.to_vec()), stdio)?.wait()
}

/// An interactive shell on this process's terminal (a real pty: job control, window size).
/// When stdin is not a terminal, the shell reads commands from it through plain pipes.
pub fn shell(cfg: &SandboxConfig) -> Result<ExitStatus> {
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    shell_on(cfg, stdin.as_fd(), stdout.as_fd())
}

/// [`shell`] with the terminal given explicitly (tests drive it through a pty of their own).
pub fn shell_on(
    cfg: &SandboxConfig,
    term_in: BorrowedFd<'_>,
    term_out: BorrowedFd<'_>,
) -> Result<ExitStatus> {
    let _lock = begin(cfg)?;
    let steps = plan(cfg);
    if !nix::unistd::isatty(term_in).unwrap_or(false) {
        let dup = |fd: BorrowedFd<'_>| {
            fd.try_clone_to_owned()
                .map_err(|e| Error::io("duplicate", format!("/proc/self/fd/{}", fd.as_raw_fd()), e))
        };
        let stdio = Stdio::Streams {
            stdin: Some(dup(term_in)?),
            stdout: Some(dup(term_out)?),
            stderr: None,
        };
        return process::spawn(cfg, &steps, Command::Shell { interactive: false }, stdio)?.wait();
    }
    // The terminal is made inside, from the sandbox's devpts, and its master sent out to us.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| Error::io("create a socket pair for", "/dev/ptmx", e))?;
    let mut running = process::spawn(
        cfg,
        &steps,
        Command::Shell { interactive: true },
        Stdio::NewPty {
            channel: theirs.into(),
            size: pty::size_of(term_in),
        },
    )?;
    let master = match pty::receive_master(&ours.into()) {
        Ok(m) => m,
        Err(e) => {
            running.kill();
            return Err(running.wait().err().unwrap_or(e));
        }
    };
    let relayed = pty::RawMode::enter(term_in).and_then(|raw_mode| {
        let copied = pty::relay(term_in, term_out, &master, &mut running);
        drop(raw_mode);
        copied
    });
    match relayed {
        Ok(()) => running.wait(),
        Err(e) => {
            // End the session so that waiting for it returns; report both if that fails too.
            running.kill();
            match running.wait() {
                Ok(_) => Err(e),
                Err(cleanup) => Err(Error::Both {
                    run: Box::new(e),
                    cleanup: Box::new(cleanup),
                }),
            }
        }
    }
}

/// Lock the job, make sure its work dir is complete and repair what a dead session left.
fn begin(cfg: &SandboxConfig) -> Result<JobLock> {
    root::prepare_work_dir(&cfg.layout, &cfg.source)?;
    let lock = JobLock::acquire(&cfg.layout)?;
    if cfg.source == ImageSource::Extracted && !root::is_extracted(&cfg.layout) {
        return Err(Error::Config(format!(
            "image root {} has not been extracted",
            cfg.layout.root().display()
        )));
    }
    root::repair_resolv_conf(
        &cfg.layout.outside_etc(&cfg.source),
        &cfg.layout.resolv_state(),
    )?;
    Ok(lock)
}

/// A session that runs nothing and holds the job's image root mounted (overlay included) so
/// that this process can read and write it at [`HeldRoot::path`] — e.g. to pack it, copy the
/// CA certificate in, or list what changed. Holds the job's lock until released or dropped.
pub struct HeldRoot {
    running: Option<process::Running>,
    /// The session's holder (see [`process`]): how this process reaches its root and namespaces.
    holder: nix::unistd::Pid,
    pid1: nix::unistd::Pid,
    _lock: JobLock,
}

impl HeldRoot {
    /// The image root as seen from this process (`/proc/<holder>/root` of the holding
    /// session). Files show the owners of this process's user namespace: when the sandbox has a
    /// user namespace of its own (an unprivileged caller that did not enter one, see
    /// [`userns`]), translate them with [`IdMapping::uid_inside`].
    pub fn path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/proc/{}/root", self.holder))
    }

    /// The holding session's holder process (what [`enter`] joins).
    pub fn holder(&self) -> i32 {
        self.holder.as_raw()
    }

    /// pid 1 of the holding session, as this process sees it.
    pub fn pid1(&self) -> i32 {
        self.pid1.as_raw()
    }

    /// End the session cleanly and report how it went.
    pub fn release(mut self) -> Result<()> {
        let Some(running) = self.running.take() else {
            return Ok(());
        };
        let _ = nix::sys::signal::kill(self.pid1, nix::sys::signal::Signal::SIGTERM);
        running.wait().map(drop)
    }
}

impl Drop for HeldRoot {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.kill();
            let _ = running.wait();
        }
    }
}

/// Mount the job's image root in a holding session (see [`HeldRoot`]).
pub fn hold_root(cfg: &SandboxConfig) -> Result<HeldRoot> {
    let lock = begin(cfg)?;
    let steps = plan_image_only(cfg);
    let running = process::spawn(cfg, &steps, Command::Hold, Stdio::Inherit)?;
    held(running, lock)
}

fn held(running: process::Running, lock: JobLock) -> Result<HeldRoot> {
    let (running, pid1) = running.wait_ready()?;
    Ok(HeldRoot {
        holder: running.holder(),
        running: Some(running),
        pid1,
        _lock: lock,
    })
}

/// Hold the job's whole sandbox — kernel filesystems, working resolv.conf, the non-jailed view
/// with the image at /mnt/image/image-root — for sessions that [`enter`] it (an SSH server's).
/// Its [`HeldRoot::path`] is the non-jailed view.
pub fn hold_session(cfg: &SandboxConfig) -> Result<HeldRoot> {
    let lock = begin(cfg)?;
    let mut view = cfg.clone();
    view.jailed = false; // jailed sessions chroot further into the image root when they enter
    let steps = plan(&view);
    let running = process::spawn(&view, &steps, Command::Hold, Stdio::Inherit)?;
    held(running, lock)
}

/// Make sure a job's image root holds the image's own resolv.conf, none of the sessions' mount
/// points the image lacked, and no signal file, before it is packed; safe to call any time no
/// session runs (it takes the lock).
pub fn settle(cfg: &SandboxConfig) -> Result<()> {
    let _lock = JobLock::acquire(&cfg.layout)?;
    root::repair_resolv_conf(
        &cfg.layout.outside_etc(&cfg.source),
        &cfg.layout.resolv_state(),
    )?;
    root::remove_made_mount_points(&cfg.layout, &cfg.source)?;
    root::clear_signals(&cfg.layout, &cfg.source)
}
