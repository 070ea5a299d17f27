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

/// `cmd` run with this umask.
fn with_umask(cmd: &mut Command, mask: libc::mode_t) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: umask(2) is async-signal-safe and touches nothing but the child's own mask.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(mask);
            Ok(())
        })
    }
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn outputs_are_0666_minus_the_umask_as_mksquashfs_makes_them() {
    let work = tempfile::tempdir().expect("tempdir");
    let tar = small_tar(work.path());
    let tree = work.path().join("tree");
    for mask in [0o022, 0o027, 0o077] {
        let converted = work.path().join(format!("convert-{mask:o}.sqsh"));
        let packed = work.path().join(format!("pack-{mask:o}.sqsh"));
        let reference = work.path().join(format!("mksquashfs-{mask:o}.sqsh"));
        run(with_umask(
            imsctl().arg("convert").arg(&tar).arg(&converted),
            mask,
        ));
        run(with_umask(
            imsctl().arg("pack").arg(&tree).arg(&packed),
            mask,
        ));
        run(with_umask(
            Command::new("mksquashfs")
                .arg(&tree)
                .arg(&reference)
                .args(["-quiet", "-no-progress"]),
            mask,
        ));
        let want = 0o666 & !mask;
        assert_eq!(mode_of(&reference), want, "mksquashfs, umask {mask:o}");
        assert_eq!(mode_of(&converted), want, "convert, umask {mask:o}");
        assert_eq!(mode_of(&packed), want, "pack, umask {mask:o}");
    }

    // The store's artifacts are 0644 whatever the umask: the store is read by other users
    // (a boot server) by design.
    let store = work.path().join("store");
    let out = run(with_umask(
        imsctl()
            .arg("--store")
            .arg(&store)
            .args(["images", "import", "--format", "json"])
            .arg(&tar),
        0o077,
    ));
    let record: serde_json::Value = serde_json::from_str(&out).expect("record json");
    let id = record["id"].as_str().expect("id");
    let artifacts = store.join("artifacts").join(id);
    assert_eq!(mode_of(&artifacts.join("rootfs")), 0o644);
    assert_eq!(mode_of(&artifacts.join("manifest.json")), 0o644);
}
