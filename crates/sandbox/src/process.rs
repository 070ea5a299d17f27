//! The process chain of a session:
//!
//! ```text
//! imsctl (host namespaces)
//!   └─ C1: unshare(user?, mount, uts, ipc, net?); waits for the parent to write id maps;
//!        │ mounts the base (squashfuse, if any, is its child: outside the new pid namespace,
//!        │ where nothing inside can see it); unshare(pid)
//!        └─ C2 = pid 1 of the new pid namespace: mounts the rest of the plan, pivots, reaps,
//!             │ forwards signals
//!             └─ the command (or shell)
//! ```
//!
//! Every child is tied to its parent with PR_SET_PDEATHSIG(SIGKILL): when imsctl dies (Ctrl-C,
//! SIGTERM, kill -9), C1 dies, then C2, and the death of a pid namespace's pid 1 kills everything
//! in it; the mount namespace dies with its last process, taking every mount (and the
//! autoclear loop device) along. Nothing is ever mounted in the host's namespace.
//!
//! What the host reaches the sandbox through is C1 (the *holder*): it shares the sandbox's
//! mount, user and other namespaces and its root after the pivot, but it is not in the new pid
//! namespace, so nothing inside can see, signal or trace it. pid 1, which the processes inside do
//! see, holds nothing of the host: no descriptor on a host path, no host environment (C1 wipes
//! the inherited environment and arguments from memory before it forks pid 1), it is
//! non-dumpable (its /proc files and ptrace need CAP_SYS_PTRACE in the initial namespace), and
//! it confines itself ([`super::confine`]) before it starts the command.
//!
//! The children report back over one pipe with small tagged messages (setup error, cleanup
//! error, exit status), each below PIPE_BUF so that writes from several processes never mix.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

use nix::errno::Errno;
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, sigprocmask};
use nix::unistd::{ForkResult, Pid, fork};

use super::confine::{self, Confinement};
use super::error::{Error, Result};
use super::exec::{self, Executed};
use super::message::{Handshake, Report, read_to_end, send};
use super::plan::MountStep;
use super::{Network, SandboxConfig};
use crate::root::ResolvConfGuard;

pub(super) const PATH_INSIDE: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Signals pid 1 forwards to the command. SIGINT and SIGQUIT are not among them: the terminal
/// delivers those to the command's process group directly.
const FORWARDED: [Signal; 5] = [
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCONT,
];

/// What to run inside.
#[derive(Debug, Clone)]
pub enum Command {
    Argv(Vec<String>),
    /// No command: pid 1 holds the mounts until SIGTERM (see [`super::HeldRoot`]).
    Hold,
    /// The image's (jailed) or host's (not jailed) bash, else sh; interactive when on a pty.
    Shell {
        interactive: bool,
    },
}

/// The command's standard streams.
#[derive(Debug)]
pub enum Stdio {
    Inherit,
    /// A new pty from the sandbox's own devpts (so `tty` and `ps` inside name it): the command
    /// opens it, sends the master back over `channel` (a Unix socket) and takes the slave as
    /// its controlling terminal, sized `size`.
    NewPty {
        channel: OwnedFd,
        size: Option<nix::pty::Winsize>,
    },
    /// Explicit streams (e.g. a pipe to capture output); `None` keeps the inherited one.
    Streams {
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    },
}

impl Stdio {
    fn raw_fds(&self) -> Vec<RawFd> {
        match self {
            Stdio::Inherit => vec![],
            Stdio::NewPty { channel, .. } => vec![channel.as_raw_fd()],
            Stdio::Streams {
                stdin,
                stdout,
                stderr,
            } => [stdin, stdout, stderr]
                .iter()
                .filter_map(|fd| fd.as_ref().map(AsRawFd::as_raw_fd))
                .collect(),
        }
    }
}

/// Everything the children need, prepared before forking (no host lookups happen in them).
struct Prepared<'a> {
    steps: &'a [MountStep],
    command: Command,
    env: Vec<CString>,
    hostname: String,
    network: Network,
    confinement: Confinement,
    clone_flags: CloneFlags,
    uses_userns: bool,
    many_ids: bool,
}

/// A started session: wait for it with [`Running::wait`]. The report pipe becomes readable when
/// the session is ending (a pty loop polls it).
pub struct Running {
    c1: Pid,
    reports: OwnedFd,
    /// Reports read ahead by [`Running::wait_ready`].
    read_ahead: Vec<u8>,
    /// The resolv.conf swap's state file, removed once pid 1 reports the image's file is back.
    resolv_state: std::path::PathBuf,
}

impl Running {
    pub fn reports_fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.reports.as_fd()
    }

    /// Read the reports that are there now (the caller saw the pipe readable) and tell whether
    /// the session is over: a status or setup error arrived, or every writer is gone. A pid
    /// report alone means nothing has ended.
    pub fn session_over(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        match nix::unistd::read(&self.reports, &mut buf) {
            Ok(0) | Err(Errno::EBADF) => return true,
            Ok(n) => self.read_ahead.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        Report::decode_all(&self.read_ahead)
            .iter()
            .any(|r| matches!(r, Report::Status(_) | Report::SetupError(_)))
    }

    /// Kill the session: C1's death takes pid 1 and with it the whole namespace.
    pub fn kill(&self) {
        let _ = nix::sys::signal::kill(self.c1, Signal::SIGKILL);
    }

    /// The holder (C1): the process through which the host reaches the sandbox's root
    /// (`/proc/<holder>/root`) and namespaces (`ns/*`, `ns/pid_for_children`).
    pub fn holder(&self) -> Pid {
        self.c1
    }

    /// For a holding session: read reports until pid 1 says its mounts are ready; returns pid
    /// 1's pid as seen from here. A session that ends instead yields its error.
    pub fn wait_ready(mut self) -> std::result::Result<(Running, Pid), Error> {
        let mut buf = [0u8; 4096];
        loop {
            let reports = Report::decode_all(&self.read_ahead);
            let pid = reports.iter().find_map(|r| match r {
                Report::Pid(pid) => Some(*pid),
                _ => None,
            });
            if let (true, Some(pid)) = (reports.contains(&Report::Ready), pid) {
                return Ok((self, Pid::from_raw(pid)));
            }
            match nix::unistd::read(&self.reports, &mut buf) {
                Ok(0) | Err(Errno::EBADF) => {
                    return Err(match self.wait() {
                        Err(e) => e,
                        Ok(status) => {
                            Error::Setup(format!("the holding session ended early ({status})"))
                        }
                    });
                }
                Ok(n) => self.read_ahead.extend_from_slice(&buf[..n]),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::sys("read reports from", "pipe", e)),
            }
        }
    }

    /// Collect the children's reports until they are all gone, then reap C1.
    pub fn wait(mut self) -> Result<ExitStatus> {
        let mut bytes = std::mem::take(&mut self.read_ahead);
        bytes.extend(read_to_end(&self.reports));
        let c1_status = loop {
            match nix::sys::wait::waitpid(self.c1, None) {
                Err(Errno::EINTR) => continue,
                other => break other,
            }
        };
        let mut setup = None;
        let mut cleanup = None;
        let mut status = None;
        for report in Report::decode_all(&bytes) {
            match report {
                Report::SetupError(text) => setup = setup.or(Some(text)),
                Report::CleanupError(text) => cleanup = cleanup.or(Some(text)),
                Report::ResolvRestored => {
                    if let Err(e) = crate::root::resolv::forget_swap(&self.resolv_state) {
                        cleanup = cleanup.or(Some(e.to_string()));
                    }
                }
                Report::Status(raw) => status = Some(ExitStatus::from_raw(raw)),
                Report::Pid(_) | Report::Ready => {}
            }
        }
        let run = match (setup, status) {
            (Some(msg), _) => Err(Error::Setup(msg)),
            (None, Some(s)) => Ok(s),
            (None, None) => Err(Error::Setup(format!(
                "the sandbox ended without reporting a status ({c1_status:?})"
            ))),
        };
        Error::combine(run, cleanup.map_or(Ok(()), |c| Err(Error::Cleanup(c))))
    }
}

/// Fork the session. `steps` is the plan of [`super::plan::plan`].
pub fn spawn(
    cfg: &SandboxConfig,
    steps: &[MountStep],
    command: Command,
    stdio: Stdio,
) -> Result<Running> {
    let prepared = prepare(cfg, steps, command)?;
    let (report_r, report_w) = pipe("create report pipe")?;
    let (ready_r, ready_w) = pipe("create sync pipe")?;
    let (go_r, go_w) = pipe("create sync pipe")?;
    let parent = nix::unistd::getpid();
    // SAFETY: the child runs only code that is safe after fork in this process (glibc resets
    // malloc's locks in the child; no stdio locks or env access are taken there) and never returns.
    match unsafe { fork() }.map_err(|e| Error::sys("fork sandbox from", "/proc/self", e))? {
        ForkResult::Child => {
            drop((report_r, ready_r, go_w));
            child_exit(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                || {
                    c1_main(
                        &prepared,
                        parent,
                        stdio,
                        report_w.as_raw_fd(),
                        ready_w,
                        go_r,
                    )
                },
            )));
        }
        ForkResult::Parent { child } => {
            drop((report_w, ready_w, go_r, stdio));
            let running = Running {
                c1: child,
                reports: report_r,
                read_ahead: Vec::new(),
                resolv_state: cfg.layout.resolv_state(),
            };
            if prepared.uses_userns {
                // C1 says it has unshared (or closes the pipe on failure: its report says why).
                if Handshake::wait_for(&ready_r).is_some() {
                    let mapped = cfg.ids.apply(child);
                    let answer = match mapped {
                        Ok(()) => Handshake::Go,
                        Err(_) => Handshake::Abort,
                    };
                    let _ = answer.signal(&go_w);
                    drop(go_w);
                    if let Err(e) = mapped {
                        let _ = running.wait();
                        return Err(e);
                    }
                }
            }
            Ok(running)
        }
    }
}

fn prepare<'a>(
    cfg: &SandboxConfig,
    steps: &'a [MountStep],
    command: Command,
) -> Result<Prepared<'a>> {
    let mut vars = vec![
        ("PATH".to_string(), PATH_INSIDE.to_string()),
        ("HOME".into(), "/root".into()),
        ("PS1".into(), format!("[imsctl {}] \\w \\$ ", cfg.job_name)),
    ];
    if let Some(term) = &cfg.term {
        vars.push(("TERM".into(), term.clone()));
    }
    if let Some(lang) = &cfg.lang {
        vars.push(("LANG".into(), lang.clone()));
    }
    vars.extend(cfg.env.iter().cloned());
    let env = vars
        .into_iter()
        .map(|(k, v)| {
            CString::new(format!("{k}={v}"))
                .map_err(|_| Error::Config(format!("environment variable {k} contains NUL")))
        })
        .collect::<Result<Vec<_>>>()?;
    if let Command::Argv(argv) = &command {
        if argv.is_empty() {
            return Err(Error::Config("empty command".into()));
        }
        if argv.iter().any(|a| a.contains('\0')) {
            return Err(Error::Config("command argument contains NUL".into()));
        }
    }
    // The pid namespace comes later, on its own (see `c1_main`).
    let mut clone_flags =
        CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if cfg.network == Network::None {
        clone_flags |= CloneFlags::CLONE_NEWNET;
    }
    let uses_userns = cfg.ids.creates_user_namespace();
    if uses_userns {
        clone_flags |= CloneFlags::CLONE_NEWUSER;
    }
    Ok(Prepared {
        steps,
        command,
        env,
        hostname: cfg.hostname.clone(),
        network: cfg.network,
        confinement: cfg.confinement,
        clone_flags,
        uses_userns,
        many_ids: cfg.ids.maps_many_ids(),
    })
}

fn child_exit(outcome: std::thread::Result<()>) -> ! {
    let code = if outcome.is_ok() { 0 } else { 101 };
    // SAFETY: leave the forked child without unwinding into the parent's frames.
    unsafe { libc::_exit(code) }
}

/// C1: enters the new namespaces, lets the parent map ids, mounts the base, forks pid 1 into a
/// new pid namespace and waits for it.
fn c1_main(
    p: &Prepared<'_>,
    parent: Pid,
    stdio: Stdio,
    report: RawFd,
    ready: OwnedFd,
    go: OwnedFd,
) {
    // Descriptors of other threads (another session's pipes, say) must not stay open in the
    // sandbox: pid 1 never execs, so close-on-exec would not drop them.
    let mut keep = vec![0, 1, 2, report, ready.as_raw_fd(), go.as_raw_fd()];
    keep.extend(stdio.raw_fds());
    close_other_fds(&mut keep);
    if let Err(e) = die_with_parent(|| nix::unistd::getppid() == parent) {
        send(report, &Report::SetupError(e.to_string()));
        return;
    }
    // The host's working directory must not travel into the sandbox with pid 1 (or squashfuse):
    // at "/", the pivot moves it onto the new root. And pid 1 is a copy of this memory: nothing
    // of the caller's environment or arguments may be in it.
    if let Err(e) = nix::unistd::chdir("/") {
        return send(
            report,
            &Report::SetupError(Error::sys("change directory to", "/", e).to_string()),
        );
    }
    scrub_inherited_strings();
    // The terminal's Ctrl-C is for the command, not for the sandbox's own processes.
    ignore(Signal::SIGINT);
    ignore(Signal::SIGQUIT);
    if let Err(e) = unshare(p.clone_flags) {
        send(
            report,
            &Report::SetupError(
                Error::sys(
                    format!("unshare namespaces ({:?}) of", p.clone_flags),
                    "/proc/self",
                    e,
                )
                .to_string(),
            ),
        );
        return;
    }
    if p.uses_userns {
        let _ = Handshake::Unshared.signal(&ready);
        if Handshake::wait_for(&go) != Some(Handshake::Go) {
            return; // the parent could not map ids; it reports why
        }
    }
    drop((ready, go));
    let holder_part = p.steps.iter().take_while(|s| s.runs_in_holder()).count();
    let fuse = match exec::execute_in_holder(&p.steps[..holder_part]) {
        Ok(fuse) => fuse,
        Err(e) => return send(report, &Report::SetupError(e.to_string())),
    };
    if let Err(e) = unshare(CloneFlags::CLONE_NEWPID) {
        return send(
            report,
            &Report::SetupError(
                Error::sys("unshare the pid namespace of", "/proc/self", e).to_string(),
            ),
        );
    }
    let (alive_r, alive_w) = match pipe("create liveness pipe") {
        Ok(p) => p,
        Err(e) => return send(report, &Report::SetupError(e.to_string())),
    };
    // SAFETY: as in `spawn`; the child never returns.
    match unsafe { fork() } {
        Err(e) => send(
            report,
            &Report::SetupError(Error::sys("fork pid 1 from", "/proc/self", e).to_string()),
        ),
        Ok(ForkResult::Child) => {
            drop(alive_w);
            child_exit(std::panic::catch_unwind(std::panic::AssertUnwindSafe(
                || init_main(p, holder_part, stdio, report, alive_r),
            )));
        }
        Ok(ForkResult::Parent { child }) => {
            drop((alive_r, stdio));
            send(report, &Report::Pid(child.as_raw()));
            wait_for_init(child, fuse);
            drop(alive_w);
        }
    }
}

/// Wait for pid 1. Should squashfuse end first, the base image is gone from under everything
/// inside: end the session. Once pid 1 is gone, so is squashfuse.
fn wait_for_init(init: Pid, fuse: Option<Pid>) {
    let mut fuse = fuse;
    loop {
        match nix::sys::wait::waitpid(None::<Pid>, None) {
            Ok(status) if status.pid() == Some(init) => break,
            Ok(status) if status.pid().is_some() && status.pid() == fuse => {
                fuse = None;
                let _ = nix::sys::signal::kill(init, Signal::SIGKILL);
            }
            Err(Errno::EINTR) | Ok(_) => {}
            Err(_) => break,
        }
    }
    if let Some(fuse) = fuse {
        let _ = nix::sys::signal::kill(fuse, Signal::SIGKILL);
        while let Err(Errno::EINTR) = nix::sys::wait::waitpid(fuse, None) {}
    }
}

fn close_other_fds(keep: &mut [RawFd]) {
    keep.sort_unstable();
    let mut next: libc::c_uint = 0;
    for &fd in keep.iter() {
        let fd = fd as libc::c_uint;
        if fd > next {
            // SAFETY: close_range on descriptors nobody in this (single-threaded) child uses.
            unsafe { libc::syscall(libc::SYS_close_range, next, fd - 1, 0) };
        }
        next = next.max(fd + 1);
    }
    // SAFETY: as above, up to the highest possible descriptor.
    unsafe { libc::syscall(libc::SYS_close_range, next, libc::c_uint::MAX, 0) };
}

/// PR_SET_PDEATHSIG, then make sure the parent did not die before it took effect.
pub(super) fn die_with_parent(parent_alive: impl Fn() -> bool) -> Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(Error::sys(
            "set parent-death signal of",
            "/proc/self",
            Errno::last(),
        ));
    }
    if !parent_alive() {
        // SAFETY: the parent is gone; so must we be.
        unsafe { libc::_exit(1) }
    }
    Ok(())
}

/// C2, pid 1 of the new pid namespace.
fn init_main(p: &Prepared<'_>, done: usize, stdio: Stdio, report: RawFd, alive: OwnedFd) {
    // getppid() is 0 across the pid namespace boundary; C1's liveness is its pipe staying open.
    let c1_alive = || poll_hangup(&alive) == Some(false);
    if let Err(e) = die_with_parent(c1_alive) {
        return send(report, &Report::SetupError(e.to_string()));
    }
    drop(alive);
    let mut executed = Executed::default();
    // Before anything of the image runs: nothing inside may read pid 1's /proc files or trace it.
    let setup = confine::make_undumpable()
        .and_then(|()| setup_inside(p, &p.steps[done..], &mut executed))
        .and_then(|()| confine::confine(&p.confinement));
    if let Err(e) = setup {
        send(report, &Report::SetupError(e.to_string()));
        finish(report, executed, None);
        return;
    }
    let status = supervise(p, stdio, report);
    finish(report, executed, status);
}

fn setup_inside(p: &Prepared<'_>, steps: &[MountStep], executed: &mut Executed) -> Result<()> {
    if p.uses_userns && p.many_ids {
        // Supplementary groups from the host show as nogroup inside; drop them.
        let _ = nix::unistd::setgroups(&[]);
    }
    nix::unistd::sethostname(&p.hostname).map_err(|e| {
        Error::sys(
            format!("set hostname {:?} of", p.hostname),
            "/proc/sys/kernel/hostname",
            e,
        )
    })?;
    if p.network == Network::None {
        exec::bring_loopback_up()?;
    }
    exec::execute(steps, executed)
}

/// Kill what the command left running, restore the image's resolv.conf, report the status.
fn finish(report: RawFd, executed: Executed, status: Option<i32>) {
    kill_all();
    match executed.resolv.map(ResolvConfGuard::restore) {
        Some(Err(e)) => send(report, &Report::CleanupError(e.to_string())),
        Some(Ok(())) => send(report, &Report::ResolvRestored),
        None => {}
    }
    if let Some(raw) = status {
        send(report, &Report::Status(raw));
    }
}

/// Fork the command and be its init: reap every child, forward signals, return its raw status.
fn supervise(p: &Prepared<'_>, stdio: Stdio, report: RawFd) -> Option<i32> {
    let mut waited = SigSet::empty();
    waited.add(Signal::SIGCHLD);
    for s in FORWARDED {
        waited.add(s);
        // pid 1 only receives signals it handles; the handler never runs (they stay blocked).
        // SAFETY: installing a handler that does nothing.
        let _ = unsafe { nix::sys::signal::signal(s, SigHandler::Handler(noop_handler)) };
    }
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&waited), None) {
        send(
            report,
            &Report::SetupError(Error::sys("block signals of", "/proc/self", e).to_string()),
        );
        return None;
    }
    if matches!(p.command, Command::Hold) {
        drop(stdio);
        detach_standard_streams();
        return Some(hold(&waited, report));
    }
    // SAFETY: as in `spawn`; the child execs or exits.
    let command_pid = match unsafe { fork() } {
        Err(e) => {
            send(
                report,
                &Report::SetupError(
                    Error::sys("fork the command from", "/proc/self", e).to_string(),
                ),
            );
            return None;
        }
        Ok(ForkResult::Child) => {
            let err = exec_command(p, stdio);
            send(report, &Report::SetupError(err.to_string()));
            // SAFETY: leave the forked child.
            unsafe { libc::_exit(127) }
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    drop(stdio);
    // pid 1 keeps no stream of the caller's (a terminal would be a way to the caller's shell).
    detach_standard_streams();
    loop {
        let Ok(sig) = waited.wait() else { continue };
        if sig != Signal::SIGCHLD {
            let _ = nix::sys::signal::kill(command_pid, sig);
            continue;
        }
        if let Some(raw) = reap(command_pid) {
            return Some(raw);
        }
    }
}

extern "C" fn noop_handler(_: libc::c_int) {}

/// Keep the namespace (and its mounts) alive until told to stop; a clean stop is status 0.
fn hold(waited: &SigSet, report: RawFd) -> i32 {
    send(report, &Report::Ready);
    loop {
        match waited.wait() {
            Ok(Signal::SIGTERM) | Ok(Signal::SIGHUP) => return 0,
            Ok(Signal::SIGCHLD) => {
                // SAFETY: waitpid with a null status pointer.
                while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
            }
            _ => {}
        }
    }
}

/// Reap every exited child; the command's raw wait status once it is among them.
fn reap(command: Pid) -> Option<i32> {
    let mut result = None;
    loop {
        let mut raw = 0;
        // SAFETY: waitpid with a valid pointer to an int.
        let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
        if pid <= 0 {
            return result;
        }
        if pid == command.as_raw() {
            result = Some(raw);
        }
    }
}

/// Kill every process of the namespace but pid 1, and reap them.
fn kill_all() {
    let own = std::process::id() as i32;
    for _ in 0..200 {
        let pids: Vec<i32> = std::fs::read_dir("/proc")
            .map(|dir| {
                dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .filter(|&pid: &i32| pid != own)
                    .collect()
            })
            .unwrap_or_default();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        // SAFETY: waitpid with a null status pointer.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
    }
}

/// The command's process: default signals, its stdio, fewer capabilities, then exec. Returns only
/// on failure.
fn exec_command(p: &Prepared<'_>, stdio: Stdio) -> Error {
    reset_signals();
    let attached = match stdio {
        Stdio::Inherit => Ok(()),
        Stdio::NewPty { channel, size } => {
            super::pty::open_inside(&channel, size.as_ref()).and_then(attach_terminal)
        }
        Stdio::Streams {
            stdin,
            stdout,
            stderr,
        } => attach_streams([stdin, stdout, stderr]),
    };
    if let Err(e) = attached {
        return e;
    }
    let (argv, cwd) = match &p.command {
        Command::Argv(argv) => (argv.clone(), "/"),
        Command::Hold => return Error::Config("a holding session runs no command".into()),
        Command::Shell { interactive } => (
            shell_argv(*interactive),
            if Path::new("/root").is_dir() {
                "/root"
            } else {
                "/"
            },
        ),
    };
    let _ = nix::unistd::chdir(cwd);
    let program = match resolve_program(&argv[0]) {
        Some(p) => p,
        None => return Error::sys("find command", &argv[0], Errno::ENOENT),
    };
    let cargs: Vec<CString> = argv
        .iter()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let Ok(cprog) = CString::new(program.as_os_str().as_encoded_bytes()) else {
        return Error::sys("execute", &program, Errno::EINVAL);
    };
    match nix::unistd::execve(&cprog, &cargs, &p.env) {
        Err(e) => Error::sys("execute", &program, e),
        Ok(never) => match never {},
    }
}

fn shell_argv(interactive: bool) -> Vec<String> {
    let bash = Path::new("/bin/bash").exists();
    let mut argv = vec![if bash { "/bin/bash" } else { "/bin/sh" }.to_string()];
    if bash {
        // The job's PS1 would be overwritten by a distribution's bashrc.
        argv.push("--norc".into());
    }
    if interactive {
        argv.push("-i".into());
    }
    argv
}

/// execvp's lookup, but along the sandbox's PATH rather than the host's.
pub(super) fn resolve_program(name: &str) -> Option<std::path::PathBuf> {
    if name.contains('/') {
        return Some(name.into());
    }
    PATH_INSIDE
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| {
            nix::unistd::access(candidate, nix::unistd::AccessFlags::X_OK).is_ok()
                && candidate.is_file()
        })
}

pub(super) fn reset_signals() {
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: restoring default dispositions.
            let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) };
        }
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// New session whose controlling terminal is the pty slave: job control works inside.
fn attach_terminal(slave: OwnedFd) -> Result<()> {
    let dev = Path::new("/dev/pts");
    nix::unistd::setsid().map_err(|e| Error::sys("start a session on", dev, e))?;
    // SAFETY: TIOCSCTTY on a terminal descriptor we own.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY as _, 0) } != 0 {
        return Err(Error::sys("make controlling terminal", dev, Errno::last()));
    }
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(Error::sys("attach standard streams to", dev, Errno::last()));
        }
    }
    if slave.as_raw_fd() <= 2 {
        std::mem::forget(slave); // it *is* one of the standard streams now
    }
    Ok(())
}

/// dup2 each given stream onto 0, 1, 2. All are duplicated before any is closed, so a stream
/// whose descriptor number is itself 0..2 cannot be clobbered first.
fn attach_streams(streams: [Option<OwnedFd>; 3]) -> Result<()> {
    let mut dups = Vec::new();
    for (target, fd) in streams.iter().enumerate() {
        if let Some(fd) = fd {
            // SAFETY: F_DUPFD_CLOEXEC to a descriptor above the standard ones.
            let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
            if dup < 0 {
                return Err(Error::sys(
                    "duplicate standard stream",
                    format!("/proc/self/fd/{}", fd.as_raw_fd()),
                    Errno::last(),
                ));
            }
            dups.push((dup, target as RawFd));
        }
    }
    drop(streams);
    for (dup, target) in dups {
        // SAFETY: dup2 onto a standard descriptor; the duplicate is ours to close.
        let rc = unsafe {
            let rc = libc::dup2(dup, target);
            libc::close(dup);
            rc
        };
        if rc < 0 {
            return Err(Error::sys(
                "attach standard stream",
                format!("/proc/self/fd/{target}"),
                Errno::last(),
            ));
        }
    }
    Ok(())
}

/// Overwrite this process's copy of the strings the kernel shows as /proc/<pid>/environ and
/// /proc/<pid>/cmdline (the caller's environment, secrets included, and its arguments): pid 1
/// and squashfuse are forked from this memory. Only the bytes change; nothing here reads the
/// environment afterwards (the command gets an explicit one).
fn scrub_inherited_strings() {
    let Some([arg_start, arg_end, env_start, env_end]) = inherited_string_areas() else {
        return;
    };
    for (start, end) in [(env_start, env_end), (arg_start, arg_end)] {
        if end > start {
            // SAFETY: [start, end) is this process's own argument or environment area on its
            // initial stack, as the kernel reports it in /proc/self/stat: mapped and writable.
            unsafe { std::ptr::write_bytes(start as *mut u8, 0, end - start) };
        }
    }
    const NAME: &[u8] = b"imsctl-sandbox";
    if arg_end - arg_start > NAME.len() {
        // SAFETY: as above; the area is longer than NAME.
        unsafe { std::ptr::copy_nonoverlapping(NAME.as_ptr(), arg_start as *mut u8, NAME.len()) };
    }
}

/// arg_start, arg_end, env_start, env_end from /proc/self/stat (fields 48 to 51).
fn inherited_string_areas() -> Option<[usize; 4]> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Field 2 (the command name) may hold spaces and parentheses: count from the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<usize>().ok();
    Some([field(48)?, field(49)?, field(50)?, field(51)?])
}

/// Point the standard streams at /dev/null (of the sandbox).
fn detach_standard_streams() {
    if let Ok(null) = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) {
        for target in 0..3 {
            // SAFETY: dup2 onto the standard descriptors of this process.
            unsafe { libc::dup2(null.as_raw_fd(), target) };
        }
    }
}

fn ignore(sig: Signal) {
    // SAFETY: SIG_IGN involves no handler code.
    let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigIgn) };
}

fn pipe(op: &str) -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys(op, "pipe", e))
}

/// Write a tagged report (truncated to stay atomic).
/// Whether the write side of a pipe is closed (None when poll fails).
fn poll_hangup(fd: &OwnedFd) -> Option<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd, no timeout.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    (rc >= 0).then_some(pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0)
}
