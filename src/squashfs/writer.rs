//! The SquashFS writer (being written; this is the interface the sources program against).

use std::io::Read;
use std::path::Path;

use super::{Compressor, EntrySink, Meta, Result, Special};

/// How to build an image. `Default` is mksquashfs' default: gzip level 9, 128 KiB blocks,
/// fragments and tail packing on, xattrs kept, NFS export table written.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    pub compressor: Compressor,
    pub block_size: u32,
    /// Superblock time; callers fill it from `--mkfs-time` or `SOURCE_DATE_EPOCH`.
    pub mkfs_time: u32,
    pub fragments: bool,
    pub xattrs: bool,
    pub exportable: bool,
    /// Compression threads; 0 means one per core.
    pub threads: usize,
}

/// What the writer did, for progress lines and closing reports.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub inodes: u32,
    pub bytes_used: u64,
    pub file_bytes: u64,
    pub duplicate_files: u64,
    pub fragment_blocks: u32,
}

pub struct Writer {
    _private: (),
}

impl Writer {
    /// Create the image file at `path` (truncating it).
    pub fn create(_path: &Path, _opts: WriterOptions) -> Result<Self> {
        unimplemented!()
    }
    /// Write the metadata tables and superblock; the image is complete when this returns.
    pub fn finish(self) -> Result<Summary> {
        unimplemented!()
    }
}

impl EntrySink for Writer {
    fn set_root_meta(&mut self, _meta: Meta) {}
    fn add_dir(&mut self, _path: &[u8], _meta: Meta) -> Result<()> {
        unimplemented!()
    }
    fn add_file(&mut self, _path: &[u8], _meta: Meta, _data: &mut dyn Read) -> Result<()> {
        unimplemented!()
    }
    fn add_symlink(&mut self, _path: &[u8], _meta: Meta, _target: &[u8]) -> Result<()> {
        unimplemented!()
    }
    fn add_special(&mut self, _path: &[u8], _meta: Meta, _kind: Special) -> Result<()> {
        unimplemented!()
    }
    fn add_hardlink(&mut self, _path: &[u8], _target: &[u8]) -> Result<()> {
        unimplemented!()
    }
}
