//! Inodes: the 16-byte common header, then one of the fourteen type-specific layouts.

use super::Image;
use crate::format::{MetaRef, NO_FRAGMENT, NO_XATTR, decode_dev, inode_type as t};
use crate::{Meta, Result, Special};

/// One inode of the image, with owners and xattrs resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// Inode number as stored (1-based, unique per inode).
    pub number: u32,
    /// Where the inode is stored; hardlinked names share it.
    pub reference: MetaRef,
    /// On-disk type (1..=14; extended types are basic + 7).
    pub disk_type: u16,
    pub kind: InodeKind,
    pub meta: Meta,
    pub nlink: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InodeKind {
    Dir(DirInfo),
    File(FileInfo),
    Symlink(Vec<u8>),
    Special(Special),
}

/// Where a directory's listing is, in the directory table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirInfo {
    /// Metadata block of the listing, relative to the directory table.
    pub start_block: u32,
    pub offset: u16,
    /// Listing size as stored: 3 more than the bytes of the listing (for "." and "..").
    pub size: u32,
    pub parent_inode: u32,
    /// Entries of the directory index (extended directories only).
    pub index_count: u16,
}

/// A regular file's data: full blocks from `blocks_start`, then an optional fragment tail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    pub size: u64,
    /// Absolute offset of the first data block.
    pub blocks_start: u64,
    /// On-disk size word of each block: bit 24 set = stored uncompressed, 0 = sparse (zeros).
    pub block_sizes: Vec<u32>,
    pub fragment: Option<FragmentRef>,
    /// Bytes saved by sparse blocks, as stored (extended inodes only).
    pub sparse: u64,
}

/// The tail of a file kept in a fragment block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentRef {
    pub index: u32,
    pub offset: u32,
}

impl Inode {
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, InodeKind::Dir(_))
    }
    /// `st_mode` as the kernel would report it: file type bits plus permission bits.
    pub fn st_mode(&self) -> u32 {
        let ty = match &self.kind {
            InodeKind::Dir(_) => libc::S_IFDIR,
            InodeKind::File(_) => libc::S_IFREG,
            InodeKind::Symlink(_) => libc::S_IFLNK,
            InodeKind::Special(Special::CharDevice { .. }) => libc::S_IFCHR,
            InodeKind::Special(Special::BlockDevice { .. }) => libc::S_IFBLK,
            InodeKind::Special(Special::Fifo) => libc::S_IFIFO,
            InodeKind::Special(Special::Socket) => libc::S_IFSOCK,
        };
        ty | u32::from(self.meta.mode)
    }
}

/// Longest symlink target we accept (the kernel's PATH_MAX).
const MAX_SYMLINK: u32 = 4096;

impl Image {
    /// Read the inode stored at `r`.
    pub fn inode(&self, r: MetaRef) -> Result<Inode> {
        let what = "inode table";
        let mut m = self.meta_reader(self.sb.inode_table, r, self.sb.directory_table, what)?;
        let disk_type = m.u16()?;
        let mode = m.u16()? & 0o7777;
        let uid = self.id(m.u16()?)?;
        let gid = self.id(m.u16()?)?;
        let mtime = m.u32()?;
        let number = m.u32()?;
        let mut xattr = NO_XATTR;
        let mut nlink = 1;
        let kind = match disk_type {
            t::DIR => {
                let start_block = m.u32()?;
                nlink = m.u32()?;
                let size = u32::from(m.u16()?);
                let offset = m.u16()?;
                let parent_inode = m.u32()?;
                InodeKind::Dir(DirInfo {
                    start_block,
                    offset,
                    size,
                    parent_inode,
                    index_count: 0,
                })
            }
            t::LDIR => {
                nlink = m.u32()?;
                let size = m.u32()?;
                let start_block = m.u32()?;
                let parent_inode = m.u32()?;
                let index_count = m.u16()?;
                let offset = m.u16()?;
                xattr = m.u32()?;
                // The directory index follows; lookups by name could use it, a full read doesn't.
                InodeKind::Dir(DirInfo {
                    start_block,
                    offset,
                    size,
                    parent_inode,
                    index_count,
                })
            }
            t::FILE => {
                let blocks_start = u64::from(m.u32()?);
                let fragment = m.u32()?;
                let frag_offset = m.u32()?;
                let size = u64::from(m.u32()?);
                self.file_info(&mut m, blocks_start, size, fragment, frag_offset, 0)?
            }
            t::LREG => {
                let blocks_start = m.u64()?;
                let size = m.u64()?;
                let sparse = m.u64()?;
                nlink = m.u32()?;
                let fragment = m.u32()?;
                let frag_offset = m.u32()?;
                xattr = m.u32()?;
                self.file_info(&mut m, blocks_start, size, fragment, frag_offset, sparse)?
            }
            t::SYMLINK | t::LSYMLINK => {
                nlink = m.u32()?;
                let len = m.u32()?;
                if len == 0 || len > MAX_SYMLINK {
                    return Err(self.corrupt(format!(
                        "symlink inode {number} has a bad target length {len}"
                    )));
                }
                let target = m.bytes(len as usize)?;
                if disk_type == t::LSYMLINK {
                    xattr = m.u32()?;
                }
                InodeKind::Symlink(target)
            }
            t::BLKDEV | t::CHRDEV | t::LBLKDEV | t::LCHRDEV => {
                nlink = m.u32()?;
                let (major, minor) = decode_dev(m.u32()?);
                if disk_type >= t::LDIR {
                    xattr = m.u32()?;
                }
                InodeKind::Special(if disk_type == t::BLKDEV || disk_type == t::LBLKDEV {
                    Special::BlockDevice { major, minor }
                } else {
                    Special::CharDevice { major, minor }
                })
            }
            t::FIFO | t::SOCKET | t::LFIFO | t::LSOCKET => {
                nlink = m.u32()?;
                if disk_type >= t::LDIR {
                    xattr = m.u32()?;
                }
                InodeKind::Special(if disk_type == t::FIFO || disk_type == t::LFIFO {
                    Special::Fifo
                } else {
                    Special::Socket
                })
            }
            other => {
                return Err(
                    self.corrupt(format!("inode at {:#x} has unknown type {other}", r.pack()))
                );
            }
        };
        let xattrs = if xattr == NO_XATTR {
            Vec::new()
        } else {
            self.read_xattrs(xattr)?
        };
        Ok(Inode {
            number,
            reference: r,
            disk_type,
            kind,
            meta: Meta {
                mode,
                uid,
                gid,
                mtime,
                xattrs,
            },
            nlink,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn file_info(
        &self,
        m: &mut super::meta::MetaReader<'_>,
        blocks_start: u64,
        size: u64,
        fragment: u32,
        frag_offset: u32,
        sparse: u64,
    ) -> Result<InodeKind> {
        let bs = u64::from(self.sb.block_size);
        // A fragment with a zero-length tail is legal (the kernel ignores it); treat it as none.
        let has_fragment = fragment != NO_FRAGMENT && !size.is_multiple_of(bs);
        let count = if has_fragment {
            size / bs
        } else {
            size.div_ceil(bs)
        };
        // Reading the list streams from the table: a lying size runs out of metadata (an
        // error) long before it could make us allocate much more than the table holds.
        let mut block_sizes = Vec::with_capacity(count.min(4096) as usize);
        for _ in 0..count {
            block_sizes.push(m.u32()?);
        }
        let fragment = has_fragment.then_some(FragmentRef {
            index: fragment,
            offset: frag_offset,
        });
        Ok(InodeKind::File(FileInfo {
            size,
            blocks_start,
            block_sizes,
            fragment,
            sparse,
        }))
    }
}
