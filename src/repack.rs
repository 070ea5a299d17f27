//! Packing a customized image root with its base image at hand.
//!
//! Two things come from knowing which entries are *certainly* unchanged since they came out of
//! the base image:
//! - fidelity when rootless: an unprivileged run cannot chown, set `security.capability` or
//!   create devices on disk, so an unchanged entry takes its owner, mode, times and xattrs from
//!   the base image, not from what the disk shows;
//! - speed: an unchanged regular file's compressed blocks are copied verbatim from the base
//!   image instead of being compressed again (when compressor and block size match).
//!
//! "Unchanged" is never guessed: in mount mode it means the overlay's upper dir has nothing at
//! that path (the entry is the lower layer's, i.e. the base's); in extract mode it means the
//! entry's inode, size, mtime and ctime are those recorded right after extraction (any write,
//! chmod, chown, xattr change or replacement moves the ctime).

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::sandbox::IdMapping;
use crate::squashfs::reader::{Image, Inode, InodeKind};
use crate::squashfs::writer::{RawTail, Writer};
use crate::squashfs::{EntrySink, Meta, Special};

/// What an extracted entry looked like right after extraction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatKey {
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl StatKey {
    fn of(m: &fs::Metadata) -> StatKey {
        StatKey {
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }
}

/// The record an extraction leaves in the job's work dir.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ExtractIndex {
    /// Relative path (lossless: bytes as a Vec) → stat key.
    pub entries: Vec<(Vec<u8>, StatKey)>,
    /// Base entries the extraction could not create (devices when rootless).
    pub skipped: Vec<Vec<u8>>,
}

impl ExtractIndex {
    /// Record every entry under `root` right after `base` was extracted there.
    pub fn record(root: &Path, base: &Image) -> Result<ExtractIndex> {
        let mut index = ExtractIndex::default();
        base.walk(&mut |path, _| {
            let full = if path.is_empty() {
                root.to_path_buf()
            } else {
                root.join(std::ffi::OsStr::from_bytes(path))
            };
            match fs::symlink_metadata(&full) {
                Ok(m) => index.entries.push((path.to_vec(), StatKey::of(&m))),
                Err(_) => index.skipped.push(path.to_vec()),
            }
            Ok(())
        })?;
        Ok(index)
    }

    pub fn save(&self, file: &Path) -> Result<()> {
        let bytes = serde_json::to_vec(self).context("failed to encode the extraction index")?;
        crate::fsutil::write_atomically(file, |tmp| {
            fs::write(tmp, &bytes).with_context(|| format!("failed to write {}", tmp.display()))
        })
    }

    pub fn load(file: &Path) -> Result<ExtractIndex> {
        let bytes = fs::read(file).with_context(|| format!("failed to read {}", file.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: corrupt extraction index", file.display()))
    }
}

/// How to tell an unchanged entry.
pub enum Provenance {
    /// Mount mode: unchanged iff the overlay's upper dir has nothing at the path.
    Overlay { upper: PathBuf },
    /// Extract mode: unchanged iff the stat key still matches the one recorded.
    Extracted {
        index: HashMap<Vec<u8>, StatKey>,
        skipped: Vec<Vec<u8>>,
    },
}

impl Provenance {
    pub fn extracted(index: ExtractIndex) -> Provenance {
        Provenance::Extracted {
            index: index.entries.into_iter().collect(),
            skipped: index.skipped,
        }
    }

    fn unchanged(&self, root_view: &Path, path: &[u8]) -> bool {
        let rel = std::ffi::OsStr::from_bytes(path);
        match self {
            Provenance::Overlay { upper } => fs::symlink_metadata(upper.join(rel)).is_err(),
            Provenance::Extracted { index, .. } => {
                let Some(recorded) = index.get(path) else {
                    return false;
                };
                fs::symlink_metadata(root_view.join(rel))
                    .is_ok_and(|m| StatKey::of(&m) == *recorded)
            }
        }
    }
}

/// Every inode of a base image by path (the root is the empty path).
pub type BaseIndex = HashMap<Vec<u8>, Inode>;

/// Walk `base` once into a [`BaseIndex`]; packing and the change report both look paths up in it.
pub fn base_index(base: &Image) -> Result<BaseIndex> {
    let mut by_path = HashMap::new();
    base.walk(&mut |path, inode| {
        by_path.insert(path.to_vec(), inode.clone());
        Ok(())
    })?;
    Ok(by_path)
}

/// Counts for the closing report.
#[derive(Clone, Debug, Default)]
pub struct RepackStats {
    pub unchanged_entries: u64,
    pub reused_files: u64,
    pub reused_bytes: u64,
    pub reused_fragments: u64,
    pub restored_skipped: u64,
}

/// A sink in front of the writer that takes unchanged entries from the base image.
pub struct BaseAwareSink<'a> {
    writer: &'a mut Writer,
    base: &'a Image,
    by_path: HashMap<Vec<u8>, Inode>,
    root_view: PathBuf,
    provenance: Provenance,
    /// Same compressor and block size as the base: compressed blocks can be copied.
    reuse_blocks: bool,
    /// Base fragment blocks whose every file is unchanged: copied whole, once.
    reusable_fragments: std::collections::HashSet<u32>,
    /// Base fragment index → index of its copy in the new image.
    copied_fragments: HashMap<u32, u32>,
    ids: IdMapping,
    pub stats: RepackStats,
}

impl<'a> BaseAwareSink<'a> {
    /// `by_path` is [`base_index`] of `base`.
    pub fn new(
        writer: &'a mut Writer,
        base: &'a Image,
        by_path: BaseIndex,
        root_view: &Path,
        provenance: Provenance,
        reuse_blocks: bool,
        ids: IdMapping,
    ) -> Result<Self> {
        let reusable_fragments = if reuse_blocks {
            reusable_fragments(&by_path, root_view, &provenance)
        } else {
            Default::default()
        };
        Ok(BaseAwareSink {
            writer,
            base,
            by_path,
            root_view: root_view.to_path_buf(),
            provenance,
            reuse_blocks,
            reusable_fragments,
            copied_fragments: HashMap::new(),
            ids,
            stats: RepackStats::default(),
        })
    }

    /// The base inode for an unchanged entry of the same kind, if there is one.
    fn base_entry(&mut self, path: &[u8], kind: EntryKind) -> Option<Inode> {
        let inode = self.by_path.get(path)?;
        if kind_of(inode) != kind || !self.provenance.unchanged(&self.root_view, path) {
            return None;
        }
        self.stats.unchanged_entries += 1;
        Some(inode.clone())
    }

    /// Metadata of a changed entry: owners mapped back to the ids inside the sandbox.
    fn changed_meta(&self, mut meta: Meta) -> Meta {
        if self.ids.creates_user_namespace() {
            meta.uid = self.ids.uid_inside(meta.uid).unwrap_or(meta.uid);
            meta.gid = self.ids.gid_inside(meta.gid).unwrap_or(meta.gid);
        }
        meta
    }

    /// Re-add the base entries an unprivileged extraction could not create (device nodes), if
    /// nothing took their place and their directory is still there.
    pub fn restore_skipped(&mut self) -> Result<()> {
        let Provenance::Extracted { skipped, .. } = &self.provenance else {
            return Ok(());
        };
        for path in skipped.clone() {
            let Some(inode) = self.by_path.get(&path).cloned() else {
                continue;
            };
            let rel = std::ffi::OsStr::from_bytes(&path);
            if fs::symlink_metadata(self.root_view.join(rel)).is_ok() {
                continue;
            }
            let parent_present = Path::new(rel)
                .parent()
                .is_none_or(|p| p.as_os_str().is_empty() || self.root_view.join(p).is_dir());
            if let (true, InodeKind::Special(s)) = (parent_present, &inode.kind) {
                self.writer.add_special(&path, inode.meta.clone(), *s)?;
                self.stats.restored_skipped += 1;
            }
        }
        Ok(())
    }

    fn reuse_file(&mut self, path: &[u8], inode: &Inode) -> Result<()> {
        let InodeKind::File(info) = &inode.kind else {
            unreachable!("kind checked by base_entry")
        };
        let mut blocks = Vec::with_capacity(info.block_sizes.len());
        for loc in self.base.file_blocks(info)? {
            let bytes = if loc.is_sparse() {
                Vec::new()
            } else {
                self.base.read_raw_block(&loc)?
            };
            blocks.push((bytes, loc.raw_size));
        }
        let tail = match info.fragment {
            Some(f) if self.reusable_fragments.contains(&f.index) => {
                let fragment = self.copied_fragment(f.index)?;
                Some(RawTail::Reused {
                    fragment,
                    offset: f.offset,
                })
            }
            Some(_) => self.base.read_tail(info)?.map(RawTail::Bytes),
            None => None,
        };
        self.writer
            .add_file_raw(path, inode.meta.clone(), info.size, blocks, tail)?;
        self.stats.reused_files += 1;
        self.stats.reused_bytes += info.size;
        Ok(())
    }
}

impl BaseAwareSink<'_> {
    /// The new image's copy of base fragment block `index`, copied verbatim on first use.
    fn copied_fragment(&mut self, index: u32) -> Result<u32> {
        if let Some(&copy) = self.copied_fragments.get(&index) {
            return Ok(copy);
        }
        let entry = self.base.fragment(index)?;
        let loc = crate::squashfs::reader::BlockLoc {
            offset: entry.start,
            disk_size: entry.disk_size,
            compressed: entry.compressed,
            size: self.base.block_size(),
            raw_size: entry.raw_size,
        };
        let bytes = self.base.read_raw_block(&loc)?;
        let copy = self.writer.add_raw_fragment(bytes, entry.raw_size)?;
        self.copied_fragments.insert(index, copy);
        self.stats.reused_fragments += 1;
        Ok(copy)
    }
}

/// Fragment blocks of the base all of whose files are unchanged: those can be copied whole.
/// A block shared with any changed or removed file is repacked from its live tails instead.
fn reusable_fragments(
    by_path: &HashMap<Vec<u8>, Inode>,
    root_view: &Path,
    provenance: &Provenance,
) -> std::collections::HashSet<u32> {
    let mut all = std::collections::HashSet::new();
    let mut dirty = std::collections::HashSet::new();
    for (path, inode) in by_path {
        if let InodeKind::File(info) = &inode.kind
            && let Some(f) = info.fragment
        {
            all.insert(f.index);
            if !provenance.unchanged(root_view, path) {
                dirty.insert(f.index);
            }
        }
    }
    all.retain(|f| !dirty.contains(f));
    all
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    Dir,
    File,
    Symlink,
    Special(Special),
}

fn kind_of(inode: &Inode) -> EntryKind {
    match &inode.kind {
        InodeKind::Dir(_) => EntryKind::Dir,
        InodeKind::File(_) => EntryKind::File,
        InodeKind::Symlink(_) => EntryKind::Symlink,
        InodeKind::Special(s) => EntryKind::Special(*s),
    }
}

impl EntrySink for BaseAwareSink<'_> {
    fn set_root_meta(&mut self, meta: Meta) -> crate::squashfs::Result<()> {
        // The root of an overlay is always in the upper dir; its attributes are the base's
        // unless the extraction index says it changed.
        let meta = match self.by_path.get(&b""[..]) {
            Some(base)
                if !matches!(self.provenance, Provenance::Extracted { .. })
                    || self.provenance.unchanged(&self.root_view, b"") =>
            {
                base.meta.clone()
            }
            _ => self.changed_meta(meta),
        };
        self.writer.set_root_meta(meta)
    }

    fn add_dir(&mut self, path: &[u8], meta: Meta) -> crate::squashfs::Result<()> {
        let meta = match self.base_entry(path, EntryKind::Dir) {
            Some(base) => base.meta,
            None => self.changed_meta(meta),
        };
        self.writer.add_dir(path, meta)
    }

    fn add_file(
        &mut self,
        path: &[u8],
        meta: Meta,
        data: &mut dyn Read,
    ) -> crate::squashfs::Result<()> {
        match self.base_entry(path, EntryKind::File) {
            Some(base) if self.reuse_blocks => self
                .reuse_file(path, &base)
                .map_err(|e| crate::squashfs::Error::bad_entry(path, format!("{e:#}"))),
            Some(base) => self.writer.add_file(path, base.meta, data),
            None => {
                let meta = self.changed_meta(meta);
                self.writer.add_file(path, meta, data)
            }
        }
    }

    fn add_symlink(
        &mut self,
        path: &[u8],
        meta: Meta,
        target: &[u8],
    ) -> crate::squashfs::Result<()> {
        let meta = match self.base_entry(path, EntryKind::Symlink) {
            Some(base) => base.meta,
            None => self.changed_meta(meta),
        };
        self.writer.add_symlink(path, meta, target)
    }

    fn add_special(
        &mut self,
        path: &[u8],
        meta: Meta,
        kind: Special,
    ) -> crate::squashfs::Result<()> {
        let meta = match self.base_entry(path, EntryKind::Special(kind)) {
            Some(base) => base.meta,
            None => self.changed_meta(meta),
        };
        self.writer.add_special(path, meta, kind)
    }

    fn add_hardlink(&mut self, path: &[u8], target: &[u8]) -> crate::squashfs::Result<()> {
        self.writer.add_hardlink(path, target)
    }
}
