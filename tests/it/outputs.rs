//! What imsctl leaves at its output paths: only a regular file or a new name is replaced.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::Command;

use crate::common::*;

/// A small tar of a small tree, for commands that need some input.
fn small_tar(dir: &Path) -> std::path::PathBuf {
    let tree = dir.join("tree");
    fs::create_dir_all(tree.join("etc")).expect("mkdir");
    fs::write(tree.join("etc/hostname"), b"node\n").expect("write");
    let tar = dir.join("small.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    tar
}

fn temp_leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

#[test]
fn convert_and_pack_refuse_to_replace_a_fifo_a_symlink_or_a_device() {
    let work = tempfile::tempdir().expect("tempdir");
    let tar = small_tar(work.path());
    let out = work.path().join("out");
    fs::create_dir(&out).expect("mkdir");
    let fifo = out.join("fifo");
    run(Command::new("mkfifo").arg(&fifo));
    let target = out.join("target");
    fs::write(&target, b"keep").expect("write");
    let link = out.join("link");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let mut cases = vec![(fifo.clone(), "a FIFO"), (link.clone(), "a symbolic link")];
    // A character device of our own (1,7 is what /dev/full is), never /dev/full itself.
    let device = out.join("full");
    if is_root() {
        run(Command::new("mknod").arg(&device).args(["c", "1", "7"]));
        cases.push((device.clone(), "a character device"));
    } else {
        eprintln!("not root: the device node case is skipped (mknod needs root)");
    }
    for (path, kind) in &cases {
        let tree = work.path().join("tree");
        for args in [
            ["convert".as_ref(), tar.as_os_str(), path.as_os_str()],
            ["pack".as_ref(), tree.as_os_str(), path.as_os_str()],
        ] {
            let failed = run_failing(imsctl().args(args));
            let stderr = String::from_utf8_lossy(&failed.stderr);
            assert!(
                stderr.contains(&format!("refusing to write {}", path.display()))
                    && stderr.contains(kind),
                "{args:?}: {stderr}"
            );
        }
    }
    assert!(
        fs::symlink_metadata(&fifo)
            .expect("stat")
            .file_type()
            .is_fifo()
    );
    assert!(
        fs::symlink_metadata(&link)
            .expect("stat")
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read(&target).expect("read"), b"keep");
    if is_root() {
        assert!(
            fs::symlink_metadata(&device)
                .expect("stat")
                .file_type()
                .is_char_device()
        );
    }
    assert!(
        temp_leftovers(&out).is_empty(),
        "{:?}",
        temp_leftovers(&out)
    );

    // A regular file is replaced, as before.
    let regular = out.join("image.sqsh");
    fs::write(&regular, b"old").expect("write");
    run(imsctl().arg("convert").arg(&tar).arg(&regular));
    assert_eq!(&fs::read(&regular).expect("read")[..4], b"hsqs");
}
