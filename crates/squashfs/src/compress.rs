//! The block compressors SquashFS uses, with the exact stream formats the kernel expects:
//! gzip is a zlib stream, xz a .xz stream with a CRC32 check (the kernel's xz decoder knows no
//! CRC64), lz4 a raw LZ4 block, zstd a zstd frame.
//!
//! Compression runs on many threads at once, so per-thread encoder state lives in thread locals
//! instead of being rebuilt for every block.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::str::FromStr;

use super::format::{Cursor, compressor_id, put_u16, put_u32};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Gzip,
    Xz,
    Zstd,
    Lz4,
}

impl Algorithm {
    pub fn id(self) -> u16 {
        match self {
            Algorithm::Gzip => compressor_id::GZIP,
            Algorithm::Xz => compressor_id::XZ,
            Algorithm::Zstd => compressor_id::ZSTD,
            Algorithm::Lz4 => compressor_id::LZ4,
        }
    }

    pub fn from_id(id: u16) -> Result<Self, String> {
        match id {
            compressor_id::GZIP => Ok(Algorithm::Gzip),
            compressor_id::XZ => Ok(Algorithm::Xz),
            compressor_id::ZSTD => Ok(Algorithm::Zstd),
            compressor_id::LZ4 => Ok(Algorithm::Lz4),
            compressor_id::LZO => Err("LZO-compressed images are not supported (no maintained Rust LZO crate); repack with mksquashfs -comp gzip|xz|zstd|lz4".into()),
            compressor_id::LZMA => Err("legacy LZMA-compressed images are not supported (mksquashfs itself no longer writes them)".into()),
            other => Err(format!("unknown compressor id {other}")),
        }
    }

    /// mksquashfs' default level for each compressor.
    pub fn default_level(self) -> u32 {
        match self {
            Algorithm::Gzip => 9,
            Algorithm::Xz => 6,
            Algorithm::Zstd => 15,
            Algorithm::Lz4 => 0,
        }
    }

    pub fn level_range(self) -> std::ops::RangeInclusive<u32> {
        match self {
            Algorithm::Gzip => 1..=9,
            Algorithm::Xz => 0..=9,
            Algorithm::Zstd => 1..=22,
            Algorithm::Lz4 => 0..=0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Gzip => "gzip",
            Algorithm::Xz => "xz",
            Algorithm::Zstd => "zstd",
            Algorithm::Lz4 => "lz4",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gzip" => Ok(Algorithm::Gzip),
            "xz" => Ok(Algorithm::Xz),
            "zstd" => Ok(Algorithm::Zstd),
            "lz4" => Ok(Algorithm::Lz4),
            other => Err(format!(
                "unknown compressor '{other}' (expected gzip, xz, zstd or lz4)"
            )),
        }
    }
}

/// A compressor configured for one image: algorithm, level and (for xz) dictionary size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Compressor {
    pub algorithm: Algorithm,
    pub level: u32,
    /// xz dictionary size; mksquashfs defaults it to the block size.
    pub xz_dict_size: u32,
}

impl Compressor {
    pub fn new(algorithm: Algorithm, level: Option<u32>, block_size: u32) -> Result<Self, String> {
        let level = level.unwrap_or_else(|| algorithm.default_level());
        if !algorithm.level_range().contains(&level) {
            let r = algorithm.level_range();
            return Err(format!(
                "compression level {level} is out of range for {algorithm} ({}..={})",
                r.start(),
                r.end()
            ));
        }
        Ok(Compressor {
            algorithm,
            level,
            xz_dict_size: block_size.max(8192),
        })
    }

    /// The compressor of an existing image, from its superblock id and stored options.
    pub fn from_image(id: u16, options: Option<&[u8]>, block_size: u32) -> Result<Self, String> {
        let algorithm = Algorithm::from_id(id)?;
        let mut c = Compressor::new(algorithm, None, block_size)?;
        if let Some(opts) = options {
            let mut cur = Cursor::new(opts);
            match algorithm {
                Algorithm::Gzip => c.level = cur.u32().clamp(1, 9),
                Algorithm::Zstd => c.level = cur.u32().clamp(1, 22),
                Algorithm::Xz => {
                    let dict = cur.u32();
                    if dict != 0 {
                        c.xz_dict_size = dict;
                    }
                }
                Algorithm::Lz4 => {}
            }
        }
        Ok(c)
    }

    /// Compressor options stored after the superblock, written only when they differ from the
    /// defaults (as mksquashfs does), except lz4 whose version word is always present.
    pub fn options(&self, block_size: u32) -> Option<Vec<u8>> {
        let mut b = Vec::new();
        match self.algorithm {
            Algorithm::Gzip if self.level != 9 => {
                put_u32(&mut b, self.level);
                put_u16(&mut b, 15); // window size
                put_u16(&mut b, 0); // strategies: default
            }
            Algorithm::Zstd if self.level != 15 => put_u32(&mut b, self.level),
            Algorithm::Xz if self.xz_dict_size != block_size.max(8192) => {
                put_u32(&mut b, self.xz_dict_size);
                put_u32(&mut b, 0); // no BCJ filters
            }
            Algorithm::Lz4 => {
                put_u32(&mut b, 1); // LZ4_LEGACY: the only version the kernel reads
                put_u32(&mut b, 0); // not HC
            }
            _ => return None,
        }
        Some(b)
    }

    /// Compress `input` into `out` (cleared first). Returns false when compression does not
    /// make the block smaller: the caller then stores it uncompressed, as the format requires.
    pub fn compress(&self, input: &[u8], out: &mut Vec<u8>) -> io::Result<bool> {
        out.clear();
        match self.algorithm {
            Algorithm::Gzip => gzip_compress(self.level, input, out)?,
            Algorithm::Xz => xz_compress(self.level, self.xz_dict_size, input, out)?,
            Algorithm::Zstd => zstd_compress(self.level, input, out)?,
            Algorithm::Lz4 => {
                *out = lz4_flex::block::compress(input);
            }
        }
        Ok(out.len() < input.len())
    }

    /// Decompress one block into `out` (cleared first); `max` bounds the output size so a
    /// corrupt block cannot make us allocate without limit.
    pub fn decompress(&self, input: &[u8], out: &mut Vec<u8>, max: usize) -> io::Result<()> {
        out.clear();
        match self.algorithm {
            Algorithm::Gzip => gzip_decompress(input, out, max),
            Algorithm::Xz => xz_decompress(input, out, max),
            Algorithm::Zstd => zstd_decompress(input, out, max),
            Algorithm::Lz4 => {
                out.resize(max, 0);
                let n = lz4_flex::block::decompress_into(input, out)
                    .map_err(|e| invalid(format!("lz4: {e}")))?;
                out.truncate(n);
                Ok(())
            }
        }
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

thread_local! {
    static GZIP_ENC: RefCell<Option<(u32, flate2::Compress)>> = const { RefCell::new(None) };
    static ZSTD_ENC: RefCell<Option<(u32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
}

fn gzip_compress(level: u32, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    GZIP_ENC.with(|cell| {
        let mut slot = cell.borrow_mut();
        let enc = match slot.as_mut() {
            Some((l, enc)) if *l == level => {
                enc.reset();
                enc
            }
            _ => {
                let enc = flate2::Compress::new(flate2::Compression::new(level), true);
                &mut slot.insert((level, enc)).1
            }
        };
        // zlib's bound for one-shot compression: input + 0.1% + a little.
        out.reserve(input.len() + input.len() / 1000 + 64);
        loop {
            let before = enc.total_in() as usize;
            let status = enc
                .compress_vec(&input[before..], out, flate2::FlushCompress::Finish)
                .map_err(|e| invalid(format!("gzip: {e}")))?;
            if status == flate2::Status::StreamEnd {
                return Ok(());
            }
            out.reserve(out.capacity().max(4096));
        }
    })
}

fn gzip_decompress(input: &[u8], out: &mut Vec<u8>, max: usize) -> io::Result<()> {
    let mut dec = flate2::Decompress::new(true);
    out.reserve(max);
    let status = dec
        .decompress_vec(input, out, flate2::FlushDecompress::Finish)
        .map_err(|e| invalid(format!("gzip: {e}")))?;
    if status != flate2::Status::StreamEnd {
        return Err(invalid(format!(
            "gzip: block does not end within {max} bytes of output"
        )));
    }
    Ok(())
}

fn xz_compress(level: u32, dict_size: u32, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    use liblzma::stream::{Action, Check, Filters, LzmaOptions, Status, Stream};
    let mut opts = LzmaOptions::new_preset(level).map_err(|e| invalid(format!("xz: {e}")))?;
    opts.dict_size(dict_size);
    let mut filters = Filters::new();
    filters.lzma2(&opts);
    let mut enc = Stream::new_stream_encoder(&filters, Check::Crc32)
        .map_err(|e| invalid(format!("xz: {e}")))?;
    out.reserve(input.len() + input.len() / 2 + 128);
    loop {
        let consumed = enc.total_in() as usize;
        let status = enc
            .process_vec(&input[consumed..], out, Action::Finish)
            .map_err(|e| invalid(format!("xz: {e}")))?;
        if status == Status::StreamEnd {
            return Ok(());
        }
        out.reserve(out.capacity().max(4096));
    }
}

fn xz_decompress(input: &[u8], out: &mut Vec<u8>, max: usize) -> io::Result<()> {
    use liblzma::stream::{Action, Status, Stream};
    let mut dec =
        Stream::new_stream_decoder(u64::MAX, 0).map_err(|e| invalid(format!("xz: {e}")))?;
    out.reserve(max + 1);
    loop {
        let consumed = dec.total_in() as usize;
        let status = dec
            .process_vec(&input[consumed..], out, Action::Finish)
            .map_err(|e| invalid(format!("xz: {e}")))?;
        match status {
            Status::StreamEnd => return Ok(()),
            _ if out.len() > max => {
                return Err(invalid(format!(
                    "xz: block decompresses to more than {max} bytes"
                )));
            }
            _ if dec.total_in() as usize >= input.len() && out.len() < out.capacity() => {
                return Err(invalid("xz: truncated block".into()));
            }
            _ => out.reserve(4096),
        }
    }
}

fn zstd_compress(level: u32, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    ZSTD_ENC.with(|cell| {
        let mut slot = cell.borrow_mut();
        let enc = match slot.as_mut() {
            Some((l, enc)) if *l == level => enc,
            _ => {
                let enc = zstd::bulk::Compressor::new(level as i32)?;
                &mut slot.insert((level, enc)).1
            }
        };
        out.reserve(zstd::zstd_safe::compress_bound(input.len()));
        enc.compress_to_buffer(input, out)?;
        Ok(())
    })
}

fn zstd_decompress(input: &[u8], out: &mut Vec<u8>, max: usize) -> io::Result<()> {
    out.reserve(max);
    zstd::bulk::Decompressor::new()?
        .decompress_to_buffer(input, out)
        .map_err(|e| invalid(format!("zstd: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|i| ((i / 7) as u16).to_le_bytes())
            .collect()
    }

    #[test]
    fn every_algorithm_round_trips() {
        let data = sample();
        for algo in [
            Algorithm::Gzip,
            Algorithm::Xz,
            Algorithm::Zstd,
            Algorithm::Lz4,
        ] {
            let c = Compressor::new(algo, None, 131072).unwrap();
            let mut packed = Vec::new();
            assert!(
                c.compress(&data, &mut packed).unwrap(),
                "{algo} should shrink"
            );
            let mut back = Vec::new();
            c.decompress(&packed, &mut back, data.len()).unwrap();
            assert_eq!(back, data, "{algo}");
        }
    }

    #[test]
    fn incompressible_data_reports_no_gain() {
        let mut x = 0x1234_5678u32;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let c = Compressor::new(Algorithm::Gzip, None, 131072).unwrap();
        assert!(!c.compress(&noise, &mut Vec::new()).unwrap());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for algo in [
            Algorithm::Gzip,
            Algorithm::Xz,
            Algorithm::Zstd,
            Algorithm::Lz4,
        ] {
            let c = Compressor::new(algo, None, 131072).unwrap();
            let mut out = Vec::new();
            assert!(
                c.decompress(&[1, 2, 3, 4, 5, 6, 7], &mut out, 8192)
                    .is_err(),
                "{algo}"
            );
        }
    }

    #[test]
    fn levels_are_checked() {
        assert!(Compressor::new(Algorithm::Gzip, Some(12), 131072).is_err());
        assert!(Compressor::new(Algorithm::Zstd, Some(19), 131072).is_ok());
    }
}
