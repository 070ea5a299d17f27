//! Present an image as a writable root.
//!
//! Two ways, both driven from persistent state in the job's work dir:
//! - mount mode: the base SquashFS is mounted read-only (kernel squashfs on a loop device as
//!   root, `squashfuse` inside the user namespace otherwise) with an overlay whose upper and
//!   work dirs live in the work dir, merged at `<work>/root`;
//! - extract mode: `<work>/root` is a plain directory filled once by the engine's extraction.
//!
//! Where the mounts live: a job outlives any one imsctl process (`jobs create`, then later
//! `jobs shell`, `jobs exec`, `jobs complete`). So nothing is ever mounted in the host's mount
//! namespace: each sandbox session creates a private mount namespace and mounts the base and
//! the overlay afresh from the on-disk state (the upper dir persists). When the session's last
//! process exits the namespace, its mounts and the loop device (autoclear) vanish with it; a
//! crash or `kill -9` therefore leaves nothing behind but the work dir itself.

mod layout;
pub mod lock;
pub mod loopdev;
pub mod resolv;

pub use layout::{ImageSource, LowerVia, Signal, WorkLayout};
pub use lock::JobLock;
pub use resolv::{ResolvConfGuard, repair_resolv_conf};

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use crate::error::{Error, Result, SysContext};

/// Name of the marker written once an extracted root is complete, so that an interrupted
/// extraction is redone rather than used half-made.
const EXTRACTED_MARKER: &str = "root.extracted";

/// Create the work dir's skeleton for `source`. Idempotent: a later session calls it again.
pub fn prepare_work_dir(layout: &WorkLayout, source: &ImageSource) -> Result<()> {
    let mut dirs = vec![
        layout.work().to_path_buf(),
        layout.root(),
        layout.signal_dir(),
        layout.host_view(),
    ];
    if source.is_overlay() {
        dirs.extend([layout.upper(), layout.overlay_work(), layout.lower()]);
    }
    for dir in dirs {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .ctx("create directory", &dir)?;
    }
    Ok(())
}

/// Fill `<work>/root` with `populate` unless a previous call completed it. An interrupted
/// extraction (no marker) is wiped and redone.
pub fn populate_extracted<F, E>(layout: &WorkLayout, populate: F) -> Result<()>
where
    F: FnOnce(&Path) -> std::result::Result<(), E>,
    E: std::error::Error + Send + Sync + 'static,
{
    let marker = layout.work().join(EXTRACTED_MARKER);
    if marker.exists() {
        return Ok(());
    }
    let root = layout.root();
    if root.exists() {
        fs::remove_dir_all(&root).ctx("remove half-extracted image root", &root)?;
    }
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&root)
        .ctx("create directory", &root)?;
    populate(&root).map_err(|e| Error::Populate {
        path: root.clone(),
        source: Box::new(e),
    })?;
    fs::write(&marker, b"").ctx("write", &marker)?;
    Ok(())
}

/// Whether `<work>/root` holds a completed extraction.
pub fn is_extracted(layout: &WorkLayout) -> bool {
    layout.work().join(EXTRACTED_MARKER).exists()
}

/// Pick the way to open a base image on this machine: mount mode when the base can be mounted
/// (real root: kernel squashfs; otherwise squashfuse with a usable /dev/fuse), extract mode
/// otherwise.
pub fn auto_source(base: &Path) -> ImageSource {
    if crate::userns::is_real_root() {
        return ImageSource::Mount {
            base: base.to_path_buf(),
            via: LowerVia::KernelLoop,
        };
    }
    if rootless_fuse_usable() {
        return ImageSource::Mount {
            base: base.to_path_buf(),
            via: LowerVia::Squashfuse,
        };
    }
    ImageSource::Extracted
}

/// squashfuse inside a user namespace needs a world-openable /dev/fuse (some systems make it 0600).
pub fn rootless_fuse_usable() -> bool {
    let fuse_dev_ok = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    fuse_dev_ok && find_program("squashfuse").is_some()
}

/// Look a program up in the host's PATH (plus the usual sbin dirs).
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .iter()
                .map(Into::into),
        )
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Remove the signal files (`complete`, `failed`) so that they never end up in a packed image
/// and a new session does not see an old answer.
pub fn clear_signals(layout: &WorkLayout, source: &ImageSource) -> Result<()> {
    for signal in [Signal::Complete, Signal::Failed] {
        for path in [
            layout.signal_path(source, false, signal),
            layout.signal_path(source, true, signal),
        ] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove signal file", &path, e)),
            }
        }
    }
    Ok(())
}

/// Remove the mount points sessions made because the image lacked them (see
/// [`WorkLayout::made_mount_points`]), so that the packed image has exactly the directories it
/// had plus what the customization made. A mount point is always empty once its session is gone
/// (everything written under it went to the filesystem mounted there); one that is not empty
/// was made by the customization too and stays.
pub fn remove_made_mount_points(layout: &WorkLayout, source: &ImageSource) -> Result<()> {
    let record = layout.made_mount_points();
    let text = match fs::read_to_string(&record) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("read", &record, e)),
    };
    let top = layout.outside_top(source);
    for name in text.lines().map(str::trim).filter(|n| is_plain_name(n)) {
        let dir = top.join(name);
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::ENOTEMPTY | libc::EEXIST | libc::ENOTDIR)
                ) => {}
            Err(e) => return Err(Error::io("remove the session's mount point", &dir, e)),
        }
    }
    fs::remove_file(&record).ctx("remove", &record)
}

/// A single path component: what the record may name (anything else is not ours).
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

/// Which signal file, if any, the user left (checked in the jailed and the non-jailed place).
pub fn signal_raised(layout: &WorkLayout, source: &ImageSource) -> Option<Signal> {
    [Signal::Failed, Signal::Complete].into_iter().find(|&s| {
        layout.signal_path(source, false, s).exists()
            || layout.signal_path(source, true, s).exists()
    })
}
