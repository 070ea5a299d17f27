//! Rootless with subordinate ids, end to end, on a real Debian root
//! (scripts/make-debian-test-image.sh): apt installs a local package whose postinst makes a
//! system user and a 0700 directory owned by it; imsctl packs it with the in-image owners, the
//! kernel's squashfs mount shows them as root's run does, and a job's tree full of subordinate
//! ids is removed by `jobs delete`. Without a range, apt's failure comes with a hint.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use crate::common::*;
use crate::containment::{RootlessUser, rootless_user};
use crate::workflow::str_field;

const INSTALL: &str = "apt-get install -y -q /opt/debs/imsctl-svc_1.0_all.deb";

/// The Debian test image, made once per machine (a Debian mirror must be reachable).
fn debian_image() -> Option<&'static Path> {
    static IMG: OnceLock<Option<PathBuf>> = OnceLock::new();
    IMG.get_or_init(|| {
        if !is_root() || !have("debootstrap") || !have("dpkg-deb") {
            return None;
        }
        let out = repo().join("testdata/generated/debian-mini.tar");
        run(Command::new(repo().join("scripts/make-debian-test-image.sh")).arg(&out));
        Some(out)
    })
    .as_deref()
}

/// A temp dir anyone may enter, holding a store owned by `user` (root's when None) and a copy
/// of the Debian image the user can read.
struct Setup {
    dir: tempfile::TempDir,
    user: Option<(u32, u32)>,
}

impl Setup {
    fn new(user: Option<(u32, u32)>, image: &Path) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::create_dir(dir.path().join("store")).expect("mkdir");
        fs::create_dir(dir.path().join("home")).expect("mkdir");
        fs::copy(image, dir.path().join("debian.tar")).expect("copy image");
        if let Some((uid, gid)) = user {
            run(Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .arg(dir.path().join("store"))
                .arg(dir.path().join("home"))
                .arg(dir.path().join("debian.tar")));
        }
        Setup { dir, user }
    }

    fn imsctl(&self) -> Command {
        let mut c = match self.user {
            None => imsctl(),
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.args(["--reuid", &uid.to_string(), "--regid", &gid.to_string()]);
                if (uid, gid) == (65534, 65534) {
                    c.arg("--clear-groups");
                } else {
                    c.arg("--init-groups");
                }
                c.arg(env!("CARGO_BIN_EXE_imsctl"));
                c
            }
        };
        c.env("HOME", self.dir.path().join("home"))
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .arg("--store")
            .arg(self.dir.path().join("store"))
            .arg("--quiet");
        c
    }

    fn image(&self) -> String {
        self.dir.path().join("debian.tar").display().to_string()
    }

    fn work_dirs(&self) -> Vec<PathBuf> {
        fs::read_dir(self.dir.path().join("store/work"))
            .map(|d| d.map(|e| e.expect("entry").path()).collect())
            .unwrap_or_default()
    }
}

fn uid_of(user: &RootlessUser) -> Option<(u32, u32)> {
    Some((user.uid, user.gid))
}

/// What the kernel shows of the package's and apt's private entries in a packed image.
fn private_entries(rootfs: &Path) -> Vec<String> {
    let mount = KernelMount::new(rootfs);
    let root = mount.path();
    let passwd = fs::read_to_string(root.join("etc/passwd")).expect("passwd");
    let svc_uid: u32 = passwd
        .lines()
        .find(|l| l.starts_with("imsctl-svc:"))
        .and_then(|l| l.split(':').nth(2)?.parse().ok())
        .expect("the postinst made the imsctl-svc user");
    assert!(svc_uid > 0 && svc_uid < 1000, "a system user: {svc_uid}");
    let status = fs::read_to_string(root.join("var/lib/dpkg/status")).expect("dpkg status");
    assert!(
        status.contains("Package: imsctl-svc\nStatus: install ok installed"),
        "dpkg recorded the package as installed"
    );
    let mut seen = Vec::new();
    for (path, owner, mode) in [
        ("var/lib/imsctl-svc", svc_uid, 0o40700),
        ("var/lib/imsctl-svc/state", svc_uid, 0o100600),
        ("var/cache/apt/archives/partial", 42, 0o40700),
    ] {
        let meta = fs::symlink_metadata(root.join(path))
            .unwrap_or_else(|e| panic!("{path} in the image: {e}"));
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode()),
            (owner, if owner == 42 { 0 } else { svc_uid }, mode),
            "{path}"
        );
        seen.push(format!(
            "{path} {}:{} {:o}",
            meta.uid(),
            meta.gid(),
            meta.mode()
        ));
    }
    assert_eq!(
        fs::read(root.join("var/lib/imsctl-svc/state")).expect("read state"),
        b"private\n"
    );
    seen
}

fn install_and_pack(setup: &Setup) -> PathBuf {
    let out = setup
        .imsctl()
        .args([
            "customize",
            &setup.image(),
            "--name",
            "with-svc",
            "--run",
            INSTALL,
        ])
        .output()
        .expect("customize");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("json result");
    let id = str_field(&result["ims_image_record"], "id");
    assert!(setup.work_dirs().is_empty(), "the job's tree is gone");
    setup
        .dir
        .path()
        .join("store/artifacts")
        .join(id)
        .join("rootfs")
}

#[test]
fn a_package_with_a_system_user_packs_with_its_owners_as_root_and_rootless() {
    let Some(image) = debian_image() else {
        imsctl_testkit::not_run!(
            "debian package test: ignored: needs root, debootstrap and dpkg-deb (CI has them)"
        );
        return;
    };
    let Some(user) = rootless_user() else {
        imsctl_testkit::not_run!(
            "debian package test: ignored: no user with a subordinate id range"
        );
        return;
    };
    let as_root = Setup::new(None, image);
    let root_entries = private_entries(&install_and_pack(&as_root));
    let rootless = Setup::new(uid_of(user), image);
    let rootless_entries = private_entries(&install_and_pack(&rootless));
    assert_eq!(
        root_entries, rootless_entries,
        "rootless packs what root packs"
    );
}

#[test]
fn a_failed_rootless_job_full_of_subordinate_ids_is_deleted_without_a_trace() {
    let Some(image) = debian_image() else {
        imsctl_testkit::not_run!(
            "rootless delete test: ignored: needs root, debootstrap and dpkg-deb"
        );
        return;
    };
    let Some(user) = rootless_user() else {
        imsctl_testkit::not_run!(
            "rootless delete test: ignored: no user with a subordinate id range"
        );
        return;
    };
    let setup = Setup::new(uid_of(user), image);
    let rec = run(setup.imsctl().args([
        "images",
        "import",
        &setup.image(),
        "--name",
        "debian",
        "--format",
        "json",
    ]));
    let image_id = str_field(&serde_json::from_str(&rec).expect("json"), "id");
    let rec = run(setup.imsctl().args([
        "jobs",
        "create",
        "--artifact-id",
        &image_id,
        "--image-root-archive-name",
        "x",
        "--ssh-containers-jail",
        "True",
        "--format",
        "json",
    ]));
    let job = str_field(&serde_json::from_str(&rec).expect("json"), "id");
    run(setup
        .imsctl()
        .args(["jobs", "exec", &job, "--", "/bin/sh", "-c", INSTALL]));
    let work = setup.work_dirs();
    assert_eq!(work.len(), 1);
    // The tree holds entries of subordinate ids the user cannot even list from the host.
    let owners: Vec<u32> = walk(&work[0]).iter().map(|m| m.uid()).collect();
    assert!(
        owners.iter().any(|&o| o > user.subuid_start),
        "files of subordinate ids in the job's tree"
    );
    run(setup.imsctl().args(["jobs", "fail", &job]));
    run(setup.imsctl().args(["jobs", "delete", &job]));
    assert!(setup.work_dirs().is_empty(), "jobs delete left {work:?}");
}

fn walk(dir: &Path) -> Vec<fs::Metadata> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if let Ok(m) = e.path().symlink_metadata() {
                if m.is_dir() {
                    stack.push(e.path());
                }
                out.push(m);
            }
        }
    }
    out
}

#[test]
fn without_a_subordinate_range_apt_fails_with_a_hint() {
    let Some(image) = debian_image() else {
        imsctl_testkit::not_run!(
            "single-id hint test: ignored: needs root, debootstrap and dpkg-deb"
        );
        return;
    };
    if !have("setpriv") {
        imsctl_testkit::not_run!("single-id hint test: ignored: setpriv is needed");
        return;
    }
    let setup = Setup::new(Some((65534, 65534)), image);
    let out = setup
        .imsctl()
        .args(["customize", &setup.image(), "--name", "x", "--run", INSTALL])
        .output()
        .expect("customize");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("hint: only your own id is mapped inside")
            && stderr.contains("--add-subuids"),
        "{stderr}"
    );
    assert!(
        setup.work_dirs().is_empty(),
        "nothing left: {:?}",
        setup.work_dirs()
    );
}
