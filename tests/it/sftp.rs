//! The SFTP server under the real OpenSSH clients, with no ssh in between: `sftp -D` and
//! `scp -D` start `imsctl internal-sftp-server` themselves and talk to it over pipes. The results
//! are checked on the server's side of the filesystem with std, not with imsctl.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

/// A server home and a client working directory side by side, in one temp dir.
struct Session {
    dir: tempfile::TempDir,
}

impl Session {
    /// None (with a note) when the OpenSSH clients are not installed.
    fn new(test: &str) -> Option<Self> {
        if !have("sftp") || !have("scp") {
            imsctl_testkit::not_run!("{test}: skipped, sftp/scp (openssh-client) not installed");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("home")).expect("mkdir home");
        fs::create_dir(dir.path().join("local")).expect("mkdir local");
        Some(Session { dir })
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn local(&self) -> PathBuf {
        self.dir.path().join("local")
    }

    /// Run an sftp batch (commands one per line) from the local directory.
    fn sftp(&self, batch: &str) -> Output {
        let batch_file = self.dir.path().join("batch");
        fs::write(&batch_file, batch).expect("write batch");
        let server = format!(
            "{} internal-sftp-server --home {}",
            env!("CARGO_BIN_EXE_imsctl"),
            self.home().display()
        );
        Command::new("sftp")
            .arg("-D")
            .arg(server)
            .arg("-b")
            .arg(&batch_file)
            .current_dir(self.local())
            .output()
            .expect("run sftp")
    }

    fn sftp_ok(&self, batch: &str) -> String {
        let out = self.sftp(batch);
        assert!(
            out.status.success(),
            "sftp batch failed:\n{batch}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// scp's -D takes a program path only and passes it ssh-style arguments, so a wrapper
    /// script supplies the server's own arguments.
    fn scp(&self, args: &[&str]) -> Output {
        let wrapper = self.dir.path().join("sftp-server");
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec '{}' internal-sftp-server --home '{}'\n",
                env!("CARGO_BIN_EXE_imsctl"),
                self.home().display()
            ),
        )
        .expect("write wrapper");
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).expect("chmod wrapper");
        Command::new("scp")
            .arg("-D")
            .arg(&wrapper)
            .args(args)
            .current_dir(self.local())
            .output()
            .expect("run scp")
    }

    fn scp_ok(&self, args: &[&str]) {
        let out = self.scp(args);
        assert!(
            out.status.success(),
            "scp {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .mode()
        & 0o7777
}

fn set_mtime(path: &Path, secs: i64) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
    fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(t))
        .unwrap_or_else(|e| panic!("set mtime of {}: {e}", path.display()));
}

#[test]
fn sftp_put_and_get_of_5_mib_keep_the_bytes() {
    let Some(s) = Session::new("sftp_put_and_get_of_5_mib_keep_the_bytes") else {
        return;
    };
    let data = random_bytes(5 * 1024 * 1024 + 17, 6);
    fs::write(s.local().join("blob"), &data).expect("write blob");
    s.sftp_ok("put blob\nget blob back\n");
    assert!(fs::read(s.home().join("blob")).expect("uploaded") == data);
    assert!(fs::read(s.local().join("back")).expect("downloaded") == data);
    // A plain put keeps the local mode less group/other write (the session's umask).
    fs::set_permissions(s.local().join("blob"), fs::Permissions::from_mode(0o777)).expect("chmod");
    s.sftp_ok("put blob open\n");
    assert_eq!(mode(&s.home().join("open")), 0o755);
}

#[test]
fn sftp_mkdir_chmod_rename_symlink_rm_and_ls_l() {
    let Some(s) = Session::new("sftp_mkdir_chmod_rename_symlink_rm_and_ls_l") else {
        return;
    };
    fs::write(s.local().join("f"), "hello\n").expect("write");
    let out = s.sftp_ok(
        "mkdir d\nput f d/f\nchmod 600 d/f\nrename d/f d/g\nln -s g d/link\nls -l d\nls -l\n",
    );
    let home = s.home();
    assert_eq!(
        fs::read_to_string(home.join("d/g")).expect("d/g"),
        "hello\n"
    );
    assert!(!home.join("d/f").exists(), "renamed away");
    assert_eq!(mode(&home.join("d/g")), 0o600);
    assert_eq!(mode(&home.join("d")), 0o755);
    assert_eq!(
        fs::read_link(home.join("d/link")).expect("readlink"),
        Path::new("g")
    );
    let line = |name: &str| {
        out.lines()
            .find(|l| !l.starts_with("sftp>") && l.ends_with(&format!(" {name}")))
            .unwrap_or_else(|| panic!("no ls -l line for {name} in:\n{out}"))
            .to_string()
    };
    assert!(line("g").starts_with("-rw-------"), "{out}");
    assert!(line("link").starts_with("lrwxrwxrwx"), "{out}");
    assert!(line("d").starts_with("drwxr-xr-x"), "{out}");
    assert!(line("g").contains(" 6 "), "size column: {out}");

    s.sftp_ok("rm d/link\nrm d/g\nrmdir d\n");
    assert!(!home.join("d").exists());
}

#[test]
fn sftp_rename_onto_an_existing_file_fails() {
    let Some(s) = Session::new("sftp_rename_onto_an_existing_file_fails") else {
        return;
    };
    fs::write(s.home().join("a"), "A").expect("write");
    fs::write(s.home().join("b"), "B").expect("write");
    // sftp's `rename` uses posix-rename@openssh.com when offered; `-l` forces the v3 request.
    let out = s.sftp("rename -l a b\n");
    assert!(!out.status.success(), "rename -l onto b should fail");
    assert_eq!(fs::read_to_string(s.home().join("b")).expect("b"), "B");
    s.sftp_ok("rename a b\n");
    assert_eq!(fs::read_to_string(s.home().join("b")).expect("b"), "A");
}

#[test]
fn sftp_put_p_and_get_p_preserve_mode_and_mtime() {
    let Some(s) = Session::new("sftp_put_p_and_get_p_preserve_mode_and_mtime") else {
        return;
    };
    let src = s.local().join("tool");
    fs::write(&src, "#!/bin/sh\n").expect("write");
    fs::set_permissions(&src, fs::Permissions::from_mode(0o751)).expect("chmod");
    set_mtime(&src, 978_307_200); // 2001-01-01
    s.sftp_ok("put -p tool\nget -p tool copy\n");
    let up = fs::metadata(s.home().join("tool")).expect("uploaded");
    assert_eq!((up.mode() & 0o7777, up.mtime()), (0o751, 978_307_200));
    let down = fs::metadata(s.local().join("copy")).expect("downloaded");
    assert_eq!((down.mode() & 0o7777, down.mtime()), (0o751, 978_307_200));
}

#[test]
fn scp_uploads_and_downloads_files_and_trees() {
    let Some(s) = Session::new("scp_uploads_and_downloads_files_and_trees") else {
        return;
    };
    let data = random_bytes(1024 * 1024 + 3, 7);
    let src = s.local().join("data");
    fs::write(&src, &data).expect("write");
    fs::set_permissions(&src, fs::Permissions::from_mode(0o640)).expect("chmod");
    set_mtime(&src, 1_600_000_000);
    s.scp_ok(&["-p", "data", "localhost:up"]);
    let up = s.home().join("up");
    assert!(fs::read(&up).expect("uploaded") == data);
    let meta = fs::metadata(&up).expect("stat");
    assert_eq!((meta.mode() & 0o7777, meta.mtime()), (0o640, 1_600_000_000));

    s.scp_ok(&["localhost:up", "down"]);
    assert!(fs::read(s.local().join("down")).expect("downloaded") == data);

    // "~/" goes through expand-path@openssh.com.
    s.scp_ok(&["data", "localhost:~/tilde"]);
    assert!(fs::read(s.home().join("tilde")).expect("tilde") == data);

    fs::create_dir_all(s.local().join("tree/sub")).expect("mkdir");
    fs::write(s.local().join("tree/sub/leaf"), "leaf\n").expect("write");
    s.scp_ok(&["-r", "tree", "localhost:"]);
    assert_eq!(
        fs::read_to_string(s.home().join("tree/sub/leaf")).expect("leaf"),
        "leaf\n"
    );
    s.scp_ok(&["-r", "localhost:tree", "tree-back"]);
    assert_eq!(
        fs::read_to_string(s.local().join("tree-back/sub/leaf")).expect("leaf back"),
        "leaf\n"
    );
}

#[test]
fn missing_remote_paths_fail_clearly() {
    let Some(s) = Session::new("missing_remote_paths_fail_clearly") else {
        return;
    };
    let out = s.sftp("ls nope\n");
    assert!(!out.status.success(), "ls of a missing dir must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let missing = s.home().join("nope");
    assert!(
        stderr.contains(&format!("\"{}\" not found", missing.display())),
        "{stderr}"
    );

    let out = s.scp(&["localhost:nope", "x"]);
    assert!(!out.status.success(), "scp of a missing file must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("No such file"), "{stderr}");
    assert!(!s.local().join("x").exists());
}
