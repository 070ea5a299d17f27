//! Repacking a customized root by copying unchanged files' compressed blocks from the base
//! image must give exactly what a full repack gives.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::common::*;

/// The fidelity fixture made bootable enough for a customize job: busybox as /bin/sh and a
/// kernel and initrd under /boot.
fn rootfs_tree(dir: &Path) -> std::path::PathBuf {
    let tree = dir.join("rootfs");
    run(Command::new("cp").arg("-a").arg(fixture_tree()).arg(&tree));
    fs::create_dir_all(tree.join("bin")).unwrap();
    fs::create_dir_all(tree.join("boot")).unwrap();
    fs::create_dir_all(tree.join("tmp")).unwrap();
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
    for app in [
        "sh", "echo", "rm", "chmod", "ln", "cat", "mkdir", "mv", "chown",
    ] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(app)).unwrap();
    }
    fs::write(tree.join("boot/vmlinuz"), vec![7u8; 300_000]).unwrap();
    fs::write(tree.join("boot/initrd"), vec![9u8; 200_000]).unwrap();
    for d in ["proc", "sys", "dev", "run"] {
        fs::create_dir_all(tree.join(d)).unwrap();
    }
    // Everything at the fixture's fixed time, so two customizations of it can be compared.
    run(Command::new("find").arg(&tree).args([
        "-exec",
        "touch",
        "-h",
        "-d",
        "2024-02-29 12:34:56 UTC",
        "{}",
        "+",
    ]));
    tree
}

fn customize(store: &Path, image: &str, name: &str, extra: &[&str]) -> serde_json::Value {
    let steps = [
        "echo new > /files/new-file",
        "echo changed >> /files/small",
        "rm /files/one-byte /files/multi-block-copy",
        "chmod 700 /files/multi-block",
        "chown 4242:4343 /files/fragment-sized",
        "ln /files/exactly-one-block /files/new-hardlink",
        "mv /files/compressible /files/renamed",
        "mkdir -p /new/dir && echo deep > /new/dir/file",
        // Pin the times of what changed, so that two runs at different moments compare equal.
        "touch -c -d '2024-03-01 00:00:00' / && find /files /new /tmp -newer /files/empty ! -name resolv.conf -exec touch -c -d '2024-03-01 00:00:00' {} +",
    ];
    let mut cmd = imsctl();
    cmd.arg("--store")
        .arg(store)
        .args(["customize", image, "--name", name]);
    for s in steps {
        cmd.args(["--run", s]);
    }
    let out = run(cmd.args(extra));
    serde_json::from_str(&out).expect("customize prints JSON")
}

fn rootfs_of(store: &Path, result: &serde_json::Value) -> std::path::PathBuf {
    let id = result["ims_image_record"]["id"].as_str().expect("image id");
    store.join("artifacts").join(id).join("rootfs")
}

#[test]
fn incremental_repack_equals_a_full_repack() {
    if !is_root() {
        imsctl_testkit::not_run!(
            "not root: skipped (the fixture needs devices and foreign owners)"
        );
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let tree = rootfs_tree(work.path());
    let store = work.path().join("store");
    let import = run(imsctl()
        .arg("--store")
        .arg(&store)
        .args(["images", "import"])
        .arg(&tree)
        .args(["--name", "base", "--format", "json"]));
    let base: serde_json::Value = serde_json::from_str(&import).unwrap();
    let base_id = base["id"].as_str().unwrap().to_string();
    for mode in ["mount", "extract"] {
        let fast = customize(&store, &base_id, "fast", &["--mode", mode]);
        let full = customize(&store, &base_id, "full", &["--mode", mode, "--full-repack"]);
        let (a, b) = (rootfs_of(&store, &fast), rootfs_of(&store, &full));
        run(Command::new("sqfsdiff")
            .arg("-T")
            .arg("-a")
            .arg(&a)
            .arg("-b")
            .arg(&b));
        assert_eq!(
            unsquashfs_lln(&a),
            unsquashfs_lln(&b),
            "{mode}: listings differ"
        );
        let (ma, mb) = (KernelMount::new(&a), KernelMount::new(&b));
        let (da, db) = (describe_tree(ma.path()), describe_tree(mb.path()));
        assert_eq!(da, db, "{mode}: kernel views differ");
        assert!(
            da.contains("files/new-file"),
            "{mode}: the change is in the image"
        );
        assert!(
            !da.contains("files/one-byte "),
            "{mode}: removed files are gone"
        );
        assert!(
            da.contains("files/fragment-sized 0o100644 4242:4343"),
            "{mode}: chown kept:\n{da}"
        );
        assert!(
            da.contains("security.capability=01000002"),
            "{mode}: capabilities kept"
        );
    }
}
