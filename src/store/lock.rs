//! The store lock: flock(2) on `<store>/lock`.
//!
//! flock locks belong to the open file description, so two threads that each open the file
//! exclude each other just as two processes do, and the kernel drops the lock when a process
//! dies: a crashed imsctl never leaves the store locked.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::{Error, Result};

/// Held while records are updated; released on drop.
#[derive(Debug)]
pub struct StoreLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl StoreLock {
    /// Block until the exclusive lock on `path` (created when missing) is ours.
    pub fn acquire(path: &Path) -> Result<StoreLock> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::io("open lock file", path, e))?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(lock) => {
                    return Ok(StoreLock {
                        _lock: lock,
                        path: path.to_path_buf(),
                    });
                }
                Err((back, Errno::EINTR)) => file = back,
                Err((_, errno)) => return Err(Error::io("lock", path, errno.into())),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn second_lock_waits_for_the_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lock");
        let first = StoreLock::acquire(&path).expect("first");
        let released = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                let _second = StoreLock::acquire(&path).expect("second");
                released.load(Ordering::SeqCst)
            });
            std::thread::sleep(Duration::from_millis(100));
            released.store(true, Ordering::SeqCst);
            drop(first);
            assert!(
                waiter.join().expect("join"),
                "second lock was granted while the first was held"
            );
        });
    }
}
