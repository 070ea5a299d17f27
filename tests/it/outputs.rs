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
        imsctl_testkit::not_run!("not root: the device node case is skipped (mknod needs root)");
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

/// Wait for `child`, killing it and failing the test after `limit`.
fn wait_at_most(
    mut child: std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> std::process::Output {
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn a_store_or_an_output_inside_the_packed_directory_is_left_out() {
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("root");
    fs::create_dir_all(root.join("etc")).expect("mkdir");
    fs::write(root.join("etc/hostname"), b"node\n").expect("write");
    let store = root.join("var/lib/imsctl");
    let child = imsctl()
        .arg("--store")
        .arg(&store)
        .args(["images", "import", "--format", "json"])
        .arg(&root)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = wait_at_most(child, std::time::Duration::from_secs(120), "images import");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("left out 'var/lib/imsctl'"),
        "the user is told: {stderr}"
    );
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("record json");
    let id = record["id"].as_str().expect("id");
    let rootfs = store.join("artifacts").join(id).join("rootfs");
    let listing = unsquashfs_lln(&rootfs);
    assert!(listing.contains("squashfs-root/etc/hostname"), "{listing}");
    assert!(
        listing.contains("squashfs-root/var/lib\n") || listing.contains("squashfs-root/var/lib "),
        "{listing}"
    );
    assert!(
        !listing.contains("imsctl"),
        "the store is not in the image:\n{listing}"
    );
    let work_dir: Vec<_> = fs::read_dir(store.join("work")).expect("readdir").collect();
    assert!(work_dir.is_empty(), "no scratch left: {work_dir:?}");

    // pack DIR DIR/image.sqsh, first with no image there, then over the previous one.
    let image = root.join("image.sqsh");
    for round in 0..2 {
        let child = imsctl()
            .arg("pack")
            .arg(&root)
            .arg(&image)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let out = wait_at_most(child, std::time::Duration::from_secs(120), "pack");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = unsquashfs_lln(&image);
        assert!(
            !listing.contains("image.sqsh"),
            "round {round}: the output is not in the image:\n{listing}"
        );
        assert!(listing.contains("var/lib/imsctl"), "pack knows no store");
    }
}

/// A tar big enough to take a few seconds to convert with xz on one thread.
fn slow_tar(dir: &Path) -> std::path::PathBuf {
    let tree = dir.join("slow");
    fs::create_dir_all(&tree).expect("mkdir");
    let mut noise = vec![0u8; 48 << 20];
    fastrand::Rng::with_seed(7).fill(&mut noise);
    fs::write(tree.join("noise"), &noise).expect("write");
    let tar = dir.join("slow.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    tar
}

/// Start `cmd` with SIGINT and SIGTERM at their defaults (a test run in the background may
/// inherit SIGINT ignored), wait until `started` holds, then send `sig`.
fn interrupt_when(
    cmd: &mut Command,
    started: impl Fn() -> bool,
    sig: libc::c_int,
) -> std::process::ExitStatus {
    use std::os::unix::process::CommandExt;
    // SAFETY: signal(2) to the default action is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !started() {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "{cmd:?} ended before it could be interrupted"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "{cmd:?} never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
    child.wait().expect("wait")
}

#[test]
fn an_interrupted_convert_or_import_leaves_no_temp_file() {
    use std::os::unix::process::ExitStatusExt;
    let work = tempfile::tempdir().expect("tempdir");
    let tar = slow_tar(work.path());
    let out = work.path().join("out");
    fs::create_dir(&out).expect("mkdir");
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let image = out.join(format!("image-{sig}.sqsh"));
        let status = interrupt_when(
            imsctl()
                .arg("convert")
                .arg(&tar)
                .arg(&image)
                .args(["--comp", "xz", "--threads", "1"]),
            || !temp_leftovers(&out).is_empty(),
            sig,
        );
        assert_eq!(status.signal(), Some(sig), "dies of the signal: {status:?}");
        assert!(
            temp_leftovers(&out).is_empty(),
            "{:?}",
            temp_leftovers(&out)
        );
        assert!(!image.exists());
    }

    let store = work.path().join("store");
    let scratch = || -> bool {
        fs::read_dir(store.join("work"))
            .map(|entries| entries.count() > 0)
            .unwrap_or(false)
    };
    let status = interrupt_when(
        imsctl()
            .arg("--store")
            .arg(&store)
            .args(["images", "import"])
            .arg(&tar),
        scratch,
        libc::SIGINT,
    );
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    let left: Vec<_> = fs::read_dir(store.join("work"))
        .expect("readdir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
    assert_eq!(
        fs::read_dir(store.join("images")).expect("readdir").count(),
        0,
        "no record"
    );
}

#[test]
fn an_oversized_xattr_fails_the_conversion_not_every_later_read() {
    let work = tempfile::tempdir().expect("tempdir");
    let tar = work.path().join("big-xattr.tar");
    let script = "import tarfile, io, sys\n\
                  t = tarfile.open(sys.argv[1], 'w', format=tarfile.PAX_FORMAT)\n\
                  i = tarfile.TarInfo('etc/big'); i.size = 1\n\
                  i.pax_headers = {'SCHILY.xattr.user.huge': 'v' * 102400}\n\
                  t.addfile(i, io.BytesIO(b'x'))\nt.close()\n";
    run(Command::new("python3").arg("-c").arg(script).arg(&tar));
    let out = work.path().join("out");
    fs::create_dir(&out).expect("mkdir");
    let image = out.join("image.sqsh");
    let failed = run_failing(imsctl().arg("convert").arg(&tar).arg(&image));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("etc/big") && stderr.contains("user.huge"),
        "{stderr}"
    );
    assert!(!image.exists());
    assert!(temp_leftovers(&out).is_empty());

    let store = work.path().join("store");
    let failed = run_failing(
        imsctl()
            .arg("--store")
            .arg(&store)
            .args(["images", "import"])
            .arg(&tar),
    );
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("user.huge"), "{stderr}");
    assert_eq!(
        fs::read_dir(store.join("images")).expect("readdir").count(),
        0,
        "nothing registered"
    );
}
