//! Test fixtures shared by the reader, listing, extraction and image-source tests: a tree with
//! every kind of entry the fidelity list names, built at test time, and mksquashfs wrappers.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("test path without NUL")
}

pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and a buffer of the stated length.
    let rc = unsafe {
        libc::lsetxattr(
            cpath(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "lsetxattr {name} on {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

pub fn mknod(p: &Path, kind: libc::mode_t, perm: libc::mode_t, major: u32, minor: u32) {
    // SAFETY: valid C string.
    let rc = unsafe { libc::mknod(cpath(p).as_ptr(), kind | perm, libc::makedev(major, minor)) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

pub fn set_mtime(p: &Path, secs: i64) {
    let ts = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
    ];
    // SAFETY: valid C string and two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cpath(p).as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", p.display());
}

/// Deterministic bytes: compressible (`text`) or not.
pub fn pattern(len: usize, seed: u32, text: bool) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|i| {
            if text {
                b"the quick brown fox jumps over the lazy dog\n"[(i + seed as usize) % 44]
            } else {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            }
        })
        .collect()
}

pub const SETCAP_NET_RAW: &[u8] = &[
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// Build the fixture tree under `root` (which must not exist). `many` is how many entries the
/// big directory gets.
pub fn make_tree(root: &Path, many: usize) {
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    };
    fs::create_dir_all(root.join("sub/deeper")).unwrap();
    fs::create_dir(root.join("empty-dir")).unwrap();
    w("empty", b"");
    w("one", b"x");
    w("exact-block", &pattern(131072, 1, true));
    w("multi-block", &pattern(300_000, 2, true));
    w("noise", &pattern(200_000, 3, false));
    w("sub/deeper/small", b"small file in a deeper directory\n");
    // A sparse file: data, a 1 MiB hole, data, and a hole at the end.
    {
        let p = root.join("sparse");
        let mut f = fs::File::create(&p).unwrap();
        f.write_all(&pattern(5000, 4, true)).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &pattern(7000, 5, true), 1_200_000).unwrap();
        f.set_len(1_600_000).unwrap();
    }
    // Three names of one inode.
    let h1 = w("hard1", b"hardlinked content\n");
    fs::hard_link(&h1, root.join("sub/hard2")).unwrap();
    fs::hard_link(&h1, root.join("sub/deeper/hard3")).unwrap();
    symlink("one", root.join("rel-link")).unwrap();
    symlink("/etc/passwd", root.join("abs-link")).unwrap();
    symlink("no/such/target", root.join("dangling")).unwrap();
    let suid = w("setuid", b"#!/bin/sh\n");
    fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
    let sgid_dir = root.join("sgid-dir");
    fs::create_dir(&sgid_dir).unwrap();
    fs::set_permissions(&sgid_dir, fs::Permissions::from_mode(0o2775)).unwrap();
    let sticky = root.join("sticky");
    fs::create_dir(&sticky).unwrap();
    fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
    let odd = w("odd-perms", b"odd\n");
    fs::set_permissions(&odd, fs::Permissions::from_mode(0o6640)).unwrap();
    let long = "n".repeat(255);
    w(&long, b"long name\n");
    let many_dir = root.join("many");
    fs::create_dir(&many_dir).unwrap();
    for i in 0..many {
        fs::write(
            many_dir.join(format!("entry-with-a-longish-name-{i:05}")),
            format!("{i}\n"),
        )
        .unwrap();
    }
    // xattrs: user.* on a file and a dir, a security.capability, a value shared by two files
    // (mksquashfs stores it once, out of line) and a large value.
    let xf = w("xattr-file", b"has xattrs\n");
    set_xattr(&xf, "user.comment", b"hello");
    set_xattr(&xf, "user.big", &pattern(3000, 6, true));
    set_xattr(&root.join("sub"), "user.dir", b"on a directory");
    let cap = w("ping", b"\x7fELF pretend\n");
    set_xattr(&cap, "user.comment", b"hello");
    if is_root() {
        set_xattr(&cap, "security.capability", SETCAP_NET_RAW);
        set_xattr(&xf, "trusted.note", b"trusted value");
    }
    // Specials.
    mknod(&root.join("fifo"), libc::S_IFIFO, 0o644, 0, 0);
    {
        let sock = root.join("socket");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    }
    if is_root() {
        mknod(&root.join("null"), libc::S_IFCHR, 0o666, 1, 3);
        mknod(&root.join("disk"), libc::S_IFBLK, 0o660, 8, 1);
        mknod(&root.join("nvme"), libc::S_IFBLK, 0o600, 259, 65536);
        for p in [
            "one",
            "sub",
            "sub/hard2",
            "rel-link",
            "setuid",
            "fifo",
            "null",
        ] {
            std::os::unix::fs::lchown(root.join(p), Some(1234), Some(5678)).unwrap();
        }
        // xattrs on entries that are not opened when extracted (set through their parent).
        set_xattr(&root.join("fifo"), "trusted.on-fifo", b"fifo");
        set_xattr(&root.join("rel-link"), "trusted.on-link", b"link");
        set_xattr(&root.join("null"), "security.on-dev", b"dev");
        // chown cleared the setuid bit: set it again, as a package manager would.
        fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
    } else {
        imsctl_testkit::not_run!(
            "note: not root: fixture has no devices, foreign owners or security xattrs"
        );
    }
    // Fixed times so listings and comparisons do not depend on when the test ran.
    let mut all = Vec::new();
    collect(root, &mut all);
    for (i, p) in all.iter().enumerate() {
        set_mtime(p, 1_600_000_000 + (i as i64) * 3600);
    }
    set_mtime(root, 1_500_000_000);
}

/// Every path under `dir`, children after parents (so parents' times set first stay put).
fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for p in names {
        let is_dir = fs::symlink_metadata(&p).unwrap().is_dir();
        if is_dir {
            collect(&p, out);
        }
        out.push(p);
    }
}

/// Run mksquashfs; panics with its output on failure.
pub fn mksquashfs(src: &Path, img: &Path, opts: &[&str]) {
    let out = Command::new("mksquashfs")
        .arg(src)
        .arg(img)
        .args(["-noappend", "-quiet", "-no-progress"])
        .args(opts)
        .output()
        .expect("run mksquashfs");
    assert!(
        out.status.success(),
        "mksquashfs {opts:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `unsquashfs -lln IMG`, in this process's time zone.
pub fn unsquashfs_lln(img: &Path) -> String {
    let out = Command::new("unsquashfs")
        .arg("-lln")
        .arg(img)
        .output()
        .expect("run unsquashfs");
    assert!(
        out.status.success(),
        "unsquashfs -lln: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A fixture tree and images built from it, in one temp dir.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub tree: PathBuf,
}

impl Fixture {
    pub fn new(many: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        make_tree(&tree, many);
        Fixture { dir, tree }
    }
    pub fn image(&self, name: &str, opts: &[&str]) -> PathBuf {
        let img = self.dir.path().join(name);
        mksquashfs(&self.tree, &img, opts);
        img
    }
}

/// All xattrs of `p` (not following symlinks), sorted by name.
pub fn xattrs_of(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let c = cpath(p);
    let mut names = vec![0u8; 65536];
    // SAFETY: buffer of the stated length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0, "llistxattr {}", p.display());
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).unwrap();
        let mut val = vec![0u8; 65536];
        // SAFETY: valid C strings, buffer of the stated length.
        let n =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        assert!(n >= 0, "lgetxattr {}", p.display());
        val.truncate(n as usize);
        out.push((name.to_vec(), val));
    }
    out.sort();
    out
}

pub fn have_tool(name: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        imsctl_testkit::not_run!(
            "note: {name} is not installed; skipping the part of the test that needs it"
        );
    }
    found
}
