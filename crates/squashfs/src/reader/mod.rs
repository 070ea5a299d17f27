//! The SquashFS 4.0 reader: opens an image made by mksquashfs, squashfs-tools-ng or our writer
//! and gives access to every inode, directory, xattr and data block.
//!
//! Everything is read lazily through `pread` with small caches, so an `Image` is shared by many
//! threads at once (`&self` methods, `Sync`) and memory stays bounded whatever the image size.
//! Bad input never panics: each inconsistency is an `Error::Corrupt` that says what is wrong.

mod data;
mod dir;
mod inode;
mod meta;
mod xattr;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use data::{BlockLoc, FileReader, FragmentEntry};
pub use dir::{DirEntry, DirIndexEntry};
pub use inode::{DirInfo, FileInfo, FragmentRef, Inode, InodeKind};

use super::compress::Compressor;
use super::format::{MetaRef, NO_TABLE, SUPERBLOCK_SIZE, Superblock, flags};
use super::{Error, Result};
use meta::MetaCache;
use xattr::XattrTable;

/// An open SquashFS image.
pub struct Image {
    path: PathBuf,
    file: File,
    sb: Superblock,
    compressor: Compressor,
    /// Raw compressor options stored after the superblock, if any.
    compressor_options: Option<Vec<u8>>,
    ids: Vec<u32>,
    xattrs: Option<XattrTable>,
    meta_cache: MetaCache,
    fragment_cache: data::FragmentCache,
}

impl Image {
    /// Open an image and read its superblock, compressor options and id table; the other
    /// tables are read on demand.
    pub fn open(path: &Path) -> Result<Image> {
        let file = File::open(path).map_err(|e| Error::io("open SquashFS image", path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::io("stat SquashFS image", path, e))?
            .len();
        let corrupt = |what: String| Error::Corrupt {
            path: path.to_path_buf(),
            what,
        };
        let mut raw = [0u8; SUPERBLOCK_SIZE];
        let got =
            read_up_to(&file, &mut raw, 0).map_err(|e| Error::io("read superblock of", path, e))?;
        let sb = Superblock::decode(&raw[..got]).map_err(corrupt)?;
        if sb.bytes_used > file_len {
            return Err(corrupt(format!(
                "image is truncated: the superblock says {} bytes, the file has {file_len}",
                sb.bytes_used
            )));
        }
        check_table_order(&sb).map_err(corrupt)?;
        let mut image = Image {
            path: path.to_path_buf(),
            file,
            compressor: Compressor::from_image(sb.compressor, None, sb.block_size).map_err(
                |what| Error::Unsupported {
                    path: path.to_path_buf(),
                    what,
                },
            )?,
            compressor_options: None,
            sb,
            ids: Vec::new(),
            xattrs: None,
            meta_cache: MetaCache::new(),
            fragment_cache: data::FragmentCache::new(),
        };
        if image.sb.has(flags::COMPRESSOR_OPTIONS) {
            let (block, _) = image.read_meta_block(
                SUPERBLOCK_SIZE as u64,
                image.sb.bytes_used,
                "compressor options",
            )?;
            let opts = block.to_vec();
            image.compressor =
                Compressor::from_image(image.sb.compressor, Some(&opts), image.sb.block_size)
                    .map_err(|what| Error::Unsupported {
                        path: path.to_path_buf(),
                        what,
                    })?;
            image.compressor_options = Some(opts);
        }
        image.ids = image.read_id_table()?;
        image.xattrs = XattrTable::open(&image)?;
        Ok(image)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }
    pub fn block_size(&self) -> u32 {
        self.sb.block_size
    }
    pub fn compressor(&self) -> &Compressor {
        &self.compressor
    }
    /// The compressor options block as stored (None when the image has none).
    pub fn compressor_options(&self) -> Option<&[u8]> {
        self.compressor_options.as_deref()
    }
    /// The uid/gid table.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
    /// Whether the image has an NFS export table (inode number → inode).
    pub fn has_export_table(&self) -> bool {
        self.sb.export_table != NO_TABLE
    }

    /// The root directory's inode.
    pub fn root(&self) -> Result<Inode> {
        self.inode(MetaRef::unpack(self.sb.root_inode))
    }

    /// The inode with number `number` (1-based), through the export table.
    pub fn inode_by_number(&self, number: u32) -> Result<Inode> {
        if !self.has_export_table() {
            return Err(Error::Unsupported {
                path: self.path.clone(),
                what: "image has no export table: inodes cannot be looked up by number".into(),
            });
        }
        if number == 0 || number > self.sb.inode_count {
            return Err(self.corrupt(format!(
                "inode number {number} is outside 1..={}",
                self.sb.inode_count
            )));
        }
        let raw = self.lookup_entry(
            self.sb.export_table,
            self.sb.inode_count as u64,
            8,
            (number - 1) as u64,
            "export table",
        )?;
        let mut v = [0u8; 8];
        v.copy_from_slice(&raw);
        self.inode(MetaRef::unpack(u64::from_le_bytes(v)))
    }

    pub(crate) fn corrupt(&self, what: impl Into<String>) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            what: what.into(),
        }
    }

    /// Read exactly `buf.len()` bytes at absolute `offset`, which must lie within the image.
    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64, what: &str) -> Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.sb.bytes_used) {
            return Err(self.corrupt(format!(
                "{what} at offset {offset} ({} bytes) lies past the end of the image ({} bytes)",
                buf.len(),
                self.sb.bytes_used
            )));
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io("read", &self.path, e))
    }

    fn read_id_table(&self) -> Result<Vec<u32>> {
        let count = self.sb.id_count as u64;
        if count == 0 {
            return Err(self.corrupt("id table is empty (every inode needs an owner)"));
        }
        let mut ids = Vec::with_capacity(count as usize);
        for i in 0..count {
            let raw = self.lookup_entry(self.sb.id_table, count, 4, i, "id table")?;
            ids.push(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]));
        }
        Ok(ids)
    }

    pub(crate) fn id(&self, index: u16) -> Result<u32> {
        self.ids.get(index as usize).copied().ok_or_else(|| {
            self.corrupt(format!(
                "uid/gid index {index} is outside the id table ({} entries)",
                self.ids.len()
            ))
        })
    }
}

/// The superblock's table pointers must be inside the image and in the order every writer uses
/// (inode table before directory table); anything else means a damaged superblock.
fn check_table_order(sb: &Superblock) -> Result<(), String> {
    let end = sb.bytes_used;
    let must = |name: &str, v: u64, optional: bool| -> Result<(), String> {
        if optional && v == NO_TABLE {
            return Ok(());
        }
        if v < SUPERBLOCK_SIZE as u64 || v >= end {
            return Err(format!(
                "{name} offset {v} is outside the image (96..{end})"
            ));
        }
        Ok(())
    };
    must("inode table", sb.inode_table, false)?;
    must("directory table", sb.directory_table, false)?;
    must("id table", sb.id_table, false)?;
    must("fragment table", sb.fragment_table, true)?;
    must("export table", sb.export_table, true)?;
    must("xattr table", sb.xattr_table, true)?;
    if sb.inode_table >= sb.directory_table {
        return Err(format!(
            "inode table ({}) does not come before the directory table ({})",
            sb.inode_table, sb.directory_table
        ));
    }
    let root = MetaRef::unpack(sb.root_inode);
    if root.block >= sb.directory_table - sb.inode_table {
        return Err(format!(
            "root inode reference {:#x} points outside the inode table",
            sb.root_inode
        ));
    }
    Ok(())
}

/// `pread` that stops early at end of file instead of failing.
fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;
