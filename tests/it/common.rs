//! Shared helpers: running imsctl and the reference tools, fixtures made once per run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn imsctl() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imsctl"));
    c.env("SOURCE_DATE_EPOCH", "1700000000");
    c
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

/// Run a command that must succeed; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command that must fail; returns its output.
pub fn run_failing(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(!out.status.success(), "{cmd:?} should have failed: {}", String::from_utf8_lossy(&out.stdout));
    out
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The fidelity tree of scripts/make-fixture-tree.sh, made once per test run.
pub fn fixture_tree() -> &'static Path {
    static TREE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &TREE
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let tree = dir.path().join("tree");
            run(Command::new(repo().join("scripts/make-fixture-tree.sh")).arg(&tree));
            (dir, tree)
        })
        .1
}

/// `unsquashfs -lln` with times in UTC.
pub fn unsquashfs_lln(img: &Path) -> String {
    run(Command::new("unsquashfs").arg("-lln").arg(img).env("TZ", "UTC"))
}

/// Mount a SquashFS image with the kernel, read-only; unmounted on drop.
pub struct KernelMount {
    pub dir: tempfile::TempDir,
}

impl KernelMount {
    pub fn new(img: &Path) -> KernelMount {
        let dir = tempfile::tempdir().expect("tempdir");
        run(Command::new("mount").args(["-t", "squashfs", "-o", "loop,ro"]).arg(img).arg(dir.path()));
        KernelMount { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Everything `stat` and `getfattr` say about a tree, one line per entry, for comparing trees.
pub fn describe_tree(root: &Path) -> String {
    let script = r#"cd "$1" && find . -print0 | LC_ALL=C sort -z | while IFS= read -r -d '' p; do
        stat -c '%n %F %a %u:%g %s %Y %h %t:%T' -- "$p" | sed "s/^\([^ ]*\) \(directory\) \([0-9]*\) \([0-9:]*\) [0-9]* /\1 \2 \3 \4 - /"
        getfattr -h -d -m - --absolute-names -e hex -- "$p" 2>/dev/null | grep -v '^#' | grep . || true
        [ -f "$p" ] && [ ! -L "$p" ] && md5sum -- "$p" | cut -c1-32
    done"#;
    run(Command::new("bash").arg("-c").arg(script).arg("describe").arg(root))
}
