//! Metadata blocks: the inode, directory, fragment, export, id and xattr tables are streams cut
//! into 8 KiB pieces, each compressed on its own behind a 2-byte header.

use std::io;

use super::compress::Compressor;
use super::format::{METADATA_SIZE, METADATA_UNCOMPRESSED, MetaRef};

/// Accumulates a metadata stream and emits its blocks into an in-memory table.
pub struct MetaWriter {
    compressor: Option<Compressor>,
    pending: Vec<u8>,
    table: Vec<u8>,
    scratch: Vec<u8>,
}

impl MetaWriter {
    /// `compressor` None stores every block uncompressed (the `-noI`/`-noX` style flags).
    pub fn new(compressor: Option<Compressor>) -> Self {
        MetaWriter {
            compressor,
            pending: Vec::with_capacity(METADATA_SIZE),
            table: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Where the next byte written will land: block start relative to this table, and offset.
    pub fn position(&self) -> MetaRef {
        MetaRef {
            block: self.table.len() as u64,
            offset: self.pending.len() as u16,
        }
    }

    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let room = METADATA_SIZE - self.pending.len();
            let n = room.min(data.len());
            self.pending.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.pending.len() == METADATA_SIZE {
                self.flush_block()?;
            }
        }
        Ok(())
    }

    fn flush_block(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let compressed = match &self.compressor {
            Some(c) => c.compress(&self.pending, &mut self.scratch)?,
            None => false,
        };
        let (header, body) = if compressed {
            (self.scratch.len() as u16, &self.scratch)
        } else {
            (
                self.pending.len() as u16 | METADATA_UNCOMPRESSED,
                &self.pending,
            )
        };
        self.table.extend_from_slice(&header.to_le_bytes());
        self.table.extend_from_slice(body);
        self.pending.clear();
        Ok(())
    }

    /// Flush the last partial block and return the table's bytes.
    pub fn finish(mut self) -> io::Result<Vec<u8>> {
        self.flush_block()?;
        Ok(self.table)
    }

    /// Bytes emitted so far (complete blocks only).
    pub fn emitted_len(&self) -> usize {
        self.table.len()
    }

    /// Whether anything at all has been written.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty() && self.pending.is_empty()
    }
}

/// Lay out a lookup table (ids, fragments, export): its entries in metadata blocks starting at
/// absolute offset `start`, followed by the array of block offsets the superblock points at.
/// Returns the bytes to write at `start` and the absolute offset of the pointer array.
pub fn lookup_table(
    entries: &[u8],
    start: u64,
    compressor: Option<Compressor>,
) -> io::Result<(Vec<u8>, u64)> {
    let mut blocks = Vec::new();
    let mut pointers = Vec::new();
    for chunk in entries.chunks(METADATA_SIZE) {
        pointers.push(start + blocks.len() as u64);
        let mut w = MetaWriter::new(compressor);
        w.write(chunk)?;
        blocks.extend_from_slice(&w.finish()?);
    }
    let index_at = start + blocks.len() as u64;
    for p in pointers {
        blocks.extend_from_slice(&p.to_le_bytes());
    }
    Ok((blocks, index_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Algorithm;

    #[test]
    fn positions_follow_block_boundaries() {
        let c = Compressor::new(Algorithm::Gzip, None, 131072).unwrap();
        let mut w = MetaWriter::new(Some(c));
        w.write(&vec![7u8; METADATA_SIZE - 2]).unwrap();
        assert_eq!(
            w.position(),
            MetaRef {
                block: 0,
                offset: (METADATA_SIZE - 2) as u16
            }
        );
        w.write(&[1, 2, 3, 4]).unwrap();
        let p = w.position();
        assert_eq!(p.offset, 2);
        assert!(p.block > 2, "first block emitted with its header");
        let table = w.finish().unwrap();
        let first = u16::from_le_bytes([table[0], table[1]]);
        assert_eq!(
            first & METADATA_UNCOMPRESSED,
            0,
            "repetitive data compresses"
        );
        assert_eq!(p.block as usize, 2 + first as usize);
    }

    #[test]
    fn uncompressed_blocks_carry_the_flag() {
        let mut w = MetaWriter::new(None);
        w.write(b"abc").unwrap();
        let t = w.finish().unwrap();
        assert_eq!(t, [3, 0x80, b'a', b'b', b'c']);
    }
}
