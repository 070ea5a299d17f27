//! Entering a running sandbox: how every SSH session (and `jobs exec` while an SSH server holds
//! the job) gets in. A holding session ([`super::hold_session`]) keeps the job's namespaces and
//! mounts alive; an entering process joins them the way nsenter(1) does:
//!
//! ```text
//! imsctl internal-enter (host; single-threaded, fresh from exec)
//!   open /proc/<pid1>/ns/* and /proc/<pid1>/root, setns each, chroot into pid 1's root
//!   └─ fork: the child is in the sandbox's pid namespace
//!        chroot /mnt/image/image-root when jailed, new session (+ controlling tty), fewer
//!        capabilities as pid 1's commands have, then the command (or the SFTP server)
//! ```
//!
//! The parent stays outside the pid namespace (setns cannot move the caller itself), forwards
//! termination signals and exits as the child does, so its own parent sees the command's status.
//! The child dies with it (PR_SET_PDEATHSIG), and everything dies with the holding session's pid 1.
//!
//! Joining a user namespace needs a single-threaded caller: this runs first thing in `main`.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::unistd::{ForkResult, Pid, fork};

use super::Network;
use super::error::{Error, Result};
use super::plan::IMS_IMAGE_ROOT;
use super::process;

/// Which running sandbox to enter, and where inside it.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// pid 1 of the holding session, as the host sees it.
    pub pid1: i32,
    /// Start inside the image root instead of the non-jailed view.
    pub jailed: bool,
}

/// Namespaces joined, in this order: the user namespace first (it grants the rights to join the
/// others), the pid namespace last (it only applies to children).
const NAMESPACES: [(&str, CloneFlags); 6] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    ("mnt", CloneFlags::CLONE_NEWNS),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
];

/// Join `target`'s sandbox, run `body` in a child inside its pid namespace, and exit as that
/// child exits (a signal death is passed on as the same signal). `body` returns an exit code
/// or does not return (exec). Errors before the child exists are returned.
pub fn enter(
    target: Target,
    body: impl FnOnce() -> Result<i32>,
) -> Result<std::convert::Infallible> {
    let joined = join(target.pid1)?;
    // SAFETY: this process is single-threaded (see the module comment).
    match unsafe { fork() }
        .map_err(|e| Error::sys("fork into the sandbox of", proc_path(target.pid1, ""), e))?
    {
        ForkResult::Child => {
            let code = match inside(target, &joined).and_then(|()| body()) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("imsctl: {e}");
                    126
                }
            };
            // SAFETY: leave the child without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => mirror(child),
    }
}

/// What joining told us about the sandbox.
struct Joined {
    /// The sandbox has its own user namespace (rootless): capabilities there are harmless.
    own_user_ns: bool,
    network: Network,
}

fn proc_path(pid: i32, rest: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{rest}"))
}

fn join(pid1: i32) -> Result<Joined> {
    let mut fds: Vec<(OwnedFd, CloneFlags, PathBuf)> = Vec::new();
    let mut own_user_ns = false;
    let mut network = Network::Host;
    for (name, flag) in NAMESPACES {
        let theirs = proc_path(pid1, &format!("ns/{name}"));
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
        match flag {
            CloneFlags::CLONE_NEWUSER => own_user_ns = true,
            CloneFlags::CLONE_NEWNET => network = Network::None,
            _ => {}
        }
        let fd =
            std::fs::File::open(&theirs).map_err(|e| Error::io("open namespace", &theirs, e))?;
        fds.push((fd.into(), flag, theirs));
    }
    // Opened before the mount namespace changes: pid 1's root as it sees it (after its pivot).
    let root_path = proc_path(pid1, "root");
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
    Ok(Joined {
        own_user_ns,
        network,
    })
}

/// The child's setup inside the pid namespace, before `body`.
fn inside(target: Target, joined: &Joined) -> Result<()> {
    // The parent is outside this pid namespace: getppid() is 0 while it lives, 1 once it died.
    process::die_with_parent(|| nix::unistd::getppid().as_raw() == 0)?;
    if target.jailed {
        nix::unistd::chroot(IMS_IMAGE_ROOT)
            .map_err(|e| Error::sys("chroot into", IMS_IMAGE_ROOT, e))?;
        let _ = nix::unistd::chdir("/");
    }
    process::reset_signals();
    nix::unistd::setsid().map_err(|e| Error::sys("start a session in", "/proc/self", e))?;
    if nix::unistd::isatty(std::io::stdin()).unwrap_or(false) {
        // SAFETY: TIOCSCTTY on our own standard input, a terminal.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY as _, 0) } != 0 {
            return Err(Error::sys(
                "make controlling terminal",
                "/dev/stdin",
                Errno::last(),
            ));
        }
    }
    if !joined.own_user_ns {
        // Real root: give up what pid 1's commands give up (see process::DROPPED_CAPS).
        process::drop_capabilities(joined.network)?;
    }
    let home = Path::new("/root");
    let _ = nix::unistd::chdir(if home.is_dir() { home } else { Path::new("/") });
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
    let argv: Vec<String> = match command {
        // A leading '-' in argv[0] makes it a login shell, as sshd starts it.
        SessionCommand::LoginShell => vec![format!("-{name}")],
        SessionCommand::ShellCommand(cmd) => vec![name, "-c".into(), cmd.clone()],
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
    let program = CString::new(shell).map_err(|_| Error::Config("shell path".into()))?;
    let err = match nix::unistd::execve(&program, &cargv, &cenv) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    Err(Error::sys("execute", shell, err))
}
