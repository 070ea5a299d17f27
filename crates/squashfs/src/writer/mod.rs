//! The SquashFS writer.
//!
//! Data is written as it arrives (compressed in parallel, see `data`); the namespace is kept in
//! memory (`tree`) and turned into the inode, directory, fragment, export, id and xattr tables
//! when the image is finished (`tables`). That is the same split mksquashfs and tar2sqfs use,
//! and it lets a tar stream be converted in one pass.

mod data;
mod tables;
mod tree;

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use super::format::{
    DEVICE_BLOCK, MAX_BLOCK_SIZE, METADATA_UNCOMPRESSED, MIN_BLOCK_SIZE, SUPERBLOCK_SIZE,
    Superblock, flags,
};
use super::{Algorithm, Compressor, EntrySink, Error, Meta, Result, Special};
pub use data::RawTail;
use data::{DataConfig, DataWriter};
use tree::{Kind, Tree};

/// The most compression threads a writer takes (`--threads`); it starts at most 4 per core.
pub const MAX_THREADS: usize = 256;

/// The bytes at the front of an image that [`Writer::finish`] writes last: the superblock and
/// the compressor options (at most a metadata block header and 64 bytes of options).
pub const HEADER_MAX: u64 = SUPERBLOCK_SIZE as u64 + 2 + 64;

/// How to build an image. `Default` is mksquashfs' default: gzip level 9, 128 KiB blocks,
/// fragments for small files, tail ends not packed, xattrs kept, NFS export table written.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    pub compressor: Compressor,
    pub block_size: u32,
    /// Superblock time; callers fill it from `--mkfs-time` or `SOURCE_DATE_EPOCH`.
    pub mkfs_time: u32,
    /// Store files smaller than a block in shared fragment blocks.
    pub fragments: bool,
    /// Also put the last partial block of larger files into fragments.
    pub tail_ends: bool,
    pub xattrs: bool,
    pub exportable: bool,
    /// Compression threads; 0 means one per core. Capped at 4 per core and [`MAX_THREADS`].
    pub threads: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        let block_size = 128 * 1024;
        WriterOptions {
            compressor: Compressor {
                algorithm: Algorithm::Gzip,
                level: 9,
                xz_dict_size: block_size,
            },
            block_size,
            mkfs_time: 0,
            fragments: true,
            tail_ends: false,
            xattrs: true,
            exportable: true,
            threads: 0,
        }
    }
}

impl WriterOptions {
    /// Options for a compressor, level and block size, checked.
    pub fn new(
        algorithm: Algorithm,
        level: Option<u32>,
        block_size: u32,
    ) -> std::result::Result<Self, String> {
        if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) || !block_size.is_power_of_two()
        {
            return Err(format!(
                "block size {block_size} must be a power of two from 4 KiB to 1 MiB"
            ));
        }
        let compressor = Compressor::new(algorithm, level, block_size)?;
        Ok(WriterOptions {
            compressor,
            block_size,
            ..WriterOptions::default()
        })
    }
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
    opts: WriterOptions,
    path: PathBuf,
    file: File,
    tree: Tree,
    data: DataWriter,
    options_block: Option<Vec<u8>>,
}

impl Writer {
    /// Create the image file at `path` (truncating it).
    pub fn create(path: &Path, opts: WriterOptions) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io("create", path, e))?;
        // The compressor options block follows the superblock, stored uncompressed.
        let options_block = opts.compressor.options(opts.block_size).map(|o| {
            let mut b = (o.len() as u16 | METADATA_UNCOMPRESSED)
                .to_le_bytes()
                .to_vec();
            b.extend_from_slice(&o);
            b
        });
        let start = SUPERBLOCK_SIZE as u64 + options_block.as_ref().map_or(0, |b| b.len() as u64);
        let writer_file = file.try_clone().map_err(|e| Error::io("reopen", path, e))?;
        let data = DataWriter::new(
            writer_file,
            path.to_path_buf(),
            DataConfig {
                compressor: opts.compressor,
                block_size: opts.block_size,
                fragments: opts.fragments,
                tail_ends: opts.tail_ends,
                threads: opts.threads,
                start,
            },
        )?;
        Ok(Writer {
            opts,
            path: path.to_path_buf(),
            file,
            tree: Tree::new(),
            data,
            options_block,
        })
    }

    /// A counter of file bytes consumed so far, for progress bars.
    pub fn progress(&self) -> Arc<AtomicU64> {
        self.data.bytes_in.clone()
    }

    /// How far the image file is final while it is being written: the bytes from
    /// [`HEADER_MAX`] up to this offset will never be written again, so a reader may copy them
    /// out (e.g. upload them) before [`Writer::finish`]. The header before `HEADER_MAX`
    /// (superblock, compressor options) and everything after the offset are written later.
    /// The counter only grows.
    pub fn settled(&self) -> Arc<AtomicU64> {
        self.data.settled.clone()
    }

    /// Queue a file whose data blocks are copied verbatim from another image with the same
    /// compressor and block size: `blocks` are (stored bytes, size word) pairs, `tail` the
    /// uncompressed last piece for a fragment. Metadata is written anew.
    pub fn add_file_raw(
        &mut self,
        path: &[u8],
        meta: Meta,
        size: u64,
        blocks: Vec<(Vec<u8>, u32)>,
        tail: Option<RawTail>,
    ) -> Result<()> {
        tree::components(path)?;
        self.check_xattrs(path, &meta)?;
        let file = self.data.add_file_raw(size, blocks, tail)?;
        self.tree.add_leaf(path, meta, Kind::File(file))
    }

    /// Copy a whole fragment block (its stored bytes and size word) from another image with the
    /// same compressor and block size; returns its index here, for [`RawTail::Reused`].
    pub fn add_raw_fragment(&mut self, bytes: Vec<u8>, word: u32) -> Result<u32> {
        self.data.add_raw_fragment(bytes, word)
    }

    /// Write the metadata tables and superblock; the image is complete when this returns.
    pub fn finish(self) -> Result<Summary> {
        let Writer {
            opts,
            path,
            file,
            tree,
            data,
            options_block,
        } = self;
        let duplicate_tails = data.duplicate_tails;
        let file_bytes = data.bytes_in.load(std::sync::atomic::Ordering::Relaxed);
        let layout = data.finish()?;
        let built = tables::build(&tree, &layout, &opts).map_err(|e| match e {
            tables::BuildError::Io(e) => Error::io("compress metadata for", &path, e),
            tables::BuildError::Limit(what) => Error::Unsupported {
                path: path.clone(),
                what,
            },
        })?;
        let mut sb = built.superblock;
        sb.mkfs_time = opts.mkfs_time;
        sb.block_size = opts.block_size;
        sb.block_log = opts.block_size.trailing_zeros() as u16;
        sb.compressor = opts.compressor.algorithm.id();
        sb.flags = superblock_flags(&opts, options_block.is_some());
        let sb = write_tail(
            &file,
            &path,
            &sb,
            options_block.as_deref(),
            layout.end,
            &built.tables,
        )?;
        Ok(Summary {
            inodes: sb.inode_count,
            bytes_used: sb.bytes_used,
            file_bytes,
            duplicate_files: layout.duplicate_runs + duplicate_tails,
            fragment_blocks: sb.fragment_count,
        })
    }
}

fn superblock_flags(opts: &WriterOptions, has_options: bool) -> u16 {
    let mut f = flags::DUPLICATES;
    if !opts.fragments {
        f |= flags::NO_FRAGMENTS;
    }
    if opts.exportable {
        f |= flags::EXPORTABLE;
    }
    if !opts.xattrs {
        f |= flags::NO_XATTRS;
    }
    if has_options {
        f |= flags::COMPRESSOR_OPTIONS;
    }
    f
}

/// Write the tables after the data, then the superblock and options at the front, pad to 4 KiB
/// and sync: only a complete image is ever left with a valid superblock.
fn write_tail(
    file: &File,
    path: &Path,
    sb: &Superblock,
    options: Option<&[u8]>,
    data_end: u64,
    tables: &tables::Tables,
) -> Result<Superblock> {
    use std::os::unix::fs::FileExt;
    let io = |op| move |e| Error::io(op, path, e);
    let mut sb = sb.clone();
    let bytes = tables
        .place(data_end, &mut sb)
        .map_err(io("compress tables for"))?;
    file.write_all_at(&bytes, data_end)
        .map_err(io("write tables to"))?;
    let used = data_end + bytes.len() as u64;
    let padded = used.div_ceil(DEVICE_BLOCK) * DEVICE_BLOCK;
    file.set_len(padded).map_err(io("pad"))?;
    if let Some(o) = options {
        file.write_all_at(o, SUPERBLOCK_SIZE as u64)
            .map_err(io("write compressor options to"))?;
    }
    sb.bytes_used = used;
    file.write_all_at(&sb.encode(), 0)
        .map_err(io("write superblock to"))?;
    file.sync_all().map_err(io("sync"))?;
    Ok(sb)
}

impl Writer {
    /// Refuse, naming the entry, an xattr no Linux could read back: an image that imports
    /// fine and then fails every later read of that entry is worse than no image (tar2sqfs
    /// refuses too). Dropped xattrs (`--no-xattrs`) are not looked at.
    fn check_xattrs(&self, path: &[u8], meta: &Meta) -> Result<()> {
        if !self.opts.xattrs {
            return Ok(());
        }
        for x in &meta.xattrs {
            if let Some(problem) = super::format::xattr_problem(&x.name, x.value.len()) {
                return Err(Error::bad_entry(path, problem));
            }
        }
        Ok(())
    }
}

impl EntrySink for Writer {
    fn set_root_meta(&mut self, meta: Meta) -> Result<()> {
        self.check_xattrs(b".", &meta)?;
        self.tree.root_meta(meta);
        Ok(())
    }
    fn add_dir(&mut self, path: &[u8], meta: Meta) -> Result<()> {
        self.check_xattrs(path, &meta)?;
        self.tree.add_dir(path, meta)
    }
    fn add_file(&mut self, path: &[u8], meta: Meta, data: &mut dyn Read) -> Result<()> {
        // Validate before consuming data, so a bad name costs no work.
        tree::components(path)?;
        self.check_xattrs(path, &meta)?;
        let file = self.data.add_file(path, data)?;
        self.tree.add_leaf(path, meta, Kind::File(file))
    }
    fn add_symlink(&mut self, path: &[u8], meta: Meta, target: &[u8]) -> Result<()> {
        if target.is_empty() || target.len() > 4095 {
            return Err(Error::bad_entry(
                path,
                "symlink target must be 1 to 4095 bytes",
            ));
        }
        self.check_xattrs(path, &meta)?;
        self.tree
            .add_leaf(path, meta, Kind::Symlink(target.to_vec()))
    }
    fn add_special(&mut self, path: &[u8], meta: Meta, kind: Special) -> Result<()> {
        self.check_xattrs(path, &meta)?;
        self.tree.add_leaf(path, meta, Kind::Special(kind))
    }
    fn add_hardlink(&mut self, path: &[u8], target: &[u8]) -> Result<()> {
        self.tree.add_hardlink(path, target)
    }
    fn add_sparse_file(
        &mut self,
        path: &[u8],
        meta: Meta,
        size: u64,
        segments: &[(u64, u64)],
        data: &mut dyn Read,
    ) -> Result<()> {
        tree::components(path)?;
        self.check_xattrs(path, &meta)?;
        super::check_segments(segments, size).map_err(|what| Error::bad_entry(path, what))?;
        let file = self.data.add_sparse_file(path, size, segments, data)?;
        self.tree.add_leaf(path, meta, Kind::File(file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Xattr;
    use std::process::Command;

    fn meta(mode: u16, uid: u32) -> Meta {
        Meta {
            mode,
            uid,
            gid: uid + 1,
            mtime: 1_700_000_000,
            xattrs: Vec::new(),
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
            .collect()
    }

    /// Build an image with the writer API alone: every entry type, sizes around block limits.
    pub(crate) fn sample_image(path: &Path, opts: WriterOptions) -> Summary {
        let mut w = Writer::create(path, opts).unwrap();
        w.set_root_meta(meta(0o755, 0)).unwrap();
        w.add_dir(b"etc", meta(0o755, 0)).unwrap();
        w.add_file(b"etc/hostname", meta(0o644, 0), &mut &b"node\n"[..])
            .unwrap();
        w.add_file(b"empty", meta(0o600, 7), &mut &b""[..]).unwrap();
        let big = pattern(300_000, 1);
        w.add_file(b"big", meta(0o644, 1000), &mut &big[..])
            .unwrap();
        w.add_file(b"big-copy", meta(0o644, 1000), &mut &big[..])
            .unwrap();
        let mut prefix = big.clone();
        prefix[299_999] ^= 0xff;
        w.add_file(b"same-prefix", meta(0o644, 1000), &mut &prefix[..])
            .unwrap();
        let mut sparse = vec![0u8; 3 * 131072];
        sparse[..10].copy_from_slice(b"begin-data");
        w.add_file(b"sparse", meta(0o644, 0), &mut &sparse[..])
            .unwrap();
        let cap = Xattr {
            name: b"security.capability".to_vec(),
            value: vec![
                1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        };
        let user = Xattr {
            name: b"user.note".to_vec(),
            value: b"a value longer than eight".to_vec(),
        };
        let mut m = meta(0o4755, 0);
        m.xattrs = vec![cap, user.clone()];
        w.add_file(b"usr/bin/ping", m, &mut &b"ELF"[..]).unwrap();
        let mut m = meta(0o755, 0);
        m.xattrs = vec![user];
        w.add_dir(b"usr", m).unwrap();
        w.add_hardlink(b"usr/bin/ping2", b"usr/bin/ping").unwrap();
        w.add_hardlink(b"usr/bin/ping3", b"usr/bin/ping").unwrap();
        w.add_symlink(b"usr/bin/rel", meta(0o777, 0), b"ping")
            .unwrap();
        w.add_symlink(b"dangling", meta(0o777, 0), b"/nowhere/at/all")
            .unwrap();
        w.add_special(
            b"dev/null",
            meta(0o666, 0),
            Special::CharDevice { major: 1, minor: 3 },
        )
        .unwrap();
        w.add_special(
            b"dev/sda",
            meta(0o660, 0),
            Special::BlockDevice { major: 8, minor: 0 },
        )
        .unwrap();
        w.add_special(b"dev/fifo", meta(0o644, 0), Special::Fifo)
            .unwrap();
        w.add_special(b"dev/sock", meta(0o755, 0), Special::Socket)
            .unwrap();
        w.add_file(&[b'n'; 255], meta(0o644, 0), &mut &b"long name"[..])
            .unwrap();
        for i in 0..3000 {
            let name = format!("many/entry-with-a-fairly-long-name-{i:05}");
            w.add_file(
                name.as_bytes(),
                meta(0o644, 5000 + (i % 3)),
                &mut format!("{i}").as_bytes(),
            )
            .unwrap();
        }
        w.finish().unwrap()
    }

    fn have(tool: &str) -> bool {
        Command::new(tool).arg("-version").output().is_ok()
    }

    fn run(cmd: &mut Command) -> String {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{:?}: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn unsquashfs_reads_every_entry_type() {
        if !have("unsquashfs") {
            imsctl_testkit::not_run!("unsquashfs not installed: skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for algo in [
            Algorithm::Gzip,
            Algorithm::Xz,
            Algorithm::Zstd,
            Algorithm::Lz4,
        ] {
            let img = dir.path().join(format!("t-{algo}.sqsh"));
            let summary = sample_image(&img, WriterOptions::new(algo, None, 131072).unwrap());
            assert_eq!(summary.duplicate_files, 1, "big-copy shares big's blocks");
            let listing = run(Command::new("unsquashfs")
                .arg("-lln")
                .arg(&img)
                .env("TZ", "UTC"));
            for needle in [
                "-rwsr-xr-x 0/1",
                "crw-rw-rw- 0/1",
                "squashfs-root/dev/null",
                "brw-rw---- 0/1",
                "prw-r--r--",
                "srwxr-xr-x",
                "squashfs-root/usr/bin/rel -> ping",
                "squashfs-root/dangling -> /nowhere/at/all",
                "squashfs-root/many/entry-with-a-fairly-long-name-02999",
                "-rw-r--r-- 5002/5003",
            ] {
                assert!(
                    listing.contains(needle),
                    "{algo}: missing {needle} in\n{}",
                    &listing[..2000.min(listing.len())]
                );
            }
            let cat = |p: &str| {
                let out = Command::new("unsquashfs")
                    .arg("-cat")
                    .arg(&img)
                    .arg(p)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{algo} cat {p}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                out.stdout
            };
            let big = pattern(300_000, 1);
            assert_eq!(cat("big"), big, "{algo}");
            assert_eq!(cat("big-copy"), big, "{algo}");
            assert_ne!(
                cat("same-prefix"),
                big,
                "{algo}: a shared prefix is not a duplicate"
            );
            assert_eq!(cat("sparse").len(), 3 * 131072);
            assert_eq!(&cat("sparse")[..10], b"begin-data");
            assert_eq!(cat("etc/hostname"), b"node\n");
            assert_eq!(cat("many/entry-with-a-fairly-long-name-01234"), b"1234");
        }
    }

    #[test]
    fn settled_bytes_never_change() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("settled.sqsh");
        let opts = WriterOptions::new(Algorithm::Zstd, Some(3), 131072).unwrap();
        let mut w = Writer::create(&img, opts).unwrap();
        let settled = w.settled();
        let header = HEADER_MAX as usize;
        let noise = |len: usize, seed: u64| {
            let mut data = vec![0u8; len];
            fastrand::Rng::with_seed(seed).fill(&mut data);
            data
        };
        let big = noise(600_000, 1);
        let mut snapshots = Vec::new();
        for i in 0..8u8 {
            // Every other file repeats `big`: its run is written, then cut off again by dedup.
            let data = if i % 2 == 0 {
                big.clone()
            } else {
                noise(700_000, u64::from(i))
            };
            w.add_file(format!("f{i}").as_bytes(), meta(0o644, 0), &mut &data[..])
                .unwrap();
            w.add_file(
                format!("s{i}").as_bytes(),
                meta(0o644, 0),
                &mut &[i; 100][..],
            )
            .unwrap();
            let end = settled.load(std::sync::atomic::Ordering::Acquire) as usize;
            let bytes = std::fs::read(&img).unwrap();
            // Only the bytes past the header are promised final.
            snapshots.push(bytes.get(header..end).unwrap_or_default().to_vec());
        }
        // The writer thread catches up before finishing: most of the data is final by then.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while settled.load(std::sync::atomic::Ordering::Acquire) < 3_000_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "settled never advanced"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let end = settled.load(std::sync::atomic::Ordering::Acquire) as usize;
        snapshots.push(std::fs::read(&img).unwrap()[header..end].to_vec());
        w.finish().unwrap();
        let image = std::fs::read(&img).unwrap();
        for (i, snapshot) in snapshots.iter().enumerate() {
            assert!(
                image[header..header + snapshot.len()] == snapshot[..],
                "bytes settled after file {i} changed later"
            );
        }
        assert!(image.len() > header + snapshots[8].len());
    }

    #[test]
    fn output_does_not_depend_on_thread_count() {
        let dir = tempfile::tempdir().unwrap();
        let mut images = Vec::new();
        for threads in [1, 3] {
            let img = dir.path().join(format!("t{threads}.sqsh"));
            let mut opts = WriterOptions::new(Algorithm::Zstd, Some(3), 131072).unwrap();
            opts.threads = threads;
            sample_image(&img, opts);
            images.push(std::fs::read(&img).unwrap());
        }
        assert_eq!(images[0], images[1]);
        assert_eq!(images[0].len() % 4096, 0, "padded for loop devices");
    }
}
#[cfg(test)]
#[test]
#[ignore]
fn write_sample_for_manual_inspection() {
    let p = std::path::Path::new("/tmp/sample.sqsh");
    tests::sample_image(p, WriterOptions::default());
}

#[cfg(test)]
mod xattr_limit_tests {
    use super::*;
    use crate::Xattr;
    use crate::reader::Image;

    fn with_xattr(name: &str, len: usize) -> Meta {
        Meta {
            mode: 0o644,
            xattrs: vec![Xattr {
                name: name.as_bytes().to_vec(),
                value: vec![b'v'; len],
            }],
            ..Meta::default()
        }
    }

    /// What the reader hands back for `path`.
    fn xattrs_read_back(img: &Path, path: &[u8]) -> Vec<Xattr> {
        let image = Image::open(img).expect("open");
        let mut found = None;
        image
            .walk(&mut |p, inode| {
                if p == path {
                    found = Some(inode.meta.xattrs.clone());
                }
                Ok(())
            })
            .expect("walk");
        found.expect("entry in the image")
    }

    #[test]
    fn the_writer_refuses_what_the_reader_could_not_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("x.sqsh");
        let mut w = Writer::create(&img, WriterOptions::default()).unwrap();
        // At the limits: accepted, and read back whole.
        let longest_name = format!("user.{}", "n".repeat(255 - 5));
        w.add_file(b"max-value", with_xattr("user.big", 65536), &mut &b"x"[..])
            .unwrap();
        w.add_dir(b"max-name", with_xattr(&longest_name, 1))
            .unwrap();
        // Past them: refused, naming the entry and the xattr, before any data is read.
        let mut data = &b"never read"[..];
        let err = w
            .add_file(
                b"etc/too-big",
                with_xattr("user.big", 100 * 1024),
                &mut data,
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("etc/too-big") && err.contains("user.big") && err.contains("102400"),
            "{err}"
        );
        assert_eq!(data.len(), 10, "no data consumed");
        let long_name = format!("user.{}", "n".repeat(251));
        let cases: [(&[u8], Meta, &str); 3] = [
            (b"d", with_xattr(&long_name, 1), "256 bytes"),
            (b"s", with_xattr("system.posix_acl_access", 1), "namespaces"),
            (b"u", with_xattr("user.", 1), "namespaces"),
        ];
        for (path, meta, needle) in cases {
            let err = w.add_dir(path, meta).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        let err = w
            .set_root_meta(with_xattr("trusted.x", 70000))
            .unwrap_err()
            .to_string();
        assert!(err.contains("70000"), "{err}");
        w.finish().unwrap();

        assert_eq!(xattrs_read_back(&img, b"max-value")[0].value.len(), 65536);
        assert_eq!(
            xattrs_read_back(&img, b"max-name")[0].name,
            longest_name.as_bytes()
        );
        assert!(
            xattrs_read_back(&img, b"").is_empty(),
            "the refused root xattr is not there"
        );
    }

    #[test]
    fn dropped_xattrs_are_not_checked() {
        let dir = tempfile::tempdir().unwrap();
        let opts = WriterOptions {
            xattrs: false,
            ..WriterOptions::default()
        };
        let mut w = Writer::create(&dir.path().join("x.sqsh"), opts).unwrap();
        w.add_file(b"f", with_xattr("user.big", 100 * 1024), &mut &b"x"[..])
            .unwrap();
        w.finish().unwrap();
    }
}

#[cfg(test)]
mod thread_tests {
    use super::data::compression_threads;

    #[test]
    fn thread_counts_are_capped() {
        assert_eq!(compression_threads(0, 2), 2);
        assert_eq!(compression_threads(3, 2), 3);
        assert_eq!(compression_threads(100_000, 2), 8);
        assert_eq!(compression_threads(100_000, 128), super::MAX_THREADS);
        assert_eq!(compression_threads(0, 1), 1);
    }
}

#[cfg(test)]
mod sparse_tests {
    use super::*;
    use crate::SparseExpand;

    fn expanded(size: u64, segments: &[(u64, u64)], data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        SparseExpand::new(&mut &data[..], segments, size)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// Sparse maps of every shape: holes first or last, segments across block boundaries,
    /// zero-length end markers, short last pieces, data that is all zeros.
    fn cases(block: u64) -> Vec<(u64, Vec<(u64, u64)>)> {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut cases = vec![
            (0, vec![]),
            (0, vec![(0, 0)]),
            (1000, vec![(1000, 0)]),
            (3 * block, vec![(3 * block, 0)]),
            (3 * block + 17, vec![(0, 5), (3 * block + 10, 7)]),
            (5 * block, vec![(block - 3, 6), (4 * block, block)]),
            (block / 2, vec![(10, 20)]),
            (
                40 * block + 1,
                vec![(0, block), (20 * block + 5, 3 * block)],
            ),
        ];
        for _ in 0..12 {
            let size = rng.u64(0..20 * block);
            let mut segments = Vec::new();
            let mut at = 0;
            while at < size && segments.len() < 6 {
                let offset = rng.u64(at..=size);
                let len = rng.u64(0..=(size - offset).min(2 * block));
                segments.push((offset, len));
                at = offset + len;
            }
            cases.push((size, segments));
        }
        cases
    }

    fn image(opts: &WriterOptions, sparse: bool, dir: &Path, name: &str) -> Vec<u8> {
        let block = u64::from(opts.block_size);
        let path = dir.join(name);
        let mut w = Writer::create(&path, opts.clone()).unwrap();
        let mut rng = fastrand::Rng::with_seed(5);
        for (i, (size, segments)) in cases(block).into_iter().enumerate() {
            let stored: u64 = segments.iter().map(|s| s.1).sum();
            // Some files hold only zeros in their data: they are holes all the same.
            let data: Vec<u8> = if i % 5 == 4 {
                vec![0; stored as usize]
            } else {
                (0..stored).map(|_| rng.u8(..)).collect()
            };
            for copy in 0..2 {
                // Twice: the second is a duplicate of the first.
                let path = format!("f{i}-{copy}");
                let meta = Meta {
                    mode: 0o644,
                    ..Meta::default()
                };
                if sparse {
                    w.add_sparse_file(path.as_bytes(), meta, size, &segments, &mut &data[..])
                        .unwrap();
                } else {
                    let full = expanded(size, &segments, &data);
                    w.add_file(path.as_bytes(), meta, &mut &full[..]).unwrap();
                }
            }
        }
        w.finish().unwrap();
        std::fs::read(&path).unwrap()
    }

    #[test]
    fn a_sparse_file_gives_the_image_of_its_expanded_content() {
        let dir = tempfile::tempdir().unwrap();
        let mut variants = vec![WriterOptions::default()];
        let mut o = WriterOptions::new(Algorithm::Zstd, Some(3), 4096).unwrap();
        variants.push(o.clone());
        o.fragments = false;
        variants.push(o.clone());
        o.fragments = true;
        o.tail_ends = true;
        variants.push(o);
        for (v, opts) in variants.iter().enumerate() {
            let dense = image(opts, false, dir.path(), &format!("dense-{v}.sqsh"));
            let sparse = image(opts, true, dir.path(), &format!("sparse-{v}.sqsh"));
            assert!(dense == sparse, "options {v}: images differ");
        }
    }

    #[test]
    fn a_bad_map_or_short_data_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::create(&dir.path().join("x.sqsh"), WriterOptions::default()).unwrap();
        let meta = Meta::default();
        let err = w
            .add_sparse_file(
                b"overlap",
                meta.clone(),
                100,
                &[(0, 50), (40, 10)],
                &mut &[0u8; 60][..],
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("overlap") && err.contains("overlaps another"),
            "{err}"
        );
        let err = w
            .add_sparse_file(b"past", meta.clone(), 100, &[(90, 20)], &mut &[1u8; 20][..])
            .unwrap_err()
            .to_string();
        assert!(err.contains("past the size 100"), "{err}");
        let err = w
            .add_sparse_file(b"short", meta, 1 << 20, &[(0, 1000)], &mut &[1u8; 10][..])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("short") && err.contains("ends before its map"),
            "{err}"
        );
    }

    /// A terabyte of holes costs no reading: the map alone says where the data is.
    #[test]
    fn holes_are_never_read() {
        struct Exact<'a>(&'a [u8]);
        impl Read for Exact<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.0.read(buf)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("tib.sqsh");
        let mut w = Writer::create(&img, WriterOptions::default()).unwrap();
        let size = 1u64 << 40;
        let data = b"startend";
        let segments = [(0, 5), (size - 3, 3)];
        let started = std::time::Instant::now();
        w.add_sparse_file(b"tib", Meta::default(), size, &segments, &mut Exact(data))
            .unwrap();
        let summary = w.finish().unwrap();
        eprintln!("1 TiB sparse file written in {:?}", started.elapsed());
        assert!(summary.bytes_used < 1 << 20, "{} bytes", summary.bytes_used);
        let image = crate::reader::Image::open(&img).unwrap();
        let mut size_read = None;
        image
            .walk(&mut |p, inode| {
                if p == b"tib"
                    && let crate::reader::InodeKind::File(f) = &inode.kind
                {
                    size_read = Some(f.size);
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(size_read, Some(size));
    }

    /// Holes are free to declare: an exabyte of them (a few hundred bytes of tar) is refused
    /// at once, naming the file, instead of taking memory and time without end (fuzz finding).
    #[test]
    fn holes_past_the_image_budget_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let opts = WriterOptions::new(Algorithm::Gzip, Some(1), 4096).unwrap();
        let mut w = Writer::create(&dir.path().join("x.sqsh"), opts).unwrap();
        let started = std::time::Instant::now();
        let err = w
            .add_sparse_file(
                b"exa",
                Meta::default(),
                1 << 60,
                &[(0, 5)],
                &mut &b"hello"[..],
            )
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(
            err.starts_with("exa: sparse file of 1152921504606846976 bytes")
                && err.contains("33554432 blocks of holes")
                && err.contains("128 GiB at 4096-byte blocks"),
            "{err}"
        );
    }
}
