//! The containment suite: a probe (tests/containment/probe.c, built static here) run inside every
//! kind of session — one-shot `customize --run`, `customize --shell`, `jobs exec`, `jobs shell`,
//! an SSH exec and an SSH terminal session, `jobs exec` into a running server — jailed and not,
//! as root and rootless (a user with a subordinate id range), tries every route we know of from
//! a customization to the host. Each test asserts that every route was tried and refused, and
//! checks the host afterwards (the marker directory untouched, the hostname unchanged).
//!
//! The caller's secret is planted in imsctl's environment (AWS_SECRET_ACCESS_KEY) and in a host
//! file next to a marker; the probe gets it reversed, so that its own command line is clean.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::workflow::{str_field, wait_for};

/// Every route the probe reports; a session passes when all are there and refused.
const ROUTES: &[&str] = &[
    "proc-fd-walk",
    "proc-cwd-root-walk",
    "pid1-links",
    "pid1-root",
    "chroot-escape",
    "ptrace-pid1",
    "ptrace-siblings",
    "process-vm-read-pid1",
    "mount-tmpfs",
    "mount-bind",
    "mount-remount-rw",
    "umount-proc",
    "fsopen",
    "open-tree",
    "pivot-root",
    "unshare-user",
    "unshare-mount",
    "clone-newuser",
    "setns",
    "init-module",
    "finit-module",
    "delete-module",
    "kexec-load",
    "reboot",
    "swapon",
    "bpf",
    "keyctl",
    "open-by-handle-at",
    "settimeofday",
    "sethostname",
    "mknod-host-disk",
    "mknod-open-device",
    "host-devices",
    "raw-packet-socket",
    "raw-ip-socket",
    "kill-host-pid",
    "environ-secret",
    "host-marker-read",
    "host-marker-write",
    "tiocsti",
    "kernel-knobs-write",
    "proc-kcore",
    "process-privileges",
];

/// Routes that the seccomp filter (or the dropped capability behind it) must refuse with EPERM
/// itself, not by luck of an argument.
const REFUSED_WITH_EPERM: &[&str] = &[
    "ptrace-pid1",
    "process-vm-read-pid1",
    "mount-tmpfs",
    "mount-bind",
    "umount-proc",
    "fsopen",
    "open-tree",
    "pivot-root",
    "clone-newuser",
    "init-module",
    "finit-module",
    "kexec-load",
    "reboot",
    "swapon",
    "bpf",
    "keyctl",
    "open-by-handle-at",
    "sethostname",
    "raw-packet-socket",
    "raw-ip-socket",
];

/// The most any process inside may hold: Docker's default set less NET_RAW.
const ALLOWED_CAPS: &str = "a80405fb";
const PROBE_INSIDE: &str = "/usr/local/bin/imsctl-probe";

/// The probe, built static once.
fn probe_binary() -> Option<&'static Path> {
    static BIN: OnceLock<Option<(tempfile::TempDir, PathBuf)>> = OnceLock::new();
    BIN.get_or_init(|| {
        if !have("gcc") {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("probe");
        let out = Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(&bin)
            .arg(repo().join("tests/containment/probe.c"))
            .output()
            .expect("run gcc");
        assert!(
            out.status.success(),
            "building the probe: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some((dir, bin))
    })
    .as_ref()
    .map(|(_, p)| p.as_path())
}

/// The bundled test image with the probe at /usr/local/bin/imsctl-probe, as a tar.
fn probe_image() -> Option<&'static Path> {
    static IMG: OnceLock<Option<(tempfile::TempDir, PathBuf)>> = OnceLock::new();
    IMG.get_or_init(|| {
        let probe = probe_binary()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("tree");
        fs::create_dir(&tree).expect("mkdir");
        run(Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xJf"])
            .arg(tiny_image())
            .arg("-C")
            .arg(&tree));
        fs::create_dir_all(tree.join("usr/local/bin")).expect("mkdir");
        fs::copy(probe, tree.join(&PROBE_INSIDE[1..])).expect("copy probe");
        let tar = dir.path().join("probe-image.tar");
        run(Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-cf"])
            .arg(&tar)
            .arg("-C")
            .arg(&tree)
            .arg("."));
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::set_permissions(&tar, fs::Permissions::from_mode(0o644)).expect("chmod");
        Some((dir, tar))
    })
    .as_ref()
    .map(|(_, p)| p.as_path())
}

/// The host's disk (a block device the probe tries to make and open).
fn host_disk() -> String {
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return "7:0".into();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    let disk = names
        .iter()
        .find(|n| !n.starts_with("loop") && !n.starts_with("ram") && !n.starts_with("zram"))
        .or(names.first());
    disk.and_then(|d| fs::read_to_string(format!("/sys/block/{d}/dev")).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "7:0".into())
}

/// Who runs imsctl in a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Root,
    /// A user with a subordinate id range (imsctl maps it: the laptop case).
    Rootless,
}

/// One case: a store, the secret and marker, and how to run imsctl.
struct Case {
    who: Who,
    user: Option<&'static RootlessUser>,
    dir: tempfile::TempDir,
    secret: String,
    image: String,
    hostname_before: String,
}

impl Case {
    fn new(who: Who, test: &str) -> Option<Case> {
        if !is_root() {
            imsctl_testkit::not_run!(
                "{test}: ignored: the containment suite needs root (CI runs it as root)"
            );
            return None;
        }
        let Some(img) = probe_image() else {
            imsctl_testkit::not_run!("{test}: ignored: gcc is needed to build the probe");
            return None;
        };
        let user = match who {
            Who::Root => None,
            Who::Rootless => match rootless_user() {
                Some(u) => Some(u),
                None => {
                    imsctl_testkit::not_run!(
                        "{test}: ignored: no user with a subordinate id range (needs useradd and uidmap)"
                    );
                    return None;
                }
            },
        };
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let secret = format!("imsctl-secret-{}", std::process::id() ^ fastrand_u32());
        let marker_dir = dir.path().join("marker-dir");
        fs::create_dir(&marker_dir).expect("mkdir");
        fs::set_permissions(&marker_dir, fs::Permissions::from_mode(0o777)).expect("chmod");
        fs::write(marker_dir.join("marker"), &secret).expect("write marker");
        fs::set_permissions(marker_dir.join("marker"), fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let home = dir.path().join("home");
        fs::create_dir_all(home.join(".aws")).expect("mkdir");
        fs::write(
            home.join(".aws/credentials"),
            format!("[default]\naws_secret_access_key = {secret}\n"),
        )
        .expect("write credentials");
        fs::create_dir(dir.path().join("store")).expect("mkdir");
        if let Some(u) = user {
            run(Command::new("chown")
                .arg("-R")
                .arg(format!("{}:{}", u.uid, u.gid))
                .arg(dir.path().join("store"))
                .arg(&home));
        }
        let mut case = Case {
            who,
            user,
            dir,
            secret,
            image: String::new(),
            hostname_before: hostname(),
        };
        let rec = case.json(&[
            "images",
            "import",
            img.to_str().expect("utf-8"),
            "--name",
            "probe-base",
            "--format",
            "json",
        ]);
        case.image = str_field(&rec, "id");
        Some(case)
    }

    fn marker(&self) -> PathBuf {
        self.dir.path().join("marker-dir/marker")
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// imsctl as this case's user, with the secret in its environment.
    fn imsctl(&self) -> Command {
        let mut c = match self.user {
            None => imsctl(),
            Some(u) => {
                let mut c = Command::new("setpriv");
                c.args([
                    "--reuid",
                    &u.uid.to_string(),
                    "--regid",
                    &u.gid.to_string(),
                    "--init-groups",
                ])
                .arg(env!("CARGO_BIN_EXE_imsctl"));
                c
            }
        };
        c.env("HOME", self.home())
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("IMSCTL_PROBE_SECRET", &self.secret)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .arg("--store")
            .arg(self.store())
            .arg("--quiet");
        c
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = run(self.imsctl().args(args));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// The probe's command line, for a probe at `path` inside.
    fn probe_command(&self, path: &str) -> String {
        let reversed: String = self.secret.chars().rev().collect();
        let mut hidden = vec![
            self.store().display().to_string(),
            self.home().join(".aws").display().to_string(),
            "/etc/shadow".into(),
            "/etc/gshadow".into(),
            "/root/.cargo".into(),
            std::env::current_dir().expect("cwd").display().to_string(),
        ];
        if let Some(u) = self.user {
            hidden.push(u.home.display().to_string());
        }
        let hidden: Vec<String> = hidden.iter().map(|h| format!("hidden={h}")).collect();
        format!(
            "{path} marker={} secret-reversed={reversed} hostpid={} blockdev={} caps={ALLOWED_CAPS} {}",
            self.marker().display(),
            std::process::id(),
            host_disk(),
            hidden.join(" ")
        )
    }

    /// Assert the probe's report (found anywhere in `output`) and check the host after it.
    fn assert_contained(&self, session: &str, output: &str) {
        let label = format!("{:?} {session}", self.who);
        let lines: Vec<&str> = output.lines().filter(|l| l.starts_with("ROUTE ")).collect();
        let open: Vec<&&str> = lines.iter().filter(|l| l.contains(": OPEN (")).collect();
        assert!(
            open.is_empty(),
            "{label}: routes open:\n{open:#?}\n{output}"
        );
        for route in ROUTES {
            let line = lines
                .iter()
                .find(|l| l.starts_with(&format!("ROUTE {route}: ")))
                .unwrap_or_else(|| panic!("{label}: route {route} was not tried:\n{output}"));
            if REFUSED_WITH_EPERM.contains(route) {
                assert!(
                    line.contains("Operation not permitted"),
                    "{label}: {route} must be refused with EPERM: {line}"
                );
            }
        }
        assert!(
            output.contains("PROBE DONE 0 open"),
            "{label}: the probe did not finish:\n{output}"
        );
        let marker_dir: Vec<_> = fs::read_dir(self.dir.path().join("marker-dir"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(marker_dir.len(), 1, "{label}: {marker_dir:?}");
        assert_eq!(
            hostname(),
            self.hostname_before,
            "{label}: the host's hostname"
        );
    }

    fn create_job(&self, extra: &[&str]) -> String {
        let mut args = vec![
            "jobs",
            "create",
            "--artifact-id",
            &self.image,
            "--image-root-archive-name",
            "probed",
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        str_field(&self.json(&args), "id")
    }

    fn delete_job(&self, id: &str) {
        run(self.imsctl().args(["jobs", "delete", id]));
        let work = self.store().join("work").join(id);
        assert!(!work.exists(), "jobs delete left {}", work.display());
    }
}

fn fastrand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    t.subsec_nanos() ^ (t.as_secs() as u32)
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_string()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The environment inside holds the documented names only (and what the shell sets itself).
fn assert_documented_environment(session: &str, env_output: &str, job_id: Option<&str>) {
    const DOCUMENTED: &[&str] = &[
        "PATH",
        "HOME",
        "TERM",
        "LANG",
        "PS1",
        "IMS_JOB_ID",
        "IMS_ARCH",
        "IMS_DKMS_ENABLED",
        "USER",
        "LOGNAME",
        "SHELL",
        "SSH_CLIENT",
        "SSH_CONNECTION",
        "SSH_TTY",
        "TZ",
        // set by the shell itself
        "PWD",
        "OLDPWD",
        "SHLVL",
        "_",
    ];
    let names: Vec<&str> = env_output
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    assert!(names.contains(&"IMS_JOB_ID"), "{session}: {env_output}");
    for name in &names {
        assert!(
            DOCUMENTED.contains(name) || name.starts_with("LC_"),
            "{session}: undocumented variable {name} inside:\n{env_output}"
        );
    }
    if let Some(id) = job_id {
        assert!(
            env_output.contains(&format!("IMS_JOB_ID={id}")),
            "{env_output}"
        );
    }
    assert!(
        env_output.contains("IMS_DKMS_ENABLED=False"),
        "{env_output}"
    );
}

fn one_shot_jailed(who: Who) {
    let Some(case) = Case::new(who, "one_shot_jailed") else {
        return;
    };
    let out = case
        .imsctl()
        .args(["customize", &case.image, "--name", "probed", "--run"])
        .arg(case.probe_command(PROBE_INSIDE))
        .output()
        .expect("customize");
    assert!(out.status.success(), "{}", text(&out));
    case.assert_contained("customize --run", &text(&out));
    let out = case
        .imsctl()
        .args(["customize", &case.image, "--name", "env", "--run", "env"])
        .output()
        .expect("customize");
    assert_documented_environment(
        "customize --run",
        &String::from_utf8_lossy(&out.stderr),
        None,
    );
}

fn one_shot_shell_not_jailed(who: Who) {
    let Some(case) = Case::new(who, "one_shot_shell") else {
        return;
    };
    let script = format!(
        "{}\ntouch /mnt/image/complete\nexit\n",
        case.probe_command(&format!("/mnt/image/image-root{PROBE_INSIDE}"))
    );
    let out = pipe_into(
        case.imsctl()
            .args(["customize", &case.image, "--name", "probed", "--shell"]),
        &script,
    );
    assert!(out.status.success(), "{}", text(&out));
    case.assert_contained("customize --shell (not jailed)", &text(&out));
}

fn pipe_into(cmd: &mut Command, input: &str) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write input");
    child.wait_with_output().expect("wait")
}

fn jobs_exec_and_shell(who: Who) {
    let Some(case) = Case::new(who, "jobs_exec_and_shell") else {
        return;
    };
    for jailed in [false, true] {
        let id = case.create_job(&[
            "--ssh-containers-jail",
            if jailed { "True" } else { "False" },
        ]);
        let path = if jailed {
            PROBE_INSIDE.to_string()
        } else {
            format!("/mnt/image/image-root{PROBE_INSIDE}")
        };
        let out = case
            .imsctl()
            .args(["jobs", "exec", &id, "--", "/bin/sh", "-c"])
            .arg(case.probe_command(&path))
            .output()
            .expect("jobs exec");
        assert!(out.status.success(), "{}", text(&out));
        case.assert_contained(&format!("jobs exec (jailed {jailed})"), &text(&out));
        let out = pipe_into(
            case.imsctl().args(["jobs", "shell", &id]),
            &format!("{}\nexit\n", case.probe_command(&path)),
        );
        assert!(out.status.success(), "{}", text(&out));
        case.assert_contained(&format!("jobs shell (jailed {jailed})"), &text(&out));
        case.delete_job(&id);
    }
}

/// A key pair (as root) registered as this case's public-key record.
fn ssh_key(case: &Case) -> (PathBuf, String) {
    let key = case.dir.path().join("id_ed25519");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key));
    let public = case.dir.path().join("id_ed25519.pub");
    fs::set_permissions(&public, fs::Permissions::from_mode(0o644)).expect("chmod");
    let rec = case.json(&[
        "public-keys",
        "create",
        "--name",
        "probe key",
        "--public-key",
        public.to_str().expect("utf-8"),
        "--format",
        "json",
    ]);
    (key, str_field(&rec, "id"))
}

fn ssh_command(case: &Case, key: &Path, port: u16) -> Command {
    let mut c = Command::new("ssh");
    c.env("HOME", case.dir.path())
        .args(["-p", &port.to_string(), "-i"])
        .arg(key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
        ]);
    c
}

fn ssh_sessions(who: Who) {
    let Some(case) = Case::new(who, "ssh_sessions") else {
        return;
    };
    if !have("ssh") || !have("ssh-keygen") {
        imsctl_testkit::not_run!(
            "ssh_sessions: ignored: openssh-client is needed (CI installs it)"
        );
        return;
    }
    let (key, key_id) = ssh_key(&case);
    for jailed in [false, true] {
        let job = case.json(&[
            "jobs",
            "create",
            "--artifact-id",
            &case.image,
            "--image-root-archive-name",
            "probed",
            "--public-key-id",
            &key_id,
            "--ssh-listen",
            "127.0.0.1:0",
            "--ssh-containers-jail",
            if jailed { "True" } else { "False" },
            "--format",
            "json",
        ]);
        let id = str_field(&job, "id");
        let port = job["ssh_containers"][0]["connection_info"]["customer_access"]["port"]
            .as_u64()
            .expect("port") as u16;
        let path = if jailed {
            PROBE_INSIDE.to_string()
        } else {
            format!("/mnt/image/image-root{PROBE_INSIDE}")
        };
        let probe = case.probe_command(&path);
        let env = ssh_command(&case, &key, port)
            .arg("root@127.0.0.1")
            .arg("env")
            .output()
            .expect("ssh env");
        assert_documented_environment("ssh", &text(&env), Some(&id));
        let env = case
            .imsctl()
            .args(["jobs", "exec", &id, "--", "env"])
            .output()
            .expect("jobs exec env");
        assert_documented_environment("jobs exec into the server", &text(&env), Some(&id));
        let out = ssh_command(&case, &key, port)
            .arg("root@127.0.0.1")
            .arg(&probe)
            .output()
            .expect("ssh");
        case.assert_contained(&format!("ssh exec (jailed {jailed})"), &text(&out));
        // A terminal session: TIOCSTI on a real terminal of the sandbox.
        let out = ssh_command(&case, &key, port)
            .arg("-tt")
            .arg("root@127.0.0.1")
            .arg(&probe)
            .stdin(Stdio::null())
            .output()
            .expect("ssh -tt");
        let shown = text(&out);
        assert!(
            shown.contains("ROUTE tiocsti: refused (1 terminals")
                || shown.contains("ROUTE tiocsti: refused (2 terminals")
                || shown.contains("ROUTE tiocsti: refused (3 terminals")
                || shown.contains("ROUTE tiocsti: refused (4 terminals"),
            "the terminal session has a terminal: {shown}"
        );
        case.assert_contained(&format!("ssh -tt (jailed {jailed})"), &shown);
        // jobs exec while the server holds the sandbox: it joins it (internal-enter).
        let out = case
            .imsctl()
            .args(["jobs", "exec", &id, "--", "/bin/sh", "-c"])
            .arg(&probe)
            .output()
            .expect("jobs exec");
        assert!(out.status.success(), "{}", text(&out));
        case.assert_contained(
            &format!("jobs exec into the server (jailed {jailed})"),
            &text(&out),
        );
        case.delete_job(&id);
        assert!(
            wait_for(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_err()),
            "the server is gone with its job"
        );
    }
}

/// One test as root and one rootless for each session kind.
macro_rules! as_root_and_rootless {
    ($($body:ident => $root:ident, $rootless:ident;)*) => {$(
        #[test]
        fn $root() {
            $body(Who::Root);
        }
        #[test]
        fn $rootless() {
            $body(Who::Rootless);
        }
    )*};
}

as_root_and_rootless! {
    one_shot_jailed => containment_one_shot_customize_root, containment_one_shot_customize_rootless;
    one_shot_shell_not_jailed => containment_customize_shell_not_jailed_root, containment_customize_shell_not_jailed_rootless;
    jobs_exec_and_shell => containment_jobs_exec_and_shell_root, containment_jobs_exec_and_shell_rootless;
    ssh_sessions => containment_ssh_sessions_root, containment_ssh_sessions_rootless;
    ansible_play => ansible_playbook_runs_over_ssh_root, ansible_playbook_runs_over_ssh_rootless;
}

/// `customize --ansible`: the playbook runs on the host and manages the job over a one-off SSH
/// server (as IMS runs plays), as root and rootless; what it wrote is in the image.
fn ansible_play(who: Who) {
    let Some(case) = Case::new(who, "ansible_play") else {
        return;
    };
    // Run with the system PATH (as the rootless user has it): Debian's ansible-core.
    let reachable = ["/usr/local/bin", "/usr/bin"]
        .iter()
        .any(|d| Path::new(d).join("ansible-playbook").exists());
    if !reachable || !have("ssh") || !Path::new("/usr/bin/python3").exists() {
        imsctl_testkit::not_run!(
            "ansible_play: ignored: needs ansible-core in /usr, openssh-client and /usr/bin/python3 (CI installs them)"
        );
        return;
    }
    let play = case.dir.path().join("play.yml");
    fs::write(
        &play,
        "- hosts: all\n  gather_facts: false\n  tasks:\n\
         \x20   - copy: {dest: /mnt/image/image-root/etc/from-ansible, content: \"played\\n\", mode: \"0640\"}\n\
         \x20   - command: chroot /mnt/image/image-root /bin/sh -c 'echo $IMS_JOB_ID > /root/job-id'\n",
    )
    .expect("write play");
    fs::set_permissions(&play, fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = run(case.imsctl().args([
        "customize",
        &case.image,
        "--name",
        "played",
        "--ansible",
        play.to_str().expect("utf-8"),
    ]));
    let result: Value = serde_json::from_str(&out).expect("json");
    let rootfs = case
        .store()
        .join("artifacts")
        .join(str_field(&result["ims_image_record"], "id"))
        .join("rootfs");
    assert_eq!(unsquashfs_cat(&rootfs, "etc/from-ansible"), b"played\n");
    let job_id = str_field(&result["ims_job_record"], "id");
    assert_eq!(
        unsquashfs_cat(&rootfs, "root/job-id"),
        format!("{job_id}\n").as_bytes()
    );
    let listing = unsquashfs_lln(&rootfs);
    assert!(
        listing.contains("-rw-r----- 0/0") && listing.contains("etc/from-ansible"),
        "{listing}"
    );
    assert!(
        !listing.contains("ansible/id_ed25519"),
        "no key in the image"
    );
}

/// The non-jailed view shows the host's tools and none of its secrets.
#[test]
fn non_jailed_view_shows_tools_not_secrets() {
    let Some(case) = Case::new(Who::Root, "non_jailed_view") else {
        return;
    };
    let id = case.create_job(&[]);
    let script = "for p in /usr/bin/python3 /bin/sh /etc/passwd /etc/ld.so.cache /etc/ssl/certs \
        /etc/shadow /etc/gshadow /etc/sudoers /etc/ssh /etc/ssl/private /etc/machine-id /root/.cargo \
        /var/lib/dpkg /home /mnt/image/image-root/etc/hostname; do \
        if [ -e $p ]; then echo \"present $p\"; else echo \"absent $p\"; fi; done; \
        touch /usr/imsctl-write 2>/dev/null && echo 'wrote /usr'; \
        touch /etc/imsctl-write 2>/dev/null && echo 'wrote /etc'; \
        touch /imsctl-write 2>/dev/null && echo 'wrote /'; \
        touch /tmp/ok && echo 'wrote /tmp'";
    let out = run(case
        .imsctl()
        .args(["jobs", "exec", &id, "--", "/bin/sh", "-c", script]));
    for present in [
        "/usr/bin/python3",
        "/bin/sh",
        "/etc/passwd",
        "/etc/ld.so.cache",
        "/mnt/image/image-root/etc/hostname",
    ] {
        if Path::new(present).exists() || present.starts_with("/mnt") {
            assert!(
                out.contains(&format!("present {present}")),
                "{present}: {out}"
            );
        }
    }
    for absent in [
        "/etc/shadow",
        "/etc/gshadow",
        "/etc/sudoers",
        "/etc/ssh",
        "/etc/ssl/private",
        "/etc/machine-id",
        "/root/.cargo",
        "/var/lib/dpkg",
    ] {
        assert!(out.contains(&format!("absent {absent}")), "{absent}: {out}");
    }
    assert!(
        !out.contains("wrote /usr") && !out.contains("wrote /etc") && !out.contains("wrote /\n"),
        "{out}"
    );
    assert!(out.contains("wrote /tmp"), "{out}");
    case.delete_job(&id);
}

/// Sessions' mount points the image lacked are gone from the packed image, and the change
/// report does not list them.
#[test]
fn mount_points_the_image_lacked_do_not_reach_the_result() {
    if !is_root() {
        imsctl_testkit::not_run!("mount_points: ignored: needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("tree");
    fs::create_dir(&tree).expect("mkdir");
    run(Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xJf"])
        .arg(tiny_image())
        .arg("-C")
        .arg(&tree));
    for d in ["dev", "proc", "sys", "run"] {
        fs::remove_dir_all(tree.join(d)).expect("rm");
    }
    let tar = dir.path().join("bare.tar");
    run(Command::new("tar")
        .args(["--numeric-owner", "-cf"])
        .arg(&tar)
        .arg("-C")
        .arg(&tree)
        .arg("."));
    for mode in ["mount", "extract"] {
        let store = dir.path().join(format!("store-{mode}"));
        let out = run(imsctl()
            .arg("--store")
            .arg(&store)
            .arg("--quiet")
            .arg("customize")
            .arg(&tar)
            .args([
                "--name",
                "bare",
                "--mode",
                mode,
                "--run",
                "echo changed > /etc/motd",
            ]));
        let result: Value = serde_json::from_str(&out).expect("json");
        let report = &result["ims_job_record"]["change_report"];
        if mode == "mount" {
            // Only what the command made: none of the sandbox's mount points.
            assert_eq!(
                report["added"],
                serde_json::json!(["/etc/motd"]),
                "{report}"
            );
        }
        let id = str_field(&result["ims_image_record"], "id");
        let listing = unsquashfs_lln(&store.join("artifacts").join(id).join("rootfs"));
        for d in ["dev", "proc", "sys", "run"] {
            assert!(
                !listing
                    .lines()
                    .any(|l| l.ends_with(&format!("squashfs-root/{d}"))),
                "{mode}: /{d} leaked into the image:\n{listing}"
            );
        }
        assert!(listing.contains("squashfs-root/etc/motd"));
    }
}

/// A user with a subordinate id range, made once (CI runs as root; newuidmap from uidmap).
pub struct RootlessUser {
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// The first host id of its subordinate uid range.
    pub subuid_start: u32,
}

const ROOTLESS_USER: &str = "imsctl-rootless";

pub fn rootless_user() -> Option<&'static RootlessUser> {
    static USER: OnceLock<Option<RootlessUser>> = OnceLock::new();
    USER.get_or_init(|| {
        if !is_root() || !have("useradd") || !have("newuidmap") || !have("setpriv") {
            return None;
        }
        let exists = Command::new("id")
            .arg(ROOTLESS_USER)
            .output()
            .is_ok_and(|o| o.status.success());
        if !exists {
            run(Command::new("useradd").args([
                "--create-home",
                "--shell",
                "/bin/sh",
                ROOTLESS_USER,
            ]));
        }
        let has_range = |file: &str| {
            fs::read_to_string(file)
                .map(|t| {
                    t.lines()
                        .any(|l| l.starts_with(&format!("{ROOTLESS_USER}:")))
                })
                .unwrap_or(false)
        };
        if !has_range("/etc/subuid") || !has_range("/etc/subgid") {
            run(Command::new("usermod").args([
                "--add-subuids",
                "400000-465535",
                "--add-subgids",
                "400000-465535",
                ROOTLESS_USER,
            ]));
        }
        let id = |flag: &str| -> u32 {
            run(Command::new("id").arg(flag).arg(ROOTLESS_USER))
                .trim()
                .parse()
                .expect("numeric id")
        };
        let home = PathBuf::from(format!("/home/{ROOTLESS_USER}"));
        let meta = fs::metadata(&home).ok()?;
        let subuid_start = fs::read_to_string("/etc/subuid")
            .ok()?
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{ROOTLESS_USER}:"))?
                    .split(':')
                    .next()?
                    .parse()
                    .ok()
            })?;
        Some(RootlessUser {
            uid: id("-u"),
            gid: id("-g"),
            home: if meta.uid() == id("-u") {
                home
            } else {
                return None;
            },
            subuid_start,
        })
    })
    .as_ref()
}
