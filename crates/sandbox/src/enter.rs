//! Entering a running sandbox: how every SSH session (and `jobs exec` while an SSH server holds
//! the job) gets in. A holding session ([`super::hold_session`]) keeps the job's namespaces and
//! mounts alive; an entering process joins them the way nsenter(1) does:
//!
//! ```text
//! imsctl internal-enter (host; single-threaded, fresh from exec; made non-dumpable first)
//!   open /proc/<holder>/ns/* (pid: ns/pid_for_children) and /proc/<holder>/root, setns each,
//!   chroot into the sandbox's root
//!   └─ fork: the child is in the sandbox's pid namespace
//!        chroot /mnt/image/image-root when jailed, new session (+ controlling tty), only the
//!        standard streams, then the confinement every process inside has (capabilities,
//!        no_new_privs, seccomp), then the command (or the SFTP server)
//! ```
//!
//! The holder is the holding session's C1 (see [`super::process`]): outside the sandbox's pid
//! namespace, so the sandbox's processes cannot reach it, while it shares every other namespace
//! and the root. Until it confines itself the child is non-dumpable (inherited from the parent),
//! so nothing inside can read its memory or descriptors in that window.
//!
//! The parent stays outside the pid namespace (setns cannot move the caller itself), forwards
//! termination signals and exits as the child does, so its own parent sees the command's status.
//! The child dies with it (PR_SET_PDEATHSIG), and everything dies with the holding session's pid 1.
//!
//! Joining a user namespace needs a single-threaded caller: this runs first thing in `main`.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::pty::Winsize;
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::unistd::{ForkResult, Pid, fork};

use super::confine::{self, Confinement};
use super::error::{Error, Result};
use super::plan::IMS_IMAGE_ROOT;
use super::process;
use super::pty;

/// Which running sandbox to enter, and where inside it.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The holding session's holder process, as the host sees it.
    pub holder: i32,
    /// Start inside the image root instead of the non-jailed view.
    pub jailed: bool,
    /// The limits of the sandbox's processes (those of its pid 1).
    pub confinement: Confinement,
}

impl Target {
    /// The arguments of `imsctl internal-enter` that name this target.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["--pid".to_string(), self.holder.to_string()];
        if self.jailed {
            args.push("--jail".into());
        }
        for cap in self.confinement.added() {
            args.extend(["--cap-add".to_string(), cap.name().to_string()]);
        }
        args
    }
}

/// A terminal for the session, allocated inside the sandbox (its own devpts), so that `tty`,
/// `ps` and `stty` inside see a terminal of theirs. This process relays between its standard
/// streams and the terminal; window sizes arrive on `control` as 8-byte records
/// (rows, cols, x pixels, y pixels; u16 little-endian).
#[derive(Debug)]
pub struct Terminal {
    pub size: Winsize,
    pub control: Option<OwnedFd>,
}

/// Encode a window size for [`Terminal::control`].
pub fn encode_winsize(size: &Winsize) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (i, v) in [size.ws_row, size.ws_col, size.ws_xpixel, size.ws_ypixel]
        .into_iter()
        .enumerate()
    {
        out[i * 2..i * 2 + 2].copy_from_slice(&v.to_le_bytes());
    }
    out
}

fn decode_winsize(b: &[u8; 8]) -> Winsize {
    let at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    Winsize {
        ws_row: at(0),
        ws_col: at(2),
        ws_xpixel: at(4),
        ws_ypixel: at(6),
    }
}

/// Namespaces joined, in this order: the user namespace first (it grants the rights to join the
/// others), the pid namespace last (it only applies to children). The holder is not in the
/// sandbox's pid namespace: it made it for its children.
const NAMESPACES: [(&str, CloneFlags); 6] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("mnt", CloneFlags::CLONE_NEWNS),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid_for_children", CloneFlags::CLONE_NEWPID),
];

/// Join `target`'s sandbox, run `body` in a child inside its pid namespace, and exit as that
/// child exits (a signal death is passed on as the same signal). `body` returns an exit code
/// or does not return (exec). Errors before the child exists are returned.
pub fn enter(
    target: Target,
    terminal: Option<Terminal>,
    body: impl FnOnce() -> Result<i32>,
) -> Result<std::convert::Infallible> {
    // Before the child exists in the sandbox's pid namespace: it inherits this.
    confine::make_undumpable()?;
    join(target.holder)?;
    let pty = terminal
        .map(|t| pty::open_pty(Some(&t.size)).map(|p| (p, t.control)))
        .transpose()?;
    // SAFETY: this process is single-threaded (see the module comment).
    match unsafe { fork() }
        .map_err(|e| Error::sys("fork into the sandbox of", proc_path(target.holder, ""), e))?
    {
        ForkResult::Child => {
            let slave = pty.map(|((master, name), _)| {
                drop(master);
                name
            });
            let code = match inside(target, slave.as_deref()).and_then(|()| body()) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("imsctl: {e}");
                    126
                }
            };
            // SAFETY: leave the child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match pty {
            Some(((master, _), control)) => relay(child, master, control),
            None => mirror(child),
        },
    }
}

/// The terminal's side of a session: standard input to the terminal, the terminal to standard
/// output, window sizes from `control`; ends as the child ends, once its output is drained.
fn relay(child: Pid, master: OwnedFd, control: Option<OwnedFd>) -> ! {
    // Non-blocking master: input waits in `pending` while the terminal's queue is full, so the
    // session's output keeps flowing (a big paste into a busy program cannot deadlock us).
    // Best effort: a blocking master only loses the protection against a full input queue.
    let _ = pty::set_nonblocking(&master);
    let mut stdin_open = true;
    let mut control = control;
    let mut master_open = true;
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let mut raw = 0;
        // SAFETY: waitpid with a valid pointer to an int.
        if unsafe { libc::waitpid(child.as_raw(), &mut raw, libc::WNOHANG) } == child.as_raw() {
            drain(&master, &mut buf);
            exit_like(raw);
        }
        // A closed terminal (EIO) leaves the poll set: it would report POLLHUP forever.
        let mut fds = Vec::with_capacity(3);
        if master_open {
            let out = if pending.is_empty() { 0 } else { libc::POLLOUT };
            fds.push(pty::pollfd(master.as_raw_fd(), libc::POLLIN | out));
        }
        if stdin_open && pending.len() < MAX_PENDING {
            fds.push(pty::pollfd(0, libc::POLLIN));
        }
        if let Some(c) = &control {
            fds.push(pty::pollfd(c.as_raw_fd(), libc::POLLIN));
        }
        // SAFETY: poll on valid pollfds; a short timeout so the child's exit is noticed.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if n <= 0 {
            continue;
        }
        for pfd in &fds {
            if pfd.revents == 0 {
                continue;
            }
            if pfd.fd == master.as_raw_fd() {
                if pfd.revents & libc::POLLOUT != 0 && !flush_pending(&master, &mut pending) {
                    master_open = false;
                }
                if pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                    master_open &= copy_once(pfd.fd, 1, &mut buf);
                }
            } else if pfd.fd == 0 {
                match nix::unistd::read(std::io::stdin(), &mut buf) {
                    Ok(0) => stdin_open = false,
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                    Err(Errno::EINTR) | Err(Errno::EAGAIN) => {}
                    Err(_) => stdin_open = false,
                }
            } else if control.as_ref().is_some_and(|c| c.as_raw_fd() == pfd.fd) {
                let mut record = [0u8; 8];
                let got = control.as_ref().map(|c| nix::unistd::read(c, &mut record));
                match got {
                    Some(Ok(8)) => pty::set_window_size(master.as_fd(), &decode_winsize(&record)),
                    _ => control = None,
                }
            }
        }
    }
}

/// Input held for the terminal at most (then standard input is not read until it drains).
const MAX_PENDING: usize = 256 * 1024;

/// Write what the terminal takes now; false once it is gone.
fn flush_pending(master: &OwnedFd, pending: &mut Vec<u8>) -> bool {
    match nix::unistd::write(master, pending) {
        Ok(n) => {
            pending.drain(..n);
            true
        }
        Err(Errno::EAGAIN) | Err(Errno::EINTR) => true,
        Err(_) => false,
    }
}

/// Move what one read gives from `from` to `to`; false once `from` is at its end (or the pty
/// reports EIO: every slave closed) or `to` is gone.
fn copy_once(from: i32, to: i32, buf: &mut [u8]) -> bool {
    // SAFETY: borrowing a descriptor this process keeps open for the call.
    let from = unsafe { std::os::fd::BorrowedFd::borrow_raw(from) };
    match nix::unistd::read(from, buf) {
        Ok(0) => false,
        // SAFETY: borrowing a descriptor this process keeps open for the call.
        Ok(n) => pty::write_all(
            unsafe { std::os::fd::BorrowedFd::borrow_raw(to) },
            &buf[..n],
        )
        .is_ok(),
        Err(Errno::EINTR) | Err(Errno::EAGAIN) => true,
        Err(_) => false,
    }
}

/// What the terminal still holds once the child is gone (a background process may keep the
/// terminal open; as with sshd, it does not keep the session).
fn drain(master: &OwnedFd, buf: &mut [u8]) {
    let _ = pty::set_nonblocking(master);
    while let Ok(n @ 1..) = nix::unistd::read(master, buf) {
        if pty::write_all(std::io::stdout().as_fd(), &buf[..n]).is_err() {
            break;
        }
    }
}

fn proc_path(pid: i32, rest: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{rest}"))
}

/// Whether `pid` is (still) a process in a mount namespace other than ours: a sandbox's pid 1,
/// not the host process that may have reused its number after it died.
pub fn is_sandbox(pid: i32) -> bool {
    let ino = |p: &str| std::fs::metadata(p).map(|m| m.ino()).ok();
    match (
        ino(&format!("/proc/{pid}/ns/mnt")),
        ino("/proc/self/ns/mnt"),
    ) {
        (Some(theirs), Some(ours)) => theirs != ours,
        _ => false,
    }
}

fn join(holder: i32) -> Result<()> {
    if !is_sandbox(holder) {
        return Err(Error::Config(format!(
            "process {holder} is not a job's sandbox any more (it ended)"
        )));
    }
    let mut fds: Vec<(OwnedFd, CloneFlags, PathBuf)> = Vec::new();
    for (name, flag) in NAMESPACES {
        let theirs = proc_path(holder, &format!("ns/{name}"));
        let ours = PathBuf::from(format!("/proc/self/ns/{name}"));
        let their_ino = std::fs::metadata(&theirs)
            .map_err(|e| Error::io("look up namespace", &theirs, e))?
            .ino();
        let our_ino = std::fs::metadata(&ours)
            .map_err(|e| Error::io("look up namespace", &ours, e))?
            .ino();
        if their_ino == our_ino {
            continue; // setns into one's own user namespace is EINVAL; the others are no-ops
        }
        let fd =
            std::fs::File::open(&theirs).map_err(|e| Error::io("open namespace", &theirs, e))?;
        fds.push((fd.into(), flag, theirs));
    }
    // Opened before the mount namespace changes: the sandbox's root (after its pivot).
    let root_path = proc_path(holder, "root");
    let root =
        std::fs::File::open(&root_path).map_err(|e| Error::io("open root of", &root_path, e))?;
    for (fd, flag, path) in &fds {
        setns(fd, *flag).map_err(|e| Error::sys("join namespace", path, e))?;
        if *flag == CloneFlags::CLONE_NEWUSER {
            // Host supplementary groups map to nogroup inside; drop them where permitted.
            let _ = nix::unistd::setgroups(&[]);
        }
    }
    nix::unistd::fchdir(&root).map_err(|e| Error::sys("change directory to", &root_path, e))?;
    nix::unistd::chroot(".").map_err(|e| Error::sys("chroot into", &root_path, e))?;
    let _ = nix::unistd::chdir("/");
    Ok(())
}

/// The child's setup inside the pid namespace, before `body`.
fn inside(target: Target, terminal: Option<&Path>) -> Result<()> {
    // The parent is outside this pid namespace: getppid() is 0 while it lives, 1 once it died.
    process::die_with_parent(|| nix::unistd::getppid().as_raw() == 0)?;
    if target.jailed {
        nix::unistd::chroot(IMS_IMAGE_ROOT)
            .map_err(|e| Error::sys("chroot into", IMS_IMAGE_ROOT, e))?;
        let _ = nix::unistd::chdir("/");
    }
    process::reset_signals();
    nix::unistd::setsid().map_err(|e| Error::sys("start a session in", "/proc/self", e))?;
    if let Some(path) = terminal {
        attach_terminal(path)?;
    }
    let home = Path::new("/root");
    let _ = nix::unistd::chdir(if home.is_dir() { home } else { Path::new("/") });
    // Only the standard streams go in: nothing the caller or the SSH server had open.
    // SAFETY: close_range on descriptors this single-threaded child does not use.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    confine::confine(&target.confinement)
}

/// Open the session's terminal (its first open makes it the controlling terminal of this new
/// session) and make it the standard streams.
fn attach_terminal(path: &Path) -> Result<()> {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    let slave = nix::fcntl::open(path, OFlag::O_RDWR, Mode::empty())
        .map_err(|e| Error::sys("open terminal", path, e))?;
    // SAFETY: TIOCSCTTY on the terminal just opened, in a session that has none.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY as _, 0) } != 0 {
        return Err(Error::sys("make controlling terminal", path, Errno::last()));
    }
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(Error::sys(
                "attach standard streams to",
                path,
                Errno::last(),
            ));
        }
    }
    Ok(())
}

/// Wait for the child, passing on termination signals, and end this process as it ended.
fn mirror(child: Pid) -> ! {
    let mut waited = SigSet::empty();
    waited.add(Signal::SIGCHLD);
    for s in [
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
    ] {
        waited.add(s);
    }
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&waited), None);
    loop {
        let mut raw = 0;
        // SAFETY: waitpid with a valid pointer to an int.
        let pid = unsafe { libc::waitpid(child.as_raw(), &mut raw, libc::WNOHANG) };
        if pid == child.as_raw() {
            exit_like(raw);
        }
        if pid < 0 && Errno::last() != Errno::EINTR {
            std::process::exit(125);
        }
        match waited.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(sig) => {
                let _ = nix::sys::signal::kill(child, sig);
            }
        }
    }
}

/// Exit with the child's status: its code, or death by its signal.
fn exit_like(raw: i32) -> ! {
    if libc::WIFSIGNALED(raw) {
        let sig = libc::WTERMSIG(raw);
        // SAFETY: default disposition, unblocked, then the same signal to ourselves.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
        }
        std::process::exit(128 + sig);
    }
    std::process::exit(libc::WEXITSTATUS(raw))
}

/// What an SSH session runs, as sshd runs it: the login shell, or `shell -c COMMAND`.
#[derive(Debug, Clone)]
pub enum SessionCommand {
    LoginShell,
    ShellCommand(String),
    /// A program and its arguments, run directly (found along the sandbox's PATH), as
    /// `jobs exec` runs them without a server.
    Argv(Vec<String>),
}

/// The shell sessions use: bash when the view has it, else sh.
fn session_shell() -> &'static str {
    if Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    }
}

/// exec the session's command with `env` (`NAME=value`); returns only on failure.
pub fn exec_session(command: &SessionCommand, env: &[String]) -> Result<i32> {
    let shell = session_shell();
    let name = Path::new(shell)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sh".into());
    let (program, argv): (PathBuf, Vec<String>) = match command {
        // A leading '-' in argv[0] makes it a login shell, as sshd starts it.
        SessionCommand::LoginShell => (shell.into(), vec![format!("-{name}")]),
        SessionCommand::ShellCommand(cmd) => (shell.into(), vec![name, "-c".into(), cmd.clone()]),
        SessionCommand::Argv(argv) => {
            let first = argv
                .first()
                .ok_or_else(|| Error::Config("empty command".into()))?;
            let program = process::resolve_program(first)
                .ok_or_else(|| Error::sys("find command", first, Errno::ENOENT))?;
            (program, argv.clone())
        }
    };
    let mut env = env.to_vec();
    env.push(format!("SHELL={shell}"));
    if !env.iter().any(|v| v.starts_with("PATH=")) {
        env.push(format!("PATH={}", process::PATH_INSIDE));
    }
    let cstrings = |items: &[String]| -> Result<Vec<CString>> {
        items
            .iter()
            .map(|s| {
                CString::new(s.as_bytes())
                    .map_err(|_| Error::Config(format!("'{s}' contains a NUL byte")))
            })
            .collect()
    };
    let (cargv, cenv) = (cstrings(&argv)?, cstrings(&env)?);
    let cprogram = CString::new(program.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Config(format!("{} contains a NUL byte", program.display())))?;
    let err = match nix::unistd::execve(&cprogram, &cargv, &cenv) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    Err(Error::sys("execute", program, err))
}
