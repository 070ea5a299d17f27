//! A directory tree fed to an [`EntrySink`]: what `mksquashfs DIR` reads.
//!
//! Every entry is looked at relative to its open parent directory (fstatat, openat with
//! O_NOFOLLOW, readlinkat), so a tree that changes during the walk can neither redirect us
//! through a symlink nor make us read outside it. Directories are walked depth-first in
//! byte order of the names, so the same tree always gives the same sequence of sink calls.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

use super::{Error, LossTally, Result, xattr_storable};
use crate::{EntrySink, Meta, Special, Xattr};

/// How to read a directory tree.
#[derive(Clone, Debug)]
pub struct DirOptions {
    /// Stay on the root's filesystem: mount points below it become empty directories (like
    /// `mksquashfs -one-file-system`). Off by default, as in mksquashfs.
    pub one_file_system: bool,
    /// Pass xattrs to the sink (on by default).
    pub xattrs: bool,
    /// Entries never walked: the image being written and the store when they lie inside the
    /// tree (mksquashfs leaves its own output out the same way).
    pub leave_out: Vec<LeftOut>,
}

impl Default for DirOptions {
    fn default() -> Self {
        DirOptions {
            one_file_system: false,
            xattrs: true,
            leave_out: Vec::new(),
        }
    }
}

/// An entry a walk leaves out, known by device and inode rather than by name: names alias
/// (symlinks, bind mounts, `a/../b`), an inode does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeftOut {
    pub dev: u64,
    pub ino: u64,
    /// What it is, for the warning ("the image being written").
    pub what: String,
}

impl LeftOut {
    /// The entry at `path` (a symlink is followed), or `None` when there is nothing.
    pub fn at(path: &Path, what: impl Into<String>) -> Result<Option<LeftOut>> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(path) {
            Ok(meta) => Ok(Some(LeftOut {
                dev: meta.dev(),
                ino: meta.ino(),
                what: what.into(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("stat", path, e)),
        }
    }
}

/// What [`dir_into`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirReport {
    /// Entries handed to the sink, the root and hardlinks included.
    pub entries: u64,
    /// File content bytes handed to the sink.
    pub bytes: u64,
    /// Names added as hardlinks to an earlier name of the same inode.
    pub hardlinks: u64,
    /// Mount points not entered (directories, added empty) or left out (bind-mounted files)
    /// because of `one_file_system`.
    pub mount_points: u64,
    /// Entries of `DirOptions::leave_out` met in the tree and left out (one warning each).
    pub left_out: u64,
    /// Xattrs outside the namespaces SquashFS stores, left out; see `warnings`.
    pub skipped_xattrs: u64,
    /// Mtimes outside SquashFS' 32-bit unsigned range, clamped.
    pub clamped_mtimes: u64,
    /// One line per kind of loss, in a stable order.
    pub warnings: Vec<String>,
}

/// Linux caps an xattr name list and an xattr value at 64 KiB each (XATTR_LIST_MAX,
/// XATTR_SIZE_MAX): one buffer of that size always suffices, so one call per entry does.
const XATTR_MAX: usize = 64 * 1024;

/// Feeds the tree at `root` (the root's own metadata included) to `sink`.
pub fn dir_into(root: &Path, sink: &mut dyn EntrySink, opts: &DirOptions) -> Result<DirReport> {
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open directory", root, e.into()))?;
    let st = fstat(&root_fd).map_err(|e| Error::io("stat", root, e.into()))?;
    if let Some(left_out) = left_out(opts, &st) {
        return Err(Error::Unsupported {
            path: root.to_path_buf(),
            what: format!("is {}, which cannot be packed into itself", left_out.what),
        });
    }
    let mut walker = Walker {
        root,
        sink,
        opts,
        root_dev: st.st_dev,
        links: HashMap::new(),
        report: DirReport::default(),
        tally: LossTally::default(),
        xattr_names: vec![0; XATTR_MAX],
        xattr_value: vec![0; XATTR_MAX],
    };
    let xattrs = walker.xattrs(XattrSource::Fd(root_fd.as_fd()), b"")?;
    let meta = walker.meta(&st, xattrs, b"");
    walker
        .sink
        .set_root_meta(meta)
        .map_err(|e| Error::sink(b".", e))?;
    walker.report.entries += 1;
    walker.walk(root_fd, &mut Vec::new())?;

    let mut report = walker.report;
    report.skipped_xattrs = walker.tally.skipped_xattr_count();
    report.clamped_mtimes = walker.tally.clamped_mtime_count();
    report.warnings.extend(walker.tally.warnings());
    if report.mount_points > 0 {
        report.warnings.push(format!(
            "{} mount point(s) not entered (one filesystem only): directories added empty, files left out",
            report.mount_points
        ));
    }
    Ok(report)
}

struct Walker<'a> {
    root: &'a Path,
    sink: &'a mut dyn EntrySink,
    opts: &'a DirOptions,
    root_dev: u64,
    /// First name of each multiply-linked non-directory, by (device, inode).
    links: HashMap<(u64, u64), Vec<u8>>,
    report: DirReport,
    tally: LossTally,
    xattr_names: Vec<u8>,
    xattr_value: Vec<u8>,
}

enum XattrSource<'f> {
    Fd(BorrowedFd<'f>),
    /// For symlinks, devices, fifos and sockets, which cannot be opened to read xattrs.
    Path(CString),
}

impl Walker<'_> {
    /// Absolute path of an entry, for error messages and the path-based xattr calls.
    fn abs(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.root.to_path_buf()
        } else {
            self.root.join(OsStr::from_bytes(rel))
        }
    }

    /// Adds the children of the directory open as `dir` (whose relative path is `rel`), then
    /// their children, depth first.
    fn walk(&mut self, dir: OwnedFd, rel: &mut Vec<u8>) -> Result<()> {
        let mut dir =
            Dir::from_fd(dir).map_err(|e| Error::io("read directory", self.abs(rel), e.into()))?;
        let mut names: Vec<CString> = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| Error::io("read directory", self.abs(rel), e.into()))?;
            let name = entry.file_name();
            if name.to_bytes() != b"." && name.to_bytes() != b".." {
                names.push(name.to_owned());
            }
        }
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let parent_len = rel.len();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name.as_bytes());
            let added = self.add_entry(dir.as_fd(), &name, rel);
            rel.truncate(parent_len);
            added?;
        }
        Ok(())
    }

    fn add_entry(&mut self, dir: BorrowedFd<'_>, name: &CStr, rel: &mut Vec<u8>) -> Result<()> {
        let st = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| Error::io("stat", self.abs(rel), e.into()))?;
        if let Some(left_out) = left_out(self.opts, &st) {
            self.report.left_out += 1;
            self.report.warnings.push(format!(
                "left out '{}': it is {}",
                String::from_utf8_lossy(rel),
                left_out.what
            ));
            return Ok(());
        }
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        if kind == SFlag::S_IFDIR {
            return self.add_dir(dir, name, rel, &st);
        }
        if self.opts.one_file_system && st.st_dev != self.root_dev {
            // A bind-mounted file: mksquashfs -one-file-system leaves it out.
            self.report.mount_points += 1;
            return Ok(());
        }
        if st.st_nlink > 1
            && let Some(first) = self.links.get(&(st.st_dev, st.st_ino))
        {
            self.sink
                .add_hardlink(rel, first)
                .map_err(|e| Error::sink(rel, e))?;
            self.report.hardlinks += 1;
            self.report.entries += 1;
            return Ok(());
        }
        match kind {
            SFlag::S_IFREG => self.add_file(dir, name, rel, &st)?,
            SFlag::S_IFLNK => {
                let target = readlinkat(dir, name)
                    .map_err(|e| Error::io("read symlink", self.abs(rel), e.into()))?;
                let meta = self.path_meta(&st, rel)?;
                self.sink
                    .add_symlink(rel, meta, target.as_bytes())
                    .map_err(|e| Error::sink(rel, e))?;
            }
            SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO | SFlag::S_IFSOCK => {
                let special = special_kind(kind, st.st_rdev);
                let meta = self.path_meta(&st, rel)?;
                self.sink
                    .add_special(rel, meta, special)
                    .map_err(|e| Error::sink(rel, e))?;
            }
            _ => {
                return Err(Error::io(
                    "add",
                    self.abs(rel),
                    io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!("unknown file type {:o}", st.st_mode),
                    ),
                ));
            }
        }
        if st.st_nlink > 1 {
            self.links.insert((st.st_dev, st.st_ino), rel.clone());
        }
        self.report.entries += 1;
        Ok(())
    }

    fn add_dir(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        rel: &mut Vec<u8>,
        st: &FileStat,
    ) -> Result<()> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(parent, name, flags, Mode::empty())
            .map_err(|e| Error::io("open directory", self.abs(rel), e.into()))?;
        let xattrs = self.xattrs(XattrSource::Fd(fd.as_fd()), rel)?;
        let meta = self.meta(st, xattrs, rel);
        self.sink
            .add_dir(rel, meta)
            .map_err(|e| Error::sink(rel, e))?;
        self.report.entries += 1;
        if self.opts.one_file_system && st.st_dev != self.root_dev {
            self.report.mount_points += 1;
            return Ok(());
        }
        self.walk(fd, rel)
    }

    fn add_file(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &CStr,
        rel: &[u8],
        st: &FileStat,
    ) -> Result<()> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
        let fd = openat(parent, name, flags, Mode::empty())
            .map_err(|e| Error::io("open", self.abs(rel), e.into()))?;
        let xattrs = self.xattrs(XattrSource::Fd(fd.as_fd()), rel)?;
        let meta = self.meta(st, xattrs, rel);
        let mut data = CountingFile {
            file: File::from(fd),
            read: 0,
            failure: None,
        };
        let added = self.sink.add_file(rel, meta, &mut data);
        if let Some(failure) = data.failure.take() {
            return Err(Error::io("read", self.abs(rel), failure));
        }
        added.map_err(|e| Error::sink(rel, e))?;
        self.report.bytes += data.read;
        Ok(())
    }

    /// Metadata of an entry that cannot be opened (symlink, device, fifo, socket).
    fn path_meta(&mut self, st: &FileStat, rel: &[u8]) -> Result<Meta> {
        let xattrs = if self.opts.xattrs {
            let path = CString::new(self.abs(rel).into_os_string().into_vec()).map_err(|e| {
                Error::io(
                    "read xattrs of",
                    self.abs(rel),
                    io::Error::new(io::ErrorKind::InvalidInput, e),
                )
            })?;
            self.xattrs(XattrSource::Path(path), rel)?
        } else {
            Vec::new()
        };
        Ok(self.meta(st, xattrs, rel))
    }

    fn meta(&mut self, st: &FileStat, xattrs: Vec<Xattr>, rel: &[u8]) -> Meta {
        let shown = if rel.is_empty() { b"." } else { rel };
        Meta {
            mode: (st.st_mode & 0o7777) as u16,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: self.tally.clamp_mtime(i128::from(st.st_mtime), shown),
            xattrs,
        }
    }

    /// The entry's xattrs SquashFS can store, sorted by name; the others are tallied.
    fn xattrs(&mut self, source: XattrSource<'_>, rel: &[u8]) -> Result<Vec<Xattr>> {
        if !self.opts.xattrs {
            return Ok(Vec::new());
        }
        let shown: &[u8] = if rel.is_empty() { b"." } else { rel };
        let err = |this: &Self, e: io::Error| Error::io("read xattrs of", this.abs(rel), e);
        let len = match list_xattrs(&source, &mut self.xattr_names) {
            Ok(len) => len,
            // A filesystem without xattr support has none to keep.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => 0,
            Err(e) => return Err(err(self, e)),
        };
        let mut out = Vec::new();
        for name in self.xattr_names[..len]
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
        {
            if !xattr_storable(name) {
                self.tally.skip_xattr(name, shown);
                continue;
            }
            let cname = CString::new(name)
                .map_err(|e| err(self, io::Error::new(io::ErrorKind::InvalidData, e)))?;
            match get_xattr(&source, &cname, &mut self.xattr_value) {
                Ok(n) => out.push(Xattr {
                    name: name.to_vec(),
                    value: self.xattr_value[..n].to_vec(),
                }),
                // Removed between list and get: the entry no longer has it.
                Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
                Err(e) => return Err(Error::io("read xattrs of", self.abs(rel), e)),
            }
        }
        out.sort();
        Ok(out)
    }
}

/// The `leave_out` entry this stat names, if any.
fn left_out<'o>(opts: &'o DirOptions, st: &FileStat) -> Option<&'o LeftOut> {
    opts.leave_out
        .iter()
        .find(|x| x.dev == st.st_dev && x.ino == st.st_ino)
}

fn special_kind(kind: SFlag, rdev: u64) -> Special {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    match kind {
        SFlag::S_IFCHR => Special::CharDevice { major, minor },
        SFlag::S_IFBLK => Special::BlockDevice { major, minor },
        SFlag::S_IFIFO => Special::Fifo,
        _ => Special::Socket,
    }
}

fn list_xattrs(source: &XattrSource<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let ptr = buf.as_mut_ptr().cast::<libc::c_char>();
    // SAFETY: the buffer is valid for `buf.len()` bytes; the fd or C string outlives the call.
    let n = unsafe {
        match source {
            XattrSource::Fd(fd) => libc::flistxattr(fd.as_raw_fd(), ptr, buf.len()),
            XattrSource::Path(path) => libc::llistxattr(path.as_ptr(), ptr, buf.len()),
        }
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

fn get_xattr(source: &XattrSource<'_>, name: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    let ptr = buf.as_mut_ptr().cast::<libc::c_void>();
    // SAFETY: as in list_xattrs.
    let n = unsafe {
        match source {
            XattrSource::Fd(fd) => libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), ptr, buf.len()),
            XattrSource::Path(path) => {
                libc::lgetxattr(path.as_ptr(), name.as_ptr(), ptr, buf.len())
            }
        }
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// A file's content as the sink reads it; keeps the first read error so that the message
/// names the file and the real cause.
struct CountingFile {
    file: File,
    read: u64,
    failure: Option<io::Error>,
}

impl Read for CountingFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.file.read(buf) {
            Ok(n) => {
                self.read += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.failure.get_or_insert(e);
                Err(copy)
            }
        }
    }
}

#[cfg(test)]
#[path = "dir_tests.rs"]
mod tests;
