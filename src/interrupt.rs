//! Temporary outputs removed when imsctl is interrupted (SIGINT, SIGTERM, SIGHUP).
//!
//! Destructors do not run when a signal ends the process, so a temp file registers here while
//! it exists. The signal handler itself only writes the signal number to a pipe (write(2) is
//! async-signal-safe); a thread reading the pipe removes what is registered and then ends the
//! process the way the signal would have (default action re-raised, so the parent sees
//! "killed by SIGINT"; exit status 128+signal if that somehow returns).
//!
//! The handlers are installed only while something is registered, and only over the default
//! disposition: a signal the caller ignores (`nohup`, a background job's SIGINT) stays ignored,
//! and handlers others install later (the SSH server's tokio runtime) are never overridden.
//! A forked child that inherits the handler before exec behaves as with the default action.
//!
//! Creation and registration happen under one lock, and so do the final rename and the
//! unregistration: a signal sees a temp file either registered or not there at all.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// The signals that end an interactive or supervised run.
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// What a registered path is, for removal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    /// Removed with everything in it.
    Dir,
}

struct Entry {
    id: u64,
    path: PathBuf,
    kind: Kind,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    entries: Vec<Entry>,
    /// Whether our handlers are installed (for which signals).
    installed: Vec<libc::c_int>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next_id: 0,
    entries: Vec::new(),
    installed: Vec::new(),
});
/// Write end of the self-pipe, for the handler; -1 until the watcher thread runs.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// The process that installed the handlers (a forked child must not report to its parent).
static OWNER_PID: AtomicI32 = AtomicI32::new(0);
/// The watcher thread, started once.
static WATCHER: OnceLock<Result<(), String>> = OnceLock::new();

fn registry() -> MutexGuard<'static, Registry> {
    // A panic while the lock was held leaves consistent data (a Vec of paths): carry on.
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// A registered temporary path: removed by the signal watcher if the process is interrupted
/// while the guard lives. Dropping the guard forgets the path (it does not remove it).
#[must_use = "the path is forgotten when the guard is dropped"]
pub struct TempGuard {
    id: u64,
}

impl TempGuard {
    /// Make a temporary path with `create` and register it, under the registry lock: a signal
    /// arrives either before the path exists or after it is registered. `create` returns its
    /// value and the path to remove.
    pub fn create<T>(
        kind: Kind,
        create: impl FnOnce() -> io::Result<(T, PathBuf)>,
    ) -> io::Result<(T, TempGuard)> {
        // Started outside the lock: the watcher never needs it to start, but keep it simple.
        let watching = start_watcher();
        let mut reg = registry();
        // The handlers go in before the path exists: a signal between its creation and the
        // handlers would otherwise end the process by the default action and leave it behind.
        // Until the path is registered, the watcher finds nothing to remove.
        if watching && reg.installed.is_empty() {
            reg.installed = install_handlers();
        }
        let (value, path) = match create() {
            Ok(made) => made,
            Err(e) => {
                if reg.entries.is_empty() && !reg.installed.is_empty() {
                    uninstall_handlers(&std::mem::take(&mut reg.installed));
                }
                return Err(e);
            }
        };
        let id = reg.next_id;
        reg.next_id += 1;
        reg.entries.push(Entry { id, path, kind });
        Ok((value, TempGuard { id }))
    }

    /// Run `finish` (the rename into place, say) under the registry lock and forget the path:
    /// an interruption sees the temp path before `finish` or the finished output after it,
    /// never a removed temp file that is then renamed, nor a rename half-done.
    pub fn release_with<R>(self, finish: impl FnOnce() -> R) -> R {
        let mut reg = registry();
        let result = finish();
        forget(&mut reg, self.id);
        std::mem::forget(self);
        result
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        forget(&mut registry(), self.id);
    }
}

fn forget(reg: &mut Registry, id: u64) {
    reg.entries.retain(|e| e.id != id);
    if reg.entries.is_empty() && !reg.installed.is_empty() {
        uninstall_handlers(&std::mem::take(&mut reg.installed));
    }
}

/// Start the thread that waits for a signal on the self-pipe; false when that is impossible
/// (no pipe or thread): temp files are then not cleaned on signals, as before, and nothing else
/// changes.
fn start_watcher() -> bool {
    WATCHER
        .get_or_init(|| {
            let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| format!("failed to create the signal pipe: {e}"))?;
            // The handler must never block on a full pipe.
            nix::fcntl::fcntl(
                &write,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )
            .map_err(|e| format!("failed to set up the signal pipe: {e}"))?;
            std::thread::Builder::new()
                .name("imsctl-signals".into())
                .spawn(move || watch(read))
                .map_err(|e| format!("failed to start the signal thread: {e}"))?;
            // The write end lives as long as the process: the handler may use it at any time.
            WAKE_FD.store(write.as_raw_fd(), Ordering::Release);
            std::mem::forget(write);
            // SAFETY: getpid has no preconditions.
            OWNER_PID.store(unsafe { libc::getpid() }, Ordering::Release);
            Ok(())
        })
        .is_ok()
}

/// Install our handler for each signal still at its default action; returns those signals.
fn install_handlers() -> Vec<libc::c_int> {
    let mut installed = Vec::new();
    for sig in SIGNALS {
        // SAFETY: sigaction with a null new action only reads the current one into `old`.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0
            || old.sa_sigaction != libc::SIG_DFL
        {
            continue;
        }
        // SAFETY: a zeroed sigaction is valid; the handler is async-signal-safe (see below).
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: the mask is a valid sigset_t to fill.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        if unsafe { libc::sigaction(sig, &action, std::ptr::null_mut()) } == 0 {
            installed.push(sig);
        }
    }
    installed
}

/// Put the default action back where our handler still is.
fn uninstall_handlers(signals: &[libc::c_int]) {
    for &sig in signals {
        // SAFETY: as in install_handlers.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
            continue;
        }
        if old.sa_sigaction == on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t {
            // SAFETY: restoring the default disposition.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
}

/// The handler: async-signal-safe calls only (getpid, write, signal, raise), errno preserved.
extern "C" fn on_signal(sig: libc::c_int) {
    // SAFETY: __errno_location returns this thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != OWNER_PID.load(Ordering::Acquire) {
        // A child forked between fork and exec: behave as the default action would.
        // SAFETY: restoring the default action and re-raising are async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        return;
    }
    let byte = sig as u8;
    // SAFETY: writing one byte from a valid buffer; a failure (pipe full) changes nothing.
    unsafe {
        libc::write(
            WAKE_FD.load(Ordering::Acquire),
            (&byte as *const u8).cast(),
            1,
        )
    };
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// The watcher thread: on the first signal, remove what is registered and end the process.
fn watch(read: OwnedFd) {
    let mut byte = 0u8;
    loop {
        // SAFETY: reading one byte into a valid buffer from a descriptor we own.
        let n = unsafe { libc::read(read.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
        if n == 1 {
            break;
        }
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return; // the pipe broke: nothing more can be done on signals
    }
    let sig = libc::c_int::from(byte);
    // Held until the process ends: nothing new is registered or renamed into place meanwhile.
    let reg = registry();
    for entry in reg.entries.iter().rev() {
        remove(&entry.path, entry.kind);
    }
    die_of(sig);
}

fn remove(path: &Path, kind: Kind) {
    // Best effort: the process is ending; a path already gone is what we want anyway.
    let _ = match kind {
        Kind::File => std::fs::remove_file(path),
        Kind::Dir => std::fs::remove_dir_all(path),
    };
}

/// End the process as `sig` would have: default action, re-raised from this thread.
fn die_of(sig: libc::c_int) -> ! {
    // SAFETY: restoring the default action, unblocking the signal in this thread and raising it.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
    std::process::exit(128 + sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn our_handler_on(sig: libc::c_int) -> bool {
        // SAFETY: reading the current action.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        assert_eq!(
            unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) },
            0
        );
        old.sa_sigaction == on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t
    }

    /// The registry's bookkeeping (the signal path itself is tested on the binary, in
    /// it::outputs, since it ends the process).
    #[test]
    fn handlers_live_only_while_something_is_registered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tmp");
        let (_, guard) = TempGuard::create(Kind::File, || {
            std::fs::write(&path, b"x")?;
            Ok(((), path.clone()))
        })
        .expect("create");
        // Other tests may register too; SIGTERM is default in the test harness.
        assert!(our_handler_on(libc::SIGTERM));
        let renamed = dir.path().join("done");
        guard
            .release_with(|| std::fs::rename(&path, &renamed))
            .expect("rename");
        assert!(renamed.exists());
        let reg = registry();
        assert!(reg.entries.iter().all(|e| e.path != path));
        if reg.entries.is_empty() {
            assert!(!our_handler_on(libc::SIGTERM), "uninstalled when empty");
        }
    }
}
