//! The customize workflow end to end: `imsctl customize` and `imsctl jobs …` against a temp store,
//! the results checked with tools that are not imsctl (unsquashfs, md5sum, the kernel's
//! squashfs, getfattr, /proc, tmux).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

const ROOTFS_TYPE: &str = "application/vnd.cray.image.rootfs.squashfs";
const KERNEL_TYPE: &str = "application/vnd.cray.image.kernel";
const INITRD_TYPE: &str = "application/vnd.cray.image.initrd";
const MANIFEST_TYPE: &str = "application/json";

const PEM: &str =
    "-----BEGIN CERTIFICATE-----\nMIIBdGVzdCBjZXJ0aWZpY2F0ZQ==\n-----END CERTIFICATE-----\n";
/// The image's resolv.conf: a symlink that dangles outside a booted system.
const IMAGE_RESOLV_TARGET: &str = "../run/systemd/resolve/stub-resolv.conf";
/// security.capability of the fixture's usr/bin/ping (cap_net_raw+ep), as getfattr prints it.
const PING_CAPABILITY: &str = "security.capability=0x0100000200200000000000000000000000000000";

/// A temp store of its own for one test, and a scratch dir beside it for inputs.
pub(crate) struct Store {
    pub(crate) dir: tempfile::TempDir,
}

impl Store {
    pub(crate) fn new() -> Store {
        let dir = tempfile::tempdir().expect("tempdir");
        Store { dir }
    }

    pub(crate) fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// A file beside the store (inputs such as scripts and certificates).
    pub(crate) fn scratch(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, contents).expect("write scratch file");
        path
    }

    pub(crate) fn cmd(&self) -> Command {
        let mut c = imsctl();
        c.arg("--store").arg(self.root()).arg("--quiet");
        c
    }

    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let out = run(self.cmd().args(args));
        parse_json(&out)
    }

    /// `imsctl customize SRC ARGS…`, which must succeed; its JSON result.
    pub(crate) fn customize(&self, src: &str, args: &[&str]) -> Value {
        let out = run(self.cmd().arg("customize").arg(src).args(args));
        parse_json(&out)
    }

    pub(crate) fn import(&self, src: &Path) -> String {
        let rec = self.json(&[
            "images",
            "import",
            src.to_str().expect("utf-8 path"),
            "--name",
            "base",
            "--format",
            "json",
        ]);
        str_field(&rec, "id")
    }

    pub(crate) fn image_ids(&self) -> BTreeSet<String> {
        let list = self.json(&["images", "list", "--format", "json"]);
        list.as_array()
            .expect("images list is an array")
            .iter()
            .map(|r| str_field(r, "id"))
            .collect()
    }

    pub(crate) fn jobs(&self) -> Vec<Value> {
        let list = self.json(&["jobs", "list", "--format", "json"]);
        list.as_array().expect("jobs list is an array").clone()
    }

    pub(crate) fn job(&self, id: &str) -> Value {
        self.json(&["jobs", "describe", id, "--format", "json"])
    }

    /// The one job of this store (for `customize`, which does not print the id on failure).
    pub(crate) fn only_job(&self) -> Value {
        let jobs = self.jobs();
        assert_eq!(jobs.len(), 1, "one job in the store: {jobs:?}");
        jobs[0].clone()
    }

    /// Names of the entries under `<store>/artifacts`.
    pub(crate) fn artifact_dirs(&self) -> BTreeSet<String> {
        names_in(&self.root().join("artifacts"))
    }

    pub(crate) fn rootfs(&self, image_id: &str) -> PathBuf {
        self.root().join("artifacts").join(image_id).join("rootfs")
    }

    pub(crate) fn work_dir(&self, job_id: &str) -> PathBuf {
        self.root().join("work").join(job_id)
    }

    /// `jobs create` on an image; the new job's id.
    pub(crate) fn create_job(&self, image_id: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "jobs",
            "create",
            "--artifact-id",
            image_id,
            "--image-root-archive-name",
            "custom",
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        let job = self.json(&args);
        assert_eq!(job["status"], "waiting_on_user", "{job:#}");
        str_field(&job, "id")
    }

    pub(crate) fn exec(&self, job_id: &str, argv: &[&str]) -> String {
        run(self.cmd().args(["jobs", "exec", job_id, "--"]).args(argv))
    }
}

pub(crate) fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

pub(crate) fn str_field(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string field {key} in {v:#}"))
        .to_string()
}

pub(crate) fn names_in(dir: &Path) -> BTreeSet<String> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| {
                e.expect("read_dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
        Err(e) => panic!("read_dir {}: {e}", dir.display()),
    }
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The paths of an image (`/etc/motd`, …) with their `unsquashfs -lln` lines.
fn listing(img: &Path) -> Vec<(String, String)> {
    unsquashfs_lln(img)
        .lines()
        .filter_map(|line| {
            // perm owner size date time path[ -> target]
            let path = line.split_whitespace().nth(5)?;
            let path = path.strip_prefix("squashfs-root")?;
            let path = if path.is_empty() { "/" } else { path };
            Some((path.to_string(), line.to_string()))
        })
        .collect()
}

/// The `unsquashfs -lln` line of one path, if the image has it.
fn entry(list: &[(String, String)], path: &str) -> Option<String> {
    list.iter().find(|(p, _)| p == path).map(|(_, l)| l.clone())
}

fn cat(img: &Path, path: &str) -> String {
    String::from_utf8_lossy(&unsquashfs_cat(img, path)).into_owned()
}

/// Signal files must never be packed: no entry named `complete` or `failed` anywhere.
fn assert_no_signal_files(list: &[(String, String)]) {
    let found: Vec<_> = list
        .iter()
        .filter(|(p, _)| {
            let name = p.rsplit('/').next().unwrap_or_default();
            name == "complete" || name == "failed"
        })
        .collect();
    assert!(found.is_empty(), "signal files packed: {found:?}");
}

/// Lines of /proc/self/mountinfo that mention `path`.
fn mounts_mentioning(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .expect("read mountinfo")
        .lines()
        .filter(|l| l.contains(&needle))
        .map(String::from)
        .collect()
}

/// Loop devices whose backing file is under `path`.
fn loops_backed_by(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for name in names_in(Path::new("/sys/block")) {
        let backing = Path::new("/sys/block")
            .join(&name)
            .join("loop/backing_file");
        if let Ok(file) = fs::read_to_string(&backing)
            && file.contains(&needle)
        {
            found.push(format!("{name}: {}", file.trim()));
        }
    }
    found
}

/// Processes (other than this one) whose command line mentions `needle`, as ps would show them.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    names_in(Path::new("/proc"))
        .into_iter()
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()) && *n != me)
        .filter_map(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline
                .contains(needle)
                .then(|| format!("{pid}: {cmdline}"))
        })
        .collect()
}

/// Wait (bounded) until `check` holds; false on timeout.
pub(crate) fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if check() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Nothing of the store left mounted, attached to a loop device or running.
fn assert_nothing_left_running(store: &Store) {
    let root = store.root();
    assert_eq!(
        mounts_mentioning(&root),
        Vec::<String>::new(),
        "mounts left"
    );
    // Autoclear loop devices are released when their last mount goes, which may lag a moment.
    assert!(
        wait_for(Duration::from_secs(5), || loops_backed_by(&root).is_empty()),
        "loop devices left: {:?}",
        loops_backed_by(&root)
    );
    let processes = || processes_mentioning(&root.to_string_lossy());
    assert!(
        wait_for(Duration::from_secs(5), || processes().is_empty()),
        "processes left: {:?}",
        processes()
    );
}

/// `getfattr -d -m - -e hex` of one file in an image, through the kernel's squashfs.
fn xattrs_in_image(img: &Path, path: &str) -> String {
    let mnt = KernelMount::new(img);
    run(Command::new("getfattr")
        .args(["-h", "-d", "-m", "-", "-e", "hex"])
        .arg(mnt.path().join(path)))
}

/// A small image without /boot: busybox and /etc only.
fn image_without_kernel(store: &Store) -> PathBuf {
    let tree = store.dir.path().join("nokernel");
    for d in ["bin", "etc", "tmp", "root", "proc", "sys", "dev", "run"] {
        fs::create_dir_all(tree.join(d)).expect("mkdir");
    }
    let busybox = unsquashfs_cat_from_fixture("bin/busybox");
    fs::write(tree.join("bin/busybox"), busybox).expect("write busybox");
    run(Command::new("chmod")
        .arg("755")
        .arg(tree.join("bin/busybox")));
    for app in ["sh", "touch", "echo", "cat", "rm", "ls"] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(app)).expect("symlink");
    }
    fs::write(tree.join("etc/os-release"), "ID=nokernel\n").expect("write");
    let txz = store.dir.path().join("nokernel.txz");
    run(Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(&tree)
        .arg("-cJf")
        .arg(&txz)
        .arg("."));
    txz
}

/// A file of the bundled test image (the busybox binary is what a tiny image needs).
fn unsquashfs_cat_from_fixture(path: &str) -> Vec<u8> {
    let out = run_bytes(
        Command::new("tar")
            .arg("-xJOf")
            .arg(tiny_image())
            .arg(format!("./{path}")),
    );
    assert!(!out.is_empty(), "{path} in the fixture");
    out
}

fn run_bytes(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", stderr_of(&out));
    out.stdout
}

fn tiny() -> String {
    tiny_image().to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------------------------
// 1. The one-shot customize, checked from every side.

#[test]
fn customize_publishes_an_ims_image_with_the_changes() {
    let store = Store::new();
    let pem = store.scratch("ca.pem", PEM);
    let report = store.dir.path().join("report.json");
    let out = store.customize(
        &tiny(),
        &[
            "--name",
            "demo",
            "--run",
            "echo hello > /etc/motd",
            "--run",
            "rm /etc/hostname",
            "--ca-cert",
            pem.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ],
    );

    // ims_python_helper's result shape.
    assert_eq!(out["result"], "success");
    let image_id = str_field(&out["ims_image_record"], "id");
    assert_eq!(out["ims_image_record"]["name"], "demo");
    let dir = store.root().join("artifacts").join(&image_id);
    let artifacts = out["ims_image_artifacts"].as_array().expect("artifacts");
    assert_eq!(artifacts.len(), 4, "rootfs, kernel, initrd, manifest");
    for (file, mime) in [
        ("rootfs", ROOTFS_TYPE),
        ("kernel", KERNEL_TYPE),
        ("initrd", INITRD_TYPE),
        ("manifest.json", MANIFEST_TYPE),
    ] {
        let art = artifacts
            .iter()
            .find(|a| a["type"] == mime)
            .unwrap_or_else(|| panic!("no {mime} artifact in {artifacts:#?}"));
        let path = dir.join(file);
        assert_eq!(art["md5"], md5sum(&path), "{file}: md5 vs md5sum");
        assert_eq!(art["link"]["type"], "file");
        assert_eq!(art["link"]["path"], path.to_str().unwrap());
    }

    // manifest.json as IMS writes it: sorted keys, 4-space indent, version 1.0, three artifacts.
    let manifest_text = fs::read_to_string(dir.join("manifest.json")).expect("manifest");
    assert!(
        manifest_text.starts_with("{\n    \"artifacts\": [\n        {\n            \"link\": {"),
        "manifest layout:\n{manifest_text}"
    );
    let manifest = parse_json(&manifest_text);
    assert_eq!(manifest["version"], "1.0");
    let created = str_field(&manifest, "created");
    assert!(
        created.len() == 26 && &created[10..11] == " " && &created[19..20] == ".",
        "created is 'YYYY-MM-DD HH:MM:SS.ffffff': {created}"
    );
    let types: Vec<_> = manifest["artifacts"]
        .as_array()
        .expect("manifest artifacts")
        .iter()
        .map(|a| {
            let file = Path::new(a["link"]["path"].as_str().expect("path"));
            assert_eq!(a["md5"], md5sum(file), "manifest md5 of {}", file.display());
            a["type"].as_str().expect("type").to_string()
        })
        .collect();
    assert_eq!(types, [ROOTFS_TYPE, KERNEL_TYPE, INITRD_TYPE]);

    // The packed root, read by unsquashfs.
    let rootfs = dir.join("rootfs");
    let list = listing(&rootfs);
    assert_eq!(cat(&rootfs, "etc/motd"), "hello\n");
    assert_eq!(entry(&list, "/etc/hostname"), None, "hostname removed");
    assert_eq!(cat(&rootfs, "etc/cray/ca/certificate_authority.crt"), PEM);
    let resolv = entry(&list, "/etc/resolv.conf").expect("resolv.conf kept");
    assert!(
        resolv.starts_with('l') && resolv.ends_with(&format!("-> {IMAGE_RESOLV_TARGET}")),
        "the image's own dangling resolv.conf restored: {resolv}"
    );
    assert_no_signal_files(&list);
    let var_log = entry(&list, "/var/log").expect("var/log");
    assert!(
        var_log.contains(" 1/1 "),
        "var/log keeps owner 1:1: {var_log}"
    );
    // The kernel published is the image's.
    assert_eq!(
        md5sum(&dir.join("kernel")),
        md5_of_bytes(&unsquashfs_cat(&rootfs, "boot/vmlinuz-6.1.0-tiny"))
    );

    // The job record.
    let job_id = str_field(&out["ims_job_record"], "id");
    let job = store.job(&job_id);
    assert_eq!(job["status"], "success");
    assert_eq!(job["resultant_image_id"], image_id.as_str());
    assert!(store.image_ids().contains(&image_id));

    // Nothing left behind: mounts, loop devices, processes, the work dir.
    assert_nothing_left_running(&store);
    assert!(
        !store.work_dir(&job_id).exists(),
        "work dir removed: {}",
        store.work_dir(&job_id).display()
    );

    // The change report.
    let report = parse_json(&fs::read_to_string(&report).expect("report written"));
    let listed = |key: &str| -> Vec<String> {
        report[key]
            .as_array()
            .unwrap_or_else(|| panic!("report.{key}: {report:#}"))
            .iter()
            .map(|v| v.as_str().expect("path").to_string())
            .collect()
    };
    assert!(
        listed("added").contains(&"/etc/motd".to_string()),
        "{report:#}"
    );
    assert!(
        listed("added").contains(&"/etc/cray/ca/certificate_authority.crt".to_string()),
        "{report:#}"
    );
    assert!(
        listed("removed").contains(&"/etc/hostname".to_string()),
        "{report:#}"
    );
    assert_eq!(job["change_report"], report, "report file = job record's");

    // images verify passes, and fails once an artifact is altered.
    run(store.cmd().args(["images", "verify", &image_id]));
    let kernel = dir.join("kernel");
    let mut bytes = fs::read(&kernel).expect("kernel");
    bytes[0] ^= 0xff;
    fs::write(&kernel, bytes).expect("alter kernel");
    let bad = run_failing(store.cmd().args(["images", "verify", &image_id]));
    let text = format!(
        "{}{}",
        stderr_of(&bad),
        String::from_utf8_lossy(&bad.stdout)
    );
    assert!(text.contains("kernel"), "verify names the kernel: {text}");
}

fn md5_of_bytes(bytes: &[u8]) -> String {
    let tmp = tempfile::NamedTempFile::new().expect("tempfile");
    fs::write(tmp.path(), bytes).expect("write");
    md5sum(tmp.path())
}

#[test]
fn customize_keeps_capabilities_through_the_kernel_view() {
    if !is_root() {
        imsctl_testkit::not_run!("not root: kernel mount check skipped");
        return;
    }
    let store = Store::new();
    let out = store.customize(&tiny(), &["--name", "caps", "--run", "true"]);
    let rootfs = store.rootfs(&str_field(&out["ims_image_record"], "id"));
    let attrs = xattrs_in_image(&rootfs, "usr/bin/ping");
    assert!(
        attrs.contains(PING_CAPABILITY),
        "ping's capability kept:\n{attrs}"
    );
}

#[test]
fn change_report_lists_only_what_the_steps_changed() {
    let store = Store::new();
    let out = store.customize(&tiny(), &["--name", "r", "--run", "echo x > /root/new"]);
    let report = &out["ims_job_record"]["change_report"];
    assert_eq!(
        report["added"],
        serde_json::json!(["/root/new"]),
        "{report:#}"
    );
    assert_eq!(report["changed"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["removed"], serde_json::json!([]), "{report:#}");
}

#[test]
fn step_output_does_not_corrupt_the_json_result() {
    let store = Store::new();
    let out = run(store.cmd().arg("customize").arg(tiny()).args([
        "--name",
        "noisy",
        "--run",
        "echo step says hi",
    ]));
    let result = parse_json(&out);
    assert_eq!(result["result"], "success");
}

// ---------------------------------------------------------------------------------------------
// 2. Steps run in the order given; scripts choose their interpreter.

#[test]
fn steps_run_in_command_line_order_and_scripts_use_their_shebang() {
    let store = Store::new();
    let with_shebang = store.scratch(
        "two.sh",
        "#!/bin/sh\nset -e\n[ -n \"$0\" ]\necho 2 >> /root/order\n",
    );
    let without_shebang = store.scratch("four.sh", "echo 4 >> /root/order\n");
    let out = store.customize(
        &tiny(),
        &[
            "--name",
            "ordered",
            "--run",
            "echo 1 >> /root/order",
            "--script",
            with_shebang.to_str().unwrap(),
            "--run",
            "echo 3 >> /root/order",
            "--script",
            without_shebang.to_str().unwrap(),
            "--run",
            "echo 5 >> /root/order",
        ],
    );
    let rootfs = store.rootfs(&str_field(&out["ims_image_record"], "id"));
    assert_eq!(cat(&rootfs, "root/order"), "1\n2\n3\n4\n5\n");
}

// ---------------------------------------------------------------------------------------------
// 3. A failing step fails the job and publishes nothing.

fn customize_failing_step(debug: bool) {
    let store = Store::new();
    let base = store.import(tiny_image());
    let images_before = store.image_ids();
    let artifacts_before = store.artifact_dirs();
    let mut cmd = store.cmd();
    cmd.args(["customize", &base, "--name", "broken"]);
    cmd.args(["--run", "echo before > /root/before", "--run", "exit 3"]);
    if debug {
        cmd.arg("--enable-debug");
    }
    let out = run_failing(&mut cmd);
    let err = stderr_of(&out);
    assert!(err.contains("--run 'exit 3'"), "names the step: {err}");
    assert!(err.contains("status 3"), "names the status: {err}");

    let job = store.only_job();
    let job_id = str_field(&job, "id");
    assert_eq!(job["status"], "error", "{job:#}");
    let message = str_field(&job, "error_message");
    assert!(message.contains("exit 3"), "error_message: {message}");
    assert!(job["resultant_image_id"].is_null(), "{job:#}");
    assert_eq!(store.image_ids(), images_before, "no new image registered");
    assert_eq!(store.artifact_dirs(), artifacts_before, "no new artifacts");
    assert_nothing_left_running(&store);
    let work = store.work_dir(&job_id);
    if debug {
        assert!(work.is_dir(), "--enable-debug keeps {}", work.display());
    } else {
        assert!(!work.exists(), "work dir removed: {}", work.display());
    }
}

#[test]
fn failing_step_ends_the_job_in_error_and_publishes_nothing() {
    customize_failing_step(false);
}

#[test]
fn failing_step_with_enable_debug_keeps_the_environment() {
    customize_failing_step(true);
}

// ---------------------------------------------------------------------------------------------
// 4. The jobs state machine, driven command by command.

#[test]
fn job_waits_for_the_user_and_the_complete_file_publishes() {
    let store = Store::new();
    let base = store.import(tiny_image());
    let job_id = store.create_job(&base, &[]);

    // describe, in both formats.
    let toml_text = run(store.cmd().args(["jobs", "describe", &job_id]));
    let as_toml: toml::Table = toml::from_str(&toml_text).expect("describe prints TOML");
    assert_eq!(
        as_toml.get("status").and_then(|v| v.as_str()),
        Some("waiting_on_user"),
        "{toml_text}"
    );
    assert_eq!(store.job(&job_id)["status"], "waiting_on_user");

    // Not jailed: the image at /mnt/image/image-root; a session without the signal keeps waiting.
    store.exec(
        &job_id,
        &["sh", "-c", "echo x > /mnt/image/image-root/root/x"],
    );
    assert_eq!(store.job(&job_id)["status"], "waiting_on_user");
    assert_eq!(store.image_ids().len(), 1, "nothing published yet");

    let printed = parse_json(&store.exec(&job_id, &["touch", "/mnt/image/complete"]));
    assert_eq!(printed["result"], "success");
    let job = store.job(&job_id);
    assert_eq!(job["status"], "success", "{job:#}");
    let image_id = str_field(&job, "resultant_image_id");
    assert_eq!(printed["ims_image_record"]["id"], image_id.as_str());
    let rootfs = store.rootfs(&image_id);
    assert_eq!(cat(&rootfs, "root/x"), "x\n");
    assert_no_signal_files(&listing(&rootfs));
    assert_nothing_left_running(&store);
}

#[test]
fn jailed_job_completes_on_tmp_complete_which_is_not_packed() {
    let store = Store::new();
    let base = store.import(tiny_image());
    let job_id = store.create_job(&base, &["--ssh-containers-jail", "True"]);
    assert_eq!(store.job(&job_id)["ssh_containers"][0]["jail"], true);
    // Jailed, the command runs inside the image root.
    store.exec(&job_id, &["sh", "-c", "echo jailed > /root/j"]);
    assert_eq!(store.job(&job_id)["status"], "waiting_on_user");
    store.exec(&job_id, &["touch", "/tmp/complete"]);
    let job = store.job(&job_id);
    assert_eq!(job["status"], "success", "{job:#}");
    let rootfs = store.rootfs(&str_field(&job, "resultant_image_id"));
    let list = listing(&rootfs);
    assert_eq!(cat(&rootfs, "root/j"), "jailed\n");
    assert!(entry(&list, "/tmp").is_some(), "/tmp itself is kept");
    assert_eq!(entry(&list, "/tmp/complete"), None);
    assert_no_signal_files(&list);
}

#[test]
fn jobs_fail_publishes_nothing_and_delete_removes_every_trace() {
    let store = Store::new();
    let base = store.import(tiny_image());
    let artifacts_before = store.artifact_dirs();

    let failed = store.create_job(&base, &[]);
    store.exec(
        &failed,
        &["sh", "-c", "echo x > /mnt/image/image-root/root/x"],
    );
    run(store.cmd().args(["jobs", "fail", &failed]));
    let job = store.job(&failed);
    assert_eq!(job["status"], "error", "{job:#}");
    assert!(job["resultant_image_id"].is_null());
    assert_eq!(store.image_ids(), BTreeSet::from([base.clone()]));
    assert_eq!(store.artifact_dirs(), artifacts_before);
    // An ended job takes no more sessions.
    let refused = run_failing(store.cmd().args(["jobs", "exec", &failed, "--", "true"]));
    assert!(
        stderr_of(&refused).contains(&failed),
        "{}",
        stderr_of(&refused)
    );

    let waiting = store.create_job(&base, &["--enable-debug"]);
    store.exec(
        &waiting,
        &["sh", "-c", "echo y > /mnt/image/image-root/root/y"],
    );
    assert!(store.work_dir(&waiting).is_dir());
    for id in [&failed, &waiting] {
        run(store.cmd().args(["jobs", "delete", id]));
        assert!(!store.work_dir(id).exists(), "work dir of {id} removed");
        let gone = run_failing(store.cmd().args(["jobs", "describe", id]));
        assert!(
            stderr_of(&gone).contains(id.as_str()),
            "{}",
            stderr_of(&gone)
        );
    }
    assert!(store.jobs().is_empty());
    assert!(names_in(&store.root().join("work")).is_empty());
    assert_nothing_left_running(&store);
}

/// Put a job record in `status` as a packer killed mid-way would have left it.
fn set_job_status(store: &Store, id: &str, status: &str) {
    let path = store.root().join("jobs").join(format!("{id}.json"));
    let mut record: Value = parse_json(&fs::read_to_string(&path).expect("read job record"));
    record["status"] = Value::from(status);
    fs::write(&path, serde_json::to_string(&record).expect("json")).expect("write job record");
}

#[test]
fn an_interrupted_packaging_is_done_again_by_jobs_complete_unless_a_packer_lives() {
    let store = Store::new();
    let base = store.import(tiny_image());
    let id = store.create_job(&base, &[]);
    store.exec(&id, &["sh", "-c", "echo z > /mnt/image/image-root/root/z"]);
    set_job_status(&store, &id, "packaging_artifacts");

    // A live packer (here `flock` holding the packing lock) is not disturbed.
    let lock = store.work_dir(&id).join("packing.lock");
    let mut holder = Command::new("flock")
        .arg("-o")
        .arg(&lock)
        .args(["sleep", "30"])
        .spawn()
        .expect("flock");
    assert!(wait_for(Duration::from_secs(5), || lock.exists()));
    std::thread::sleep(Duration::from_millis(200));
    let busy = run_failing(store.cmd().args(["jobs", "complete", &id]));
    assert!(
        stderr_of(&busy).contains("is being packed by another process"),
        "{}",
        stderr_of(&busy)
    );
    assert_eq!(store.job(&id)["status"], "packaging_artifacts");
    let _ = holder.kill();
    let _ = holder.wait();

    // Its packer gone, the job is packed again and succeeds.
    let result = store.json(&["jobs", "complete", &id]);
    let image = str_field(&result["ims_image_record"], "id");
    assert_eq!(unsquashfs_cat(&store.rootfs(&image), "root/z"), b"z\n");
    assert_eq!(store.job(&id)["status"], "success");
}

// ---------------------------------------------------------------------------------------------
// 5. The interactive shell, typed into through tmux.

/// A tmux server of its own (own socket), killed on drop.
pub(crate) struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    pub(crate) fn start(dir: &Path, command: &str) -> Tmux {
        let tmux = Tmux {
            socket: dir.join("tmux.sock"),
        };
        run(tmux
            .cmd()
            .args(["new-session", "-d", "-s", "t", "-x", "160", "-y", "50"])
            .arg(command));
        run(tmux
            .cmd()
            .args(["set-option", "-t", "t", "remain-on-exit", "on"]));
        tmux
    }

    pub(crate) fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket);
        c
    }

    pub(crate) fn type_line(&self, line: &str) {
        run(self.cmd().args(["send-keys", "-t", "t", "-l", line]));
        run(self.cmd().args(["send-keys", "-t", "t", "Enter"]));
    }

    pub(crate) fn screen(&self) -> String {
        run(self
            .cmd()
            .args(["capture-pane", "-p", "-t", "t", "-S", "-200"]))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

/// A job waiting for the user and `jobs shell` on it in a tmux pane (160x50).
fn shell_in_tmux(store: &Store) -> (String, Tmux) {
    let base = store.import(tiny_image());
    let job_id = store.create_job(&base, &[]);
    let command = format!(
        "{} --store {} jobs shell {job_id}",
        env!("CARGO_BIN_EXE_imsctl"),
        store.root().display()
    );
    (job_id, Tmux::start(store.dir.path(), &command))
}

/// Wait (bounded) until the pane shows `text`; false on timeout.
fn screen_shows(tmux: &Tmux, text: &str) -> bool {
    wait_for(Duration::from_secs(20), || tmux.screen().contains(text))
}

#[test]
fn interactive_shell_through_tmux_completes_the_job() {
    if !have("tmux") {
        imsctl_testkit::not_run!("tmux missing: interactive shell test skipped");
        return;
    }
    let store = Store::new();
    let (job_id, tmux) = shell_in_tmux(&store);
    // The shell answers on a terminal of the pane's size ($((…)) so the echo of the typed line
    // does not count as the answer).
    tmux.type_line("test -t 0 && stty size && echo ready-$((40+2))");
    assert!(
        screen_shows(&tmux, "\n50 160\nready-42"),
        "the shell answers on a 50x160 terminal:\n{}",
        tmux.screen()
    );
    tmux.type_line("echo typed > /mnt/image/image-root/root/typed");
    tmux.type_line("touch /mnt/image/complete");
    tmux.type_line("exit");
    let done = wait_for(Duration::from_secs(60), || {
        store.job(&job_id)["status"] == "success"
    });
    assert!(
        done,
        "job reached success; job: {:#}\nscreen:\n{}",
        store.job(&job_id),
        tmux.screen()
    );
    let image_id = str_field(&store.job(&job_id), "resultant_image_id");
    let rootfs = store.rootfs(&image_id);
    assert_eq!(cat(&rootfs, "root/typed"), "typed\n");
    assert_no_signal_files(&listing(&rootfs));
    drop(tmux);
    assert_nothing_left_running(&store);
}

#[test]
fn interactive_shell_tty_has_a_name_under_dev_pts() {
    if !have("tmux") {
        imsctl_testkit::not_run!("tmux missing: interactive shell test skipped");
        return;
    }
    let store = Store::new();
    let (_job_id, tmux) = shell_in_tmux(&store);
    tmux.type_line("echo TTY=$(tty)");
    let answer_of = |screen: &str| {
        screen
            .lines()
            .find(|l| l.starts_with("TTY="))
            .map(String::from)
    };
    assert!(
        wait_for(Duration::from_secs(20), || answer_of(&tmux.screen())
            .is_some()),
        "the shell answers:\n{}",
        tmux.screen()
    );
    let screen = tmux.screen();
    let answer = answer_of(&screen).unwrap_or_default();
    assert!(
        answer.starts_with("TTY=/dev/pts/"),
        "tty names the pty: {answer}\n{screen}"
    );
    tmux.type_line("exit");
}

// ---------------------------------------------------------------------------------------------
// 6. Bad inputs.

#[test]
fn bad_image_ids_are_errors_naming_the_id() {
    let store = Store::new();
    let unknown = "6a0b9c2e-1111-4222-8333-444455556666";
    for id in ["not-a-uuid", unknown] {
        let out = run_failing(store.cmd().args(["customize", id, "--name", "x"]));
        assert!(
            stderr_of(&out).contains(id),
            "customize: {}",
            stderr_of(&out)
        );
        let out = run_failing(store.cmd().args([
            "jobs",
            "create",
            "--artifact-id",
            id,
            "--image-root-archive-name",
            "x",
        ]));
        assert!(
            stderr_of(&out).contains(id),
            "jobs create: {}",
            stderr_of(&out)
        );
    }
    assert!(store.jobs().is_empty(), "no job recorded");
    assert!(store.image_ids().is_empty());
}

#[test]
fn corrupt_archive_is_an_error_and_leaves_nothing() {
    let store = Store::new();
    let whole = fs::read(tiny_image()).expect("fixture");
    let truncated = store.dir.path().join("truncated.txz");
    fs::write(&truncated, &whole[..whole.len() / 2]).expect("write");
    let out = run_failing(
        store
            .cmd()
            .arg("customize")
            .arg(&truncated)
            .args(["--name", "x"]),
    );
    let err = stderr_of(&out);
    assert!(err.contains("truncated.txz"), "names the archive: {err}");
    assert!(store.image_ids().is_empty(), "nothing registered");
    assert!(store.jobs().is_empty(), "no job");
    // No temp files anywhere in the store: only the empty record and artifact dirs (and locks).
    let files = run(Command::new("find").arg(store.root()).args([
        "-mindepth",
        "1",
        "!",
        "-type",
        "d",
        "!",
        "-name",
        "lock",
    ]));
    assert_eq!(files, "", "leftovers in the store");
    assert!(store.artifact_dirs().is_empty());
    assert!(names_in(&store.root().join("work")).is_empty());
}

#[test]
fn image_without_kernel_ends_the_job_in_error() {
    let store = Store::new();
    let txz = image_without_kernel(&store);
    let base = store.import(&txz);
    let out = run_failing(store.cmd().args([
        "customize",
        &base,
        "--name",
        "x",
        "--run",
        "echo hi > /root/hi",
    ]));
    let err = stderr_of(&out);
    assert!(err.contains("no kernel found"), "{err}");
    let job = store.only_job();
    assert_eq!(job["status"], "error");
    assert!(
        str_field(&job, "error_message").contains("no kernel found"),
        "{job:#}"
    );
    assert_eq!(store.image_ids(), BTreeSet::from([base.clone()]));
    assert_eq!(store.artifact_dirs(), BTreeSet::from([base]));
    assert_nothing_left_running(&store);
}

// ---------------------------------------------------------------------------------------------
// 7. Two jobs at once on one base.

#[test]
fn two_customizations_of_one_base_at_once_both_succeed() {
    let store = Store::new();
    let base = store.import(tiny_image());
    let spawn = |tag: &str| {
        store
            .cmd()
            .args(["customize", &base, "--name", tag, "--run"])
            .arg(format!("echo {tag} > /root/who; sleep 1"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn customize")
    };
    let (a, b) = (spawn("alpha"), spawn("beta"));
    let results: Vec<Value> = [a, b]
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().expect("wait");
            assert!(out.status.success(), "{}", stderr_of(&out));
            parse_json(&String::from_utf8_lossy(&out.stdout))
        })
        .collect();
    let ids: BTreeSet<String> = results
        .iter()
        .map(|r| str_field(&r["ims_image_record"], "id"))
        .collect();
    assert_eq!(ids.len(), 2, "two different images");
    for (r, tag) in results.iter().zip(["alpha", "beta"]) {
        assert_eq!(r["ims_job_record"]["artifact_id"], base.as_str());
        let rootfs = store.rootfs(&str_field(&r["ims_image_record"], "id"));
        assert_eq!(cat(&rootfs, "root/who"), format!("{tag}\n"));
    }
    assert_eq!(store.image_ids().len(), 3);
    assert_nothing_left_running(&store);
}

// ---------------------------------------------------------------------------------------------
// 8. Isolation.

#[test]
fn steps_cannot_see_host_processes_or_write_outside_the_image() {
    let store = Store::new();
    let marker = uuid::Uuid::new_v4().to_string();
    // A host process whose command line only we know; the step looks for it under a pattern
    // assembled at run time, so that its own command line does not match.
    let mut host_proc = Command::new("sh")
        .arg("-c")
        .arg(format!("sleep 60; : hostproc-{marker}"))
        .spawn()
        .expect("spawn host process");
    assert!(
        wait_for(Duration::from_secs(5), || {
            !processes_mentioning(&format!("hostproc-{marker}")).is_empty()
        }),
        "the host process is visible on the host"
    );
    let script = format!(
        "ls /proc | grep -c '^[0-9]' > /root/npids; \
         p=hostproc; (grep -l \"$p-{marker}\" /proc/[0-9]*/cmdline || true) > /root/seen; \
         touch /host-marker-{marker}; \
         v=$(cat /sys/class/net/lo/tx_queue_len); \
         if echo $v > /sys/class/net/lo/tx_queue_len 2>/dev/null || touch /sys/imsctl-probe 2>/dev/null; \
         then echo writable; else echo refused; fi > /root/sys"
    );
    let result = store.customize(&tiny(), &["--name", "iso", "--run", &script]);
    let _ = host_proc.kill();
    let _ = host_proc.wait();

    let rootfs = store.rootfs(&str_field(&result["ims_image_record"], "id"));
    let npids: usize = cat(&rootfs, "root/npids").trim().parse().expect("a count");
    assert!(npids < 10, "the step sees {npids} processes");
    assert_eq!(cat(&rootfs, "root/seen"), "", "a host process is visible");
    assert!(
        entry(&listing(&rootfs), &format!("/host-marker-{marker}")).is_some(),
        "the write landed in the image"
    );
    assert!(
        !Path::new(&format!("/host-marker-{marker}")).exists(),
        "the step wrote to the host's /"
    );
    assert_eq!(cat(&rootfs, "root/sys"), "refused\n", "/sys is writable");
}

#[test]
fn network_none_leaves_only_loopback() {
    let store = Store::new();
    let result = store.customize(
        &tiny(),
        &[
            "--name",
            "offline",
            "--network",
            "none",
            "--run",
            "ls /sys/class/net > /root/ifaces",
        ],
    );
    let rootfs = store.rootfs(&str_field(&result["ims_image_record"], "id"));
    assert_eq!(cat(&rootfs, "root/ifaces"), "lo\n");
}

// ---------------------------------------------------------------------------------------------
// 9. Rootless.

/// A store owned by `nobody`, and `customize` run as nobody; the result's rootfs path.
fn rootless_customize(store: &Store) -> Option<PathBuf> {
    if !is_root() || !have("setpriv") {
        imsctl_testkit::not_run!(
            "needs root and setpriv to switch to an unprivileged user: skipped"
        );
        return None;
    }
    let top = store.dir.path();
    let home = top.join("home");
    fs::create_dir_all(&home).expect("mkdir home");
    fs::create_dir_all(store.root()).expect("mkdir store");
    let txz = top.join("tiny-rootfs.txz");
    fs::copy(tiny_image(), &txz).expect("copy fixture");
    run(Command::new("chmod").arg("755").arg(top));
    run(Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&home)
        .arg(store.root()));
    let out = run(Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_imsctl"))
        .arg("--store")
        .arg(store.root())
        .arg("--quiet")
        .args(["customize"])
        .arg(&txz)
        .args([
            "--name",
            "rootless",
            "--run",
            "echo rootless > /etc/motd; id -u > /root/uid",
        ])
        .env("HOME", &home)
        .env_remove("XDG_DATA_HOME")
        .env("SOURCE_DATE_EPOCH", "1700000000"));
    let result = parse_json(&out);
    assert_eq!(result["result"], "success");
    Some(store.rootfs(&str_field(&result["ims_image_record"], "id")))
}

#[test]
fn rootless_customize_applies_the_change() {
    let store = Store::new();
    let Some(rootfs) = rootless_customize(&store) else {
        return;
    };
    assert_eq!(cat(&rootfs, "etc/motd"), "rootless\n");
    assert_eq!(
        cat(&rootfs, "root/uid"),
        "0\n",
        "the step runs as root of its namespace"
    );
    assert_no_signal_files(&listing(&rootfs));
}

#[test]
fn rootless_customize_keeps_owners_and_capabilities() {
    let store = Store::new();
    let Some(rootfs) = rootless_customize(&store) else {
        return;
    };
    let var_log = entry(&listing(&rootfs), "/var/log").expect("var/log");
    assert!(
        var_log.contains(" 1/1 "),
        "var/log keeps owner 1:1: {var_log}"
    );
    let attrs = xattrs_in_image(&rootfs, "usr/bin/ping");
    assert!(
        attrs.contains(PING_CAPABILITY),
        "ping's capability kept:\n{attrs}"
    );
}

// ---------------------------------------------------------------------------------------------
// Publishing to S3 (moto_server on loopback).

/// A moto_server on a free loopback port, killed on drop.
struct Moto {
    child: std::process::Child,
    url: String,
}

impl Moto {
    fn start() -> Option<Moto> {
        if !have("moto_server") {
            imsctl_testkit::not_run!("moto_server not installed: skipped");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Moto { child, url });
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn customize_publishes_to_s3_with_the_ims_layout() {
    let Some(moto) = Moto::start() else { return };
    let store = Store::new();
    let aws = |args: &[&str]| {
        let mut c = Command::new("aws");
        c.args(["--endpoint-url", &moto.url]).args(args);
        c.env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1");
        c
    };
    if !have("aws") {
        imsctl_testkit::not_run!("aws cli not installed: skipped");
        return;
    }
    run(&mut aws(&["s3", "mb", "s3://boot-images"]));
    let out = run(store
        .cmd()
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_ENDPOINT_URL", &moto.url)
        .args([
            "customize",
            &tiny(),
            "--name",
            "to-s3",
            "--run",
            "echo s3 > /etc/motd",
            "--publish",
            "s3://boot-images",
        ]));
    let result = parse_json(&out);
    assert_eq!(result["result"], "success");
    let id = result["ims_image_record"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(result["ims_image_record"]["link"]["type"], "s3");
    assert_eq!(
        result["ims_image_record"]["link"]["path"],
        format!("s3://boot-images/{id}/manifest.json")
    );
    let listing = run(&mut aws(&[
        "s3",
        "ls",
        "--recursive",
        &format!("s3://boot-images/{id}/"),
    ]));
    for object in ["rootfs", "kernel", "initrd", "manifest.json"] {
        assert!(
            listing.contains(&format!("{id}/{object}")),
            "{object} uploaded: {listing}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    run(&mut aws(&[
        "s3",
        "cp",
        &format!("s3://boot-images/{id}/rootfs"),
        rootfs.to_str().unwrap(),
    ]));
    let md5 = md5sum(&rootfs);
    let rootfs_entry = result["ims_image_artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"] == "application/vnd.cray.image.rootfs.squashfs")
        .unwrap()
        .clone();
    assert_eq!(
        rootfs_entry["md5"],
        md5.as_str(),
        "the md5 in the result is the object's"
    );
    assert_eq!(unsquashfs_cat(&rootfs, "etc/motd"), b"s3\n");
    let head = run(&mut aws(&[
        "s3api",
        "head-object",
        "--bucket",
        "boot-images",
        "--key",
        &format!("{id}/rootfs"),
    ]));
    assert!(head.contains(&md5), "md5sum user metadata is set: {head}");
}

#[test]
fn ca_trust_runs_the_images_own_trust_tool() {
    let store = Store::new();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-xJf")
        .arg(tiny_image()));
    fs::create_dir_all(root.join("usr/sbin")).unwrap();
    fs::create_dir_all(root.join("etc/ssl/certs")).unwrap();
    let tool = root.join("usr/sbin/update-ca-certificates");
    fs::write(&tool, "#!/bin/sh\ncat /usr/local/share/ca-certificates/*.crt > /etc/ssl/certs/ca-certificates.crt\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut fs::metadata(&tool).unwrap().permissions(),
        0o755,
    );
    run(Command::new("chmod").arg("755").arg(&tool));
    let pem = store.scratch(
        "site.pem",
        "-----BEGIN CERTIFICATE-----\nMIIBtrust\n-----END CERTIFICATE-----\n",
    );
    let with_tool = store.import(&root);
    let out = store.customize(
        &with_tool,
        &[
            "--name",
            "trusted",
            "--ca-cert",
            pem.to_str().unwrap(),
            "--ca-trust",
        ],
    );
    let image = out["ims_image_record"]["id"].as_str().unwrap().to_string();
    let bundle = unsquashfs_cat(&store.rootfs(&image), "etc/ssl/certs/ca-certificates.crt");
    assert_eq!(
        bundle,
        fs::read(&pem).unwrap(),
        "the image's tool saw the certificate"
    );

    // An image without any trust tool: a clear error, nothing published.
    let plain = store.import(tiny_image());
    let failed = run_failing(store.cmd().args([
        "customize",
        &plain,
        "--name",
        "x",
        "--ca-cert",
        pem.to_str().unwrap(),
        "--ca-trust",
    ]));
    assert!(
        stderr_of(&failed).contains("no CA trust tool"),
        "{}",
        stderr_of(&failed)
    );
    assert!(
        !store
            .image_ids()
            .iter()
            .any(|id| *id != with_tool && *id != plain && *id != image)
    );
}
