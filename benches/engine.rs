//! `cargo bench`: the SquashFS engine on a generated tree, one criterion group per operation
//! (pack, convert, extract, repack, tar parsing). See benches/README.md for what each measures;
//! the side-by-side comparisons with mksquashfs, tar2sqfs and unsquashfs are scripts/bench-*.sh.
//!
//! Quick run: `cargo bench --bench engine -- --quick`; one group: `cargo bench -- repack`.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io::{self, Cursor, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use imsctl::archive::{DirOptions, TarOptions, dir_into, open_compressed, tar_into};
use imsctl::repack::{BaseAwareSink, ExtractIndex, Provenance, StatKey, base_index};
use imsctl::sandbox::IdMapping;
use imsctl::squashfs::extract::{ExtractOptions, extract};
use imsctl::squashfs::reader::Image;
use imsctl::squashfs::writer::{Summary, Writer, WriterOptions};
use imsctl::squashfs::{Algorithm, EntrySink, Meta, Special};

/// Files in the generated tree (plus hardlinks, symlinks and directories).
const FILES: usize = 3000;
/// Fixed seed: every run benches the same tree.
const SEED: u64 = 0x5eed_1234;
/// One file in this many is changed before the incremental repack (about 1%, as
/// scripts/bench-repack.sh changes).
const CHANGE_ONE_IN: usize = 100;

/// Everything the benches share, made once: the tree, its image, its tars, and an extracted
/// copy with ~1% of the files changed for the repack.
struct Setup {
    _dir: tempfile::TempDir,
    tree: PathBuf,
    tree_bytes: u64,
    image: PathBuf,
    tar: Vec<u8>,
    txz: PathBuf,
    changed_root: PathBuf,
    extract_index: HashMap<Vec<u8>, StatKey>,
    scratch: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("imsctl-bench.")
            .tempdir()
            .expect("create a temporary directory");
        let tree = dir.path().join("tree");
        let tree_bytes = make_tree(&tree);
        let scratch = dir.path().join("scratch");
        fs::create_dir(&scratch).expect("create scratch directory");
        let image = dir.path().join("base.sqsh");
        pack(&tree, &image, options());
        let tar_path = dir.path().join("tree.tar");
        run(Command::new("tar")
            .args(["--format=pax", "--xattrs", "--xattrs-include=user.*", "-C"])
            .arg(&tree)
            .arg("-cf")
            .arg(&tar_path)
            .arg("."));
        let txz = dir.path().join("tree.txz");
        run(Command::new("sh").arg("-c").arg(format!(
            "xz -T0 -6 -c '{}' > '{}'",
            tar_path.display(),
            txz.display()
        )));
        let tar = fs::read(&tar_path).expect("read the tar");
        let changed_root = dir.path().join("changed");
        let base = Image::open(&image).expect("open the base image");
        extract(&base, &changed_root, &ExtractOptions::default()).expect("extract the base");
        let index = ExtractIndex::record(&changed_root, &base).expect("record the extraction");
        change_some_files(&changed_root, &index);
        Setup {
            _dir: dir,
            tree,
            tree_bytes,
            image,
            tar,
            txz,
            changed_root,
            extract_index: index.entries.into_iter().collect(),
            scratch,
        }
    }

    fn out(&self, name: &str) -> PathBuf {
        self.scratch.join(name)
    }
}

/// What imsctl packs with by default (`--comp gzip`, 128 KiB blocks, all cores).
fn options() -> WriterOptions {
    WriterOptions::new(Algorithm::Gzip, None, 128 * 1024).expect("valid writer options")
}

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("failed to run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// A tree like a small root filesystem: directories two levels deep, files of mixed sizes and
/// compressibility (most small, a few up to 512 KiB), every 50th file with a second name, a
/// symlink per 15 files, `user.*` xattrs on every 20th file. Returns the bytes of file content.
fn make_tree(root: &Path) -> u64 {
    let mut rng = fastrand::Rng::with_seed(SEED);
    let mut bytes = 0;
    for i in 0..FILES {
        let dir = root.join(format!("d{:02}/s{:02}", i % 37, (i / 37) % 11));
        fs::create_dir_all(&dir).expect("create directory");
        let path = dir.join(format!("f{i:05}.{}", ["txt", "bin", "so", "conf"][i % 4]));
        let len = match rng.u32(0..100) {
            0 => rng.usize(64 * 1024..512 * 1024),
            1..=17 => rng.usize(8 * 1024..32 * 1024),
            _ => rng.usize(0..8 * 1024),
        };
        fs::write(&path, content(&mut rng, len, i % 3 == 0)).expect("write file");
        bytes += len as u64;
        if i % 20 == 0 {
            set_user_xattr(&path, "user.bench", format!("value {i}").as_bytes());
        }
        if i % 50 == 0 {
            fs::hard_link(&path, dir.join(format!("link{i:05}"))).expect("hard link");
        }
        if i % 15 == 0 {
            let name = path.file_name().expect("file name").to_owned();
            std::os::unix::fs::symlink(&name, dir.join(format!("sym{i:05}"))).expect("symlink");
        }
    }
    bytes
}

/// `len` bytes: random (like compressed or binary data) or words (like text and configs).
fn content(rng: &mut fastrand::Rng, len: usize, random: bool) -> Vec<u8> {
    if random {
        return (0..len).map(|_| rng.u8(..)).collect();
    }
    const WORDS: &[&str] = &[
        "usr", "lib", "image", "kernel", "config", "=", "true", "0x1f",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(WORDS[rng.usize(..WORDS.len())].as_bytes());
        out.push(if rng.u8(..) < 24 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

/// Best effort: a filesystem without user xattrs (some tmpfs setups) benches without them.
fn set_user_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    let n = CString::new(name).expect("name without NUL");
    // SAFETY: both strings are NUL-terminated and outlive the call; value is a valid slice.
    unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
}

/// Append a line to one regular file in `CHANGE_ONE_IN`, as a customization would.
fn change_some_files(root: &Path, index: &ExtractIndex) {
    let mut files: Vec<&Vec<u8>> = index
        .entries
        .iter()
        .map(|(p, _)| p)
        .filter(|p| {
            fs::symlink_metadata(root.join(std::ffi::OsStr::from_bytes(p)))
                .is_ok_and(|m| m.is_file())
        })
        .collect();
    files.sort();
    for p in files.iter().step_by(CHANGE_ONE_IN) {
        let path = root.join(std::ffi::OsStr::from_bytes(p));
        let mut data = fs::read(&path).expect("read file to change");
        data.extend_from_slice(b"# changed\n");
        fs::write(&path, data).expect("write changed file");
    }
}

fn pack(tree: &Path, out: &Path, opts: WriterOptions) -> Summary {
    let mut writer = Writer::create(out, opts).expect("create image");
    dir_into(tree, &mut writer, &DirOptions::default()).expect("walk the tree");
    writer.finish().expect("finish image")
}

fn convert(input: &mut dyn Read, out: &Path) -> Summary {
    let mut writer = Writer::create(out, options()).expect("create image");
    tar_into(input, &mut writer, &TarOptions::default()).expect("convert the tar");
    writer.finish().expect("finish image")
}

/// Incremental repack as `imsctl jobs complete` does it in extract mode: unchanged files'
/// compressed blocks are copied from the base image.
fn repack_incremental(setup: &Setup, out: &Path) -> Summary {
    let base = Image::open(&setup.image).expect("open base");
    let by_path = base_index(&base).expect("index base");
    let provenance = Provenance::Extracted {
        index: setup.extract_index.clone(),
        skipped: Vec::new(),
    };
    let mut writer = Writer::create(out, options()).expect("create image");
    let mut sink = BaseAwareSink::new(
        &mut writer,
        &base,
        by_path,
        &setup.changed_root,
        provenance,
        true,
        IdMapping::Host,
    )
    .expect("base-aware sink");
    dir_into(&setup.changed_root, &mut sink, &DirOptions::default()).expect("walk the tree");
    assert!(sink.stats.reused_files > 0, "the repack reuses blocks");
    writer.finish().expect("finish image")
}

/// A sink that reads every file and keeps nothing: what is left is the tar parsing itself.
struct DiscardSink;

impl EntrySink for DiscardSink {
    fn set_root_meta(&mut self, _: Meta) -> imsctl::squashfs::Result<()> {
        Ok(())
    }
    fn add_dir(&mut self, _: &[u8], _: Meta) -> imsctl::squashfs::Result<()> {
        Ok(())
    }
    fn add_file(&mut self, _: &[u8], _: Meta, data: &mut dyn Read) -> imsctl::squashfs::Result<()> {
        io::copy(data, &mut io::sink())
            .map_err(|e| imsctl::squashfs::Error::io("read", "tar", e))?;
        Ok(())
    }
    fn add_symlink(&mut self, _: &[u8], _: Meta, _: &[u8]) -> imsctl::squashfs::Result<()> {
        Ok(())
    }
    fn add_special(&mut self, _: &[u8], _: Meta, _: Special) -> imsctl::squashfs::Result<()> {
        Ok(())
    }
    fn add_hardlink(&mut self, _: &[u8], _: &[u8]) -> imsctl::squashfs::Result<()> {
        Ok(())
    }
}

fn benches(c: &mut Criterion) {
    let setup = Setup::new();
    let bytes = Throughput::Bytes(setup.tree_bytes);

    let mut g = c.benchmark_group("pack");
    g.throughput(bytes.clone());
    g.bench_function("dir-gzip", |b| {
        b.iter(|| pack(&setup.tree, &setup.out("pack-gzip.sqsh"), options()))
    });
    g.bench_function("dir-zstd", |b| {
        let opts = WriterOptions::new(Algorithm::Zstd, None, 128 * 1024).expect("options");
        b.iter(|| pack(&setup.tree, &setup.out("pack-zstd.sqsh"), opts.clone()))
    });
    g.finish();

    let mut g = c.benchmark_group("convert");
    g.throughput(bytes.clone());
    g.bench_function("tar", |b| {
        b.iter(|| convert(&mut Cursor::new(&setup.tar), &setup.out("convert-tar.sqsh")))
    });
    g.bench_function("txz", |b| {
        b.iter(|| {
            let mut input = open_compressed(&setup.txz).expect("open txz");
            convert(&mut input, &setup.out("convert-txz.sqsh"))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("extract");
    g.throughput(bytes.clone());
    let base = Image::open(&setup.image).expect("open base");
    g.bench_function("image", |b| {
        b.iter_batched(
            || tempfile::tempdir_in(&setup.scratch).expect("tempdir"),
            |dest| {
                extract(&base, &dest.path().join("root"), &ExtractOptions::default())
                    .expect("extract");
                dest // removed after the timed part
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("repack");
    g.throughput(bytes.clone());
    g.bench_function("incremental", |b| {
        b.iter(|| repack_incremental(&setup, &setup.out("repack-incr.sqsh")))
    });
    g.bench_function("full", |b| {
        b.iter(|| {
            pack(
                &setup.changed_root,
                &setup.out("repack-full.sqsh"),
                options(),
            )
        })
    });
    g.finish();

    let mut g = c.benchmark_group("tar-parse");
    g.throughput(Throughput::Bytes(setup.tar.len() as u64));
    g.bench_function("pax", |b| {
        b.iter(|| {
            tar_into(
                &mut Cursor::new(&setup.tar),
                &mut DiscardSink,
                &TarOptions::default(),
            )
            .expect("parse the tar")
        })
    });
    g.finish();
}

criterion_group! {
    name = engine;
    // Whole-image operations take 0.1-2 s each: ten samples are plenty, and keep a full run to
    // a few minutes on two cores.
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(10));
    targets = benches
}
criterion_main!(engine);
