//! Integration tests of the sandbox on a tiny busybox rootfs made at test time: as root (mount
//! mode with the kernel loop and with squashfuse, extract mode, jailed and not) and as an
//! unprivileged user (uid 65534 in a forked child: user namespace, extract mode and an overlay
//! over a directory; squashfuse when /dev/fuse allows it).

use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command as HostCommand;
use std::time::{Duration, Instant};

use super::*;
use crate::root::{ImageSource, LowerVia, Signal, WorkLayout};

const MARKER: &str = "image-marker-7d1f";
const DANGLING: &str = "../run/systemd/resolve/stub-resolv.conf";
const NOBODY: u32 = 65534;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// A busybox rootfs (`rootfs/`) and its SquashFS (`base.sqsh`).
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let rootfs = dir.path().join("rootfs");
        for d in [
            "bin", "etc", "tmp", "proc", "dev", "sys", "run", "root", "usr/bin", "usr/sbin", "sbin",
        ] {
            fs::create_dir_all(rootfs.join(d)).expect("mkdir");
        }
        fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777))
            .expect("chmod tmp");
        fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy busybox");
        let list = HostCommand::new("/bin/busybox")
            .arg("--list")
            .output()
            .expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout)
            .lines()
            .filter(|a| *a != "busybox")
        {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .expect("applet link");
        }
        fs::write(rootfs.join("etc/marker"), MARKER).expect("marker");
        fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
        std::os::unix::fs::symlink(DANGLING, rootfs.join("etc/resolv.conf")).expect("resolv link");
        let base = dir.path().join("base.sqsh");
        let out = HostCommand::new("mksquashfs")
            .args([rootfs.as_os_str(), base.as_os_str()])
            .args(["-quiet", "-noappend", "-no-progress"])
            .output()
            .expect("run mksquashfs");
        assert!(
            out.status.success(),
            "mksquashfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Fixture { dir }
    }
    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }
    fn base(&self) -> PathBuf {
        self.dir.path().join("base.sqsh")
    }
    fn layout(&self, name: &str) -> WorkLayout {
        WorkLayout::new(self.dir.path().join(name))
    }
    /// An extracted image root: a copy of the rootfs (given to the unprivileged user if asked), marked complete.
    fn extracted(&self, name: &str, unprivileged: bool) -> WorkLayout {
        let layout = self.layout(name);
        fs::create_dir_all(layout.work()).expect("mkdir work");
        let rootfs = self.rootfs();
        crate::root::populate_extracted(&layout, |root| copy_tree(&rootfs, root))
            .expect("populate");
        if unprivileged {
            give_to_unprivileged(layout.work());
        }
        layout
    }
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let status = HostCommand::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("cp -a failed: {status}")))
    }
}

fn chown_tree(path: &Path, uid: u32) {
    let status = HostCommand::new("chown")
        .args(["-hR", &format!("{uid}:{uid}")])
        .arg(path)
        .status()
        .expect("chown");
    assert!(status.success());
}

fn config(layout: WorkLayout, source: ImageSource, jailed: bool) -> SandboxConfig {
    let mut cfg = SandboxConfig::new(layout, source, "test-job");
    cfg.jailed = jailed;
    cfg.term = Some("dumb".into());
    cfg
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

/// Mount lines mentioning `needle` (our temp dir): must be none once a session is over.
fn mounts_mentioning(needle: &Path) -> Vec<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let needle = needle.to_string_lossy();
    text.lines()
        .filter(|l| l.contains(needle.as_ref()))
        .map(String::from)
        .collect()
}

/// Loop devices still backed by `image`.
fn loops_backed_by(image: &Path) -> Vec<String> {
    let Ok(dir) = fs::read_dir("/sys/block") else {
        return vec![];
    };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name().into_string().ok()?;
        let backing = fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
        (backing.trim() == image.to_string_lossy()).then_some(name)
    })
    .collect()
}

/// Host processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        text.contains(needle).then_some(pid)
    })
    .collect()
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The checks every jailed session makes from inside; results land in /tmp of the image. The
/// write probes write back the value already there: harmless should one get through.
fn inside_checks(sleeper: u32) -> String {
    INSIDE_CHECKS.replace("sleep 4242", &format!("sleep {sleeper}"))
}

const INSIDE_CHECKS: &str = "cat /etc/marker > /tmp/seen; \
    ls /proc | grep -E '^[0-9]+$' | wc -l > /tmp/nprocs; \
    cat /etc/resolv.conf > /tmp/resolv; hostname > /tmp/hostname; \
    (cat /proc/sys/vm/swappiness > /proc/sys/vm/swappiness) 2>/dev/null && echo WROTE > /tmp/procsys; \
    (f=/sys/block/loop0/queue/read_ahead_kb; cat $f > $f) 2>/dev/null && echo WROTE > /tmp/sys; \
    (mount -o remount,rw /sys) 2>/dev/null && echo WROTE > /tmp/remount; \
    echo escaped > /../../escape-attempt; \
    sleep 4242 & echo new > /newfile";

/// Assert what INSIDE_CHECKS found; `tmp` is where the image's /tmp is seen from outside.
fn assert_inside_checks(tmp: &Path) {
    assert_eq!(
        read(tmp.join("seen")),
        MARKER,
        "the command sees the image's files"
    );
    let nprocs: usize = read(tmp.join("nprocs")).trim().parse().expect("count");
    assert!(
        nprocs <= 5,
        "only the sandbox's own processes are visible, saw {nprocs}"
    );
    assert_eq!(
        read(tmp.join("resolv")),
        read("/etc/resolv.conf"),
        "the host's resolv.conf is inside"
    );
    assert_eq!(read(tmp.join("hostname")).trim(), "imsctl-test-job");
    for probe in ["procsys", "sys", "remount"] {
        assert!(
            !tmp.join(probe).exists(),
            "a write through {probe} reached the host"
        );
    }
}

/// `sleeper`: the unique `sleep N` the test left running in the background inside.
fn assert_nothing_left(fx: &Fixture, sleeper: u32) {
    assert_eq!(
        mounts_mentioning(fx.dir.path()),
        Vec::<String>::new(),
        "mounts left behind"
    );
    assert_eq!(
        loops_backed_by(&fx.base()),
        Vec::<String>::new(),
        "loop device left attached"
    );
    assert_eq!(
        processes_with(&format!("sleep {sleeper}")),
        Vec::<i32>::new(),
        "a process survived the sandbox"
    );
    assert!(
        !fx.dir.path().join("escape-attempt").exists() && !Path::new("/escape-attempt").exists()
    );
}

/// The image's own resolv.conf (a dangling symlink) is back, with no trace of the swap.
fn assert_resolv_restored(etc: &Path, layout: &WorkLayout) {
    assert_eq!(
        fs::read_link(etc.join("resolv.conf")).expect("resolv.conf is a symlink again"),
        Path::new(DANGLING)
    );
    assert!(!etc.join(".resolv.conf.imsctl-saved").exists());
    assert!(!layout.resolv_state().exists());
}

#[test]
fn root_mount_mode_kernel_loop_jailed() {
    if !is_root() {
        return imsctl_testkit::not_run!("note: needs root; skipped");
    }
    let fx = Fixture::new();
    let layout = fx.layout("job-loop");
    let source = ImageSource::Mount {
        base: fx.base(),
        via: LowerVia::KernelLoop,
    };
    let cfg = config(layout.clone(), source, true);
    let before = fs::read(fx.base()).expect("read base");
    let status = run(&cfg, &sh(&inside_checks(4201))).expect("run");
    assert!(status.success(), "{status:?}");
    assert_inside_checks(&layout.upper().join("tmp"));
    assert_eq!(
        read(layout.upper().join("newfile")),
        "new\n",
        "writes land in the upper dir"
    );
    assert_eq!(
        fs::read(fx.base()).expect("read base"),
        before,
        "the base is untouched"
    );
    assert_resolv_restored(&layout.upper().join("etc"), &layout);
    assert_nothing_left(&fx, 4201);
    // A second session sees the first one's changes (the upper dir persists).
    let status = run(
        &cfg,
        &sh("test -f /newfile && test ! -e /etc/.resolv.conf.imsctl-saved"),
    )
    .expect("run again");
    assert!(status.success());
    // Exit codes come through.
    assert_eq!(run(&cfg, &sh("exit 7")).expect("run").code(), Some(7));
    assert_nothing_left(&fx, 4201);
}

#[test]
fn root_mount_mode_squashfuse_not_jailed() {
    if !is_root() {
        return imsctl_testkit::not_run!("note: needs root; skipped");
    }
    let fx = Fixture::new();
    let layout = fx.layout("job-fuse");
    let source = ImageSource::Mount {
        base: fx.base(),
        via: LowerVia::Squashfuse,
    };
    let cfg = config(layout.clone(), source.clone(), false);
    let script = "cat /mnt/image/image-root/etc/marker > /mnt/image/seen; \
        readlink /mnt/image/image-root/etc/resolv.conf > /mnt/image/link; \
        cat /mnt/image/image-root/etc/resolv.conf > /mnt/image/resolv; \
        touch /mnt/image/image-root/changed; \
        (touch /etc/imsctl-host-write) 2>/dev/null && echo WROTE > /mnt/image/hostwrite; \
        ls /proc | grep -cE '^[0-9]+$' > /mnt/image/nprocs; \
        touch /mnt/image/complete";
    let status = run(&cfg, &sh(script)).expect("run");
    assert!(status.success(), "{status:?}");
    let signal = layout.signal_dir();
    assert_eq!(read(signal.join("seen")), MARKER);
    assert_eq!(read(signal.join("resolv")), read("/etc/resolv.conf"));
    assert!(
        !signal.join("hostwrite").exists() && !Path::new("/etc/imsctl-host-write").exists(),
        "the host view is read-only"
    );
    assert!(layout.upper().join("changed").exists());
    assert_eq!(
        crate::root::signal_raised(&layout, &source),
        Some(Signal::Complete)
    );
    crate::root::clear_signals(&layout, &source).expect("clear");
    assert_eq!(crate::root::signal_raised(&layout, &source), None);
    assert_resolv_restored(&layout.upper().join("etc"), &layout);
    assert_nothing_left(&fx, 4202);
    assert!(
        processes_with(&fx.base().to_string_lossy()).is_empty(),
        "squashfuse survived"
    );
}

#[test]
fn root_extract_mode_network_none_and_missing_command() {
    if !is_root() {
        return imsctl_testkit::not_run!("note: needs root; skipped");
    }
    let fx = Fixture::new();
    let layout = fx.extracted("job-extract", false);
    let mut cfg = config(layout.clone(), ImageSource::Extracted, true);
    cfg.network = Network::None;
    let status = run(
        &cfg,
        &sh(&format!(
            "{}; cat /proc/net/dev > /tmp/net; ls /sys/class/net > /tmp/sysnet",
            inside_checks(4203)
        )),
    )
    .expect("run");
    assert!(status.success());
    let tmp = layout.root().join("tmp");
    assert_inside_checks(&tmp);
    let net = read(tmp.join("net"));
    let interfaces: Vec<&str> = net
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(interfaces, ["lo"], "--network none has only lo");
    assert_eq!(read(tmp.join("sysnet")).trim(), "lo");
    assert_resolv_restored(&layout.root().join("etc"), &layout);
    assert_nothing_left(&fx, 4203);
    match run(&cfg, &["no-such-command".to_string()]) {
        Err(Error::Setup(msg)) => assert!(msg.contains("no-such-command"), "{msg}"),
        other => panic!("expected a setup error, got {other:?}"),
    }
}

#[test]
fn second_session_on_a_busy_job_is_refused() {
    if !is_root() {
        return imsctl_testkit::not_run!("note: needs root; skipped");
    }
    let fx = Fixture::new();
    let layout = fx.extracted("job-busy", false);
    let cfg = config(layout.clone(), ImageSource::Extracted, true);
    let first = {
        let cfg = cfg.clone();
        std::thread::spawn(move || run(&cfg, &sh("touch /tmp/started; sleep 2")))
    };
    let started = layout.root().join("tmp/started");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !started.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(matches!(run(&cfg, &sh("true")), Err(Error::Locked { .. })));
    assert!(first.join().expect("thread").expect("first run").success());
}

/// Something done to the fake terminal once the expected text has appeared.
type TermAction<'a> = Box<dyn Fn(&fs::File) + 'a>;

/// Type into a pty that plays the user's terminal (40x100 at first), as `jobs shell` would be
/// used: wait for the prompt, check the size, resize the terminal, then type `input`.
fn drive_shell(cfg: &SandboxConfig, input: &str) -> (Result<std::process::ExitStatus>, String) {
    let size = |ws_row, ws_col| nix::pty::Winsize {
        ws_row,
        ws_col,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let term = nix::pty::openpty(Some(&size(40, 100)), None).expect("openpty");
    let cfg = cfg.clone();
    let slave = term.slave;
    let session = std::thread::spawn(move || shell_on(&cfg, slave.as_fd(), slave.as_fd()));
    let mut master = fs::File::from(term.master);
    let flags = nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_GETFL).expect("getfl");
    let nonblocking = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(nonblocking)).expect("setfl");
    let resize = |master: &fs::File| {
        let ws = size(50, 120);
        // SAFETY: TIOCSWINSZ reads a struct winsize.
        unsafe {
            libc::ioctl(
                master.as_raw_fd(),
                libc::TIOCSWINSZ,
                &ws as *const nix::pty::Winsize,
            )
        };
    };
    // (text that must have appeared, then what to do)
    let stty = "stty size\r".to_string();
    let mut script: Vec<(&str, TermAction<'_>)> = vec![
        (
            "[imsctl test-job]",
            Box::new(move |m| {
                let _ = nix::unistd::write(m, stty.as_bytes());
            }),
        ),
        ("40 100", Box::new(resize)),
        (
            "",
            Box::new(|_| std::thread::sleep(Duration::from_millis(600))),
        ),
        (
            "",
            Box::new(move |m| {
                let _ = nix::unistd::write(m, input.as_bytes());
            }),
        ),
    ];
    script.reverse();
    let mut output = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    while !session.is_finished() && Instant::now() < deadline {
        match master.read(&mut buf) {
            Ok(n) if n > 0 => output.extend_from_slice(&buf[..n]),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
        let seen = String::from_utf8_lossy(&output).into_owned();
        if script
            .last()
            .is_some_and(|(expect, _)| seen.contains(expect))
            && let Some((_, action)) = script.pop()
        {
            action(&master);
        }
    }
    let result = session.join().expect("shell thread");
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        output.extend_from_slice(&buf[..n]);
    }
    (result, String::from_utf8_lossy(&output).into_owned())
}

const SHELL_INPUT: &str = "echo hi-$((6*7)); sleep 100 & kill %1 && echo jobctl-ok; \
    stty size; touch /tmp/complete; exit\r";

fn assert_shell_session(result: Result<std::process::ExitStatus>, output: &str) {
    eprintln!("--- shell session ---\n{output}\n---");
    assert!(result.expect("shell").success(), "{output}");
    assert!(output.contains("hi-42"), "{output}");
    assert!(
        output.contains("jobctl-ok"),
        "job control works inside: {output}"
    );
}

#[test]
fn root_pty_shell_jailed_touches_complete() {
    if !is_root() {
        return imsctl_testkit::not_run!("note: needs root; skipped");
    }
    let fx = Fixture::new();
    let layout = fx.extracted("job-shell", false);
    let cfg = config(layout.clone(), ImageSource::Extracted, true);
    let (result, output) = drive_shell(&cfg, SHELL_INPUT);
    assert_shell_session(result, &output);
    assert_eq!(
        crate::root::signal_raised(&layout, &ImageSource::Extracted),
        Some(Signal::Complete)
    );
    assert_resolv_restored(&layout.root().join("etc"), &layout);
    assert_nothing_left(&fx, 4205);
}

#[test]
fn crashed_session_is_repaired_by_the_next() {
    if !is_root() {
        return imsctl_testkit::not_run!("note: needs root; skipped");
    }
    let fx = Fixture::new();
    let layout = fx.extracted("job-crash", false);
    let cfg = config(layout.clone(), ImageSource::Extracted, true);
    // Simulate a session killed half-way: swapped, never restored.
    let etc = layout.root().join("etc");
    std::mem::forget(
        crate::root::ResolvConfGuard::swap(&etc, &layout.resolv_state(), b"nameserver 192.0.2.1\n")
            .expect("swap"),
    );
    fs::write(layout.lock_file(), "999999999\n").expect("stale lock");
    assert!(
        fs::symlink_metadata(etc.join("resolv.conf"))
            .expect("placeholder")
            .is_file()
    );
    let status =
        run(&cfg, &sh("readlink /etc/resolv.conf > /tmp/link; true")).expect("run after crash");
    assert!(status.success());
    assert_eq!(
        read(layout.root().join("tmp/link")),
        "",
        "inside, resolv.conf is the host's (a file)"
    );
    assert_resolv_restored(&etc, &layout);
    settle(&cfg).expect("settle");
}

/// The unprivileged user the rootless tests run as: 65534 when the tests run as root (switched
/// to in a forked child), else the user running them.
fn unprivileged_uid() -> u32 {
    if is_root() {
        NOBODY
    } else {
        nix::unistd::geteuid().as_raw()
    }
}

/// Give `path` to the unprivileged user (as an unprivileged user, it already is theirs).
fn give_to_unprivileged(path: &Path) {
    if is_root() {
        chown_tree(path, NOBODY);
    }
}

/// Run `test` as the unprivileged user: in a forked child as uid/gid 65534 with no groups when
/// root, directly otherwise. Panics with the test's message on failure.
fn as_nobody(test: impl FnOnce() -> std::result::Result<(), String>) {
    if !is_root() {
        let outcome = test();
        assert!(
            outcome.is_ok(),
            "as uid {}: {outcome:?}",
            unprivileged_uid()
        );
        return;
    }
    let (r, w) = nix::unistd::pipe().expect("pipe");
    // SAFETY: the child runs the test then _exits; glibc makes malloc usable after fork.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            drop(r);
            let outcome = (|| {
                nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
                let id = nix::unistd::Gid::from_raw(NOBODY);
                nix::unistd::setresgid(id, id, id).map_err(|e| format!("setresgid: {e}"))?;
                let id = nix::unistd::Uid::from_raw(NOBODY);
                nix::unistd::setresuid(id, id, id).map_err(|e| format!("setresuid: {e}"))?;
                // setuid made us non-dumpable, which would make /proc/<child>/uid_map root's.
                // SAFETY: prctl with integer arguments.
                unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(test)).unwrap_or_else(|p| {
                    Err(p
                        .downcast_ref::<String>()
                        .cloned()
                        .or(p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default())
                })
            })();
            let code = match outcome {
                Ok(()) => 0,
                Err(msg) => {
                    let _ = nix::unistd::write(&w, msg.as_bytes());
                    1
                }
            };
            // SAFETY: leave the forked test process.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            let mut msg = String::new();
            fs::File::from(r)
                .read_to_string(&mut msg)
                .expect("read child report");
            let status = nix::sys::wait::waitpid(child, None).expect("wait");
            assert!(
                matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)),
                "as uid 65534: {status:?}: {msg}"
            );
        }
    }
}

fn check(cond: bool, what: &str) -> std::result::Result<(), String> {
    if cond { Ok(()) } else { Err(what.to_string()) }
}

#[test]
fn rootless_extract_mode_jailed_with_private_network() {
    let fx = Fixture::new();
    let layout = fx.extracted("job-rootless", true);
    as_nobody(|| {
        let mut cfg = config(layout.clone(), ImageSource::Extracted, true);
        check(cfg.ids.creates_user_namespace(), "a user namespace is used")?;
        cfg.network = Network::None;
        let script = format!(
            "{}; id -u > /tmp/uid; cat /proc/net/dev > /tmp/net",
            inside_checks(4207)
        );
        let status = run(&cfg, &sh(&script)).map_err(|e| format!("run: {e}"))?;
        check(status.success(), &format!("status {status:?}"))?;
        let tmp = layout.root().join("tmp");
        assert_inside_checks(&tmp);
        check(
            read(tmp.join("uid")).trim() == "0",
            "the caller is root inside",
        )?;
        check(
            read(tmp.join("net")).lines().skip(2).count() == 1,
            "only lo",
        )?;
        let owner = fs::metadata(layout.root().join("newfile"))
            .map(|m| m.uid())
            .map_err(|e| format!("stat newfile: {e}"))?;
        check(
            owner == unprivileged_uid(),
            "files made by root inside belong to the caller on disk",
        )?;
        assert_resolv_restored(&layout.root().join("etc"), &layout);
        Ok(())
    });
    assert_nothing_left(&fx, 4207);
}

#[test]
fn rootless_overlay_over_a_directory_and_pty_shell_not_jailed() {
    let fx = Fixture::new();
    // The lower: an extraction of the base owned by the caller (as a rootless extraction makes it).
    let lower = fx.extracted("lower-cache", true).root();
    let layout = fx.layout("job-rootless-ovl");
    fs::create_dir_all(layout.work()).expect("mkdir");
    give_to_unprivileged(layout.work());
    let source = ImageSource::OverlayDir {
        lower: lower.clone(),
    };
    as_nobody(|| {
        let cfg = config(layout.clone(), source.clone(), false);
        let script = "echo changed > /mnt/image/image-root/etc/marker; cat /mnt/image/image-root/etc/resolv.conf > /mnt/image/resolv";
        let status = run(&cfg, &sh(script)).map_err(|e| format!("run: {e}"))?;
        check(status.success(), &format!("status {status:?}"))?;
        check(
            read(layout.upper().join("etc/marker")) == "changed\n",
            "the change is in the upper dir",
        )?;
        check(
            read(lower.join("etc/marker")) == MARKER,
            "the lower is untouched",
        )?;
        check(
            read(layout.signal_dir().join("resolv")) == read("/etc/resolv.conf"),
            "host resolv.conf inside",
        )?;
        assert_resolv_restored(&layout.upper().join("etc"), &layout);
        let (result, output) = drive_shell(
            &cfg,
            "echo hi-$((6*7)); sleep 100 & kill %1 && echo jobctl-ok; stty size; touch /mnt/image/complete; exit\r",
        );
        assert_shell_session(result, &output);
        check(
            crate::root::signal_raised(&layout, &source) == Some(Signal::Complete),
            "complete signalled",
        )?;
        Ok(())
    });
    assert_nothing_left(&fx, 4208);
}

#[test]
fn rootless_squashfuse_when_fuse_is_usable() {
    let fx = Fixture::new();
    let layout = fx.layout("job-rootless-fuse");
    fs::create_dir_all(layout.work()).expect("mkdir");
    give_to_unprivileged(layout.work());
    let base = fx.base();
    as_nobody(|| {
        if !crate::root::rootless_fuse_usable() {
            imsctl_testkit::not_run!(
                "note: /dev/fuse is not usable by uid 65534 here; rootless squashfuse skipped"
            );
            return Ok(());
        }
        let source = crate::root::auto_source(&base);
        check(
            matches!(
                source,
                ImageSource::Mount {
                    via: LowerVia::Squashfuse,
                    ..
                }
            ),
            "auto picks squashfuse",
        )?;
        let cfg = config(layout.clone(), source, true);
        let status = run(&cfg, &sh("cat /etc/marker > /tmp/seen; id -u > /tmp/uid"))
            .map_err(|e| format!("run: {e}"))?;
        check(status.success(), &format!("status {status:?}"))?;
        check(
            read(layout.upper().join("tmp/seen")) == MARKER,
            "sees the base",
        )?;
        Ok(())
    });
    assert_nothing_left(&fx, 4209);
}

#[test]
fn killing_imsctl_leaves_no_process_and_no_mount() {
    if !is_root() {
        return imsctl_testkit::not_run!("note: needs root; skipped");
    }
    let fx = Fixture::new();
    let source = ImageSource::Mount {
        base: fx.base(),
        via: LowerVia::KernelLoop,
    };
    let cfg = config(fx.layout("job-killed"), source, true);
    // The forked child plays imsctl in the middle of `jobs exec`.
    // SAFETY: the child only runs the sandbox and _exits.
    let imsctl = match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            let _ = run(&cfg, &sh("sleep 4210 & sleep 4211"));
            // SAFETY: leave the forked test process.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => child,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while processes_with("sleep 4211").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !processes_with("sleep 4211").is_empty(),
        "the sandbox started"
    );
    nix::sys::signal::kill(imsctl, nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    nix::sys::wait::waitpid(imsctl, None).expect("reap");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(processes_with("sleep 421").is_empty() && loops_backed_by(&fx.base()).is_empty())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_nothing_left(&fx, 4210);
    assert_nothing_left(&fx, 4211);
    // The next session repairs what the killed one left (its resolv.conf swap) and works.
    let status = run(
        &cfg,
        &sh("test -L /etc/resolv.conf || test -f /etc/resolv.conf"),
    )
    .expect("next run");
    assert!(status.success());
    assert_resolv_restored(
        &fx.layout("job-killed").upper().join("etc"),
        &fx.layout("job-killed"),
    );
}

#[test]
fn shell_without_a_terminal_reads_commands_from_its_input_and_run_with_captures_output() {
    if !is_root() {
        return imsctl_testkit::not_run!("note: needs root; skipped");
    }
    let fx = Fixture::new();
    let layout = fx.extracted("job-piped", false);
    let cfg = config(layout.clone(), ImageSource::Extracted, true);
    let script = fx.dir.path().join("script");
    fs::write(
        &script,
        "echo piped-$((1+1)); cat /etc/marker; touch /tmp/failed\n",
    )
    .expect("write script");
    let output = fx.dir.path().join("output");
    let input_file = fs::File::open(&script).expect("open script");
    let output_file = fs::File::create(&output).expect("create output");
    let status = shell_on(&cfg, input_file.as_fd(), output_file.as_fd()).expect("shell");
    assert!(status.success());
    assert_eq!(read(&output), format!("piped-2\n{MARKER}"));
    assert_eq!(
        crate::root::signal_raised(&layout, &ImageSource::Extracted),
        Some(Signal::Failed)
    );
    settle(&cfg).expect("settle");
    assert_eq!(
        crate::root::signal_raised(&layout, &ImageSource::Extracted),
        None,
        "settle clears signals"
    );
    let captured = fx.dir.path().join("captured");
    let stdout = fs::File::create(&captured).expect("create");
    let stdio = Stdio::Streams {
        stdin: None,
        stdout: Some(stdout.into()),
        stderr: None,
    };
    let status = run_with(&cfg, &sh("ls /etc/marker; exit 3"), stdio).expect("run_with");
    assert_eq!(status.code(), Some(3));
    assert_eq!(read(&captured), "/etc/marker\n");
}

/// The packer's view: the merged image root, readable and writable from outside.
fn check_held_root(fx: &Fixture, cfg: &SandboxConfig) -> std::result::Result<(), String> {
    let held = hold_root(cfg).map_err(|e| format!("hold: {e}"))?;
    let root = held.path();
    check(
        read(root.join("etc/marker")) == MARKER,
        "the base shows through the held root",
    )?;
    check(
        fs::read_link(root.join("etc/resolv.conf")).ok().as_deref() == Some(Path::new(DANGLING)),
        "image's resolv.conf",
    )?;
    check(
        fs::read_dir(root.join("proc")).map(|d| d.count()).ok() == Some(0),
        "nothing mounted on the image",
    )?;
    fs::write(root.join("etc/from-outside"), "ca")
        .map_err(|e| format!("write through held root: {e}"))?;
    check(
        matches!(hold_root(cfg), Err(Error::Locked { .. })),
        "the job stays locked while held",
    )?;
    held.release().map_err(|e| format!("release: {e}"))?;
    check(
        read(cfg.layout.upper().join("etc/from-outside")) == "ca",
        "the write landed in the upper dir",
    )?;
    check(
        mounts_mentioning(fx.dir.path()).is_empty(),
        "nothing mounted after release",
    )
}

#[test]
fn held_root_as_root_and_unprivileged() {
    let fx = Fixture::new();
    if is_root() {
        let source = ImageSource::Mount {
            base: fx.base(),
            via: LowerVia::KernelLoop,
        };
        let cfg = config(fx.layout("job-held"), source, true);
        check_held_root(&fx, &cfg).expect("held root as root");
        assert_nothing_left(&fx, 4212);
    }
    let lower = fx.extracted("lower-held", true).root();
    let layout = fx.layout("job-held-rootless");
    fs::create_dir_all(layout.work()).expect("mkdir");
    give_to_unprivileged(layout.work());
    as_nobody(|| {
        let cfg = config(
            layout.clone(),
            ImageSource::OverlayDir {
                lower: lower.clone(),
            },
            true,
        );
        check_held_root(&fx, &cfg)
    });
}
