//! Sources that feed the SquashFS writer through [`EntrySink`](crate::EntrySink): a tar
//! stream (plain, gzip, xz or zstd; ustar, GNU and pax) and a directory tree. The path-safety rules
//! every member name passes through live in [`path`].

pub mod dir;
pub mod path;
pub mod tar;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

pub use dir::{DirOptions, DirReport, LeftOut, dir_into};
pub use tar::{TarOptions, TarReport, decompressing, open_compressed, tar_into};

use crate as squashfs;

/// Errors of the sources. Each names the archive member or filesystem path it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed (opening an archive, walking a directory tree).
    /// The OS error is part of the message and not also a `source()`: printed once.
    #[error("failed to {op} {}: {cause}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    /// The archive stream is unreadable or malformed at `offset` (a byte offset in the
    /// uncompressed tar stream), between members.
    #[error("tar archive corrupt at byte {offset}{}: {what}", after_member(.after))]
    Corrupt {
        offset: u64,
        after: Option<String>,
        what: String,
    },
    /// One member cannot be converted: an unsafe name, a truncated body, an unsupported type.
    #[error("tar member '{member}': {what}")]
    Member { member: String, what: String },
    /// The input is not an archive format we read.
    #[error("{}: {what}", path.display())]
    Unsupported { path: PathBuf, what: String },
    /// The sink (the SquashFS writer) refused an entry.
    #[error("cannot add '{entry}' to the image: {}", sink_cause(.entry, .cause))]
    Sink {
        entry: String,
        cause: squashfs::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The writer's reason, without the entry's name when it only repeats ours.
fn sink_cause(entry: &str, cause: &squashfs::Error) -> String {
    match cause {
        squashfs::Error::BadEntry { entry: named, what } if named == entry => what.clone(),
        other => other.to_string(),
    }
}

fn after_member(after: &Option<String>) -> String {
    match after {
        Some(name) => format!(" (after member '{name}')"),
        None => String::new(),
    }
}

impl Error {
    /// `op` failed on the archive file or directory `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, cause: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            cause,
        }
    }
    /// Member `member` of the archive is refused or damaged: `what` says how.
    pub fn member(member: &[u8], what: impl Into<String>) -> Self {
        Error::Member {
            member: lossy(member),
            what: what.into(),
        }
    }
    /// The sink refused entry `entry`.
    pub fn sink(entry: &[u8], cause: squashfs::Error) -> Self {
        Error::Sink {
            entry: lossy(entry),
            cause,
        }
    }
}

pub(crate) fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// SquashFS stores only these xattr namespaces; anything else (`system.posix_acl_access`, ...)
/// has no place in the image and is counted and reported instead.
pub(crate) fn xattr_storable(name: &[u8]) -> bool {
    [&b"user."[..], b"trusted.", b"security."]
        .iter()
        .any(|ns| name.starts_with(ns))
}

/// SquashFS keeps 32-bit unsigned mtimes: earlier times become 0, later ones `u32::MAX`.
/// Returns the clamped value and whether clamping changed it.
pub(crate) fn clamp_mtime(secs: i128) -> (u32, bool) {
    match u32::try_from(secs) {
        Ok(t) => (t, false),
        Err(_) if secs < 0 => (0, true),
        Err(_) => (u32::MAX, true),
    }
}

/// Tallies what a source had to leave out or change, per xattr name, so that the report says
/// exactly what was lost without one warning line per file.
#[derive(Debug, Default)]
pub(crate) struct LossTally {
    skipped_xattrs: BTreeMap<Vec<u8>, (u64, String)>,
    clamped_mtimes: u64,
    first_clamped: Option<String>,
}

impl LossTally {
    pub(crate) fn skip_xattr(&mut self, name: &[u8], entry: &[u8]) {
        self.skipped_xattrs
            .entry(name.to_vec())
            .or_insert_with(|| (0, lossy(entry)))
            .0 += 1;
    }
    pub(crate) fn clamp_mtime(&mut self, secs: i128, entry: &[u8]) -> u32 {
        let (mtime, clamped) = clamp_mtime(secs);
        if clamped {
            self.clamped_mtimes += 1;
            self.first_clamped.get_or_insert_with(|| lossy(entry));
        }
        mtime
    }
    pub(crate) fn skipped_xattr_count(&self) -> u64 {
        self.skipped_xattrs.values().map(|(n, _)| n).sum()
    }
    pub(crate) fn clamped_mtime_count(&self) -> u64 {
        self.clamped_mtimes
    }
    /// One line per skipped xattr name and one for clamped mtimes, in a stable order.
    pub(crate) fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .skipped_xattrs
            .iter()
            .map(|(name, (count, first))| {
                format!(
                    "xattr '{}' cannot be stored in SquashFS (only user., trusted. and security. \
                     can): left out on {count} entr{} (first: '{first}')",
                    lossy(name),
                    if *count == 1 { "y" } else { "ies" }
                )
            })
            .collect();
        if let Some(first) = &self.first_clamped {
            out.push(format!(
                "{} mtime(s) outside 1970-01-01..2106-02-07 clamped to SquashFS' 32-bit range \
                 (first: '{first}')",
                self.clamped_mtimes
            ));
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storable_namespaces() {
        assert!(xattr_storable(b"user.x"));
        assert!(xattr_storable(b"security.capability"));
        assert!(xattr_storable(b"trusted.overlay.opaque"));
        assert!(!xattr_storable(b"system.posix_acl_access"));
        assert!(!xattr_storable(b"userx"));
    }

    #[test]
    fn mtime_clamping() {
        assert_eq!(clamp_mtime(5), (5, false));
        assert_eq!(clamp_mtime(-1), (0, true));
        assert_eq!(clamp_mtime(1 << 33), (u32::MAX, true));
    }

    #[test]
    fn tally_reports_each_name_once() {
        let mut t = LossTally::default();
        t.skip_xattr(b"system.posix_acl_access", b"a");
        t.skip_xattr(b"system.posix_acl_access", b"b");
        assert_eq!(t.clamp_mtime(-3, b"c"), 0);
        assert_eq!(t.skipped_xattr_count(), 2);
        let w = t.warnings();
        assert_eq!(w.len(), 2);
        assert!(w[0].contains("system.posix_acl_access") && w[0].contains("2 entries"));
        assert!(w[1].contains("'c'"));
    }
}
