//! On-disk constants and structures of SquashFS 4.0, shared by the reader and the writer.
//!
//! Sources: squashfs-tools' `squashfs_fs.h` and squashfs-tools-ng's format document. Everything
//! is little-endian. Sizes and layouts are stated next to each structure.

pub const MAGIC: u32 = 0x7371_7368;
pub const SUPERBLOCK_SIZE: usize = 96;
/// Uncompressed size of one metadata block.
pub const METADATA_SIZE: usize = 8192;
/// Bit 15 of a metadata block header: the block is stored uncompressed.
pub const METADATA_UNCOMPRESSED: u16 = 0x8000;
/// Bit 24 of a data block size or fragment size: the block is stored uncompressed.
pub const DATA_UNCOMPRESSED: u32 = 1 << 24;
pub const NO_FRAGMENT: u32 = 0xFFFF_FFFF;
pub const NO_XATTR: u32 = 0xFFFF_FFFF;
pub const NO_TABLE: u64 = 0xFFFF_FFFF_FFFF_FFFF;
pub const MIN_BLOCK_SIZE: u32 = 4096;
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
/// At most this many entries follow one directory header.
pub const DIR_HEADER_MAX_ENTRIES: usize = 256;
/// Images are padded to a multiple of this, as mksquashfs does, so loop devices can map them.
pub const DEVICE_BLOCK: u64 = 4096;

/// Superblock flags.
pub mod flags {
    pub const UNCOMPRESSED_INODES: u16 = 0x0001;
    pub const UNCOMPRESSED_DATA: u16 = 0x0002;
    pub const UNCOMPRESSED_FRAGMENTS: u16 = 0x0008;
    pub const NO_FRAGMENTS: u16 = 0x0010;
    pub const ALWAYS_FRAGMENTS: u16 = 0x0020;
    pub const DUPLICATES: u16 = 0x0040;
    pub const EXPORTABLE: u16 = 0x0080;
    pub const UNCOMPRESSED_XATTRS: u16 = 0x0100;
    pub const NO_XATTRS: u16 = 0x0200;
    pub const COMPRESSOR_OPTIONS: u16 = 0x0400;
    pub const UNCOMPRESSED_IDS: u16 = 0x0800;
}

/// Inode type numbers. Basic types are 1..=7; the extended variant of each is basic + 7.
pub mod inode_type {
    pub const DIR: u16 = 1;
    pub const FILE: u16 = 2;
    pub const SYMLINK: u16 = 3;
    pub const BLKDEV: u16 = 4;
    pub const CHRDEV: u16 = 5;
    pub const FIFO: u16 = 6;
    pub const SOCKET: u16 = 7;
    pub const LDIR: u16 = 8;
    pub const LREG: u16 = 9;
    pub const LSYMLINK: u16 = 10;
    pub const LBLKDEV: u16 = 11;
    pub const LCHRDEV: u16 = 12;
    pub const LFIFO: u16 = 13;
    pub const LSOCKET: u16 = 14;
}

/// Compressor ids as stored in the superblock.
pub mod compressor_id {
    pub const GZIP: u16 = 1;
    pub const LZMA: u16 = 2;
    pub const LZO: u16 = 3;
    pub const XZ: u16 = 4;
    pub const LZ4: u16 = 5;
    pub const ZSTD: u16 = 6;
}

/// Xattr key type prefixes (`user.`, `trusted.`, `security.`); bit 8 marks an out-of-line value.
pub mod xattr_type {
    pub const USER: u16 = 0;
    pub const TRUSTED: u16 = 1;
    pub const SECURITY: u16 = 2;
    pub const VALUE_OOL: u16 = 0x100;
}

/// Linux's limits on one xattr: XATTR_NAME_MAX for the full name (namespace prefix included)
/// and XATTR_SIZE_MAX for the value. The writer refuses more and the reader takes more as
/// damage, so every image written reads back, and getxattr(2) can return every value.
pub const XATTR_NAME_MAX: usize = 255;
pub const XATTR_SIZE_MAX: usize = 65536;

/// Why an xattr cannot go into an image (the limits above, and the three namespaces SquashFS
/// stores), or `None` when it can.
pub fn xattr_problem(name: &[u8], value_len: usize) -> Option<String> {
    let shown = String::from_utf8_lossy(name);
    let storable = [&b"user."[..], b"trusted.", b"security."]
        .iter()
        .any(|prefix| name.len() > prefix.len() && name.starts_with(prefix));
    if !storable {
        Some(format!(
            "xattr '{shown}' is outside the user., trusted. and security. namespaces SquashFS \
             can store"
        ))
    } else if name.len() > XATTR_NAME_MAX {
        Some(format!(
            "xattr name '{shown}' is {} bytes, more than the {XATTR_NAME_MAX} Linux allows \
             (XATTR_NAME_MAX)",
            name.len()
        ))
    } else if value_len > XATTR_SIZE_MAX {
        Some(format!(
            "xattr '{shown}' has a value of {value_len} bytes, more than the {XATTR_SIZE_MAX} \
             Linux allows (XATTR_SIZE_MAX): no kernel, and no reader of ours, could read it back"
        ))
    } else {
        None
    }
}

/// A reference to an inode: metadata block start (relative to the inode table) in the upper
/// 48 bits, byte offset within the uncompressed block in the lower 16.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MetaRef {
    pub block: u64,
    pub offset: u16,
}

impl MetaRef {
    pub fn pack(self) -> u64 {
        (self.block << 16) | u64::from(self.offset)
    }
    pub fn unpack(v: u64) -> Self {
        MetaRef {
            block: v >> 16,
            offset: (v & 0xFFFF) as u16,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Superblock {
    pub inode_count: u32,
    pub mkfs_time: u32,
    pub block_size: u32,
    pub fragment_count: u32,
    pub compressor: u16,
    pub block_log: u16,
    pub flags: u16,
    pub id_count: u16,
    pub root_inode: u64,
    pub bytes_used: u64,
    pub id_table: u64,
    pub xattr_table: u64,
    pub inode_table: u64,
    pub directory_table: u64,
    pub fragment_table: u64,
    pub export_table: u64,
}

impl Superblock {
    pub fn encode(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = Vec::with_capacity(SUPERBLOCK_SIZE);
        put_u32(&mut b, MAGIC);
        put_u32(&mut b, self.inode_count);
        put_u32(&mut b, self.mkfs_time);
        put_u32(&mut b, self.block_size);
        put_u32(&mut b, self.fragment_count);
        put_u16(&mut b, self.compressor);
        put_u16(&mut b, self.block_log);
        put_u16(&mut b, self.flags);
        put_u16(&mut b, self.id_count);
        put_u16(&mut b, 4);
        put_u16(&mut b, 0);
        for v in [
            self.root_inode,
            self.bytes_used,
            self.id_table,
            self.xattr_table,
            self.inode_table,
            self.directory_table,
            self.fragment_table,
            self.export_table,
        ] {
            put_u64(&mut b, v);
        }
        let mut out = [0u8; SUPERBLOCK_SIZE];
        out.copy_from_slice(&b);
        out
    }

    /// Decode and sanity-check a superblock. The error text says which field is wrong.
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() < SUPERBLOCK_SIZE {
            return Err(format!(
                "superblock truncated: {} of {SUPERBLOCK_SIZE} bytes",
                b.len()
            ));
        }
        let mut c = Cursor::new(b);
        let magic = c.u32();
        if magic != MAGIC {
            return Err(format!("bad magic {magic:#010x} (not a SquashFS image)"));
        }
        let mut sb = Superblock {
            inode_count: c.u32(),
            mkfs_time: c.u32(),
            block_size: c.u32(),
            fragment_count: c.u32(),
            compressor: c.u16(),
            block_log: c.u16(),
            flags: c.u16(),
            id_count: c.u16(),
            ..Default::default()
        };
        let (major, minor) = (c.u16(), c.u16());
        if (major, minor) != (4, 0) {
            return Err(format!(
                "unsupported SquashFS version {major}.{minor} (only 4.0)"
            ));
        }
        sb.root_inode = c.u64();
        sb.bytes_used = c.u64();
        sb.id_table = c.u64();
        sb.xattr_table = c.u64();
        sb.inode_table = c.u64();
        sb.directory_table = c.u64();
        sb.fragment_table = c.u64();
        sb.export_table = c.u64();
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&sb.block_size)
            || !sb.block_size.is_power_of_two()
            // Compared as a log, not by shifting: a block_log of 32 or more must not overflow.
            || u32::from(sb.block_log) != sb.block_size.trailing_zeros()
        {
            return Err(format!(
                "bad block size {} (log {})",
                sb.block_size, sb.block_log
            ));
        }
        Ok(sb)
    }

    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

/// Linux `new_encode_dev`: how SquashFS stores a device number.
pub fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// Inverse of [`encode_dev`].
pub fn decode_dev(dev: u32) -> (u32, u32) {
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    (major, minor)
}

pub fn put_u16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_le_bytes());
}
pub fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
pub fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

/// A little-endian reader over a byte slice that never panics: reads past the end yield zeros
/// and set `overrun`, which callers check once after decoding a structure.
pub struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    pub overrun: bool,
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Cursor {
            data,
            pos: 0,
            overrun: false,
        }
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.data.len() => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                s
            }
            _ => {
                self.overrun = true;
                self.pos = self.data.len();
                &[]
            }
        }
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let s = self.bytes(N);
        let mut a = [0u8; N];
        if s.len() == N {
            a.copy_from_slice(s);
        }
        a
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    pub fn i16(&mut self) -> i16 {
        i16::from_le_bytes(self.array())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_round_trips() {
        let sb = Superblock {
            inode_count: 7,
            mkfs_time: 1234,
            block_size: 131072,
            block_log: 17,
            compressor: compressor_id::GZIP,
            root_inode: MetaRef {
                block: 0x2000,
                offset: 12,
            }
            .pack(),
            bytes_used: 4096,
            xattr_table: NO_TABLE,
            ..Default::default()
        };
        assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
    }

    #[test]
    fn superblock_rejects_bad_magic_and_block_size() {
        let mut raw = Superblock {
            block_size: 131072,
            block_log: 17,
            ..Default::default()
        }
        .encode();
        raw[0] = 0;
        assert!(Superblock::decode(&raw).unwrap_err().contains("magic"));
        let raw = Superblock {
            block_size: 3000,
            block_log: 12,
            ..Default::default()
        }
        .encode();
        assert!(Superblock::decode(&raw).unwrap_err().contains("block size"));
        assert!(
            Superblock::decode(&raw[..10])
                .unwrap_err()
                .contains("truncated")
        );
    }

    #[test]
    fn device_numbers_round_trip_including_large_minors() {
        for (ma, mi) in [(1, 3), (8, 0), (259, 65536), (4095, 0xfffff)] {
            assert_eq!(decode_dev(encode_dev(ma, mi)), (ma, mi));
        }
        assert_eq!(encode_dev(1, 3), 0x103);
    }

    #[test]
    fn cursor_flags_overrun_instead_of_panicking() {
        let mut c = Cursor::new(&[1, 0, 0]);
        assert_eq!(c.u16(), 1);
        assert_eq!(c.u32(), 0);
        assert!(c.overrun);
    }
}
