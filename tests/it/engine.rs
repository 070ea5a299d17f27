//! The SquashFS engine against the reference tools: `imsctl pack | convert | extract | ls`.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::common::*;

const COMPRESSORS: [&str; 4] = ["gzip", "xz", "zstd", "lz4"];

fn mksquashfs(dir: &Path, img: &Path, comp: &str) {
    run(Command::new("mksquashfs").arg(dir).arg(img).args([
        "-noappend",
        "-quiet",
        "-no-progress",
        "-comp",
        comp,
    ]));
}

fn pack(dir: &Path, img: &Path, extra: &[&str]) {
    run(imsctl().arg("pack").arg(dir).arg(img).args(extra));
}

#[test]
fn pack_lists_like_mksquashfs_and_sqfsdiff_finds_no_difference() {
    let tree = fixture_tree();
    let work = tempfile::tempdir().unwrap();
    for comp in COMPRESSORS {
        let ours = work.path().join(format!("ours-{comp}.sqsh"));
        let theirs = work.path().join(format!("mksquashfs-{comp}.sqsh"));
        pack(tree, &ours, &["--comp", comp]);
        mksquashfs(tree, &theirs, comp);
        let (a, b) = (unsquashfs_lln(&ours), unsquashfs_lln(&theirs));
        assert!(
            a.lines().count() > 10_000,
            "{comp}: listing has every entry"
        );
        assert_eq!(a, b, "{comp}: unsquashfs -lln differs from mksquashfs'");
        run(Command::new("sqfsdiff")
            .arg("-T")
            .arg("-a")
            .arg(&ours)
            .arg("-b")
            .arg(&theirs));
        let sizes = (
            fs::metadata(&ours).unwrap().len(),
            fs::metadata(&theirs).unwrap().len(),
        );
        assert!(
            sizes.0 as f64 <= sizes.1 as f64 * 1.01 + 8192.0,
            "{comp}: size {} vs mksquashfs {}",
            sizes.0,
            sizes.1
        );
    }
}

#[test]
fn kernel_mount_of_pack_matches_the_source_tree() {
    if !is_root() {
        imsctl_testkit::not_run!("not root: kernel mount check skipped");
        return;
    }
    let tree = fixture_tree();
    let want = describe_tree(tree);
    assert!(
        want.contains("security.capability=01000002"),
        "fixture carries a capability"
    );
    let work = tempfile::tempdir().unwrap();
    for comp in COMPRESSORS {
        let img = work.path().join(format!("{comp}.sqsh"));
        pack(tree, &img, &["--comp", comp]);
        let mnt = KernelMount::new(&img);
        let got = describe_tree(mnt.path());
        assert_eq!(
            got, want,
            "{comp}: kernel view of the image differs from the source tree"
        );
    }
}

#[test]
fn backhand_reads_what_we_write() {
    let tree = fixture_tree();
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("img.sqsh");
    pack(tree, &img, &[]);
    let file = std::io::BufReader::new(fs::File::open(&img).unwrap());
    let fs = backhand::FilesystemReader::from_reader(file).expect("backhand opens the image");
    let mut files = 0;
    for node in fs.files() {
        if let backhand::InnerNode::File(f) = &node.inner {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut fs.file(f).reader(), &mut data).unwrap();
            let on_disk = fs::read(tree.join(node.fullpath.strip_prefix("/").unwrap())).unwrap();
            assert_eq!(data, on_disk, "{}", node.fullpath.display());
            files += 1;
        }
    }
    assert!(files > 10_000);
}

#[test]
fn packing_is_reproducible_and_independent_of_thread_count() {
    let tree = fixture_tree();
    let work = tempfile::tempdir().unwrap();
    let one = work.path().join("one.sqsh");
    let two = work.path().join("two.sqsh");
    pack(
        tree,
        &one,
        &["--threads", "1", "--comp", "zstd", "--level", "3"],
    );
    pack(
        tree,
        &two,
        &["--threads", "3", "--comp", "zstd", "--level", "3"],
    );
    assert!(
        fs::read(&one).unwrap() == fs::read(&two).unwrap(),
        "same input and options give the same bytes"
    );
    let sb_time = u32::from_le_bytes(fs::read(&one).unwrap()[8..12].try_into().unwrap());
    assert_eq!(
        sb_time, 1_700_000_000,
        "SOURCE_DATE_EPOCH sets the superblock time"
    );
}

#[test]
fn convert_of_a_gnu_tarball_equals_pack_of_the_tree() {
    let work = tempfile::tempdir().unwrap();
    // tar cannot hold sockets: compare against a copy of the tree without one.
    let tree = &work.path().join("tree");
    run(Command::new("cp").arg("-a").arg(fixture_tree()).arg(tree));
    fs::remove_file(tree.join("devs/socket")).unwrap();
    for (name, compress) in [
        ("t.tar", ""),
        ("t.txz", "-J"),
        ("t.tgz", "-z"),
        ("t.tar.zst", "--zstd"),
    ] {
        let tarball = work.path().join(name);
        let mut tar = Command::new("tar");
        tar.args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-C"])
            .arg(tree)
            .arg("-cf")
            .arg(&tarball);
        if !compress.is_empty() {
            tar.arg(compress);
        }
        run(tar.arg("."));
        let from_tar = work.path().join(format!("{name}.sqsh"));
        let from_dir = work.path().join("dir.sqsh");
        run(imsctl().arg("convert").arg(&tarball).arg(&from_tar));
        pack(tree, &from_dir, &[]);
        run(Command::new("sqfsdiff")
            .arg("-T")
            .arg("-a")
            .arg(&from_tar)
            .arg("-b")
            .arg(&from_dir));
        assert_eq!(
            unsquashfs_lln(&from_tar),
            unsquashfs_lln(&from_dir),
            "{name}"
        );
        if is_root() {
            let (a, b) = (KernelMount::new(&from_tar), KernelMount::new(&from_dir));
            assert_eq!(
                describe_tree(a.path()),
                describe_tree(b.path()),
                "{name}: xattrs and owners survive the tarball"
            );
        }
    }
}

#[test]
fn ls_prints_what_unsquashfs_prints() {
    let tree = fixture_tree();
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("m.sqsh");
    mksquashfs(tree, &img, "xz");
    let ours = run(imsctl().arg("ls").arg(&img).env("TZ", "UTC"));
    assert_eq!(ours, unsquashfs_lln(&img));
}

#[test]
fn corrupt_and_truncated_inputs_fail_with_a_named_error() {
    let tree = fixture_tree();
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("good.sqsh");
    pack(tree, &img, &[]);
    let bytes = fs::read(&img).unwrap();
    for cut in [50usize, 4096, bytes.len() / 2, bytes.len() - 5000] {
        let bad = work.path().join(format!("cut-{cut}.sqsh"));
        fs::write(&bad, &bytes[..cut]).unwrap();
        let out = run_failing(imsctl().arg("ls").arg(&bad));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&*bad.to_string_lossy()),
            "names the file: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let tarball = work.path().join("t.txz");
    run(Command::new("tar")
        .arg("-C")
        .arg(tree)
        .arg("-cJf")
        .arg(&tarball)
        .arg("files"));
    let tbytes = fs::read(&tarball).unwrap();
    let bad = work.path().join("cut.txz");
    fs::write(&bad, &tbytes[..tbytes.len() / 2]).unwrap();
    let out_img = work.path().join("never.sqsh");
    let out = run_failing(imsctl().arg("convert").arg(&bad).arg(&out_img));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    assert!(!out_img.exists(), "no half-written output is left behind");
    let leftovers: Vec<_> = fs::read_dir(work.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files are removed");
}

/// A pax archive written by Python's tarfile from `members` (a script of `add(...)` calls).
fn python_tar(out: &Path, members: &str) {
    let program = format!(
        "import tarfile, io, sys\nt = tarfile.open(sys.argv[1], 'w', format=tarfile.PAX_FORMAT)\n\
         def add(name, data=b'', **kw):\n    i = tarfile.TarInfo(name)\n    i.size = len(data)\n    \
         i.mtime = 1600000000\n    i.mode = {{tarfile.DIRTYPE: 0o755, tarfile.SYMTYPE: 0o777}}.get(kw.get('type'), 0o644)\n    \
         for k, v in kw.items(): setattr(i, k, v)\n    t.addfile(i, io.BytesIO(data))\n\
         add('./', type=tarfile.DIRTYPE)\n{members}\nt.close()\n"
    );
    run(Command::new("python3").arg("-c").arg(program).arg(out));
}

/// GNU tar extracting as root (owners, modes, times, xattrs), into a new directory; the exit
/// status and stderr.
fn gnu_tar_extract(tarball: &Path, into: &Path) -> std::process::Output {
    fs::create_dir(into).unwrap();
    Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xf"])
        .arg(tarball)
        .arg("-C")
        .arg(into)
        .output()
        .unwrap()
}

/// Members meeting an earlier member's path: where GNU tar extracts, the kernel's view of our
/// image equals its extraction; where GNU tar fails, so do we, naming both members.
#[test]
fn tar_replacements_match_gnu_tar_extraction() {
    if !is_root() {
        imsctl_testkit::not_run!(
            "not root: GNU tar cannot restore owners and the kernel cannot mount; skipped"
        );
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let agreeing = [
        (
            "file-over-file",
            "add('f', b'one')\nadd('f', b'two', mode=0o600, uid=7)",
        ),
        (
            "symlink-over-file",
            "add('f', b'one')\nadd('f', type=tarfile.SYMTYPE, linkname='elsewhere')",
        ),
        // A relative target: GNU tar 1.34 creates an absolute one late (a placeholder file
        // first), and the late symlink then wins over the later file member, silently; we
        // keep the later member in both cases.
        (
            "file-over-symlink",
            "add('l', type=tarfile.SYMTYPE, linkname='target')\nadd('l', b'mine')",
        ),
        (
            "file-over-empty-dir",
            "add('e', type=tarfile.DIRTYPE)\nadd('e', b'file')",
        ),
        (
            "dir-over-file",
            "add('d', b'file')\nadd('d', type=tarfile.DIRTYPE, mode=0o700)\nadd('d/x', b'x')",
        ),
        (
            "dir-again",
            "add('d', type=tarfile.DIRTYPE)\nadd('d/x', b'x')\nadd('d', type=tarfile.DIRTYPE, mode=0o711, uid=5)",
        ),
        (
            "dir-over-symlink",
            "add('sub', type=tarfile.DIRTYPE)\nadd('lnk', type=tarfile.SYMTYPE, linkname='sub')\nadd('lnk', type=tarfile.DIRTYPE)",
        ),
        (
            "file-under-hardlink",
            "add('a', b'old')\nadd('h', type=tarfile.LNKTYPE, linkname='a')\nadd('a', b'new')",
        ),
    ];
    for (name, members) in agreeing {
        let tarball = work.path().join(format!("{name}.tar"));
        python_tar(&tarball, members);
        let extracted = work.path().join(format!("{name}.gnu"));
        let gnu = gnu_tar_extract(&tarball, &extracted);
        assert!(
            gnu.status.success(),
            "{name}: GNU tar: {}",
            String::from_utf8_lossy(&gnu.stderr)
        );
        let img = work.path().join(format!("{name}.sqsh"));
        let ours = imsctl()
            .arg("convert")
            .arg(&tarball)
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            ours.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&ours.stderr)
        );
        let stderr = String::from_utf8_lossy(&ours.stderr);
        assert!(
            name == "dir-again" || stderr.contains("replaced an earlier member"),
            "{name}: the replacement is reported: {stderr}"
        );
        let mnt = KernelMount::new(&img);
        assert_eq!(
            describe_tree(mnt.path()),
            describe_tree(&extracted),
            "{name}: kernel view of our image vs GNU tar's extraction"
        );
    }

    let refused = [
        (
            "file-over-full-dir",
            "add('d', type=tarfile.DIRTYPE)\nadd('d/x', b'x')\nadd('d', b'file')",
            "tar member 'd'",
            "'d/x'",
        ),
        (
            "below-a-file",
            "add('f', b'x')\nadd('f/x', b'y')",
            "tar member 'f/x'",
            "'f'",
        ),
        (
            "through-an-absolute-symlink",
            "add('etc', type=tarfile.SYMTYPE, linkname='/etc')\nadd('etc/imsctl-test', b'x')",
            "tar member 'etc/imsctl-test'",
            "'etc'",
        ),
    ];
    for (name, members, later, earlier) in refused {
        let tarball = work.path().join(format!("{name}.tar"));
        python_tar(&tarball, members);
        let gnu = gnu_tar_extract(&tarball, &work.path().join(format!("{name}.gnu")));
        assert!(!gnu.status.success(), "{name}: GNU tar refuses it too");
        let img = work.path().join(format!("{name}.sqsh"));
        let ours = run_failing(imsctl().arg("convert").arg(&tarball).arg(&img));
        let stderr = String::from_utf8_lossy(&ours.stderr);
        assert!(
            stderr.contains(later) && stderr.contains(earlier),
            "{name}: names both members: {stderr}"
        );
        assert!(!img.exists());
    }
    assert!(
        !Path::new("/etc/imsctl-test").exists(),
        "nothing written through the symlink"
    );
}

/// A pax-sparse member of 1 TiB: the holes become sparse blocks without being read, so the
/// conversion is quick (not asserted: the result is) and the image tiny.
#[test]
fn a_terabyte_sparse_member_converts_to_a_tiny_image() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    fs::create_dir(&tree).unwrap();
    let size: u64 = 1 << 40;
    let file = tree.join("disk.img");
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::create(&file).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(b"middle", size / 2 + 12345).unwrap();
        f.write_all_at(b"end", size - 3).unwrap();
    }
    let tarball = work.path().join("sparse.tar");
    run(Command::new("tar")
        .args(["--sparse", "--format=pax", "--numeric-owner", "-C"])
        .arg(&tree)
        .arg("-cf")
        .arg(&tarball)
        .arg("disk.img"));
    let img = work.path().join("sparse.sqsh");
    let started = std::time::Instant::now();
    run(imsctl().arg("convert").arg(&tarball).arg(&img));
    eprintln!("1 TiB sparse member converted in {:?}", started.elapsed());
    let listing = unsquashfs_lln(&img);
    assert!(
        listing.contains(&format!(" {size} ")) && listing.contains("squashfs-root/disk.img"),
        "{listing}"
    );
    let image_size = fs::metadata(&img).unwrap().len();
    assert!(
        image_size < 1 << 20,
        "the holes are sparse blocks, not data: {image_size} bytes"
    );
    if is_root() {
        use std::os::unix::fs::FileExt;
        let mnt = KernelMount::new(&img);
        let f = fs::File::open(mnt.path().join("disk.img")).unwrap();
        let read = |at: u64, len: usize| {
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, at).unwrap();
            buf
        };
        assert_eq!(read(0, 5), b"start");
        assert_eq!(read(size / 2 + 12345, 6), b"middle");
        assert_eq!(read(size - 3, 3), b"end");
        assert_eq!(read(size / 4, 4096), vec![0u8; 4096]);
    }
}
