//! Paths inside an image root, resolved the way a chroot would see them.
//!
//! An image's symlinks are the image's: `/boot/vmlinuz -> /boot/vmlinuz-6.1.0` or
//! `etc -> /etc` must be read relative to the image root, never against the host. The walk is
//! done in user space, one component at a time with lstat: absolute link targets restart at the
//! root and `..` stops at it, so the result is always below the root.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::store::{Error, Result};

/// Linux's limit on symlinks followed in one lookup (MAXSYMLINKS).
const MAX_SYMLINKS: usize = 40;

/// Resolve `path` (as seen inside the image; relative paths count from its `/`) to a host path
/// below `root`. Every existing component of the result is a real entry, not a symlink; the
/// components from the first missing one on are kept literally (there is nothing to follow),
/// so the result may name something that does not exist yet.
pub fn resolve_in_root(root: &Path, path: &Path) -> Result<PathBuf> {
    let mut pending: VecDeque<OsString> = components(path);
    let mut resolved: Vec<OsString> = Vec::new();
    let mut followed = 0usize;
    let mut missing = false;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            if missing {
                // As in the kernel, `missing/..` does not exist; and resolving on lexically
                // could reach an existing symlink that would then be left unfollowed.
                return Err(Error::io(
                    "resolve inside the image",
                    root.join(path.strip_prefix("/").unwrap_or(path)),
                    io::Error::from(io::ErrorKind::NotFound),
                ));
            }
            resolved.pop();
            continue;
        }
        let candidate = join(root, &resolved).join(&part);
        if missing {
            resolved.push(part);
            continue;
        }
        let meta = match fs::symlink_metadata(&candidate) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing = true;
                resolved.push(part);
                continue;
            }
            Err(e) => return Err(Error::io("look up", candidate, e)),
        };
        if !meta.file_type().is_symlink() {
            resolved.push(part);
            continue;
        }
        followed += 1;
        if followed > MAX_SYMLINKS {
            return Err(Error::io(
                "resolve inside the image",
                root.join(path.strip_prefix("/").unwrap_or(path)),
                io::Error::from_raw_os_error(libc::ELOOP),
            ));
        }
        let target =
            fs::read_link(&candidate).map_err(|e| Error::io("read symlink", &candidate, e))?;
        if target.is_absolute() {
            resolved.clear();
        }
        for (i, part) in components(&target).into_iter().enumerate() {
            pending.insert(i, part);
        }
    }
    Ok(join(root, &resolved))
}

/// The normal and `..` components of a path; `/` and `.` carry no step.
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn join(root: &Path, parts: &[OsString]) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(parts);
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn follows_links_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("boot")).expect("mkdir");
        fs::write(root.join("boot/vmlinuz-6.1.0-amd64"), b"k").expect("write");
        symlink("vmlinuz-6.1.0-amd64", root.join("boot/vmlinuz")).expect("symlink");
        symlink("/boot/vmlinuz-6.1.0-amd64", root.join("boot/abs")).expect("symlink");
        symlink("../../../../../boot/vmlinuz", root.join("boot/climb")).expect("symlink");
        let want = root.join("boot/vmlinuz-6.1.0-amd64");
        for name in [
            "/boot/vmlinuz",
            "/boot/abs",
            "boot/climb",
            "/../../boot/./vmlinuz",
        ] {
            assert_eq!(
                resolve_in_root(&root, Path::new(name)).expect(name),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn absolute_links_never_reach_the_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&root).expect("mkdir");
        fs::create_dir_all(&outside).expect("mkdir");
        // etc -> <host path of outside>: inside the image that path does not exist.
        symlink(&outside, root.join("etc")).expect("symlink");
        let got = resolve_in_root(&root, Path::new("/etc/cray/ca/x.crt")).expect("resolve");
        assert!(got.starts_with(&root), "{}", got.display());
        assert_eq!(
            got,
            root.join(outside.strip_prefix("/").expect("absolute"))
                .join("cray/ca/x.crt")
        );
        // A relative climb out of the root stops at the root.
        symlink("../../../../..", root.join("up")).expect("symlink");
        assert_eq!(
            resolve_in_root(&root, Path::new("/up/etc2")).expect("resolve"),
            root.join("etc2")
        );
    }

    #[test]
    fn loops_are_an_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        symlink("/etc", root.join("etc")).expect("symlink");
        let err = resolve_in_root(root, Path::new("/etc/passwd")).expect_err("loop");
        assert!(err.to_string().contains("etc/passwd"), "{err}");
    }

    #[test]
    fn missing_tail_is_kept_literally() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir(root.join("etc")).expect("mkdir");
        let got = resolve_in_root(root, Path::new("/etc/./cray/ca")).expect("resolve");
        assert_eq!(got, root.join("etc/cray/ca"));
        // `missing/..` is an error, not a lexical shortcut past a symlink.
        symlink("/", root.join("etc/link")).expect("symlink");
        assert!(resolve_in_root(root, Path::new("/etc/nothing/../link")).is_err());
    }
}
