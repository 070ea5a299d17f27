//! Directory tree → sink, checked against the tree itself (find, stat) and hand-made cases.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;

use super::*;
use crate as squashfs;
use crate::archive::testutil::*;

fn walk(root: &Path, opts: &DirOptions) -> (RecordingSink, DirReport) {
    let mut sink = RecordingSink::default();
    let report = dir_into(root, &mut sink, opts).expect("dir_into");
    (sink, report)
}

fn fixture() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    fs::create_dir(&root).expect("mkdir");
    make_fixture_tree(&root, true);
    (dir, root)
}

#[test]
fn fixture_tree_is_recorded_entry_by_entry() {
    let (_dir, root) = fixture();
    let (sink, report) = walk(&root, &DirOptions::default());
    check_fixture_entries(&sink, true, true);
    let root_meta = sink.root().expect("root meta");
    let st = fs::metadata(&root).expect("stat");
    assert_eq!(
        (u32::from(root_meta.mode), root_meta.uid, root_meta.mtime),
        (st.mode() & 0o7777, st.uid(), FIXTURE_MTIME as u32)
    );
    let Rec::Dir(_, etc) = sink.get("etc") else {
        panic!("etc")
    };
    assert_eq!(
        etc.xattrs,
        vec![Xattr {
            name: b"trusted.overlay.opaque".to_vec(),
            value: b"y".to_vec()
        }]
    );
    assert_eq!(report.entries, sink.recs.len() as u64);
    assert_eq!(report.hardlinks, 3);
    let content: u64 = sink
        .recs
        .iter()
        .map(|r| {
            if let Rec::File(_, _, c) = r {
                c.len() as u64
            } else {
                0
            }
        })
        .sum();
    assert_eq!(report.bytes, content);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
}

/// Depth first, children in byte order: the same as sorting the paths component-wise, which
/// is how this test orders `find`'s unordered listing.
#[test]
fn order_is_depth_first_by_name_bytes() {
    let (_dir, root) = fixture();
    for name in ["B", "a", "a-b", "a.b", "ab", "\u{e9}"] {
        fs::create_dir_all(root.join("order").join(name).join("x")).expect("mkdir");
    }
    let out = Command::new("find")
        .arg(&root)
        .args(["-mindepth", "1", "-printf", "%P\\n"])
        .output()
        .expect("find");
    let mut listed: Vec<String> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(String::from)
        .collect();
    listed.sort_by(|a, b| {
        a.split('/')
            .map(str::as_bytes)
            .cmp(b.split('/').map(str::as_bytes))
    });
    let (sink, _) = walk(&root, &DirOptions::default());
    let recorded: Vec<&str> = sink.recs.iter().skip(1).map(Rec::path).collect();
    assert_eq!(recorded, listed);
}

#[test]
fn sockets_acls_and_odd_mtimes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let _socket = std::os::unix::net::UnixListener::bind(root.join("sock")).expect("bind");
    fs::write(root.join("acl"), b"x").expect("write");
    // An extended POSIX ACL (user::rw- user:1000:r-- group::r-- mask::r-- other::r--) in the
    // kernel's xattr encoding: version 2, then (tag u16, perm u16, id u32) entries.
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 4, 1000),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        acl.extend(tag.to_le_bytes());
        acl.extend(perm.to_le_bytes());
        acl.extend(id.to_le_bytes());
    }
    set_xattr(&root.join("acl"), "system.posix_acl_access", &acl);
    set_xattr(&root.join("acl"), "user.kept", b"1");
    fs::write(root.join("old"), b"").expect("write");
    fs::write(root.join("future"), b"").expect("write");
    let set = |name: &str, secs: i64| {
        let t = TimeSpec::new(secs, 0);
        utimensat(
            nix::fcntl::AT_FDCWD,
            &root.join(name),
            &t,
            &t,
            UtimensatFlags::NoFollowSymlink,
        )
        .expect("utimensat");
    };
    set("old", -100);
    set("future", 1 << 33);

    let (sink, report) = walk(root, &DirOptions::default());
    assert!(matches!(
        sink.get("sock"),
        Rec::Special(_, _, squashfs::Special::Socket)
    ));
    assert_eq!(
        sink.get("acl").meta().map(|m| m.xattrs.clone()),
        Some(vec![Xattr {
            name: b"user.kept".to_vec(),
            value: b"1".to_vec()
        }])
    );
    assert_eq!(sink.get("old").meta().map(|m| m.mtime), Some(0));
    assert_eq!(sink.get("future").meta().map(|m| m.mtime), Some(u32::MAX));
    assert_eq!((report.skipped_xattrs, report.clamped_mtimes), (1, 2));
    let warnings = report.warnings.join("\n");
    assert!(
        warnings.contains("xattr 'system.posix_acl_access' cannot be stored"),
        "{warnings}"
    );
    assert!(warnings.contains("(first: 'acl')"), "{warnings}");

    let (sink, report) = walk(
        root,
        &DirOptions {
            xattrs: false,
            ..DirOptions::default()
        },
    );
    assert!(sink.get("acl").meta().is_some_and(|m| m.xattrs.is_empty()));
    assert_eq!(report.skipped_xattrs, 0, "no xattrs asked for, none lost");
}

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn one_file_system_stops_at_mount_points() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fs::write(root.join("here"), b"x").expect("write");
    let mnt = root.join("mnt");
    fs::create_dir(&mnt).expect("mkdir");
    if let Err(e) = nix::mount::mount(
        Some("tmpfs"),
        &mnt,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    ) {
        println!("skipped: cannot mount a tmpfs here ({e})");
        return;
    }
    let _guard = Unmount(mnt.clone());
    fs::write(mnt.join("inside"), b"y").expect("write");
    // A bind-mounted file, as container tools make for resolv.conf.
    let file = root.join("bound");
    fs::write(&file, b"").expect("write");
    nix::mount::mount(
        Some(&mnt.join("inside")),
        &file,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind mount");
    let _file_guard = Unmount(file.clone());

    let (sink, report) = walk(root, &DirOptions::default());
    assert!(
        sink.find("mnt/inside").is_some(),
        "crosses mount points by default, like mksquashfs"
    );
    assert!(matches!(sink.get("bound"), Rec::File(_, _, c) if c == b"y"));
    assert_eq!(report.mount_points, 0);

    let (sink, report) = walk(
        root,
        &DirOptions {
            one_file_system: true,
            ..DirOptions::default()
        },
    );
    assert!(matches!(sink.get("mnt"), Rec::Dir(..)));
    assert!(sink.find("mnt/inside").is_none());
    assert!(sink.find("bound").is_none());
    assert_eq!(report.mount_points, 2);
}

#[test]
fn errors_name_the_path_and_the_operation() {
    let err = dir_into(
        Path::new("/nonexistent/imsctl"),
        &mut RecordingSink::default(),
        &DirOptions::default(),
    )
    .expect_err("missing root")
    .to_string();
    assert!(
        err.starts_with("failed to open directory /nonexistent/imsctl: "),
        "{err}"
    );

    /// Refuses one path, as a writer refuses a conflicting entry.
    struct Refusing;
    impl squashfs::EntrySink for Refusing {
        fn set_root_meta(&mut self, _: squashfs::Meta) -> squashfs::Result<()> {
            Ok(())
        }
        fn add_dir(&mut self, _: &[u8], _: squashfs::Meta) -> squashfs::Result<()> {
            Ok(())
        }
        fn add_file(
            &mut self,
            path: &[u8],
            _: squashfs::Meta,
            _: &mut dyn std::io::Read,
        ) -> squashfs::Result<()> {
            Err(squashfs::Error::bad_entry(path, "refused"))
        }
        fn add_symlink(&mut self, _: &[u8], _: squashfs::Meta, _: &[u8]) -> squashfs::Result<()> {
            Ok(())
        }
        fn add_special(
            &mut self,
            _: &[u8],
            _: squashfs::Meta,
            _: squashfs::Special,
        ) -> squashfs::Result<()> {
            Ok(())
        }
        fn add_hardlink(&mut self, _: &[u8], _: &[u8]) -> squashfs::Result<()> {
            Ok(())
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir(dir.path().join("d")).expect("mkdir");
    fs::write(dir.path().join("d/f"), b"x").expect("write");
    let err = dir_into(dir.path(), &mut Refusing, &DirOptions::default())
        .expect_err("refused")
        .to_string();
    // The entry is named once, not again by the writer's own message.
    assert_eq!(err, "cannot add 'd/f' to the image: refused");
}

/// Reads every file to the end and keeps nothing: for timing the walk itself.
#[derive(Default)]
struct Discarding {
    entries: u64,
}

impl squashfs::EntrySink for Discarding {
    fn set_root_meta(&mut self, _: squashfs::Meta) -> squashfs::Result<()> {
        Ok(())
    }
    fn add_dir(&mut self, _: &[u8], _: squashfs::Meta) -> squashfs::Result<()> {
        self.entries += 1;
        Ok(())
    }
    fn add_file(
        &mut self,
        path: &[u8],
        _: squashfs::Meta,
        data: &mut dyn std::io::Read,
    ) -> squashfs::Result<()> {
        self.entries += 1;
        std::io::copy(data, &mut std::io::sink())
            .map(|_| ())
            .map_err(|e| squashfs::Error::io("read", String::from_utf8_lossy(path).into_owned(), e))
    }
    fn add_symlink(&mut self, _: &[u8], _: squashfs::Meta, _: &[u8]) -> squashfs::Result<()> {
        Ok(())
    }
    fn add_special(
        &mut self,
        _: &[u8],
        _: squashfs::Meta,
        _: squashfs::Special,
    ) -> squashfs::Result<()> {
        Ok(())
    }
    fn add_hardlink(&mut self, _: &[u8], _: &[u8]) -> squashfs::Result<()> {
        Ok(())
    }
}

/// Not a test of correctness: how long the walk of a big real tree takes
/// (`IMSCTL_WALK_TREE=/usr cargo test --lib time_walk -- --ignored --nocapture`).
#[test]
#[ignore]
fn time_walk() {
    let tree = std::env::var_os("IMSCTL_WALK_TREE").unwrap_or_else(|| "/usr".into());
    let start = std::time::Instant::now();
    let mut sink = Discarding::default();
    let report = dir_into(Path::new(&tree), &mut sink, &DirOptions::default()).expect("walk");
    println!(
        "{} entries, {} bytes in {:?}",
        report.entries,
        report.bytes,
        start.elapsed()
    );
}

#[test]
fn left_out_entries_are_known_by_inode_not_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("var/store/work")).expect("mkdir");
    fs::write(root.join("var/store/work/out.tmp"), b"growing").expect("write");
    fs::write(root.join("kept"), b"x").expect("write");
    fs::write(root.join("image.sqsh"), b"old image").expect("write");
    // Named through a symlink elsewhere: still the same inode.
    let alias = dir.path().join("store-alias");
    std::os::unix::fs::symlink(root.join("var/store"), &alias).expect("symlink");
    let opts = DirOptions {
        leave_out: [
            LeftOut::at(&alias, "the store").expect("stat"),
            LeftOut::at(&root.join("image.sqsh"), "the output").expect("stat"),
            LeftOut::at(&dir.path().join("missing"), "nothing").expect("stat"),
        ]
        .into_iter()
        .flatten()
        .collect(),
        ..DirOptions::default()
    };
    assert_eq!(opts.leave_out.len(), 2, "a missing path leaves nothing out");
    let (sink, report) = walk(&root, &opts);
    assert!(sink.find("kept").is_some());
    assert!(matches!(sink.get("var"), Rec::Dir(..)));
    assert!(sink.find("var/store").is_none());
    assert!(sink.find("var/store/work/out.tmp").is_none());
    assert!(sink.find("image.sqsh").is_none());
    assert_eq!(report.left_out, 2);
    let warnings = report.warnings.join("\n");
    assert!(
        warnings.contains("left out 'var/store': it is the store")
            && warnings.contains("left out 'image.sqsh': it is the output"),
        "{warnings}"
    );

    // The root itself left out: an error, not an empty image.
    let opts = DirOptions {
        leave_out: LeftOut::at(&root, "the store")
            .expect("stat")
            .into_iter()
            .collect(),
        ..DirOptions::default()
    };
    let err = dir_into(&root, &mut RecordingSink::default(), &opts)
        .expect_err("the root is left out")
        .to_string();
    assert!(
        err.contains(&root.display().to_string()) && err.contains("is the store"),
        "{err}"
    );
}
