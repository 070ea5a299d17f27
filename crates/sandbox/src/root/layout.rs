//! Where everything of a job lives in its work dir, and how the image is opened.

use std::path::{Path, PathBuf};

/// How the image root of a job is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// The base SquashFS, mounted read-only inside the sandbox, under an overlay whose upper dir
    /// is `<work>/upper`.
    Mount { base: PathBuf, via: LowerVia },
    /// An overlay over an existing read-only directory (e.g. one extraction of a base shared by
    /// several jobs); the upper dir is `<work>/upper`.
    OverlayDir { lower: PathBuf },
    /// `<work>/root` is a plain directory, filled by extraction.
    Extracted,
}

impl ImageSource {
    /// Whether the root is an overlay (so `<work>/upper` holds the job's changes).
    pub fn is_overlay(&self) -> bool {
        !matches!(self, ImageSource::Extracted)
    }
}

/// How a base SquashFS is mounted read-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LowerVia {
    /// Kernel squashfs on a loop device (needs real root).
    KernelLoop,
    /// `squashfuse -f`, run inside the sandbox's namespaces (works in a user namespace when
    /// /dev/fuse is accessible).
    Squashfuse,
}

/// The two files by which the user ends a customization session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Complete,
    Failed,
}

impl Signal {
    pub fn file_name(self) -> &'static str {
        match self {
            Signal::Complete => "complete",
            Signal::Failed => "failed",
        }
    }
}

/// The paths inside a job's work dir. The work dir is also the job's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkLayout {
    work: PathBuf,
}

impl WorkLayout {
    pub fn new(work: impl Into<PathBuf>) -> Self {
        WorkLayout { work: work.into() }
    }
    pub fn work(&self) -> &Path {
        &self.work
    }
    /// The image root: the overlay's merge point, or the extracted tree.
    pub fn root(&self) -> PathBuf {
        self.work.join("root")
    }
    /// The overlay's upper dir: every change of the job, persistent across sessions.
    pub fn upper(&self) -> PathBuf {
        self.work.join("upper")
    }
    /// The overlay's work dir (same filesystem as the upper dir, as overlayfs requires).
    pub fn overlay_work(&self) -> PathBuf {
        self.work.join("ovlwork")
    }
    /// Mount point of the read-only base inside the sandbox's mount namespace.
    pub fn lower(&self) -> PathBuf {
        self.work.join("lower")
    }
    /// Mounted at /mnt/image in the non-jailed view: where `complete` and `failed` land.
    pub fn signal_dir(&self) -> PathBuf {
        self.work.join("signal")
    }
    /// Mount point of the non-jailed view's new root (the host's tree, read-only).
    pub fn host_view(&self) -> PathBuf {
        self.work.join("hostview")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.work.join("lock")
    }
    /// The image paths of the mount points a session had to make (the image lacked them),
    /// one per line: removed again before packing.
    pub fn made_mount_points(&self) -> PathBuf {
        self.work.join("mount-points.made")
    }
    pub fn packing_lock_file(&self) -> PathBuf {
        self.work.join("packing.lock")
    }
    /// Records that the image's resolv.conf is swapped out, so a crash can be repaired.
    pub fn resolv_state(&self) -> PathBuf {
        self.work.join("resolv.conf.state")
    }
    /// The directory holding the image's top level as seen from outside any sandbox: the upper
    /// dir for an overlay (its changes), the tree itself when extracted.
    pub fn outside_top(&self, source: &ImageSource) -> PathBuf {
        if source.is_overlay() {
            self.upper()
        } else {
            self.root()
        }
    }
    /// The directory holding the image's `etc`, as seen from outside any sandbox: the upper dir
    /// for an overlay (its changes), the tree itself when extracted.
    pub fn outside_etc(&self, source: &ImageSource) -> PathBuf {
        self.outside_top(source).join("etc")
    }
    /// Where a signal file is on disk, seen from outside the sandbox. Jailed, the user touches
    /// `/tmp/<signal>` in the image root, which for an overlay lands in the upper dir.
    pub fn signal_path(&self, source: &ImageSource, jailed: bool, signal: Signal) -> PathBuf {
        match (jailed, source.is_overlay()) {
            (false, _) => self.signal_dir().join(signal.file_name()),
            (true, true) => self.upper().join("tmp").join(signal.file_name()),
            (true, false) => self.root().join("tmp").join(signal.file_name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_paths_follow_the_ims_layout() {
        let l = WorkLayout::new("/w");
        let mount = ImageSource::Mount {
            base: "/b.sqsh".into(),
            via: LowerVia::KernelLoop,
        };
        assert_eq!(
            l.signal_path(&mount, false, Signal::Complete),
            Path::new("/w/signal/complete")
        );
        assert_eq!(
            l.signal_path(&mount, true, Signal::Failed),
            Path::new("/w/upper/tmp/failed")
        );
        assert_eq!(
            l.signal_path(&ImageSource::Extracted, true, Signal::Complete),
            Path::new("/w/root/tmp/complete")
        );
        assert_eq!(
            l.outside_etc(&ImageSource::Extracted),
            Path::new("/w/root/etc")
        );
        assert_eq!(l.outside_etc(&mount), Path::new("/w/upper/etc"));
    }
}
