//! tar → sink, checked against the directory walk of the same tree (an independent reading of
//! the same data), against `tar -tf`, and against hand-made archives for the odd cases.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::Meta;
use crate::archive::dir::{DirOptions, dir_into};
use crate::archive::testutil::*;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// `tar -C root <args> -cf out .` with a stable member order and numeric owners.
fn tar_of(root: &Path, out: &Path, args: &[&str]) {
    run(Command::new("tar")
        .args(["--sort=name", "--numeric-owner"])
        .args(args)
        .arg("-C")
        .arg(root)
        .arg("-cf")
        .arg(out)
        .arg("."));
}

fn convert(path: &Path) -> Result<(RecordingSink, TarReport)> {
    let mut input = open_compressed(path)?;
    let mut sink = RecordingSink::default();
    let report = tar_into(&mut input, &mut sink, &TarOptions::default())?;
    Ok((sink, report))
}

fn convert_bytes(data: &[u8]) -> Result<(RecordingSink, TarReport)> {
    let mut sink = RecordingSink::default();
    let report = tar_into(&mut &data[..], &mut sink, &TarOptions::default())?;
    Ok((sink, report))
}

fn walk(root: &Path) -> RecordingSink {
    let mut sink = RecordingSink::default();
    dir_into(root, &mut sink, &DirOptions::default()).expect("dir_into");
    sink
}

fn without_xattrs(recs: &[Rec]) -> Vec<Rec> {
    recs.iter()
        .cloned()
        .map(|mut r| {
            match &mut r {
                Rec::Root(m)
                | Rec::Dir(_, m)
                | Rec::File(_, m, _)
                | Rec::Symlink(_, m, _)
                | Rec::Special(_, m, _) => m.xattrs.clear(),
                Rec::Hardlink(..) => {}
            }
            r
        })
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
}

fn fixture(full: bool) -> Fixture {
    let dir = tmp();
    let root = dir.path().join("root");
    let work = dir.path().join("work");
    fs::create_dir_all(&root).expect("mkdir");
    fs::create_dir_all(&work).expect("mkdir");
    make_fixture_tree(&root, full);
    Fixture {
        _dir: dir,
        root,
        work,
    }
}

#[test]
fn posix_archive_with_xattrs_equals_the_tree() {
    let fx = fixture(true);
    let tar = fx.work.join("a.tar");
    tar_of(
        &fx.root,
        &tar,
        &["--format=posix", "--xattrs", "--xattrs-include=*"],
    );
    let (sink, report) = convert(&tar).expect("convert");
    check_fixture_entries(&sink, true, true);
    assert_eq!(sink.recs, walk(&fx.root).recs);
    assert_eq!(report.entries, sink.recs.len() as u64);
    assert_eq!(report.hardlinks, 3);
    assert_eq!(
        report.bytes,
        sink.recs
            .iter()
            .map(|r| if let Rec::File(_, _, c) = r {
                c.len() as u64
            } else {
                0
            })
            .sum::<u64>()
    );
    assert_eq!(
        (
            report.skipped_xattrs,
            report.clamped_mtimes,
            report.implicit_dirs
        ),
        (0, 0, 0)
    );
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
}

#[test]
fn member_names_match_tar_listing() {
    let fx = fixture(true);
    let tar = fx.work.join("a.tar");
    tar_of(&fx.root, &tar, &["--format=gnu"]);
    let out = Command::new("tar")
        .arg("-tf")
        .arg(&tar)
        .output()
        .expect("tar -tf");
    assert!(out.status.success());
    let mut listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty() && l != ".")
        .collect();
    let (sink, _) = convert(&tar).expect("convert");
    let mut recorded: Vec<String> = sink
        .recs
        .iter()
        .map(|r| r.path().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    listed.sort();
    recorded.sort();
    assert_eq!(recorded, listed);
}

#[test]
fn gnu_and_ustar_archives_equal_the_tree_without_xattrs() {
    let fx = fixture(true);
    let tar = fx.work.join("gnu.tar");
    tar_of(&fx.root, &tar, &["--format=gnu"]);
    let (sink, report) = convert(&tar).expect("convert gnu");
    check_fixture_entries(&sink, false, true);
    assert_eq!(
        without_xattrs(&sink.recs),
        without_xattrs(&walk(&fx.root).recs)
    );
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);

    let fx = fixture(false);
    let tar = fx.work.join("ustar.tar");
    tar_of(&fx.root, &tar, &["--format=ustar"]);
    let (sink, _) = convert(&tar).expect("convert ustar");
    check_fixture_entries(&sink, false, false);
    assert_eq!(
        without_xattrs(&sink.recs),
        without_xattrs(&walk(&fx.root).recs)
    );
}

#[test]
fn every_gnu_sparse_format_expands_to_the_real_content() {
    let fx = fixture(false);
    let cases: [(&str, &[&str]); 4] = [
        ("old-gnu", &["--format=gnu", "--sparse"]),
        (
            "pax-0.0",
            &["--format=posix", "--sparse", "--sparse-version=0.0"],
        ),
        (
            "pax-0.1",
            &["--format=posix", "--sparse", "--sparse-version=0.1"],
        ),
        (
            "pax-1.0",
            &["--format=posix", "--sparse", "--sparse-version=1.0"],
        ),
    ];
    for (name, args) in cases {
        let tar = fx.work.join(format!("{name}.tar"));
        tar_of(&fx.root, &tar, args);
        let stored = fs::metadata(&tar).expect("stat").len();
        assert!(
            stored < 2 * 1024 * 1024,
            "{name}: the archive holds the holes ({stored} bytes)"
        );
        let (sink, report) = convert(&tar).unwrap_or_else(|e| panic!("{name}: {e}"));
        let Rec::File(_, _, content) = sink.get("var/sparse.img") else {
            panic!("{name}: no sparse file")
        };
        assert!(*content == sparse_content(), "{name}: content differs");
        assert!(
            report.bytes >= 10 * 1024 * 1024,
            "{name}: bytes count the expanded size"
        );
        assert_eq!(
            without_xattrs(&sink.recs),
            without_xattrs(&walk(&fx.root).recs),
            "{name}"
        );
    }
}

#[test]
fn compressed_archives_convert_like_the_plain_one() {
    let fx = fixture(true);
    let plain = fx.work.join("a.tar");
    tar_of(
        &fx.root,
        &plain,
        &["--format=posix", "--xattrs", "--xattrs-include=*"],
    );
    let (expected, _) = convert(&plain).expect("plain");
    let compress = |tool: &[&str], out: &str| {
        let path = fx.work.join(out);
        let data = Command::new(tool[0])
            .args(&tool[1..])
            .arg("-c")
            .arg(&plain)
            .output()
            .expect("compressor");
        assert!(data.status.success(), "{tool:?}");
        fs::write(&path, data.stdout).expect("write");
        path
    };
    let mut variants = vec![
        compress(&["gzip", "-6"], "a.tar.gz"),
        compress(&["xz", "-T1"], "a.txz"),
        // Many small blocks: the multi-threaded decoder decodes them in parallel.
        compress(&["xz", "-T2", "--block-size=65536"], "a.mt.txz"),
    ];
    if Command::new("zstd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        variants.push(compress(&["zstd", "-q", "-3"], "a.tar.zst"));
    } else {
        let path = fx.work.join("a.tar.zst");
        let data = zstd::encode_all(fs::File::open(&plain).expect("open"), 3).expect("zstd");
        fs::write(&path, data).expect("write");
        variants.push(path);
    }
    // Concatenated streams (what `cat a.gz b.gz` or pxz make): all must be read.
    let halves = fx.work.join("two-streams.txz");
    let bytes = fs::read(&plain).expect("read");
    let split = bytes.len() / 2;
    let mut out = Vec::new();
    for part in [&bytes[..split], &bytes[split..]] {
        out.extend(liblzma::encode_all(part, 1).expect("xz"));
        out.extend([0u8; 4]);
    }
    fs::write(&halves, out).expect("write");
    variants.push(halves);
    for path in variants {
        assert_eq!(
            detect_compression(&fs::read(&path).expect("read")[..6]).ok(),
            Some(if path.to_string_lossy().ends_with(".gz") {
                Compression::Gzip
            } else if path.to_string_lossy().ends_with(".zst") {
                Compression::Zstd
            } else {
                Compression::Xz
            })
        );
        let (sink, _) = convert(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            sink.recs == expected.recs,
            "{} converts differently",
            path.display()
        );
    }
}

/// Archives written by Python's tarfile: names and records GNU tar will not produce.
fn python_tar(out: &Path, script: &str) {
    python_tar_with_globals(out, "{}", script)
}

fn python_tar_with_globals(out: &Path, globals: &str, script: &str) {
    let program = format!(
        "import tarfile, io, sys\nt = tarfile.open(sys.argv[1], 'w', format=tarfile.PAX_FORMAT, pax_headers={globals})\n\
         def add(name, data=b'', **kw):\n    i = tarfile.TarInfo(name)\n    i.size = len(data)\n    \
         for k, v in kw.items(): setattr(i, k, v)\n    t.addfile(i, io.BytesIO(data))\n{script}\nt.close()\n"
    );
    run(Command::new("python3").arg("-c").arg(program).arg(out));
}

#[test]
fn escaping_member_names_are_refused_by_name() {
    let dir = tmp();
    let cases = [
        (
            "add('../evil', b'x')",
            "tar member '../evil': path escapes the image root",
        ),
        (
            "add('/abs', b'x')",
            "tar member '/abs': absolute path escapes the image root",
        ),
        (
            "add('a/../../b', b'x')",
            "tar member 'a/../../b': path escapes the image root",
        ),
        (
            "add('ok', b'x')\nadd('link', type=tarfile.LNKTYPE, linkname='../etc/shadow')",
            "hardlink target '../etc/shadow'",
        ),
    ];
    for (i, (script, message)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("evil{i}.tar"));
        python_tar(&path, script);
        let err = convert(&path).expect_err(script).to_string();
        assert!(err.contains(message), "{script}: got '{err}'");
    }
}

#[test]
fn pax_records_owners_times_and_xattr_spellings() {
    let dir = tmp();
    let path = dir.path().join("pax.tar");
    python_tar_with_globals(
        &path,
        "{'uid': '42', 'gid': '43'}",
        "add('./', type=tarfile.DIRTYPE, mode=0o755, mtime=5)\n\
         add('old', b'x', pax_headers={'mtime': '-5.5'})\n\
         add('future', b'x', pax_headers={'mtime': '99999999999.25'})\n\
         add('fraction', b'x', pax_headers={'mtime': '1700000000.999'})\n\
         add('owned', b'x', uid=7, gid=8, pax_headers={'uid': '70000', 'gid': '80000'})\n\
         add('xa', b'x', pax_headers={'LIBARCHIVE.xattr.user.%41b': 'aGVsbG8', \
             'SCHILY.xattr.user.z': 'raw', 'LIBARCHIVE.xattr.user.z': 'aWdub3JlZA==', \
             'SCHILY.xattr.system.posix_acl_access': 'acl', 'SCHILY.acl.access': 'user::rw-', \
             'RHT.security.selinux': 'system_u:object_r:bin_t:s0'})\n\
         add('b/c/d', b'deep')\n",
    );
    let (sink, report) = convert(&path).expect("convert");
    let meta = |p: &str| sink.get(p).meta().cloned().unwrap_or_else(|| panic!("{p}"));
    assert_eq!(sink.root().map(|m| (m.uid, m.mtime)), Some((42, 5)));
    assert_eq!(
        (meta("old").mtime, meta("old").uid, meta("old").gid),
        (0, 42, 43)
    );
    assert_eq!(meta("future").mtime, u32::MAX);
    assert_eq!(meta("fraction").mtime, 1_700_000_000);
    assert_eq!((meta("owned").uid, meta("owned").gid), (70000, 80000));
    let names: Vec<(String, String)> = meta("xa")
        .xattrs
        .iter()
        .map(|x| {
            (
                String::from_utf8_lossy(&x.name).into(),
                String::from_utf8_lossy(&x.value).into(),
            )
        })
        .collect();
    let want = [
        ("security.selinux", "system_u:object_r:bin_t:s0"),
        ("user.Ab", "hello"),
        ("user.z", "raw"),
    ];
    assert_eq!(names, want.map(|(a, b)| (a.to_string(), b.to_string())));
    assert_eq!(report.clamped_mtimes, 2);
    assert_eq!(report.skipped_xattrs, 2);
    assert_eq!(report.implicit_dirs, 2);
    assert_eq!(
        sink.get("b"),
        &Rec::Dir(
            "b".into(),
            Meta {
                mode: 0o755,
                ..Meta::default()
            }
        )
    );
    assert!(matches!(sink.get("b/c"), Rec::Dir(..)));
    let warnings = report.warnings.join("\n");
    for needle in [
        "SCHILY.acl.access",
        "system.posix_acl_access",
        "2 mtime(s)",
        "2 parent directories",
    ] {
        assert!(warnings.contains(needle), "no '{needle}' in:\n{warnings}");
    }
}

#[test]
fn a_directory_listed_after_its_children_gets_its_own_metadata() {
    let dir = tmp();
    let path = dir.path().join("late.tar");
    python_tar(
        &path,
        "add('a/f', b'x')\nadd('a', type=tarfile.DIRTYPE, mode=0o700, uid=5)\n",
    );
    let (sink, report) = convert(&path).expect("convert");
    let dirs: Vec<&Rec> = sink.recs.iter().filter(|r| r.path() == "a").collect();
    assert_eq!(dirs.len(), 2, "implicit first, then the listed one");
    assert!(matches!(dirs[1], Rec::Dir(_, m) if m.mode == 0o700 && m.uid == 5));
    assert_eq!(report.implicit_dirs, 1);
}

#[test]
fn a_regular_member_with_a_trailing_slash_is_a_directory() {
    let dir = tmp();
    let path = dir.path().join("v7.tar");
    python_tar(&path, "add('olddir/', mode=0o750)\nadd('./', mode=0o711)");
    let (sink, _) = convert(&path).expect("convert");
    assert!(matches!(sink.get("olddir"), Rec::Dir(_, m) if m.mode == 0o750));
    assert_eq!(sink.root().map(|m| m.mode), Some(0o711));
}

#[test]
fn unsupported_members_are_errors_naming_them() {
    let dir = tmp();
    let path = dir.path().join("odd.tar");
    python_tar(&path, "add('weird', b'', type=b'Q')");
    let err = convert(&path).expect_err("unknown type").to_string();
    assert_eq!(err, "tar member 'weird': unsupported tar entry type 'Q'");

    let path = dir.path().join("root-file.tar");
    python_tar(&path, "add('.', b'x')");
    let err = convert(&path).expect_err("root as file").to_string();
    assert!(
        err.contains("names the image root but is not a directory"),
        "{err}"
    );

    let path = dir.path().join("sparse2.tar");
    python_tar(
        &path,
        "add('s', b'x', pax_headers={'GNU.sparse.major': '2', 'GNU.sparse.minor': '0', 'GNU.sparse.realsize': '1'})",
    );
    let err = convert(&path).expect_err("sparse 2.0").to_string();
    assert!(
        err.starts_with("tar member 's': GNU sparse format 2.0 is not supported"),
        "{err}"
    );

    let path = dir.path().join("liar.tar");
    python_tar(
        &path,
        "add('s', b'abcd', pax_headers={'GNU.sparse.size': '10', 'GNU.sparse.map': '0,2'})",
    );
    let err = convert(&path)
        .expect_err("map lists less than stored")
        .to_string();
    assert!(
        err.contains("tar member 's'") && err.contains("more data than its map lists"),
        "{err}"
    );
}

#[test]
fn truncated_and_corrupt_archives_are_errors_never_panics() {
    let fx = fixture(true);
    let tar = fx.work.join("a.tar");
    tar_of(
        &fx.root,
        &tar,
        &["--format=posix", "--xattrs", "--xattrs-include=*"],
    );
    let bytes = fs::read(&tar).expect("read");

    // Inside big.bin's data: the member is named, with the archive offset.
    let (sink, _) = convert_bytes(&bytes).expect("whole");
    assert!(sink.find("usr/lib/big.bin").is_some());
    let big_at = bytes
        .windows(6)
        .position(|w| w == [0u8, 7, 14, 21, 28, 35])
        .expect("big.bin data");
    let err = convert_bytes(&bytes[..big_at + 1000])
        .expect_err("truncated")
        .to_string();
    assert!(
        err.starts_with(
            "tar member './usr/lib/big.bin': the archive ends inside the member's data"
        ),
        "{err}"
    );

    // Inside a header.
    let err = convert_bytes(&bytes[..1024 + 100])
        .expect_err("truncated header")
        .to_string();
    assert!(err.contains("tar archive corrupt at byte"), "{err}");

    // A header with a broken checksum.
    let mut broken = bytes.clone();
    broken[1024 + 10] ^= 0x55;
    let err = convert_bytes(&broken).expect_err("checksum").to_string();
    assert!(err.contains("checksum"), "{err}");

    // Every cut point of a small archive, up to its end marker: an error, or success with the
    // missing end marker reported.
    let small = fx.work.join("small.tar");
    run(Command::new("tar")
        .args([
            "--sort=name",
            "--format=posix",
            "--xattrs",
            "--xattrs-include=*",
            "-C",
        ])
        .arg(&fx.root)
        .arg("-cf")
        .arg(&small)
        .args([
            "etc",
            "bin",
            "dev",
            "home",
            "usr/bin",
            "abs",
            &deep_file_path(),
        ]));
    let small = fs::read(&small).expect("read");
    let end_marker = small
        .iter()
        .rposition(|&b| b != 0)
        .expect("not all zeros")
        .div_ceil(512)
        * 512;
    for cut in (0..end_marker).step_by(97) {
        match convert_bytes(&small[..cut]) {
            Err(_) => {}
            Ok((_, report)) => assert!(
                report
                    .warnings
                    .iter()
                    .any(|w| w.contains("no end-of-archive marker")),
                "cut at {cut} accepted silently"
            ),
        }
    }

    // A corrupt xz stream.
    let txz = fx.work.join("a.txz");
    let mut xz = liblzma::encode_all(&bytes[..], 1).expect("xz");
    let middle = xz.len() / 2;
    xz[middle] ^= 0xff;
    fs::File::create(&txz)
        .and_then(|mut f| f.write_all(&xz))
        .expect("write");
    let err = convert(&txz).expect_err("corrupt xz").to_string();
    assert!(err.contains("xz decompression failed"), "{err}");

    // Truncated .txz: the decoder notices.
    fs::write(&txz, &xz[..middle]).expect("write");
    assert!(convert(&txz).is_err());
}

#[test]
fn unknown_compressions_are_named() {
    let dir = tmp();
    let path = dir.path().join("x.tar.bz2");
    fs::write(&path, b"BZh91AY&SY....").expect("write");
    let err = convert(&path).expect_err("bzip2").to_string();
    assert!(
        err.contains("bzip2-compressed input is not supported"),
        "{err}"
    );
    let garbage = dir.path().join("garbage.txz");
    let mut xz = liblzma::encode_all(&[0u8; 10240][..], 1).expect("xz");
    xz.extend(b"not xz at all");
    fs::write(&garbage, xz).expect("write");
    let err = convert(&garbage).expect_err("garbage").to_string();
    assert!(
        err.contains("trailing garbage after the xz stream"),
        "{err}"
    );
    let err = convert(&dir.path().join("missing.tar"))
        .expect_err("missing")
        .to_string();
    assert!(err.starts_with("failed to open archive"), "{err}");
}

#[test]
fn numeric_fields() {
    assert_eq!(parse_numeric_field(b"00000001750\0"), Some(0o1750));
    assert_eq!(parse_numeric_field(b"   17 \0\0\0\0\0\0"), Some(0o17));
    assert_eq!(parse_numeric_field(b"\0\0\0\0\0\0\0\0\0\0\0\0"), Some(0));
    let mut big = [0u8; 12];
    big[0] = 0x80;
    big[11] = 0x10;
    assert_eq!(parse_numeric_field(&big), Some(16));
    let minus_two = [
        0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
    ];
    assert_eq!(parse_numeric_field(&minus_two), Some(-2));
    assert_eq!(parse_pax_time(b"-1.5"), Some(-2));
    assert_eq!(parse_pax_time(b"-0.5"), Some(-1));
    assert_eq!(parse_pax_time(b"12.000"), Some(12));
    assert_eq!(parse_pax_time(b"12.x"), None);
    assert_eq!(base64_decode(b"aGVsbG8"), Some(b"hello".to_vec()));
    assert_eq!(base64_decode(b"aGVsbG8="), Some(b"hello".to_vec()));
    assert_eq!(
        base64_decode(b"AQAAAgAgAAAAAAAAAAAAAAAAAAA="),
        Some(CAP_NET_RAW.to_vec())
    );
    assert_eq!(url_decode(b"user.%41%2fb"), Some(b"user.A/b".to_vec()));
}

/// Reads every file to the end and keeps nothing: for timing the conversion itself.
struct Discarding;

impl crate::EntrySink for Discarding {
    fn set_root_meta(&mut self, _: Meta) -> crate::Result<()> {
        Ok(())
    }
    fn add_dir(&mut self, _: &[u8], _: Meta) -> crate::Result<()> {
        Ok(())
    }
    fn add_file(
        &mut self,
        path: &[u8],
        _: Meta,
        data: &mut dyn std::io::Read,
    ) -> crate::Result<()> {
        std::io::copy(data, &mut std::io::sink())
            .map(|_| ())
            .map_err(|e| crate::Error::io("read", String::from_utf8_lossy(path).into_owned(), e))
    }
    fn add_symlink(&mut self, _: &[u8], _: Meta, _: &[u8]) -> crate::Result<()> {
        Ok(())
    }
    fn add_special(&mut self, _: &[u8], _: Meta, _: crate::Special) -> crate::Result<()> {
        Ok(())
    }
    fn add_hardlink(&mut self, _: &[u8], _: &[u8]) -> crate::Result<()> {
        Ok(())
    }
}

/// Not a test of correctness: how long reading a real archive takes
/// (`IMSCTL_TAR=x.txz cargo test --lib time_tar -- --ignored --nocapture`).
#[test]
#[ignore]
fn time_tar() {
    let Some(path) = std::env::var_os("IMSCTL_TAR") else {
        println!("set IMSCTL_TAR to an archive");
        return;
    };
    let start = std::time::Instant::now();
    let mut input = open_compressed(Path::new(&path)).expect("open");
    let report = tar_into(&mut input, &mut Discarding, &TarOptions::default()).expect("convert");
    println!(
        "{} entries, {} bytes in {:?}",
        report.entries,
        report.bytes,
        start.elapsed()
    );
}

/// The whole path with the real writer: the tar of a tree and the tree itself must give the
/// same image, byte for byte, and its listing must be mksquashfs' listing of the tree.
#[test]
fn tar_and_tree_pack_to_the_same_image_as_mksquashfs_lists() {
    use crate::writer::{Writer, WriterOptions};
    let fx = fixture(true);
    let tar = fx.work.join("a.tar");
    tar_of(
        &fx.root,
        &tar,
        &["--format=posix", "--xattrs", "--xattrs-include=*"],
    );
    let from_tree = fx.work.join("tree.sqsh");
    let mut writer = Writer::create(&from_tree, WriterOptions::default()).expect("writer");
    dir_into(&fx.root, &mut writer, &DirOptions::default()).expect("dir_into");
    writer.finish().expect("finish");
    let from_tar = fx.work.join("tar.sqsh");
    let mut writer = Writer::create(&from_tar, WriterOptions::default()).expect("writer");
    let mut input = open_compressed(&tar).expect("open");
    tar_into(&mut input, &mut writer, &TarOptions::default()).expect("tar_into");
    writer.finish().expect("finish");
    assert!(
        fs::read(&from_tree).expect("read") == fs::read(&from_tar).expect("read"),
        "images differ"
    );

    let reference = fx.work.join("mksquashfs.sqsh");
    run(Command::new("mksquashfs")
        .arg(&fx.root)
        .arg(&reference)
        .args(["-noappend", "-no-progress", "-quiet", "-mkfs-time", "0"]));
    let listing = |image: &Path| {
        let out = Command::new("unsquashfs")
            .arg("-lln")
            .arg(image)
            .output()
            .expect("unsquashfs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let ours = listing(&from_tar);
    assert!(
        ours.contains("squashfs-root/usr/bin/ping") && ours.contains("1234/5678"),
        "{ours}"
    );
    assert_eq!(ours, listing(&reference));
}

/// A pax xattr past Linux's 64 KiB: the member and the xattr are named when the image is
/// written, not when a later read of the image fails.
#[test]
fn an_xattr_value_over_64_kib_is_refused_naming_the_member() {
    use crate::writer::{Writer, WriterOptions};
    let dir = tmp();
    let path = dir.path().join("big-xattr.tar");
    python_tar(
        &path,
        "add('etc/', type=tarfile.DIRTYPE)\n\
         add('etc/ok', b'x', pax_headers={'SCHILY.xattr.user.fine': 'v' * 65536})\n\
         add('etc/big', b'x', pax_headers={'SCHILY.xattr.user.huge': 'v' * 102400})\n",
    );
    let img = dir.path().join("out.sqsh");
    let mut writer = Writer::create(&img, WriterOptions::default()).expect("writer");
    let mut input = open_compressed(&path).expect("open");
    let err = tar_into(&mut input, &mut writer, &TarOptions::default())
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("'etc/big'") && err.contains("user.huge") && err.contains("102400"),
        "{err}"
    );
}

#[test]
fn later_members_replace_earlier_ones_as_gnu_tar_extracts() {
    let dir = tmp();
    let path = dir.path().join("replace.tar");
    python_tar(
        &path,
        "add('f', b'one')\nadd('f', b'two')\n\
         add('l', type=tarfile.SYMTYPE, linkname='f')\nadd('l', b'file now')\n\
         add('e', type=tarfile.DIRTYPE)\nadd('e', b'was an empty directory')\n\
         add('d', b'was a file')\nadd('d', type=tarfile.DIRTYPE, mode=0o700)\nadd('d/x', b'x')\n\
         add('d', type=tarfile.DIRTYPE, mode=0o750)\n",
    );
    let (sink, report) = convert(&path).expect("convert");
    assert_eq!(
        report.replaced, 4,
        "f, l, e and d; d again is not a replacement"
    );
    let warnings = report.warnings.join("\n");
    assert!(
        warnings.contains("4 member(s) replaced an earlier member of the same path")
            && warnings.contains("(first: 'f')"),
        "{warnings}"
    );
    let last = |p: &str| sink.recs.iter().rev().find(|r| r.path() == p).cloned();
    assert!(matches!(last("f"), Some(Rec::File(_, _, c)) if c == b"two"));
    assert!(matches!(last("l"), Some(Rec::File(..))));
    assert!(matches!(last("d"), Some(Rec::Dir(_, m)) if m.mode == 0o750));
}

#[test]
fn members_gnu_tar_would_not_extract_are_refused_naming_both() {
    let dir = tmp();
    let cases = [
        (
            "add('d', type=tarfile.DIRTYPE)\nadd('d/x', b'x')\nadd('d', b'file')",
            "tar member 'd': would replace the directory 'd' and what earlier members put in it (first: 'd/x')",
        ),
        (
            "add('i/x', b'x')\nadd('i', b'file')",
            "tar member 'i': would replace the directory 'i' and what earlier members put in it (first: 'i/x')",
        ),
        (
            "add('sub', type=tarfile.DIRTYPE)\nadd('lnk', type=tarfile.SYMTYPE, linkname='sub')\nadd('lnk/file', b'x')",
            "tar member 'lnk/file': lies below 'lnk', which an earlier member made a symlink (to 'sub')",
        ),
        (
            "add('etc', type=tarfile.SYMTYPE, linkname='/etc')\nadd('etc/passwd', b'x')",
            "tar member 'etc/passwd': lies below 'etc', which an earlier member made a symlink (to '/etc')",
        ),
        (
            "add('lnk', type=tarfile.SYMTYPE, linkname='/')\nadd('lnk/a/b', b'x')",
            "tar member 'lnk/a/b': lies below 'lnk', which an earlier member made a symlink (to '/')",
        ),
        (
            "add('f', b'x')\nadd('f/x', b'y')",
            "tar member 'f/x': lies below 'f', which an earlier member made a file, not a directory",
        ),
    ];
    for (i, (script, message)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("refused{i}.tar"));
        python_tar(&path, script);
        let err = convert(&path).expect_err(script).to_string();
        assert!(
            err.contains(message),
            "{script}:\ngot  '{err}'\nwant '{message}'"
        );
    }
}

#[test]
fn malformed_pax_sizes_and_overlong_names_are_refused() {
    let dir = tmp();
    let long = "n".repeat(256);
    let cases = [
        (
            "add('f', b'x', pax_headers={'size': '1e20'})".to_string(),
            "tar member 'f': bad pax record size=1e20".to_string(),
        ),
        (
            "add('f', b'x', pax_headers={'size': '-5'})".to_string(),
            "tar member 'f': bad pax record size=-5".to_string(),
        ),
        (
            format!("add('d/{long}', b'x')"),
            "a name in the path is longer than 255 bytes (NAME_MAX)".to_string(),
        ),
        (
            format!("add('ok', b'x')\nadd('h', type=tarfile.LNKTYPE, linkname='{long}')"),
            "a name in the path is longer than 255 bytes".to_string(),
        ),
    ];
    for (i, (script, message)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.tar"));
        python_tar(&path, script);
        let err = convert(&path).expect_err(script).to_string();
        assert!(err.contains(message.as_str()), "{script}: got '{err}'");
    }
    // 255 bytes is fine.
    let path = dir.path().join("longest.tar");
    python_tar(&path, &format!("add('d/{}', b'x')", "n".repeat(255)));
    convert(&path).expect("a 255-byte name");
}

/// Through the real writer, each GNU sparse format (holes handed over as a map) gives the image
/// the tree gives (holes read as zeros), byte for byte.
#[test]
fn sparse_members_pack_like_the_tree_through_the_writer() {
    use crate::writer::{Writer, WriterOptions};
    let fx = fixture(false);
    let from_tree = fx.work.join("tree.sqsh");
    let mut writer = Writer::create(&from_tree, WriterOptions::default()).expect("writer");
    dir_into(
        &fx.root,
        &mut writer,
        &DirOptions {
            xattrs: false,
            ..DirOptions::default()
        },
    )
    .expect("dir_into");
    writer.finish().expect("finish");
    for version in ["0.0", "0.1", "1.0"] {
        let tar = fx.work.join(format!("pax-{version}.tar"));
        tar_of(
            &fx.root,
            &tar,
            &[
                "--format=posix",
                "--sparse",
                &format!("--sparse-version={version}"),
            ],
        );
        let img = fx.work.join(format!("pax-{version}.sqsh"));
        let mut writer = Writer::create(&img, WriterOptions::default()).expect("writer");
        let mut input = open_compressed(&tar).expect("open");
        let opts = TarOptions {
            xattrs: false,
            ..TarOptions::default()
        };
        tar_into(&mut input, &mut writer, &opts).expect("tar_into");
        writer.finish().expect("finish");
        assert!(
            fs::read(&img).expect("read") == fs::read(&from_tree).expect("read"),
            "sparse {version}: the image differs from the tree's"
        );
    }
}
