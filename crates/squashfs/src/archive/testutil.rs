//! Test helpers: a sink that records every call, and a fixture tree with every kind of entry
//! a root filesystem holds.

use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchownat, mkfifo};

use crate::{self as squashfs, EntrySink, Meta, Special, Xattr};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rec {
    Root(Meta),
    Dir(String, Meta),
    File(String, Meta, Vec<u8>),
    Symlink(String, Meta, Vec<u8>),
    Special(String, Meta, Special),
    Hardlink(String, String),
}

impl Rec {
    pub fn path(&self) -> &str {
        match self {
            Rec::Root(_) => "",
            Rec::Dir(p, _)
            | Rec::File(p, _, _)
            | Rec::Symlink(p, _, _)
            | Rec::Special(p, _, _)
            | Rec::Hardlink(p, _) => p,
        }
    }
    pub fn meta(&self) -> Option<&Meta> {
        match self {
            Rec::Root(m)
            | Rec::Dir(_, m)
            | Rec::File(_, m, _)
            | Rec::Symlink(_, m, _)
            | Rec::Special(_, m, _) => Some(m),
            Rec::Hardlink(..) => None,
        }
    }
}

#[derive(Debug, Default)]
pub struct RecordingSink {
    pub recs: Vec<Rec>,
}

impl RecordingSink {
    pub fn find(&self, path: &str) -> Option<&Rec> {
        self.recs
            .iter()
            .find(|r| r.path() == path && !matches!(r, Rec::Root(_)))
    }
    pub fn get(&self, path: &str) -> &Rec {
        self.find(path)
            .unwrap_or_else(|| panic!("no entry '{path}' recorded"))
    }
    pub fn root(&self) -> Option<&Meta> {
        self.recs.iter().find_map(|r| match r {
            Rec::Root(m) => Some(m),
            _ => None,
        })
    }
}

fn s(path: &[u8]) -> String {
    String::from_utf8(path.to_vec()).expect("test paths are UTF-8")
}

impl EntrySink for RecordingSink {
    fn set_root_meta(&mut self, meta: Meta) -> squashfs::Result<()> {
        self.recs.push(Rec::Root(meta));
        Ok(())
    }
    fn add_dir(&mut self, path: &[u8], meta: Meta) -> squashfs::Result<()> {
        self.recs.push(Rec::Dir(s(path), meta));
        Ok(())
    }
    fn add_file(&mut self, path: &[u8], meta: Meta, data: &mut dyn Read) -> squashfs::Result<()> {
        let mut content = Vec::new();
        data.read_to_end(&mut content)
            .map_err(|e| squashfs::Error::io("read data of", s(path), e))?;
        self.recs.push(Rec::File(s(path), meta, content));
        Ok(())
    }
    fn add_symlink(&mut self, path: &[u8], meta: Meta, target: &[u8]) -> squashfs::Result<()> {
        self.recs.push(Rec::Symlink(s(path), meta, target.to_vec()));
        Ok(())
    }
    fn add_special(&mut self, path: &[u8], meta: Meta, kind: Special) -> squashfs::Result<()> {
        self.recs.push(Rec::Special(s(path), meta, kind));
        Ok(())
    }
    fn add_hardlink(&mut self, path: &[u8], target: &[u8]) -> squashfs::Result<()> {
        self.recs.push(Rec::Hardlink(s(path), s(target)));
        Ok(())
    }
}

/// The fixture's mtime for every entry (fixed, so that listings compare exactly).
pub const FIXTURE_MTIME: i64 = 1_600_000_000;
/// `security.capability` of ping (cap_net_raw+ep), as `setfattr -v 0sAQAAAgAgAAAAAAAAAAAAAAAAAAA=`.
pub const CAP_NET_RAW: [u8; 20] = [1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
pub const LONG_COMPONENT: usize = 255;

pub fn long_dir_name() -> String {
    format!("long{}", "d".repeat(LONG_COMPONENT - 4))
}

/// A path over 100 bytes made of ordinary components (needs GNU 'L' or pax 'path').
pub fn deep_file_path() -> String {
    format!("deep/{}/{}/file.txt", "a".repeat(60), "b".repeat(60))
}

pub fn deep_hardlink_path() -> String {
    deep_file_path().replace("file.txt", "hard.txt")
}

pub fn big_content() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

pub fn sparse_content() -> Vec<u8> {
    let mut v = vec![0u8; 10 * 1024 * 1024];
    v[4096..4101].copy_from_slice(b"hello");
    v[8 * 1024 * 1024..8 * 1024 * 1024 + 3].copy_from_slice(b"end");
    v
}

pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    let n = CString::new(name).expect("name without NUL");
    // SAFETY: valid C strings and buffer for the duration of the call.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {name} on {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn chown(path: &Path, uid: u32, gid: u32) {
    fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .expect("chown (tests run as root)");
}

/// Builds the fixture tree under `root` (which must exist). `full` adds what ustar cannot
/// hold: a 255-byte name, a path over 100 bytes... (kept out for the ustar test).
pub fn make_fixture_tree(root: &Path, full: bool) {
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("has parent")).expect("mkdir");
        fs::write(&p, data).expect("write");
    };
    w("etc/hostname", b"node\n");
    w("empty", b"");
    w("usr/lib/big.bin", &big_content());
    w("usr/bin/ping", b"\x7fELF ping");
    w("usr/bin/su", b"\x7fELF su");
    fs::set_permissions(root.join("usr/bin/su"), fs::Permissions::from_mode(0o4755))
        .expect("chmod");
    w("bin/busybox", b"\x7fELF busybox");
    fs::hard_link(root.join("bin/busybox"), root.join("bin/ls")).expect("link");
    fs::hard_link(root.join("bin/busybox"), root.join("bin/sh")).expect("link");
    symlink("usr/lib", root.join("lib")).expect("symlink");
    symlink("/etc/hostname", root.join("abs")).expect("symlink");
    symlink("nowhere/x", root.join("dangling")).expect("symlink");
    fs::create_dir_all(root.join("dev")).expect("mkdir");
    fs::create_dir_all(root.join("run")).expect("mkdir");
    let rw = Mode::from_bits_truncate(0o666);
    mknod(&root.join("dev/null"), SFlag::S_IFCHR, rw, makedev(1, 3))
        .expect("mknod (tests run as root)");
    // mknod's mode passes through the umask.
    fs::set_permissions(root.join("dev/null"), fs::Permissions::from_mode(0o666)).expect("chmod");
    mknod(
        &root.join("dev/loop0"),
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o660),
        makedev(7, 0),
    )
    .expect("mknod");
    mkfifo(&root.join("run/initctl"), Mode::from_bits_truncate(0o600)).expect("mkfifo");
    fs::create_dir_all(root.join("tmp")).expect("mkdir");
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).expect("chmod");
    w("home/user/notes", b"mine\n");
    fs::set_permissions(root.join("home/user"), fs::Permissions::from_mode(0o700)).expect("chmod");
    chown(&root.join("home/user/notes"), 1234, 5678);
    chown(&root.join("home/user"), 1234, 5678);
    chown(&root.join("abs"), 1234, 5678);
    set_xattr(
        &root.join("usr/bin/ping"),
        "security.capability",
        &CAP_NET_RAW,
    );
    set_xattr(&root.join("usr/bin/ping"), "user.comment", b"pings");
    set_xattr(&root.join("etc"), "trusted.overlay.opaque", b"y");
    // A sparse file: 10 MiB with two islands of data.
    let sparse = root.join("var/sparse.img");
    fs::create_dir_all(sparse.parent().expect("has parent")).expect("mkdir");
    let f = fs::File::create(&sparse).expect("create");
    f.set_len(10 * 1024 * 1024).expect("truncate");
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"hello", 4096).expect("write");
    f.write_all_at(b"end", 8 * 1024 * 1024).expect("write");
    if full {
        w(&format!("{}/f", long_dir_name()), b"long\n");
        w(&deep_file_path(), b"deep\n");
        // Link names over 100 bytes (GNU 'K' records, pax linkpath).
        symlink(deep_file_path(), root.join("longlink")).expect("symlink");
        fs::hard_link(root.join(deep_file_path()), root.join(deep_hardlink_path())).expect("link");
    }
    set_fixed_mtimes(root);
}

/// Every entry's mtime to FIXTURE_MTIME, children before parents.
pub fn set_fixed_mtimes(root: &Path) {
    let t = TimeSpec::new(FIXTURE_MTIME, 0);
    let mut stack = vec![root.to_path_buf()];
    let mut all = Vec::new();
    while let Some(p) = stack.pop() {
        if p.is_dir() && !p.is_symlink() {
            for e in fs::read_dir(&p).expect("read_dir") {
                stack.push(e.expect("entry").path());
            }
        }
        all.push(p);
    }
    for p in all.iter().rev() {
        utimensat(
            nix::fcntl::AT_FDCWD,
            p,
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .expect("utimensat");
    }
}

/// Runs a command; panics with its stderr when it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The entries every fixture archive must deliver, checked one by one (beyond the comparison
/// with the directory walk, which could share a mistake with the tar reading).
pub fn check_fixture_entries(sink: &RecordingSink, xattrs: bool, full: bool) {
    let Rec::File(_, ping, content) = sink.get("usr/bin/ping") else {
        panic!("ping is not a file")
    };
    assert_eq!(content, b"\x7fELF ping");
    if xattrs {
        assert_eq!(
            ping.xattrs,
            vec![
                Xattr {
                    name: b"security.capability".to_vec(),
                    value: CAP_NET_RAW.to_vec()
                },
                Xattr {
                    name: b"user.comment".to_vec(),
                    value: b"pings".to_vec()
                },
            ]
        );
    }
    let Rec::File(_, notes, _) = sink.get("home/user/notes") else {
        panic!("notes")
    };
    assert_eq!(
        (notes.uid, notes.gid, notes.mtime),
        (1234, 5678, FIXTURE_MTIME as u32)
    );
    let Rec::Dir(_, home) = sink.get("home/user") else {
        panic!("home/user")
    };
    assert_eq!((home.mode, home.uid, home.gid), (0o700, 1234, 5678));
    assert_eq!(sink.get("usr/bin/su").meta().map(|m| m.mode), Some(0o4755));
    assert_eq!(sink.get("tmp").meta().map(|m| m.mode), Some(0o1777));
    let null = sink.get("dev/null");
    assert!(
        matches!(null, Rec::Special(_, m, Special::CharDevice { major: 1, minor: 3 }) if m.mode == 0o666),
        "{null:?}"
    );
    assert!(matches!(
        sink.get("dev/loop0"),
        Rec::Special(_, _, Special::BlockDevice { major: 7, minor: 0 })
    ));
    assert!(matches!(
        sink.get("run/initctl"),
        Rec::Special(_, _, Special::Fifo)
    ));
    assert_eq!(
        sink.get("bin/ls"),
        &Rec::Hardlink("bin/ls".into(), "bin/busybox".into())
    );
    assert_eq!(
        sink.get("bin/sh"),
        &Rec::Hardlink("bin/sh".into(), "bin/busybox".into())
    );
    assert!(
        matches!(sink.get("abs"), Rec::Symlink(_, m, t) if t == b"/etc/hostname" && m.uid == 1234)
    );
    assert!(matches!(sink.get("dangling"), Rec::Symlink(_, _, t) if t == b"nowhere/x"));
    assert!(matches!(sink.get("usr/lib/big.bin"), Rec::File(_, _, c) if *c == big_content()));
    assert!(matches!(sink.get("var/sparse.img"), Rec::File(_, _, c) if *c == sparse_content()));
    assert!(
        sink.root().is_some(),
        "the './' member sets the root's metadata"
    );
    if full {
        assert!(
            matches!(sink.get(&format!("{}/f", long_dir_name())), Rec::File(_, _, c) if c == b"long\n")
        );
        assert!(matches!(sink.get(&deep_file_path()), Rec::File(_, _, c) if c == b"deep\n"));
        assert_eq!(
            sink.get(&deep_hardlink_path()),
            &Rec::Hardlink(deep_hardlink_path(), deep_file_path())
        );
        assert!(
            matches!(sink.get("longlink"), Rec::Symlink(_, _, t) if *t == deep_file_path().into_bytes())
        );
    }
}
