//! Small filesystem helpers shared by the pipeline stages.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::interrupt::{Kind, TempGuard};

/// Write an output file through a temporary file in the same directory, renamed into place only
/// when `fill` succeeds: an interrupted or failed run never leaves a half-written output.
///
/// Only a regular file or a new name is replaced (see [`check_output_path`]), as mksquashfs
/// refuses to write over anything else.
pub fn write_atomically<T>(dest: &Path, fill: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    check_output_path(dest)?;
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // 0666 minus the umask, as open(2) of a new file and mksquashfs give: tempfile's own 0600
    // would make the output unreadable to, say, a boot server running as another user.
    let (tmp, guard) = temp_beside(dest, 0o666)
        .with_context(|| format!("failed to create a temporary file in {}", dir.display()))?;
    // Checked again after the work: whatever appeared at the path meanwhile is not ours to
    // replace.
    let filled = fill(tmp.path()).and_then(|value| check_output_path(dest).map(|()| value));
    let value = match filled {
        Ok(value) => value,
        Err(e) => {
            // The file goes before its registration does.
            drop(tmp);
            drop(guard);
            return Err(e);
        }
    };
    commit(tmp, guard, dest, true)
        .with_context(|| format!("failed to rename the finished file to {}", dest.display()))?;
    Ok(value)
}

/// A temporary file beside `dest` (same directory, so the final rename is atomic), named
/// `.<name>.<random>.tmp`, created with `mode` (the umask applies) and registered for removal
/// should a signal end the process before [`commit`]. The one way imsctl writes a file
/// atomically; each caller adds the durability it needs (records fsync the file and the
/// directory; outputs and files inside an image do not).
pub fn temp_beside(dest: &Path, mode: u32) -> io::Result<(tempfile::NamedTempFile, TempGuard)> {
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    TempGuard::create(Kind::File, || {
        // O_CREAT|O_EXCL: a planted symlink at the temp name is never followed.
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .permissions(fs::Permissions::from_mode(mode))
            .tempfile_in(dir)?;
        let path = tmp.path().to_path_buf();
        Ok((tmp, path))
    })
}

/// Make a [`temp_beside`] file final: rename it onto `dest` (with `replace == false`, link it
/// there, failing with AlreadyExists if something is), under the signal registry's lock, so an
/// interruption sees either the temp file or the finished one.
pub fn commit(
    tmp: tempfile::NamedTempFile,
    guard: TempGuard,
    dest: &Path,
    replace: bool,
) -> io::Result<()> {
    guard
        .release_with(|| {
            if replace {
                tmp.persist(dest)
            } else {
                tmp.persist_noclobber(dest)
            }
        })
        .map(drop)
        .map_err(|e| e.error)
}

/// Refuse an output path that holds anything but a regular file. The output is renamed into
/// place, and a rename replaces whatever has the name: a device node (`/dev/full` would become a
/// regular file), a FIFO another program reads, a symlink (replaced itself, not followed).
pub fn check_output_path(dest: &Path) -> Result<()> {
    match fs::symlink_metadata(dest) {
        Ok(meta) if meta.file_type().is_file() => Ok(()),
        Ok(meta) => bail!(
            "refusing to write {}: it is {}, and only a regular file or a new name can be \
             replaced by the output",
            dest.display(),
            file_type_name(meta.file_type())
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("failed to stat {}", dest.display())),
    }
}

/// "a directory", "a FIFO", ...: what `ls -l`'s first letter says, in words.
fn file_type_name(ft: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    fn write_x(dest: &Path) -> Result<()> {
        write_atomically(dest, |tmp| {
            fs::write(tmp, b"x").with_context(|| format!("write {}", tmp.display()))
        })
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn replaces_a_regular_file_or_creates_a_new_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let new = dir.path().join("new");
        write_x(&new).expect("new name");
        assert_eq!(fs::read(&new).expect("read"), b"x");
        fs::write(&new, b"old").expect("write");
        write_x(&new).expect("regular file");
        assert_eq!(fs::read(&new).expect("read"), b"x");
        assert!(leftovers(dir.path()).is_empty());
    }

    /// The process umask, read without changing it (umask(2) would, for every thread).
    fn current_umask() -> u32 {
        let status = fs::read_to_string("/proc/self/status").expect("status");
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .expect("Umask line");
        u32::from_str_radix(line.trim(), 8).expect("octal umask")
    }

    #[test]
    fn the_output_gets_0666_minus_the_umask() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("out");
        let mode_while_writing = write_atomically(&dest, |tmp| {
            Ok(fs::metadata(tmp).expect("stat").permissions().mode() & 0o7777)
        })
        .expect("write");
        let want = 0o666 & !current_umask();
        assert_eq!(mode_while_writing, want);
        assert_eq!(
            fs::metadata(&dest).expect("stat").permissions().mode() & 0o7777,
            want
        );
    }

    #[test]
    fn refuses_a_fifo_a_symlink_a_directory_and_a_device() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let target = dir.path().join("target");
        fs::write(&target, b"keep").expect("write");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let subdir = dir.path().join("subdir");
        fs::create_dir(&subdir).expect("mkdir");
        let mut cases = vec![(fifo.clone(), "a FIFO"), (link.clone(), "a symbolic link")];
        cases.push((subdir.clone(), "a directory"));
        // A device node of our own, in the temp dir (never /dev/full itself): root only.
        let device = dir.path().join("full");
        let made_device = nix::sys::stat::mknod(
            &device,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(1, 7),
        )
        .is_ok();
        if made_device {
            cases.push((device.clone(), "a character device"));
        } else {
            imsctl_testkit::not_run!("not root: mknod refused, the device case is skipped");
        }
        for (path, kind) in &cases {
            let err = format!("{:#}", write_x(path).expect_err("refused"));
            assert!(
                err.contains(&path.display().to_string()) && err.contains(kind),
                "{err}"
            );
        }
        assert!(
            fs::symlink_metadata(&fifo)
                .expect("stat")
                .file_type()
                .is_fifo()
        );
        assert!(
            fs::symlink_metadata(&link)
                .expect("stat")
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&target).expect("read"), b"keep");
        if made_device {
            assert!(
                fs::symlink_metadata(&device)
                    .expect("stat")
                    .file_type()
                    .is_char_device()
            );
        }
        assert!(leftovers(dir.path()).is_empty(), "no temp file is made");
    }
}
