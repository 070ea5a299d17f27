//! Swap the image's /etc/resolv.conf for the host's during a session, and put the image's own
//! back exactly.
//!
//! The image's file may be a dangling symlink (`-> ../run/systemd/resolve/stub-resolv.conf`),
//! and writing through it would land on its target. So the original, whatever it is, is
//! *renamed* aside (a rename keeps the inode: content, owner, mode, times, xattrs, or the
//! symlink's target, exactly), a plain file with the host's resolver configuration takes its
//! place (a copy, not a bind mount: putting it back then needs no privilege, so the sandbox's
//! pid 1 can do it after it gave its capabilities up), and at the end the rename is undone. A
//! state file in the job's work dir records that a swap is in progress, so a session killed
//! half-way is repaired by the next one (or by the packer, through [`repair_resolv_conf`]);
//! the host removes it ([`forget_swap`]) once pid 1 reports the file back, because pid 1 holds
//! nothing that reaches the work dir after its pivot.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, SysContext};

const NAME: &str = "resolv.conf";
/// Where the image's own file waits during the session (same dir: a rename, never a copy).
const SAVED_NAME: &str = ".resolv.conf.imsctl-saved";
const STATE_PRESENT: &str = "present";
const STATE_ABSENT: &str = "absent";

/// An image's resolv.conf swapped out for a session. [`ResolvConfGuard::restore`] puts it back;
/// dropping the guard without calling it restores too (best effort, for error paths).
#[derive(Debug)]
pub struct ResolvConfGuard {
    /// The image's etc dir as the current process reaches it (changes after pivot_root).
    etc: PathBuf,
    original_present: bool,
    done: bool,
    /// etc's mtime before and right after the swap (the state file may be out of reach once
    /// the root has moved, so the guard keeps its own copy).
    times: Option<SwapTimes>,
}

impl ResolvConfGuard {
    /// Move `etc/resolv.conf` aside and put a regular file holding `content` in its place.
    /// Returns `None` when the image has no real etc dir (absent, or a symlink that could lead
    /// outside the image): then nothing is touched.
    pub fn swap(etc: &Path, state: &Path, content: &[u8]) -> Result<Option<ResolvConfGuard>> {
        match fs::symlink_metadata(etc) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("inspect", etc, e)),
        }
        repair_resolv_conf(etc, state)?;
        let current = etc.join(NAME);
        let original_present = match fs::symlink_metadata(&current) {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => return Err(Error::io("inspect", &current, e)),
        };
        let before = dir_mtime(etc)?;
        write_state(state, original_present, None)?;
        let guard = ResolvConfGuard {
            etc: etc.to_path_buf(),
            original_present,
            done: false,
            times: None,
        };
        if original_present {
            let saved = etc.join(SAVED_NAME);
            fs::rename(&current, &saved)
                .ctx(&format!("move aside {}, to", current.display()), &saved)?;
        }
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&current)
            .and_then(|mut f| f.write_all(content))
            .ctx("write the host's resolver configuration to", &current)?;
        // The swap itself changed etc's mtime: remember both times, so that putting the file back
        // can also give etc its own time back when nothing else in it changed meanwhile.
        let times = (before, dir_mtime(etc)?);
        write_state(state, original_present, Some(times))?;
        let mut guard = guard;
        guard.times = Some(times);
        Ok(Some(guard))
    }

    /// Tell the guard where the image's etc dir is now (after the root moved under pivot_root).
    pub fn relocate(&mut self, etc: PathBuf) {
        self.etc = etc;
    }

    /// Put the image's own file back. The state file stays until [`forget_swap`].
    pub fn restore(mut self) -> Result<()> {
        self.done = true;
        put_back(&self.etc, self.original_present, self.times)
    }
}

impl Drop for ResolvConfGuard {
    fn drop(&mut self) {
        if !self.done {
            // The error cannot be returned from here; the state file stays and the next
            // session (or the packer) repairs it.
            let _ = put_back(&self.etc, self.original_present, self.times);
        }
    }
}

/// Forget a swap whose file is back in place: remove its state file.
pub fn forget_swap(state: &Path) -> Result<()> {
    match fs::remove_file(state) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", state, e)),
    }
}

/// Undo a swap left behind by a session that died: put the saved file back and drop the state
/// file. `etc` is the image's etc dir (for an overlay seen from outside, the upper dir's etc:
/// both names live there during a swap). Returns whether anything was repaired.
pub fn repair_resolv_conf(etc: &Path, state: &Path) -> Result<bool> {
    let Some((original_present, times)) = read_state(state)? else {
        return Ok(false);
    };
    if fs::symlink_metadata(etc)
        .map(|m| m.is_dir())
        .unwrap_or(false)
    {
        put_back(etc, original_present, times)?;
    }
    fs::remove_file(state).ctx("remove", state)?;
    Ok(true)
}

/// A directory's mtime as (seconds, nanoseconds).
type DirTime = (i64, i64);
/// etc's mtime before the swap and right after it.
type SwapTimes = (DirTime, DirTime);

fn dir_mtime(dir: &Path) -> Result<DirTime> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(dir).ctx("inspect", dir)?;
    Ok((m.mtime(), m.mtime_nsec()))
}

/// The state file: whether the image had a resolv.conf, and etc's mtime before and right after
/// the swap. None when there is no state file (no swap in progress).
fn read_state(state: &Path) -> Result<Option<(bool, Option<SwapTimes>)>> {
    let text = match fs::read_to_string(state) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", state, e)),
    };
    let mut lines = text.lines();
    let original_present = match lines.next().map(str::trim) {
        Some(STATE_PRESENT) => true,
        Some(STATE_ABSENT) => false,
        other => {
            return Err(Error::Config(format!(
                "{}: unknown state {other:?}",
                state.display()
            )));
        }
    };
    let times = lines.next().and_then(|l| {
        let v: Vec<i64> = l
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        (v.len() == 4).then(|| ((v[0], v[1]), (v[2], v[3])))
    });
    Ok(Some((original_present, times)))
}

fn put_back(etc: &Path, original_present: bool, times: Option<SwapTimes>) -> Result<()> {
    let untouched_since_swap = match times {
        Some((_, after_swap)) => dir_mtime(etc)? == after_swap,
        None => false,
    };
    put_back_file(etc, original_present)?;
    if let (true, Some((before, _))) = (untouched_since_swap, times) {
        let when = std::time::UNIX_EPOCH
            + std::time::Duration::new(
                before.0.max(0) as u64,
                before.1.clamp(0, 999_999_999) as u32,
            );
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(etc)
            .ctx("open directory", etc)?;
        dir.set_times(fs::FileTimes::new().set_modified(when))
            .ctx("restore the mtime of", etc)?;
    }
    Ok(())
}

fn put_back_file(etc: &Path, original_present: bool) -> Result<()> {
    let current = etc.join(NAME);
    let saved = etc.join(SAVED_NAME);
    match fs::symlink_metadata(&saved) {
        Ok(_) => {
            // rename(2) replaces the placeholder atomically.
            fs::rename(&saved, &current).ctx(&format!("restore {} from", current.display()), &saved)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if original_present {
                // The swap never moved it: the image's own file is still in place.
                return Ok(());
            }
            match fs::remove_file(&current) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io("remove resolv.conf mount point", &current, e)),
            }
        }
        Err(e) => Err(Error::io("inspect", &saved, e)),
    }
}

fn write_state(state: &Path, original_present: bool, times: Option<SwapTimes>) -> Result<()> {
    let word = if original_present {
        STATE_PRESENT
    } else {
        STATE_ABSENT
    };
    let mut file = File::create(state).ctx("create", state)?;
    writeln!(file, "{word}").ctx("write", state)?;
    if let Some((b, a)) = times {
        writeln!(file, "{} {} {} {}", b.0, b.1, a.0, a.1).ctx("write", state)?;
    }
    file.sync_all().ctx("sync", state)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    const HOST: &[u8] = b"nameserver 192.0.2.53\n";

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let etc = dir.path().join("root/etc");
        fs::create_dir_all(&etc).expect("mkdir");
        let state = dir.path().join("resolv.conf.state");
        (dir, etc, state)
    }

    #[test]
    fn dangling_symlink_is_restored_exactly() {
        let (_d, etc, state) = setup();
        let target = "../run/systemd/resolve/stub-resolv.conf";
        std::os::unix::fs::symlink(target, etc.join(NAME)).expect("symlink");
        let guard = ResolvConfGuard::swap(&etc, &state, HOST)
            .expect("swap")
            .expect("guard");
        let placeholder = fs::symlink_metadata(etc.join(NAME)).expect("placeholder");
        assert!(placeholder.file_type().is_file());
        assert_eq!(fs::read(etc.join(NAME)).expect("read"), HOST);
        assert!(state.exists());
        guard.restore().expect("restore");
        assert!(state.exists(), "the host forgets the swap, not the guard");
        forget_swap(&state).expect("forget");
        assert_eq!(
            fs::read_link(etc.join(NAME)).expect("readlink"),
            Path::new(target)
        );
        assert!(!etc.join(SAVED_NAME).exists() && !state.exists());
    }

    #[test]
    fn regular_file_keeps_inode_mode_and_content() {
        let (_d, etc, state) = setup();
        let file = etc.join(NAME);
        fs::write(&file, "nameserver 10.0.0.1\n").expect("write");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).expect("chmod");
        let before = fs::metadata(&file).expect("stat");
        let guard = ResolvConfGuard::swap(&etc, &state, HOST)
            .expect("swap")
            .expect("guard");
        assert_eq!(fs::read(&file).expect("read placeholder"), HOST);
        drop(guard); // the error path: Drop restores
        let after = fs::metadata(&file).expect("stat");
        assert_eq!(after.ino(), before.ino());
        assert_eq!(after.mode(), before.mode());
        assert_eq!(after.mtime(), before.mtime());
        assert_eq!(
            fs::read_to_string(&file).expect("read"),
            "nameserver 10.0.0.1\n"
        );
        assert!(
            repair_resolv_conf(&etc, &state).expect("repair"),
            "state left for the host"
        );
        assert_eq!(fs::metadata(&file).expect("stat").ino(), before.ino());
    }

    #[test]
    fn absent_file_stays_absent_and_crash_is_repaired() {
        let (_d, etc, state) = setup();
        let guard = ResolvConfGuard::swap(&etc, &state, HOST)
            .expect("swap")
            .expect("guard");
        std::mem::forget(guard); // a crash: no restore ran
        assert!(etc.join(NAME).exists());
        assert!(repair_resolv_conf(&etc, &state).expect("repair"));
        assert!(fs::symlink_metadata(etc.join(NAME)).is_err());
        assert!(!repair_resolv_conf(&etc, &state).expect("second repair is a no-op"));
    }

    #[test]
    fn crash_with_saved_file_is_repaired_by_next_swap() {
        let (_d, etc, state) = setup();
        std::os::unix::fs::symlink("/nowhere", etc.join(NAME)).expect("symlink");
        std::mem::forget(
            ResolvConfGuard::swap(&etc, &state, HOST)
                .expect("swap")
                .expect("guard"),
        );
        let guard = ResolvConfGuard::swap(&etc, &state, HOST)
            .expect("swap again")
            .expect("guard");
        guard.restore().expect("restore");
        assert_eq!(
            fs::read_link(etc.join(NAME)).expect("readlink"),
            Path::new("/nowhere")
        );
    }

    #[test]
    fn etc_symlink_is_never_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        fs::create_dir(dir.path().join("root")).expect("mkdir");
        let etc = dir.path().join("root/etc");
        std::os::unix::fs::symlink(&outside, &etc).expect("symlink");
        let state = dir.path().join("state");
        assert!(
            ResolvConfGuard::swap(&etc, &state, HOST)
                .expect("swap")
                .is_none()
        );
        assert!(fs::read_dir(&outside).expect("ls").next().is_none());
    }
}
