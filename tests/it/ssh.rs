//! SSH access to a job (IMS options 1 and 2) with the real OpenSSH client and real Ansible:
//! ssh in, run commands, scp/sftp files, an interactive shell through tmux, the seed's Ansible
//! commands and sample playbook; a foreign key is refused; the complete file packs the job and
//! the server is gone afterwards. Results are checked in the packed image with unsquashfs.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::common::*;
use crate::workflow::{Store, Tmux, str_field, wait_for};

/// A store with the tiny image, a key pair registered as a public-key record, and the OpenSSH
/// client's files (known_hosts) kept in the store's temp dir.
struct SshSetup {
    store: Store,
    image: String,
    key: PathBuf,
    key_id: String,
}

impl SshSetup {
    /// None (with a note) when the OpenSSH client is missing; CI installs it.
    fn new(test: &str) -> Option<SshSetup> {
        if !have("ssh") || !have("ssh-keygen") {
            imsctl_testkit::not_run!(
                "{test}: skipped, ssh/ssh-keygen (openssh-client) not installed"
            );
            return None;
        }
        let store = Store::new();
        let image = store.import(tiny_image());
        let key = keypair(store.dir.path(), "id_ed25519");
        let pub_path = key.with_extension("pub");
        let rec = store.json(&[
            "public-keys",
            "create",
            "--name",
            "test key",
            "--public-key",
            pub_path.to_str().expect("utf-8"),
            "--format",
            "json",
        ]);
        let key_id = str_field(&rec, "id");
        fs::create_dir_all(store.dir.path().join("home/.ssh")).expect("mkdir home");
        Some(SshSetup {
            store,
            image,
            key,
            key_id,
        })
    }

    /// `jobs create --public-key-id`: the job record, with its server listening.
    fn create_job(&self, extra: &[&str]) -> Value {
        let mut args = vec![
            "jobs",
            "create",
            "--artifact-id",
            &self.image,
            "--image-root-archive-name",
            "over-ssh",
            "--public-key-id",
            &self.key_id,
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        self.store.json(&args)
    }

    fn home(&self) -> PathBuf {
        self.store.dir.path().join("home")
    }

    /// An OpenSSH client command as the seed types it (`-p PORT`, `-i KEY`,
    /// StrictHostKeyChecking=no), with HOME in the temp dir so known_hosts lands there.
    fn client(&self, tool: &str, port: u16, key: &Path) -> Command {
        let mut c = Command::new(tool);
        c.env("HOME", self.home())
            .arg(if tool == "ssh" { "-p" } else { "-P" })
            .arg(port.to_string())
            .arg("-i")
            .arg(key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                &format!(
                    "UserKnownHostsFile={}",
                    self.home().join(".ssh/known_hosts").display()
                ),
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
            ]);
        c
    }

    fn ssh(&self, port: u16, command: &str) -> Output {
        self.client("ssh", port, &self.key)
            .arg("root@127.0.0.1")
            .arg(command)
            .output()
            .expect("run ssh")
    }
}

fn keypair(dir: &Path, name: &str) -> PathBuf {
    let key = dir.join(name);
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key));
    key
}

/// Host and port from the record, as the procedure tells users to read them.
fn connection(job: &Value) -> (String, u16) {
    let info = &job["ssh_containers"][0]["connection_info"]["customer_access"];
    let host = info["host"].as_str().expect("host").to_string();
    let port = info["port"].as_u64().expect("port") as u16;
    assert_eq!(
        job["ssh_containers"][0]["connection_info"]["cluster.local"], *info,
        "both connection entries point at the server"
    );
    (host, port)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Wait until the job leaves waiting_on_user / packaging_artifacts; its final record.
fn wait_until_done(store: &Store, id: &str) -> Value {
    let mut last = Value::Null;
    let done = wait_for(Duration::from_secs(90), || {
        last = store.job(id);
        last["status"] == "success" || last["status"] == "error"
    });
    assert!(done, "job {id} did not finish: {last:#}");
    last
}

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn pid_alive(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn ssh_runs_commands_copies_files_refuses_other_keys_and_the_complete_file_packs() {
    let Some(s) = SshSetup::new("ssh_runs_commands") else {
        return;
    };
    // Pack options given at creation are the job's: the server packs with them, read from the
    // record (not from its command line).
    let job = s.create_job(&["--comp", "xz", "--block-size", "64K"]);
    assert_eq!(job["status"], "waiting_on_user", "{job:#}");
    assert_eq!(job["ssh_containers"][0]["status"], "ready", "{job:#}");
    assert_eq!(job["ssh_containers"][0]["jail"], false);
    assert_eq!(job["imsctl"]["pack"]["compressor"], "xz", "{job:#}");
    assert_eq!(job["imsctl"]["pack"]["block_size"], 65536, "{job:#}");
    let (host, port) = connection(&job);
    assert_eq!(host, "127.0.0.1");
    assert!(port > 0);
    let id = str_field(&job, "id");
    let server_pid = job["ssh_containers"][0]["server_pid"]
        .as_i64()
        .expect("pid");

    // Option 1: a command, its streams apart, its exit status passed back. Not jailed: the
    // image is at /mnt/image/image-root.
    let out = s.ssh(
        port,
        "echo out; echo err >&2; id -u; hostname; head -1 /mnt/image/image-root/etc/os-release; exit 3",
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "out\n0\nimsctl-over-ssh\nNAME=\"tiny\"\n"
    );
    assert_eq!(text(&out.stderr), "err\n");

    // scp in (the SFTP protocol, as OpenSSH 9 does by default), sftp for the rest.
    let blob = s.store.dir.path().join("blob");
    let content: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&blob, &content).expect("write blob");
    run(s
        .client("scp", port, &s.key)
        .arg(&blob)
        .arg("root@127.0.0.1:/mnt/image/image-root/root/blob"));
    let batch = s.store.scratch(
        "batch",
        "mkdir /mnt/image/image-root/root/from-sftp\nchmod 750 /mnt/image/image-root/root/from-sftp\nls -l /mnt/image/image-root/root\n",
    );
    let listing = run(s
        .client("sftp", port, &s.key)
        .arg("-b")
        .arg(&batch)
        .arg("root@127.0.0.1"));
    assert!(
        listing.contains("1500000"),
        "sftp ls -l shows the copy: {listing}"
    );

    // Another key is refused, and nothing runs.
    let other = keypair(s.store.dir.path(), "other_key");
    let refused = s
        .client("ssh", port, &other)
        .arg("root@127.0.0.1")
        .arg("touch /mnt/image/image-root/should-not-exist")
        .output()
        .expect("ssh");
    assert_eq!(refused.status.code(), Some(255));
    assert!(
        text(&refused.stderr).contains("Permission denied"),
        "{}",
        text(&refused.stderr)
    );

    // The complete file closes the sessions, packs and publishes; the server goes away.
    let out = s.ssh(port, "touch /mnt/image/complete");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let done = wait_until_done(&s.store, &id);
    assert_eq!(done["status"], "success", "{done:#}");
    assert_eq!(done["ssh_containers"][0]["status"], "complete");
    let image = str_field(&done, "resultant_image_id");
    let rootfs = s.store.rootfs(&image);
    assert_eq!(unsquashfs_cat(&rootfs, "root/blob"), content);
    let listing = unsquashfs_lln(&rootfs);
    assert!(
        listing.contains("drwxr-x--- 0/0") && listing.contains("squashfs-root/root/from-sftp"),
        "{listing}"
    );
    assert!(!listing.contains("should-not-exist"));
    assert!(!listing.contains("complete"), "no signal file in the image");
    let superblock = run(Command::new("unsquashfs").arg("-s").arg(&rootfs));
    assert!(
        superblock.contains("Compression xz") && superblock.contains("Block size 65536"),
        "packed as the job was created: {superblock}"
    );
    assert!(
        wait_for(Duration::from_secs(10), || !listening(port)
            && !pid_alive(server_pid)),
        "the server is gone after the job ended"
    );
}

#[test]
fn ansible_option_two_and_the_sample_playbook_run_as_the_seed_writes_them() {
    let Some(s) = SshSetup::new("ansible_option_two") else {
        return;
    };
    if !have("ansible") || !have("ansible-playbook") {
        imsctl_testkit::not_run!("ansible_option_two: skipped, ansible-core not installed");
        return;
    }
    let job = s.create_job(&[]);
    let (host, port) = connection(&job);
    let id = str_field(&job, "id");
    let ansible = |program: &str| {
        let mut c = Command::new(program);
        c.env("HOME", s.home())
            .env("ANSIBLE_LOCAL_TEMP", s.home().join(".ansible/tmp"))
            .current_dir(s.store.dir.path());
        c
    };

    // `ansible all -i $IMS_SSH_HOST, -m ping --ssh-extra-args "-p … -i … -o …" -u root`
    let ping = run(ansible("ansible")
        .args([
            "all",
            "-i",
            &format!("{host},"),
            "-m",
            "ping",
            "--ssh-extra-args",
        ])
        .arg(format!(
            " -p {port} -i {} -o StrictHostKeyChecking=no",
            s.key.display()
        ))
        .args(["-u", "root"]));
    assert!(
        ping.contains("SUCCESS") && ping.contains("\"ping\": \"pong\""),
        "{ping}"
    );

    // The inventory and the sample playbook, paths kept. The image has no dracut, so the
    // chroot task runs a tool the image has, the same way.
    let dir = s.store.dir.path();
    fs::write(
        dir.join("inventory.ini"),
        format!(
            "myimage-customize ansible_user=root ansible_host={host} ansible_port={port} \
             ansible_ssh_private_key_file={} ansible_ssh_common_args='-o StrictHostKeyChecking=no'\n",
            s.key.display()
        ),
    )
    .expect("inventory");
    fs::write(dir.join("nothing_file"), "").expect("nothing_file");
    fs::write(
        dir.join("sample_playbook.yml"),
        r#"---
- hosts: all
  remote_user: root
  tasks:
    - name: Look at the image root
      command: "ls -l /mnt/image/image-root"
    - name: chroot and run a tool of the image (the seed runs dracut)
      command: "chroot /mnt/image/image-root /bin/sh -c 'echo configured > /etc/by-ansible'"
    - name: example copying file with owner and permissions
      copy:
        src: sample_playbook.yml
        dest: /mnt/image/image-root/tmp
    - name: Exit the build container
      copy:
        src: nothing_file
        dest: /mnt/image/complete
"#,
    )
    .expect("playbook");
    let played =
        run(ansible("ansible-playbook").args(["-i", "./inventory.ini", "sample_playbook.yml"]));
    assert!(
        played.contains("failed=0") && played.contains("ok=5"),
        "{played}"
    );

    let done = wait_until_done(&s.store, &id);
    assert_eq!(done["status"], "success", "{done:#}");
    let rootfs = s.store.rootfs(&str_field(&done, "resultant_image_id"));
    assert_eq!(unsquashfs_cat(&rootfs, "etc/by-ansible"), b"configured\n");
    assert_eq!(
        unsquashfs_cat(&rootfs, "tmp/sample_playbook.yml"),
        fs::read(dir.join("sample_playbook.yml")).expect("read playbook")
    );
    assert!(!listening(port), "the server is gone after the job ended");
}

#[test]
fn jailed_interactive_shell_has_a_terminal_of_its_own_and_tmp_complete_ends_it() {
    let Some(s) = SshSetup::new("jailed_interactive_shell") else {
        return;
    };
    if !have("tmux") {
        imsctl_testkit::not_run!("jailed_interactive_shell: skipped, tmux missing");
        return;
    }
    let job = s.create_job(&["--ssh-containers-jail", "true"]);
    assert_eq!(job["ssh_containers"][0]["jail"], true);
    let (_, port) = connection(&job);
    let id = str_field(&job, "id");
    let command = format!(
        "HOME={} ssh -p {port} -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@127.0.0.1",
        s.home().display(),
        s.key.display()
    );
    let tmux = Tmux::start(s.store.dir.path(), &command);
    // Jailed: / is the image; the terminal is the sandbox's own, of the pane's size.
    tmux.type_line("tty; stty size; test -d /mnt/image || echo jailed-$((40+2))");
    assert!(
        wait_for(Duration::from_secs(20), || {
            let screen = tmux.screen();
            screen.contains("/dev/pts/0\n50 160\njailed-42")
        }),
        "a terminal inside the sandbox:\n{}",
        tmux.screen()
    );
    run(tmux
        .cmd()
        .args(["resize-window", "-t", "t", "-x", "120", "-y", "40"]));
    tmux.type_line("stty size; echo $((6*7))-resized");
    assert!(
        wait_for(Duration::from_secs(20), || tmux
            .screen()
            .contains("40 120\n42-resized")),
        "the window change reaches the terminal:\n{}",
        tmux.screen()
    );
    tmux.type_line("echo typed > /root/typed; touch /tmp/complete; exit");
    let done = wait_until_done(&s.store, &id);
    assert_eq!(done["status"], "success", "{done:#}");
    let rootfs = s.store.rootfs(&str_field(&done, "resultant_image_id"));
    assert_eq!(unsquashfs_cat(&rootfs, "root/typed"), b"typed\n");
    assert!(
        !unsquashfs_lln(&rootfs).contains("tmp/complete"),
        "the jailed signal file is not packed"
    );
}

#[test]
fn jobs_commands_while_the_server_runs() {
    let Some(s) = SshSetup::new("jobs_commands_while_serving") else {
        return;
    };
    let job = s.create_job(&[]);
    let (_, port) = connection(&job);
    let id = str_field(&job, "id");
    // exec joins the sandbox the server holds: what it writes, ssh sees.
    s.store.exec(
        &id,
        &["sh", "-c", "echo via-exec > /mnt/image/image-root/root/x"],
    );
    let seen = s.ssh(port, "cat /mnt/image/image-root/root/x");
    assert_eq!(text(&seen.stdout), "via-exec\n");
    // Arguments arrive as given, no shell in between.
    assert_eq!(
        s.store.exec(&id, &["printf", "%s|", "a b", "c'd", "$HOME"]),
        "a b|c'd|$HOME|"
    );
    // The interactive shell is the server's now.
    let refused = run_failing(s.store.cmd().args(["jobs", "shell", &id]));
    let msg = text(&refused.stderr);
    assert!(
        msg.contains("served over SSH") && msg.contains(&format!("127.0.0.1:{port}")),
        "{msg}"
    );
    // `jobs complete` stops the server, then packs in the foreground.
    let result = s.store.json(&["jobs", "complete", &id]);
    let image = str_field(&result["ims_image_record"], "id");
    assert_eq!(
        unsquashfs_cat(&s.store.rootfs(&image), "root/x"),
        b"via-exec\n"
    );
    assert!(!listening(port));

    // `jobs delete` of a serving job stops its server too.
    let job = s.create_job(&["--ssh-listen", "127.0.0.1:0"]);
    let (_, port) = connection(&job);
    let id = str_field(&job, "id");
    assert!(listening(port));
    run(s.store.cmd().args(["jobs", "delete", &id]));
    assert!(!listening(port));
    assert!(!s.store.work_dir(&id).exists());
}

#[test]
fn a_bad_listen_address_fails_before_any_work() {
    let Some(s) = SshSetup::new("bad_listen_address") else {
        return;
    };
    let out = run_failing(s.store.cmd().args([
        "jobs",
        "create",
        "--artifact-id",
        &s.image,
        "--image-root-archive-name",
        "x",
        "--public-key-id",
        &s.key_id,
        "--ssh-listen",
        "localhost",
    ]));
    assert!(text(&out.stderr).contains("--ssh-listen 'localhost' is not ADDRESS:PORT"));
    assert!(s.store.jobs().is_empty(), "no job record was left");
}

#[test]
fn rootless_job_serves_ssh_and_files_written_over_it_belong_to_root_in_the_image() {
    let Some(s) = SshSetup::new("rootless_ssh") else {
        return;
    };
    if !is_root() || !have("setpriv") {
        imsctl_testkit::not_run!(
            "rootless_ssh: needs root and setpriv to switch to an unprivileged user: skipped"
        );
        return;
    }
    // A store of nobody's, and imsctl run as nobody (the server is then nobody's too).
    let top = s.store.dir.path();
    let store = top.join("rootless-store");
    let home = top.join("rootless-home");
    fs::create_dir_all(&store).expect("mkdir");
    fs::create_dir_all(&home).expect("mkdir");
    let txz = top.join("tiny.txz");
    fs::copy(tiny_image(), &txz).expect("copy image");
    let pub_key = top.join("key.pub");
    fs::copy(s.key.with_extension("pub"), &pub_key).expect("copy key");
    run(Command::new("chmod").arg("755").arg(top));
    run(Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&store)
        .arg(&home));
    let nobody = |args: &[&str]| -> Value {
        let out = run(Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg("env")
            .arg(format!("HOME={}", home.display()))
            .arg(env!("CARGO_BIN_EXE_imsctl"))
            .arg("--store")
            .arg(&store)
            .arg("--quiet")
            .args(args)
            .args(["--format", "json"]));
        serde_json::from_str(&out).expect("json")
    };
    let image = str_field(
        &nobody(&[
            "images",
            "import",
            txz.to_str().expect("utf-8"),
            "--name",
            "b",
        ]),
        "id",
    );
    let key = str_field(
        &nobody(&[
            "public-keys",
            "create",
            "--name",
            "k",
            "--public-key",
            pub_key.to_str().expect("utf-8"),
        ]),
        "id",
    );
    let job = nobody(&[
        "jobs",
        "create",
        "--artifact-id",
        &image,
        "--image-root-archive-name",
        "rootless",
        "--public-key-id",
        &key,
    ]);
    let (_, port) = connection(&job);
    let out = s.ssh(
        port,
        "id -u > /mnt/image/image-root/root/uid; touch /mnt/image/complete",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = str_field(&job, "id");
    let mut done = Value::Null;
    assert!(
        wait_for(Duration::from_secs(90), || {
            done = nobody(&["jobs", "describe", &id]);
            done["status"] == "success" || done["status"] == "error"
        }),
        "{done:#}"
    );
    assert_eq!(done["status"], "success", "{done:#}");
    let rootfs = store
        .join("artifacts")
        .join(str_field(&done, "resultant_image_id"))
        .join("rootfs");
    assert_eq!(unsquashfs_cat(&rootfs, "root/uid"), b"0\n");
    let listing = unsquashfs_lln(&rootfs);
    assert!(listing.contains("-rw-r--r-- 0/0"), "{listing}");
    let line = listing
        .lines()
        .find(|l| l.ends_with("squashfs-root/root/uid"))
        .expect("root/uid listed");
    assert!(
        line.starts_with("-rw-r--r-- 0/0 "),
        "root owns what root wrote over ssh: {line}"
    );
}

#[test]
fn the_failed_file_over_ssh_ends_the_job_in_error_and_publishes_nothing() {
    let Some(s) = SshSetup::new("failed_file_over_ssh") else {
        return;
    };
    let images_before = s.store.image_ids();
    let job = s.create_job(&[]);
    let (_, port) = connection(&job);
    let id = str_field(&job, "id");
    let out = s.ssh(
        port,
        "echo x > /mnt/image/image-root/root/x; touch /mnt/image/failed",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let done = wait_until_done(&s.store, &id);
    assert_eq!(done["status"], "error", "{done:#}");
    assert!(done["resultant_image_id"].is_null());
    assert_eq!(s.store.image_ids(), images_before);
    assert!(
        wait_for(Duration::from_secs(10), || !listening(port)),
        "the server is gone after the job ended"
    );
}

#[test]
fn jobs_ssh_starts_a_server_for_a_job_without_one_and_again_after_a_kill() {
    let Some(s) = SshSetup::new("jobs_ssh_restarts") else {
        return;
    };
    let id = s.store.create_job(&s.image, &[]);
    let no_key = run_failing(s.store.cmd().args(["jobs", "ssh", &id]));
    assert!(
        text(&no_key.stderr).contains("has no public key"),
        "{}",
        text(&no_key.stderr)
    );
    let job = s.store.json(&[
        "jobs",
        "ssh",
        &id,
        "--public-key-id",
        &s.key_id,
        "--format",
        "json",
    ]);
    let (_, port) = connection(&job);
    assert_eq!(text(&s.ssh(port, "echo one").stdout), "one\n");
    let again = run_failing(s.store.cmd().args(["jobs", "ssh", &id]));
    assert!(
        text(&again.stderr).contains("already served over SSH"),
        "{}",
        text(&again.stderr)
    );

    // kill -9 takes the server and its sandbox; `jobs ssh` brings it back, the image intact.
    s.ssh(port, "echo kept > /mnt/image/image-root/root/kept");
    let pid = job["ssh_containers"][0]["server_pid"]
        .as_i64()
        .expect("pid");
    run(Command::new("kill").args(["-9", &pid.to_string()]));
    assert!(wait_for(Duration::from_secs(10), || !listening(port)));
    let job = s.store.json(&["jobs", "ssh", &id, "--format", "json"]);
    let (_, port) = connection(&job);
    assert_eq!(
        text(&s.ssh(port, "cat /mnt/image/image-root/root/kept").stdout),
        "kept\n"
    );
    let result = s.store.json(&["jobs", "complete", &id]);
    let image = str_field(&result["ims_image_record"], "id");
    assert_eq!(
        unsquashfs_cat(&s.store.rootfs(&image), "root/kept"),
        b"kept\n"
    );
    assert!(!listening(port));
}

#[test]
fn descriptors_of_the_caller_never_reach_a_session() {
    let Some(s) = SshSetup::new("descriptors_never_leak") else {
        return;
    };
    // `jobs create` from a shell holding the host's / open on descriptor 7.
    let out = run(Command::new("sh").arg("-c").arg(format!(
        "exec 7</ && exec {} --store {} --quiet jobs create --artifact-id {} \
         --image-root-archive-name fds --public-key-id {} --ssh-containers-jail true --format json",
        env!("CARGO_BIN_EXE_imsctl"),
        s.store.root().display(),
        s.image,
        s.key_id
    )));
    let job: Value = serde_json::from_str(&out).expect("json");
    let (_, port) = connection(&job);
    let seen = s.ssh(port, "ls /proc/self/fd/ | sort -n | tr '\\n' ' '");
    assert_eq!(
        text(&seen.stdout),
        "0 1 2 3 ",
        "only the standard streams (and ls's own directory) in a session"
    );
    run(s
        .store
        .cmd()
        .args(["jobs", "delete", &str_field(&job, "id")]));
}

/// The OpenSSH client with the test's key and known_hosts at its default log level, so that
/// negotiation errors show, and these options.
fn ssh_with(s: &SshSetup, port: u16, options: &[&str]) -> Output {
    let mut c = Command::new("ssh");
    c.env("HOME", s.home())
        .arg("-p")
        .arg(port.to_string())
        .arg("-i")
        .arg(&s.key)
        .args(["-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes"])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            s.home().join(".ssh/known_hosts").display()
        ));
    for option in options {
        c.arg("-o").arg(option);
    }
    c.arg("root@127.0.0.1")
        .arg("echo in")
        .output()
        .expect("run ssh")
}

/// Every failure, warning and note of `ssh-audit -j` but the post-quantum warnings on the
/// classic key exchanges kept for clients before OpenSSH 9.9, and the reminder that strict
/// key exchange protects only when both sides have it (Terrapin).
fn audit_findings(report: &Value) -> (Vec<String>, usize) {
    const POST_QUANTUM: &str = "does not provide protection against post-quantum attacks";
    const TERRAPIN_REMINDER: &str =
        "Be aware that, while this target properly supports the strict key exchange method";
    let mut findings = Vec::new();
    let mut post_quantum = 0;
    for kind in ["kex", "key", "enc", "mac"] {
        for alg in report[kind].as_array().into_iter().flatten() {
            let name = alg["algorithm"].as_str().unwrap_or("?");
            for level in ["fail", "warn"] {
                for note in alg["notes"][level].as_array().into_iter().flatten() {
                    let note = note.as_str().unwrap_or("?");
                    if kind == "kex" && level == "warn" && note == POST_QUANTUM {
                        post_quantum += 1;
                    } else {
                        findings.push(format!("({kind}) {name}: [{level}] {note}"));
                    }
                }
            }
        }
    }
    for note in report["additional_notes"].as_array().into_iter().flatten() {
        let note = note.as_str().unwrap_or("?");
        if !note.starts_with(TERRAPIN_REMINDER) {
            findings.push(format!("(nfo) {note}"));
        }
    }
    for cve in report["cves"].as_array().into_iter().flatten() {
        findings.push(format!("(cve) {cve}"));
    }
    if report["recommendations"]
        .as_object()
        .is_some_and(|r| !r.is_empty())
    {
        findings.push(format!("(rec) {}", report["recommendations"]));
    }
    (findings, post_quantum)
}

#[test]
fn only_publickey_and_hardened_algorithms_are_offered_and_ssh_audit_finds_nothing_else() {
    let Some(s) = SshSetup::new("ssh_audit") else {
        return;
    };
    let job = s.create_job(&[]);
    let (_, port) = connection(&job);
    assert_eq!(text(&s.ssh(port, "echo in").stdout), "in\n");

    // A client that wants a password is told publickey is the only way.
    let password = ssh_with(
        &s,
        port,
        &["PreferredAuthentications=password,keyboard-interactive"],
    );
    assert_eq!(password.status.code(), Some(255));
    let said = text(&password.stderr);
    assert!(said.contains("Permission denied (publickey)."), "{said}");
    assert!(password.stdout.is_empty());

    // Weak algorithms are not there to be chosen.
    for (options, refusal) in [
        (
            &["KexAlgorithms=diffie-hellman-group14-sha256"][..],
            "no matching key exchange method found",
        ),
        (
            &["Ciphers=aes128-ctr", "MACs=hmac-sha2-256,hmac-sha2-512"][..],
            "no matching MAC found",
        ),
        (&["Ciphers=aes128-cbc"][..], "no matching cipher found"),
    ] {
        let out = ssh_with(&s, port, options);
        assert_eq!(out.status.code(), Some(255), "{options:?}");
        assert!(
            text(&out.stderr).contains(refusal),
            "{options:?}: {}",
            text(&out.stderr)
        );
    }

    // Last: its 17 connections leave this source penalised for a while, as with sshd.
    if !have("ssh-audit") {
        imsctl_testkit::not_run!(
            "ssh_audit: ssh-audit not installed (scripts/deps.sh installs it); audit skipped"
        );
    } else {
        let audit = Command::new("ssh-audit")
            .args(["-j", "-p", &port.to_string(), "127.0.0.1"])
            .output()
            .expect("run ssh-audit");
        let report: Value = serde_json::from_slice(&audit.stdout).unwrap_or_else(|e| {
            panic!(
                "ssh-audit -j: {e}: {}{}",
                text(&audit.stdout),
                text(&audit.stderr)
            )
        });
        let (findings, post_quantum) = audit_findings(&report);
        assert!(
            findings.is_empty(),
            "ssh-audit reported:\n{}",
            findings.join("\n")
        );
        assert_eq!(post_quantum, 2, "curve25519-sha256 and its libssh.org name");
        // Its exit status: 2 for warnings (the two above), 3 for failures.
        assert_eq!(audit.status.code(), Some(2), "{report:#}");
        let names = |kind: &str| -> Vec<String> {
            report[kind]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| a["algorithm"].as_str().unwrap_or("?").to_string())
                .collect()
        };
        assert_eq!(
            names("kex"),
            [
                "mlkem768x25519-sha256",
                "curve25519-sha256",
                "curve25519-sha256@libssh.org",
                "ext-info-s",
                "kex-strict-s-v00@openssh.com"
            ]
        );
        assert_eq!(names("key"), ["ssh-ed25519"]);
        assert!(
            names("mac").iter().all(|m| m.ends_with("-etm@openssh.com")),
            "{:?}",
            names("mac")
        );
    }
    run(s
        .store
        .cmd()
        .args(["jobs", "delete", &str_field(&job, "id")]));
}

/// A TCP connection to the server from another loopback address: another source to it.
fn connect_from(source: std::net::Ipv4Addr, port: u16) -> TcpStream {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a new socket, owned at once; bind and connect read a sockaddr_in of `len` bytes.
    unsafe {
        let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(raw);
        let local = sockaddr(source, 0);
        let bound = libc::bind(fd.as_raw_fd(), (&raw const local).cast(), len);
        assert_eq!(
            bound,
            0,
            "bind {source}: {}",
            std::io::Error::last_os_error()
        );
        let server = sockaddr(std::net::Ipv4Addr::LOCALHOST, port);
        let connected = libc::connect(fd.as_raw_fd(), (&raw const server).cast(), len);
        assert_eq!(connected, 0, "connect: {}", std::io::Error::last_os_error());
        TcpStream::from(fd)
    }
}

/// The first line the server sends: its version, or sshd's refusal; "" if it just closes.
fn first_line(stream: &mut TcpStream) -> String {
    use std::io::Read;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while let Ok(1) = stream.read(&mut byte) {
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    text(&line).trim_end().to_string()
}

const FLOOD_SOURCE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 2);

#[test]
fn a_flood_from_one_source_is_refused_and_penalised_while_other_clients_are_served() {
    let Some(s) = SshSetup::new("ssh_flood") else {
        return;
    };
    let job = s.create_job(&[]);
    let (_, port) = connection(&job);
    let id = str_field(&job, "id");

    // 50 connections at once from 127.0.0.2, none of which goes on to authenticate.
    let mut flood: Vec<TcpStream> = (0..50).map(|_| connect_from(FLOOD_SOURCE, port)).collect();
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for stream in &mut flood {
        let line = first_line(stream);
        let kind = if line.starts_with("SSH-2.0-") {
            "version".to_string()
        } else {
            line
        };
        *seen.entry(kind).or_default() += 1;
    }
    let count = |k: &str| seen.get(k).copied().unwrap_or(0);
    assert_eq!(count("version"), 10, "the per-source cap: {seen:?}");
    assert!(count("Exceeded MaxStartups") > 0, "{seen:?}");
    assert!(
        count("Not allowed at this time") > 0,
        "the refusals made the source penalised: {seen:?}"
    );
    assert_eq!(
        count("version") + count("Exceeded MaxStartups") + count("Not allowed at this time"),
        50,
        "{seen:?}"
    );

    // Meanwhile the client at 127.0.0.1 is served, and 127.0.0.2's are refused before any
    // key exchange, even a real client with the right key.
    assert_eq!(text(&s.ssh(port, "echo during").stdout), "during\n");
    let from_flood = s
        .client("ssh", port, &s.key)
        .args(["-b", "127.0.0.2", "root@127.0.0.1", "echo in"])
        .output()
        .expect("ssh");
    assert_eq!(from_flood.status.code(), Some(255));
    assert!(from_flood.stdout.is_empty());

    // The flood gone, its source is still refused for a while; the other is served.
    drop(flood);
    let mut again = connect_from(FLOOD_SOURCE, port);
    assert_eq!(first_line(&mut again), "Not allowed at this time");
    assert_eq!(text(&s.ssh(port, "echo after").stdout), "after\n");
    let log = fs::read_to_string(s.store.work_dir(&id).join("ssh/server.log")).expect("log");
    assert!(
        log.contains("imsctl ssh: refusing connections from 127.0.0.2 for "),
        "{log}"
    );
    run(s.store.cmd().args(["jobs", "delete", &id]));
}
