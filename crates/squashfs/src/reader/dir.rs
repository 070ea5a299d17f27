//! Directory listings and the whole-tree walk.

use std::collections::HashSet;

use super::{Image, Inode, InodeKind};
use crate::Result;
use crate::format::{DIR_HEADER_MAX_ENTRIES, MetaRef};

/// One name in a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub inode_ref: MetaRef,
    pub inode_number: u32,
    /// Inode type as stored in the entry (writers store the basic type, 1..=7).
    pub entry_type: u16,
}

/// One entry of an extended directory's index: where in the listing names from `name` on start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirIndexEntry {
    /// Byte offset into the listing of the header this entry points at.
    pub index: u32,
    /// Metadata block of that header, relative to the directory table.
    pub start_block: u32,
    pub name: Vec<u8>,
}

/// Largest directory listing we accept: far beyond any real directory (ten million entries),
/// small enough that a lying size cannot make us read without end.
const MAX_LISTING: u32 = 256 << 20;

impl Image {
    /// The entries of directory `dir`, in stored (byte-sorted) order.
    pub fn read_dir(&self, dir: &Inode) -> Result<Vec<DirEntry>> {
        let InodeKind::Dir(info) = &dir.kind else {
            return Err(self.corrupt(format!("inode {} is not a directory", dir.number)));
        };
        // An empty directory stores size 3; some writers store 0.
        if info.size <= 3 {
            return Ok(Vec::new());
        }
        if info.size > MAX_LISTING {
            return Err(self.corrupt(format!(
                "directory inode {} claims a {}-byte listing",
                dir.number, info.size
            )));
        }
        let mut left = info.size - 3;
        let start = MetaRef {
            block: u64::from(info.start_block),
            offset: info.offset,
        };
        let mut m = self.meta_reader(
            self.sb.directory_table,
            start,
            self.sb.bytes_used,
            "directory table",
        )?;
        let mut entries = Vec::new();
        let take = |left: &mut u32, n: u32| -> Result<()> {
            *left = left.checked_sub(n).ok_or_else(|| {
                self.corrupt(format!(
                    "directory inode {}: listing overruns its stated size {}",
                    dir.number, info.size
                ))
            })?;
            Ok(())
        };
        while left > 0 {
            take(&mut left, 12)?;
            let count = m.u32()? as usize + 1;
            let block = m.u32()?;
            let base = m.u32()?;
            if count > DIR_HEADER_MAX_ENTRIES {
                return Err(self.corrupt(format!(
                    "directory inode {}: header announces {count} entries (at most {DIR_HEADER_MAX_ENTRIES})",
                    dir.number
                )));
            }
            for _ in 0..count {
                take(&mut left, 8)?;
                let offset = m.u16()?;
                let delta = m.u16()? as i16;
                let entry_type = m.u16()?;
                let name_len = u32::from(m.u16()?) + 1;
                take(&mut left, name_len)?;
                let name = m.bytes(name_len as usize)?;
                check_name(self, dir, &name)?;
                if !(1..=14).contains(&entry_type) {
                    return Err(self.corrupt(format!(
                        "directory entry '{}' has unknown type {entry_type}",
                        String::from_utf8_lossy(&name)
                    )));
                }
                // Writers sort names bytewise and the kernel's lookup relies on it; a duplicate
                // or out-of-order name is damage (or an attempt to shadow an earlier entry).
                if let Some(prev) = entries.last().map(|e: &DirEntry| &e.name)
                    && prev.as_slice() >= name.as_slice()
                {
                    return Err(self.corrupt(format!(
                        "directory inode {}: entry '{}' is duplicated or out of order",
                        dir.number,
                        String::from_utf8_lossy(&name)
                    )));
                }
                let inode_number = (i64::from(base) + i64::from(delta)) as u32;
                entries.push(DirEntry {
                    name,
                    inode_ref: MetaRef {
                        block: u64::from(block),
                        offset,
                    },
                    inode_number,
                    entry_type,
                });
            }
        }
        Ok(entries)
    }

    /// The index of an extended directory (empty for a basic one). Reading does not need it;
    /// it is exposed so that tests and tools can check it.
    pub fn dir_index(&self, dir: &Inode) -> Result<Vec<DirIndexEntry>> {
        let InodeKind::Dir(info) = &dir.kind else {
            return Err(self.corrupt(format!("inode {} is not a directory", dir.number)));
        };
        if dir.disk_type != crate::format::inode_type::LDIR {
            return Ok(Vec::new());
        }
        let mut m = self.meta_reader(
            self.sb.inode_table,
            dir.reference,
            self.sb.directory_table,
            "inode table",
        )?;
        // Common header (16 bytes) and the extended directory fields (24 bytes).
        m.skip(16 + 24)?;
        let mut out = Vec::with_capacity(usize::from(info.index_count));
        for _ in 0..info.index_count {
            let index = m.u32()?;
            let start_block = m.u32()?;
            let name_len = m.u32()? as usize + 1;
            if name_len > 256 {
                return Err(self.corrupt(format!(
                    "directory inode {}: index name of {name_len} bytes",
                    dir.number
                )));
            }
            out.push(DirIndexEntry {
                index,
                start_block,
                name: m.bytes(name_len)?,
            });
        }
        Ok(out)
    }

    /// Visit every inode in directory order (each directory, then its entries; depth first),
    /// with its path relative to the root (empty for the root itself, '/'-separated).
    /// A directory that contains itself or an ancestor is reported as corruption.
    pub fn walk(&self, visit: &mut dyn FnMut(&[u8], &Inode) -> Result<()>) -> Result<()> {
        let root = self.root()?;
        if !root.is_dir() {
            return Err(self.corrupt("the root inode is not a directory"));
        }
        let mut seen_dirs = HashSet::new();
        // Explicit stack rather than recursion: a deep crafted tree must not overflow ours.
        let mut stack: Vec<(Vec<u8>, Inode)> = vec![(Vec::new(), root)];
        while let Some((path, inode)) = stack.pop() {
            visit(&path, &inode)?;
            if !inode.is_dir() {
                continue;
            }
            if !seen_dirs.insert(inode.reference) {
                return Err(self.corrupt(format!(
                    "directory loop: '{}' is a directory already visited",
                    String::from_utf8_lossy(&path)
                )));
            }
            let entries = self.read_dir(&inode)?;
            let first_child = stack.len();
            for e in entries {
                let child = self.inode(e.inode_ref)?;
                check_entry_type(self, &e, &child, &path)?;
                let mut child_path = path.clone();
                if !child_path.is_empty() {
                    child_path.push(b'/');
                }
                child_path.extend_from_slice(&e.name);
                stack.push((child_path, child));
            }
            stack[first_child..].reverse();
        }
        Ok(())
    }
}

fn check_name(image: &Image, dir: &Inode, name: &[u8]) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(image.corrupt(format!(
            "directory inode {} holds an entry with an unsafe name '{}'",
            dir.number,
            String::from_utf8_lossy(name).escape_debug()
        )));
    }
    Ok(())
}

/// The entry's type must agree with its inode: a listing that calls a file a directory (or the
/// reverse) would otherwise send a walk somewhere it should not go.
fn check_entry_type(image: &Image, e: &DirEntry, child: &Inode, parent: &[u8]) -> Result<()> {
    let basic = |t: u16| if t > 7 { t - 7 } else { t };
    if basic(child.disk_type) != basic(e.entry_type) {
        return Err(image.corrupt(format!(
            "entry '{}' in '{}' says type {} but its inode has type {}",
            String::from_utf8_lossy(&e.name),
            String::from_utf8_lossy(parent),
            e.entry_type,
            child.disk_type
        )));
    }
    Ok(())
}
