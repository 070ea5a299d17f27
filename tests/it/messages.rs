//! What imsctl tells the user when something is refused or fails.

use std::fs;
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn an_absurd_thread_count_is_refused_at_once() {
    let work = tempfile::tempdir().expect("tempdir");
    let tree = work.path().join("tree");
    fs::create_dir(&tree).expect("mkdir");
    let started = Instant::now();
    let out = run_failing(
        imsctl()
            .arg("pack")
            .arg(&tree)
            .arg(work.path().join("out.sqsh"))
            .args(["--threads", "100000"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("100000 threads is more than the 256 imsctl allows"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused before any work"
    );
    assert!(!work.path().join("out.sqsh").exists());
    // The most accepted still packs (no more than 4 threads per core are started).
    run(imsctl()
        .arg("pack")
        .arg(&tree)
        .arg(work.path().join("ok.sqsh"))
        .args(["--threads", "256"]));
}

/// Each cause once: an error type that prints its OS error must not have it printed again by
/// the chain of causes.
#[test]
fn a_message_holds_the_os_error_once() {
    let work = tempfile::tempdir().expect("tempdir");
    let a_dir = work.path().join("a-directory.sqsh");
    fs::create_dir(&a_dir).expect("mkdir");
    let missing = work.path().join("missing.sqsh");
    let store = work.path().join("store");
    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (vec!["ls".into(), missing.clone().into()], "(os error 2)"),
        (vec!["ls".into(), a_dir.clone().into()], "(os error 21)"),
        (
            vec![
                "extract".into(),
                missing.clone().into(),
                work.path().join("x").into(),
            ],
            "(os error 2)",
        ),
        (
            vec![
                "--store".into(),
                store.clone().into(),
                "images".into(),
                "import".into(),
                missing.clone().into(),
            ],
            "(os error 2)",
        ),
    ];
    for (args, os_error) in cases {
        let out = run_failing(imsctl().args(&args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.matches(os_error).count(), 1, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
}

/// A name holding a newline or an escape sequence is escaped where it reaches the terminal:
/// it can neither forge a line nor drive the terminal.
#[test]
fn control_characters_in_names_are_escaped_in_messages() {
    use std::os::unix::ffi::OsStrExt;
    let work = tempfile::tempdir().expect("tempdir");
    let odd = work.path().join(std::ffi::OsStr::from_bytes(
        b"evil\nimsctl: fake line\x1b[2J.sqsh",
    ));
    let out = run_failing(imsctl().arg("ls").arg(&odd));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("evil\\nimsctl: fake line\\x1b[2J.sqsh"),
        "{stderr}"
    );
    assert!(!stderr.contains('\x1b'));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // A tar member's name, in a warning (its implicit parent) and in an error.
    let tar_of = |name: &str, members: &str| {
        let tar = work.path().join(name);
        let script = format!(
            "import tarfile, io, sys\n\
             t = tarfile.open(sys.argv[1], 'w', format=tarfile.PAX_FORMAT)\n\
             for name in [{members}]:\n    \
             i = tarfile.TarInfo(name); i.size = 1; t.addfile(i, io.BytesIO(b'x'))\n\
             t.close()\n"
        );
        run(std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&tar));
        tar
    };
    let warned = tar_of("warned.tar", "'d\\x1b]0;pwned\\x07/f'");
    let out = imsctl()
        .arg("convert")
        .arg(&warned)
        .arg(work.path().join("o.sqsh"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: 1 parent directory was not listed")
            && stderr.contains("d\\x1b]0;pwned\\x07"),
        "warning escaped: {stderr}"
    );
    let refused = tar_of("refused.tar", "'../\\nescape'");
    let out = run_failing(
        imsctl()
            .arg("convert")
            .arg(&refused)
            .arg(work.path().join("r.sqsh")),
    );
    let stderr_refused = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr_refused.contains("tar member '../\\nescape'"),
        "error escaped: {stderr_refused}"
    );
    for text in [&stderr, &stderr_refused] {
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text}");
        assert_eq!(text.lines().count(), 1, "{text}");
    }
}

/// `imsctl ls` on a terminal escapes names; into a pipe it prints them exactly, as unsquashfs.
#[test]
fn ls_escapes_names_on_a_terminal_only() {
    use std::os::unix::ffi::OsStrExt;
    if !have("script") {
        imsctl_testkit::not_run!("script(1) not installed: no terminal to test with; skipped");
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let tree = work.path().join("tree");
    fs::create_dir(&tree).expect("mkdir");
    fs::write(
        tree.join(std::ffi::OsStr::from_bytes(b"a\x1b[2Jb\nc")),
        b"x",
    )
    .expect("write");
    let img = work.path().join("odd.sqsh");
    run(imsctl().arg("pack").arg(&tree).arg(&img));
    let piped = imsctl().arg("ls").arg(&img).output().expect("ls");
    assert!(
        piped.stdout.windows(3).any(|w| w == b"\x1b[2"),
        "exact in a pipe"
    );
    // script(1) gives the command a terminal; its output is what the terminal received.
    let command = format!("{} ls {}", env!("CARGO_BIN_EXE_imsctl"), img.display());
    let on_tty = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("script");
    let text = String::from_utf8_lossy(&on_tty.stdout);
    assert!(text.contains("squashfs-root/a\\x1b[2Jb\\nc"), "{text}");
    assert!(!text.contains('\x1b'), "{text:?}");
}
