use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::reader::testutil::*;

/// What we compare of each path: everything the fidelity list names.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    size: u64,
    rdev: u64,
    nlink: u64,
    content: Option<Vec<u8>>,
    target: Option<PathBuf>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn snapshot(root: &Path) -> BTreeMap<PathBuf, Seen> {
    let mut out = BTreeMap::new();
    snap(root, Path::new(""), &mut out);
    out
}

fn snap(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Seen>) {
    let p = root.join(rel);
    let md = fs::symlink_metadata(&p).unwrap();
    let ft = md.file_type();
    out.insert(
        rel.to_path_buf(),
        Seen {
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime(),
            size: if ft.is_dir() { 0 } else { md.size() },
            rdev: md.rdev(),
            nlink: if ft.is_dir() { 0 } else { md.nlink() },
            content: ft.is_file().then(|| fs::read(&p).unwrap()),
            target: ft.is_symlink().then(|| fs::read_link(&p).unwrap()),
            xattrs: xattrs_of(&p),
        },
    );
    if ft.is_dir() {
        for e in fs::read_dir(&p).unwrap() {
            snap(root, &rel.join(e.unwrap().file_name()), out);
        }
    }
}

fn assert_same_tree(src: &Path, dst: &Path) {
    let (a, b) = (snapshot(src), snapshot(dst));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "same names"
    );
    for (k, want) in &a {
        assert_eq!(&b[k], want, "{}", k.display());
    }
}

#[test]
fn extraction_reproduces_the_tree() {
    let fx = Fixture::new(2000);
    for (i, opts) in [
        &[][..],
        &["-comp", "xz", "-always-use-fragments", "-tailends"][..],
        &["-noD", "-b", "4K"][..],
    ]
    .iter()
    .enumerate()
    {
        let img = fx.image(&format!("img{i}"), opts);
        let image = Image::open(&img).unwrap();
        let dest = fx.dir.path().join(format!("out{i}"));
        let written = Arc::new(AtomicU64::new(0));
        let counter = written.clone();
        let opts_x = ExtractOptions {
            progress: Some(Progress::new(move |n| {
                counter.fetch_add(n, Ordering::Relaxed);
            })),
            ..Default::default()
        };
        let report = extract(&image, &dest, &opts_x).unwrap();
        assert_same_tree(&fx.tree, &dest);
        let h1 = fs::metadata(dest.join("hard1")).unwrap();
        let h3 = fs::metadata(dest.join("sub/deeper/hard3")).unwrap();
        assert_eq!(
            (h1.ino(), h1.nlink()),
            (h3.ino(), 3),
            "one inode, three names"
        );
        let sparse = fs::metadata(dest.join("sparse")).unwrap();
        assert!(
            sparse.blocks() * 512 < sparse.len() / 2,
            "holes are kept: {} blocks for {} bytes",
            sparse.blocks(),
            sparse.len()
        );
        assert_eq!(report.hardlinks, 2);
        assert_eq!(report.dirs as usize, 6, "{report:?}");
        assert!(report.files > 2000);
        assert_eq!(report.owners_not_set, 0);
        assert!(
            (1..report.bytes).contains(&written.load(Ordering::Relaxed)),
            "progress counts written bytes, not holes"
        );
    }
}

#[test]
fn a_second_extraction_into_the_same_place_fails_listing_the_entries() {
    let fx = Fixture::new(50);
    let image = Image::open(&fx.image("img", &[])).unwrap();
    let dest = fx.dir.path().join("out");
    extract(&image, &dest, &ExtractOptions::default()).unwrap();
    match extract(&image, &dest, &ExtractOptions::default()) {
        Err(Error::Many { count, first, .. }) => {
            assert!(count > 50, "every non-directory collides: {count}");
            assert_eq!(first.len(), SHOWN_FAILURES);
            assert!(first[0].contains("exists"), "{}", first[0]);
        }
        other => panic!("expected Many, got {other:?}"),
    }
}

#[test]
fn open_beneath_refuses_symlinks_and_dot_dot() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("real/inner")).unwrap();
    fs::create_dir(&outside).unwrap();
    symlink(&outside, root.join("abs")).unwrap();
    symlink("../outside", root.join("rel")).unwrap();
    symlink("real", root.join("inside")).unwrap();
    let fd = open_dir_fd(&root).unwrap();
    assert!(open_beneath(fd.as_fd(), b"real/inner").is_ok());
    assert!(open_beneath(fd.as_fd(), b"").is_ok());
    for bad in [
        &b"abs"[..],
        b"rel",
        b"inside/inner",
        b"real/../../outside",
        b"..",
        b"real/./inner",
    ] {
        assert!(
            open_beneath(fd.as_fd(), bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let e = open_beneath(fd.as_fd(), b"inside/inner")
        .unwrap_err()
        .to_string();
    assert!(e.contains("'inside' is a symlink"), "{e}");
}

#[test]
fn symlinks_pointing_out_are_created_but_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("d")).unwrap();
    symlink(&outside, tree.join("abs")).unwrap();
    symlink("../../../../../../../../..", tree.join("up")).unwrap();
    fs::write(tree.join("d/passwd"), b"root:x:0:0\n").unwrap();
    let img = dir.path().join("img");
    mksquashfs(&tree, &img, &[]);
    let image = Image::open(&img).unwrap();

    // A destination where "d" already is a symlink pointing out: the later entry d/passwd
    // must not go through it.
    let dest = dir.path().join("dest");
    fs::create_dir(&dest).unwrap();
    symlink(&outside, dest.join("d")).unwrap();
    let err = extract(&image, &dest, &ExtractOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("symlink"), "{err}");
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside"
    );

    // A clean destination: the symlinks exist as symlinks, and still nothing is outside.
    let dest2 = dir.path().join("dest2");
    extract(&image, &dest2, &ExtractOptions::default()).unwrap();
    assert_eq!(fs::read_link(dest2.join("abs")).unwrap(), outside);
    assert!(dest2.join("d/passwd").is_file());
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside"
    );
}

/// An attacker's image: a symlink `aaa -> outside` and a directory renamed to the same name
/// holding `passwd` (mksquashfs cannot make two entries at one path, so the directory table
/// is patched). Extraction must fail without writing outside.
#[test]
fn crafted_image_with_a_shadowing_entry_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("aab")).unwrap();
    fs::write(tree.join("aab/passwd"), b"evil\n").unwrap();
    symlink(&outside, tree.join("aaa")).unwrap();
    let img = dir.path().join("img");
    mksquashfs(&tree, &img, &["-noI", "-no-xattrs"]);
    let mut bytes = fs::read(&img).unwrap();
    let sb = Image::open(&img).unwrap().superblock().clone();
    let dir_table = sb.directory_table as usize..sb.fragment_table.min(sb.id_table) as usize;
    let at = bytes[dir_table.clone()]
        .windows(3)
        .position(|w| w == b"aab")
        .expect("name in the directory table");
    bytes[dir_table.start + at + 2] = b'a';
    let bad = dir.path().join("bad");
    fs::write(&bad, &bytes).unwrap();
    let dest = dir.path().join("dest");
    let result =
        Image::open(&bad).and_then(|image| extract(&image, &dest, &ExtractOptions::default()));
    let err = result.expect_err("shadowing entry refused").to_string();
    assert!(err.contains("duplicated"), "{err}");
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing written outside"
    );
}

const INNER_IMG: &str = "IMSCTL_TEST_UNPRIV_IMG";
const INNER_DEST: &str = "IMSCTL_TEST_UNPRIV_DEST";

/// As an unprivileged user: owners cannot be set (counted), devices fail clearly unless
/// skipped, security xattrs are counted as skipped. Runs this test binary again under setpriv.
#[test]
fn unprivileged_extraction_reports_what_it_could_not_do() {
    if !is_root() || !have_tool("setpriv") {
        imsctl_testkit::not_run!("needs root and setpriv to extract as another user");
        return;
    }
    let fx = Fixture::new(20);
    let img = fx.image("img", &[]);
    let dest = fx.dir.path().join("dest");
    fs::set_permissions(fx.dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(&img, fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "extract::tests::unprivileged_inner",
            "--include-ignored",
            "--nocapture",
        ])
        .env(INNER_IMG, &img)
        .env(INNER_DEST, &dest)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}

#[test]
#[ignore = "run by unprivileged_extraction_reports_what_it_could_not_do as another user"]
fn unprivileged_inner() {
    let (Some(img), Some(dest)) = (std::env::var_os(INNER_IMG), std::env::var_os(INNER_DEST))
    else {
        return;
    };
    assert!(!is_root());
    let image = Image::open(Path::new(&img)).unwrap();
    let dest = PathBuf::from(dest);
    let err = extract(&image, &dest.join("strict"), &ExtractOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("device") && err.contains("null"), "{err}");
    let opts = ExtractOptions {
        skip_devices: true,
        ..Default::default()
    };
    let report = extract(&image, &dest.join("lenient"), &opts).unwrap();
    assert_eq!(report.devices_skipped, 3, "{report:?}");
    assert!(report.owners_not_set > 0, "{report:?}");
    assert!(
        report.xattrs_skipped >= 2,
        "security.capability and trusted.note: {report:?}"
    );
    let md = fs::symlink_metadata(dest.join("lenient/setuid")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o4755, "setuid kept");
    assert_eq!(
        xattrs_of(&dest.join("lenient/xattr-file")).len(),
        2,
        "user xattrs restored"
    );
    assert!(
        fs::symlink_metadata(dest.join("lenient/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
}
