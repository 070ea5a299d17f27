//! File content: data blocks (compressed, stored, or sparse) and fragment tails.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use super::{FileInfo, Image, Inode, InodeKind};
use crate::format::DATA_UNCOMPRESSED;
use crate::{Error, Result};

/// Where one data block of a file is, and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockLoc {
    /// Absolute offset of the block's bytes in the image (for a sparse block: where the next
    /// block starts, since sparse blocks take no space).
    pub offset: u64,
    /// Bytes on disk; 0 for a sparse block.
    pub disk_size: u32,
    /// Whether the on-disk bytes are compressed (false: stored as is).
    pub compressed: bool,
    /// Bytes of file content the block stands for.
    pub size: u32,
    /// The size word as stored in the inode (bit 24 = uncompressed).
    pub raw_size: u32,
}

impl BlockLoc {
    pub fn is_sparse(&self) -> bool {
        self.disk_size == 0
    }
}

/// One entry of the fragment table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentEntry {
    pub start: u64,
    pub disk_size: u32,
    pub compressed: bool,
    /// The size word as stored (bit 24 = uncompressed).
    pub raw_size: u32,
}

/// A few recently used fragment blocks, decompressed: many small files share one.
pub(super) struct FragmentCache {
    recent: Mutex<Vec<(u32, Arc<[u8]>)>>,
}

const FRAGMENT_CACHE_ENTRIES: usize = 8;

impl FragmentCache {
    pub(super) fn new() -> Self {
        FragmentCache {
            recent: Mutex::new(Vec::new()),
        }
    }
    fn get(&self, index: u32) -> Option<Arc<[u8]>> {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let pos = recent.iter().position(|(i, _)| *i == index)?;
        let hit = recent.remove(pos);
        let block = hit.1.clone();
        recent.insert(0, hit);
        Some(block)
    }
    fn put(&self, index: u32, block: Arc<[u8]>) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.insert(0, (index, block));
        recent.truncate(FRAGMENT_CACHE_ENTRIES);
    }
}

impl Image {
    /// The location of each full data block of a file, in order (the fragment tail is not a
    /// block: see [`Image::fragment`]).
    pub fn file_blocks(&self, file: &FileInfo) -> Result<Vec<BlockLoc>> {
        let bs = u64::from(self.sb.block_size);
        let mut offset = file.blocks_start;
        let mut out = Vec::with_capacity(file.block_sizes.len());
        for (i, &raw_size) in file.block_sizes.iter().enumerate() {
            let disk_size = raw_size & !DATA_UNCOMPRESSED;
            if raw_size & !(DATA_UNCOMPRESSED | (DATA_UNCOMPRESSED - 1)) != 0
                || u64::from(disk_size) > bs
            {
                return Err(
                    self.corrupt(format!("data block {i} has a bad size word {raw_size:#x}"))
                );
            }
            let size = (file.size - i as u64 * bs).min(bs) as u32;
            let end = offset
                .checked_add(u64::from(disk_size))
                .filter(|&e| e <= self.sb.bytes_used);
            let Some(end) = end else {
                return Err(self.corrupt(format!(
                    "data block {i} at offset {offset} ({disk_size} bytes) lies past the end of the image"
                )));
            };
            out.push(BlockLoc {
                offset,
                disk_size,
                compressed: raw_size & DATA_UNCOMPRESSED == 0,
                size,
                raw_size,
            });
            offset = end;
        }
        Ok(out)
    }

    /// The bytes of a block exactly as stored (compressed or not); empty for a sparse block.
    pub fn read_raw_block(&self, loc: &BlockLoc) -> Result<Vec<u8>> {
        let mut raw = vec![0u8; loc.disk_size as usize];
        self.read_exact_at(&mut raw, loc.offset, "data block")?;
        Ok(raw)
    }

    /// The content of a block (zeros for a sparse one) into `out`, which is cleared first.
    pub fn read_block(&self, loc: &BlockLoc, out: &mut Vec<u8>) -> Result<()> {
        out.clear();
        if loc.is_sparse() {
            out.resize(loc.size as usize, 0);
            return Ok(());
        }
        let raw = self.read_raw_block(loc)?;
        self.unpack_data(
            &raw,
            loc.compressed,
            loc.size as usize,
            out,
            loc.offset,
            "data block",
        )
    }

    /// Decompress (or copy) a data or fragment block and check that it has the expected size.
    fn unpack_data(
        &self,
        raw: &[u8],
        compressed: bool,
        expect: usize,
        out: &mut Vec<u8>,
        at: u64,
        what: &str,
    ) -> Result<()> {
        if compressed {
            self.compressor
                .decompress(raw, out, self.sb.block_size as usize)
                .map_err(|e| {
                    self.corrupt(format!("{what} at offset {at} does not decompress: {e}"))
                })?;
        } else {
            out.clear();
            out.extend_from_slice(raw);
        }
        if out.len() != expect {
            return Err(self.corrupt(format!(
                "{what} at offset {at} holds {} bytes, expected {expect}",
                out.len()
            )));
        }
        Ok(())
    }

    pub fn fragment_count(&self) -> u32 {
        self.sb.fragment_count
    }

    /// Entry `index` of the fragment table.
    pub fn fragment(&self, index: u32) -> Result<FragmentEntry> {
        if self.sb.fragment_count > 0 && self.sb.fragment_table == crate::format::NO_TABLE {
            return Err(self.corrupt("fragments are counted but there is no fragment table"));
        }
        let raw = self.lookup_entry(
            self.sb.fragment_table,
            u64::from(self.sb.fragment_count),
            16,
            u64::from(index),
            "fragment table",
        )?;
        let start = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
        let raw_size = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
        let disk_size = raw_size & !DATA_UNCOMPRESSED;
        if disk_size == 0
            || disk_size > self.sb.block_size
            || raw_size & !(DATA_UNCOMPRESSED | (DATA_UNCOMPRESSED - 1)) != 0
        {
            return Err(self.corrupt(format!(
                "fragment {index} has a bad size word {raw_size:#x}"
            )));
        }
        Ok(FragmentEntry {
            start,
            disk_size,
            compressed: raw_size & DATA_UNCOMPRESSED == 0,
            raw_size,
        })
    }

    /// The whole decompressed fragment block `index` (cached).
    pub fn fragment_block(&self, index: u32) -> Result<Arc<[u8]>> {
        if let Some(hit) = self.fragment_cache.get(index) {
            return Ok(hit);
        }
        let entry = self.fragment(index)?;
        let mut raw = vec![0u8; entry.disk_size as usize];
        self.read_exact_at(&mut raw, entry.start, "fragment block")?;
        let mut out = Vec::new();
        if entry.compressed {
            self.compressor
                .decompress(&raw, &mut out, self.sb.block_size as usize)
                .map_err(|e| {
                    self.corrupt(format!(
                        "fragment block {index} at offset {} does not decompress: {e}",
                        entry.start
                    ))
                })?;
        } else {
            out = raw;
        }
        let block: Arc<[u8]> = out.into();
        self.fragment_cache.put(index, block.clone());
        Ok(block)
    }

    /// The file's tail kept in a fragment, if it has one.
    pub fn read_tail(&self, file: &FileInfo) -> Result<Option<Vec<u8>>> {
        let Some(frag) = file.fragment else {
            return Ok(None);
        };
        let len = (file.size % u64::from(self.sb.block_size)) as usize;
        let block = self.fragment_block(frag.index)?;
        let start = frag.offset as usize;
        let tail = start.checked_add(len).and_then(|end| block.get(start..end));
        match tail {
            Some(t) => Ok(Some(t.to_vec())),
            None => Err(self.corrupt(format!(
                "file tail of {len} bytes at offset {start} lies outside fragment block {} ({} bytes)",
                frag.index,
                block.len()
            ))),
        }
    }

    /// Write a regular file's whole content to `out` (sparse blocks as zeros). Returns its size.
    pub fn read_file_to(&self, inode: &Inode, out: &mut dyn Write) -> Result<u64> {
        let file = self.file_info_of(inode)?;
        let mut buf = Vec::new();
        let werr = |e| Error::io("write content read from", &self.path, e);
        for loc in self.file_blocks(file)? {
            self.read_block(&loc, &mut buf)?;
            out.write_all(&buf).map_err(werr)?;
        }
        if let Some(tail) = self.read_tail(file)? {
            out.write_all(&tail).map_err(werr)?;
        }
        Ok(file.size)
    }

    /// A `Read` over a regular file's content.
    pub fn file_reader<'a>(&'a self, inode: &Inode) -> Result<FileReader<'a>> {
        let file = self.file_info_of(inode)?.clone();
        let blocks = self.file_blocks(&file)?;
        Ok(FileReader {
            image: self,
            file,
            blocks,
            next: 0,
            tail_done: false,
            buf: Vec::new(),
            pos: 0,
        })
    }

    fn file_info_of<'i>(&self, inode: &'i Inode) -> Result<&'i FileInfo> {
        match &inode.kind {
            InodeKind::File(f) => Ok(f),
            _ => Err(self.corrupt(format!("inode {} is not a regular file", inode.number))),
        }
    }
}

/// Streams a file's content block by block; errors come out as `io::Error`s wrapping ours.
pub struct FileReader<'a> {
    image: &'a Image,
    file: FileInfo,
    blocks: Vec<BlockLoc>,
    next: usize,
    tail_done: bool,
    buf: Vec<u8>,
    pos: usize,
}

impl FileReader<'_> {
    fn refill(&mut self) -> Result<bool> {
        self.pos = 0;
        if let Some(loc) = self.blocks.get(self.next) {
            self.next += 1;
            self.image.read_block(loc, &mut self.buf)?;
            return Ok(true);
        }
        if !self.tail_done {
            self.tail_done = true;
            if let Some(tail) = self.image.read_tail(&self.file)? {
                self.buf = tail;
                return Ok(true);
            }
        }
        self.buf.clear();
        Ok(false)
    }
}

impl Read for FileReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.buf.len() {
            if !self.refill().map_err(io::Error::other)? {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
