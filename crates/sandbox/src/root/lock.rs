//! The job's work dir is its lock: an exclusive `flock` on `<work>/lock`, which also records the
//! holder's pid. The kernel drops a flock when its holder dies, so a lock left by a crashed or
//! killed imsctl is never in the way; the pid it recorded only tells us (and the user) that the
//! previous session ended without cleaning up.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use nix::errno::Errno;

use super::WorkLayout;
use crate::error::{Error, Result, SysContext};

/// An exclusive lock on a job's work dir, held until dropped.
#[derive(Debug)]
pub struct JobLock {
    file: File,
    path: PathBuf,
    stale_holder: Option<u32>,
}

impl JobLock {
    /// Take the lock without waiting. A live holder is an [`Error::Locked`]; a dead one (its pid
    /// still in the file) is reported by [`JobLock::stale_holder`] and otherwise ignored.
    pub fn acquire(layout: &WorkLayout) -> Result<JobLock> {
        Self::acquire_file(layout.lock_file())
    }

    /// The lock that marks a job being packed ([`WorkLayout::packing_lock_file`]): held from
    /// `packaging_artifacts` to the end, while the sessions' lock comes and goes. A job found in
    /// `packaging_artifacts` with this lock free was interrupted and may be packed again.
    pub fn acquire_packing(layout: &WorkLayout) -> Result<JobLock> {
        Self::acquire_file(layout.packing_lock_file())
    }

    fn acquire_file(path: PathBuf) -> Result<JobLock> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .ctx("open lock file", &path)?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let errno = Errno::last();
            if errno == Errno::EWOULDBLOCK {
                let pid = read_pid(&mut file).unwrap_or(0);
                return Err(Error::Locked { path, pid });
            }
            return Err(Error::sys("lock", &path, errno));
        }
        let previous = read_pid(&mut file);
        let stale_holder = previous.filter(|&pid| pid != std::process::id() && !process_alive(pid));
        file.set_len(0).ctx("truncate lock file", &path)?;
        file.seek(SeekFrom::Start(0)).ctx("seek lock file", &path)?;
        writeln!(file, "{}", std::process::id()).ctx("write lock file", &path)?;
        Ok(JobLock {
            file,
            path,
            stale_holder,
        })
    }

    /// The pid of a holder that died without releasing the lock (found and cleared).
    pub fn stale_holder(&self) -> Option<u32> {
        self.stale_holder
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for JobLock {
    fn drop(&mut self) {
        // An empty file means "released cleanly"; the flock itself goes with the descriptor.
        let _ = self.file.set_len(0);
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

fn process_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 probes existence; EPERM means it exists but belongs to someone else.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(e) => e == Errno::EPERM,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_and_stale_pid_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = WorkLayout::new(dir.path());
        // A pid that cannot be alive: beyond pid_max.
        std::fs::write(layout.lock_file(), "999999999\n").expect("write");
        let lock = JobLock::acquire(&layout).expect("first lock");
        assert_eq!(lock.stale_holder(), Some(999_999_999));
        match JobLock::acquire(&layout) {
            Err(Error::Locked { pid, .. }) => assert_eq!(pid, std::process::id()),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(lock);
        let again = JobLock::acquire(&layout).expect("lock after release");
        assert_eq!(again.stale_holder(), None);
    }
}
