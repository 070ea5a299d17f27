//! Metadata blocks: reading one (with a bounded cache), streaming across block boundaries, and
//! looking entries up in the indexed tables (ids, fragments, export, xattr ids).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Image;
use crate::Result;
use crate::format::{METADATA_SIZE, METADATA_UNCOMPRESSED, MetaRef};

/// Decompressed metadata blocks keyed by absolute offset, with the offset of the next block.
/// Bounded: when full it is emptied, which is cheap and keeps memory at a few tens of MiB.
/// A decompressed metadata block and the absolute offset of the block after it.
type CachedBlock = (Arc<[u8]>, u64);

pub(super) struct MetaCache {
    blocks: Mutex<HashMap<u64, CachedBlock>>,
}

const META_CACHE_BLOCKS: usize = 4096;

impl MetaCache {
    pub(super) fn new() -> Self {
        MetaCache {
            blocks: Mutex::new(HashMap::new()),
        }
    }
    fn get(&self, at: u64) -> Option<CachedBlock> {
        let map = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&at).cloned()
    }
    fn put(&self, at: u64, block: Arc<[u8]>, next: u64) {
        let mut map = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= META_CACHE_BLOCKS {
            map.clear();
        }
        map.insert(at, (block, next));
    }
}

impl Image {
    /// Read the metadata block whose header is at absolute offset `at`; the block must end
    /// before `limit`. Returns its uncompressed bytes and the offset of the following block.
    pub(crate) fn read_meta_block(
        &self,
        at: u64,
        limit: u64,
        what: &str,
    ) -> Result<(Arc<[u8]>, u64)> {
        if let Some(hit) = self.meta_cache.get(at) {
            return Ok(hit);
        }
        let mut header = [0u8; 2];
        self.read_exact_at(&mut header, at, what)?;
        let header = u16::from_le_bytes(header);
        let size = (header & !METADATA_UNCOMPRESSED) as usize;
        if size == 0 || size > METADATA_SIZE {
            return Err(self.corrupt(format!(
                "{what}: metadata block at offset {at} has a bad size {size} (header {header:#06x})"
            )));
        }
        let next = at + 2 + size as u64;
        if next > limit {
            return Err(self.corrupt(format!(
                "{what}: metadata block at offset {at} ({size} bytes) runs past the end of its table at {limit}"
            )));
        }
        let mut raw = vec![0u8; size];
        self.read_exact_at(&mut raw, at + 2, what)?;
        let block: Arc<[u8]> = if header & METADATA_UNCOMPRESSED != 0 {
            raw.into()
        } else {
            let mut out = Vec::new();
            self.compressor
                .decompress(&raw, &mut out, METADATA_SIZE)
                .map_err(|e| {
                    self.corrupt(format!(
                        "{what}: metadata block at offset {at} does not decompress: {e}"
                    ))
                })?;
            if out.len() > METADATA_SIZE {
                return Err(self.corrupt(format!(
                    "{what}: metadata block at offset {at} decompresses to {} bytes (more than {METADATA_SIZE})",
                    out.len()
                )));
            }
            out.into()
        };
        self.meta_cache.put(at, block.clone(), next);
        Ok((block, next))
    }

    /// A stream over the metadata table starting at absolute `table`, positioned at `r`.
    pub(crate) fn meta_reader(
        &self,
        table: u64,
        r: MetaRef,
        limit: u64,
        what: &'static str,
    ) -> Result<MetaReader<'_>> {
        let at = table
            .checked_add(r.block)
            .filter(|&at| at < limit)
            .ok_or_else(|| {
                self.corrupt(format!(
                    "{what}: reference to block {} lies outside the table",
                    r.block
                ))
            })?;
        let (block, next) = self.read_meta_block(at, limit, what)?;
        if r.offset as usize > block.len() {
            return Err(self.corrupt(format!(
                "{what}: offset {} is past the end of the {}-byte metadata block at {at}",
                r.offset,
                block.len()
            )));
        }
        Ok(MetaReader {
            image: self,
            block,
            pos: r.offset as usize,
            next,
            limit,
            what,
        })
    }

    /// Entry `index` (of `count`, each `size` bytes) of an indexed table whose array of block
    /// pointers is at absolute `pointers`.
    pub(crate) fn lookup_entry(
        &self,
        pointers: u64,
        count: u64,
        size: usize,
        index: u64,
        what: &'static str,
    ) -> Result<Vec<u8>> {
        if index >= count {
            return Err(self.corrupt(format!(
                "{what}: entry {index} is outside the table ({count} entries)"
            )));
        }
        let byte = index * size as u64;
        let block_no = byte / METADATA_SIZE as u64;
        let mut ptr = [0u8; 8];
        self.read_exact_at(&mut ptr, pointers + block_no * 8, what)?;
        let block_at = u64::from_le_bytes(ptr);
        let offset = (byte % METADATA_SIZE as u64) as usize;
        let (block, _) = self.read_meta_block(block_at, self.sb.bytes_used, what)?;
        block.get(offset..offset + size).map(<[u8]>::to_vec).ok_or_else(|| {
            self.corrupt(format!(
                "{what}: entry {index} lies past the end of its {}-byte metadata block at {block_at}",
                block.len()
            ))
        })
    }
}

/// Sequential reads over a metadata table, crossing block boundaries as needed.
pub(crate) struct MetaReader<'a> {
    image: &'a Image,
    block: Arc<[u8]>,
    pos: usize,
    next: u64,
    limit: u64,
    what: &'static str,
}

impl MetaReader<'_> {
    pub(crate) fn read(&mut self, mut out: &mut [u8]) -> Result<()> {
        while !out.is_empty() {
            if self.pos >= self.block.len() {
                let (block, next) = self
                    .image
                    .read_meta_block(self.next, self.limit, self.what)?;
                self.block = block;
                self.next = next;
                self.pos = 0;
            }
            let n = out.len().min(self.block.len() - self.pos);
            out[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
            self.pos += n;
            out = &mut out[n..];
        }
        Ok(())
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; n];
        self.read(&mut v)?;
        Ok(v)
    }
    pub(crate) fn u16(&mut self) -> Result<u16> {
        let mut b = [0u8; 2];
        self.read(&mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    pub(crate) fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    pub(crate) fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    pub(crate) fn skip(&mut self, mut n: usize) -> Result<()> {
        let mut buf = [0u8; 256];
        while n > 0 {
            let k = n.min(buf.len());
            self.read(&mut buf[..k])?;
            n -= k;
        }
        Ok(())
    }
}
