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

#[allow(dead_code)]
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Run a command that must succeed; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a command that must fail; returns its output.
pub fn run_failing(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        !out.status.success(),
        "{cmd:?} should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
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
    run(Command::new("unsquashfs")
        .arg("-lln")
        .arg(img)
        .env("TZ", "UTC"))
}

/// Mount a SquashFS image with the kernel, read-only; unmounted on drop.
pub struct KernelMount {
    pub dir: tempfile::TempDir,
}

impl KernelMount {
    pub fn new(img: &Path) -> KernelMount {
        let dir = tempfile::tempdir().expect("tempdir");
        run(Command::new("mount")
            .args(["-t", "squashfs", "-o", "loop,ro"])
            .arg(img)
            .arg(dir.path()));
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

/// Everything lstat and the xattr calls say about a tree, one line per entry, for comparing
/// trees (directory sizes left out: they are filesystem-specific).
pub fn describe_tree(root: &Path) -> String {
    const SCRIPT: &str = r#"
import hashlib, os, stat, sys
root = sys.argv[1]
out = []
for dirpath, dirs, files in os.walk(root):
    for name in sorted(dirs + files):
        p = os.path.join(dirpath, name)
        st = os.lstat(p)
        size = "-" if stat.S_ISDIR(st.st_mode) else st.st_size
        line = [os.path.relpath(p, root), oct(st.st_mode), f"{st.st_uid}:{st.st_gid}", str(size),
                str(int(st.st_mtime)), str(st.st_nlink), f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"]
        try:
            names = os.listxattr(p, follow_symlinks=False)
        except OSError as e:  # EOPNOTSUPP: a squashfs without an xattr table, for symlinks
            if e.errno != 95:
                raise
            names = []
        for x in sorted(names):
            line.append(x + "=" + os.getxattr(p, x, follow_symlinks=False).hex())
        if stat.S_ISREG(st.st_mode):
            with open(p, "rb") as f:
                line.append(hashlib.md5(f.read()).hexdigest())
        if stat.S_ISLNK(st.st_mode):
            line.append("-> " + os.readlink(p))
        out.append(" ".join(line))
print("\n".join(sorted(out)))
"#;
    run(Command::new("python3").arg("-c").arg(SCRIPT).arg(root))
}

/// The bundled busybox test image (scripts/make-test-image.sh), made on first use.
#[allow(dead_code)]
pub fn tiny_image() -> &'static Path {
    static IMG: OnceLock<PathBuf> = OnceLock::new();
    IMG.get_or_init(|| {
        let out = repo().join("testdata/tiny-rootfs.txz");
        run(Command::new(repo().join("scripts/make-test-image.sh")).arg(&out));
        out
    })
}

/// The md5 of a file as `md5sum` computes it.
#[allow(dead_code)]
pub fn md5sum(path: &Path) -> String {
    let out = run(Command::new("md5sum").arg(path));
    out.split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("md5sum {}: no output", path.display()))
        .to_string()
}

/// One file of a SquashFS image, read by `unsquashfs -cat`.
#[allow(dead_code)]
pub fn unsquashfs_cat(img: &Path, path: &str) -> Vec<u8> {
    let out = Command::new("unsquashfs")
        .arg("-cat")
        .arg(img)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("unsquashfs -cat {}: {e}", img.display()));
    assert!(
        out.status.success(),
        "unsquashfs -cat {} {path}: {}",
        img.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
