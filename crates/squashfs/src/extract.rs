//! Parallel extraction of an image into a directory, with everything a root filesystem needs:
//! content (sparse holes kept), hardlinks, devices, owners, modes, times and xattrs.
//!
//! Safety: nothing is ever written outside `dest`. Every path is opened component by component
//! with `openat(O_NOFOLLOW | O_DIRECTORY)` from a descriptor of `dest`, entries are created with
//! the `*at` calls relative to their parent's descriptor, and never through a symlink — so a
//! symlink in the image (or already in `dest`) pointing elsewhere is never followed.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::format::MetaRef;
use super::reader::{BlockLoc, Image, Inode, InodeKind};
use super::{Error, Meta, Result, Special};

/// Told the bytes of file content written as they are written (a progress bar's `inc`): the
/// engine knows nothing of how progress is shown.
#[derive(Clone)]
pub struct Progress(Arc<dyn Fn(u64) + Send + Sync>);

impl Progress {
    pub fn new(advance: impl Fn(u64) + Send + Sync + 'static) -> Self {
        Progress(Arc::new(advance))
    }

    pub fn advance(&self, bytes: u64) {
        (self.0)(bytes)
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

/// How to extract.
#[derive(Clone, Debug)]
pub struct ExtractOptions {
    /// Devices that may not be created (EPERM, e.g. when not root) are skipped and counted
    /// instead of failing the extraction.
    pub skip_devices: bool,
    /// Restore owners: None means "when running as root" (an unprivileged chown would fail).
    pub owners: Option<bool>,
    /// Restore xattrs. Without privileges, `trusted.*` and `security.*` ones that are refused
    /// are counted as skipped; any other failure is an error.
    pub xattrs: bool,
    /// Advanced by the bytes of file content written.
    pub progress: Option<Progress>,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            skip_devices: false,
            owners: None,
            xattrs: true,
            progress: None,
        }
    }
}

/// What an extraction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtractReport {
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    /// Extra names of inodes already extracted.
    pub hardlinks: u64,
    /// Devices, fifos and sockets created.
    pub specials: u64,
    /// Bytes of file content (apparent size, holes included).
    pub bytes: u64,
    pub devices_skipped: u64,
    /// Entries whose owner differs from ours and could not be restored (not root).
    pub owners_not_set: u64,
    pub xattrs_skipped: u64,
}

/// Files with at least this many blocks have their blocks decompressed in parallel.
const PARALLEL_BLOCKS: usize = 4;

/// Whether this process is in the initial user namespace (its uid map is the identity): only
/// there does root set any owner and trusted.* xattrs.
fn in_initial_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        .unwrap_or(true)
}

/// How many failures an error message lists before it only counts.
const SHOWN_FAILURES: usize = 10;

/// Extract the whole image into `dest` (created when missing; an existing directory is merged
/// into, but no existing non-directory is ever replaced).
pub fn extract(image: &Image, dest: &Path, opts: &ExtractOptions) -> Result<ExtractReport> {
    std::fs::create_dir_all(dest).map_err(|e| Error::io("create directory", dest, e))?;
    let root = open_dir_fd(dest).map_err(|e| Error::io("open directory", dest, e))?;
    let plan = Plan::of(image)?;
    // SAFETY: geteuid/getegid have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let ctx = Ctx {
        image,
        dest,
        root: root.as_fd(),
        opts,
        set_owners: opts.owners.unwrap_or(euid == 0),
        privileged: euid == 0 && in_initial_user_namespace(),
        euid,
        egid,
        counters: Counters::default(),
        failures: Mutex::new(Vec::new()),
    };
    ctx.make_dirs(&plan)?;
    plan.first_names.par_iter().for_each(|&i| {
        if let Err(e) = ctx.create_entry(&plan.items[i]) {
            ctx.fail(e);
        }
    });
    plan.extra_names.par_iter().for_each(|&(i, first)| {
        if let Err(e) = ctx.link_entry(&plan.items[i], &plan.items[first]) {
            ctx.fail(e);
        }
    });
    // Directories last, deepest first: their times must not be disturbed by entries created
    // in them, and (without privileges) a read-only directory must not block its children.
    for &i in plan.dirs.iter().rev() {
        if let Err(e) = ctx.finish_dir(&plan.items[i]) {
            ctx.fail(e);
        }
    }
    let failures = ctx.failures.into_inner().unwrap_or_else(|p| p.into_inner());
    if !failures.is_empty() {
        return Err(Error::Many {
            op: "extract into",
            path: dest.to_path_buf(),
            count: failures.len(),
            first: failures
                .iter()
                .take(SHOWN_FAILURES)
                .map(ToString::to_string)
                .collect(),
        });
    }
    Ok(ctx.counters.report())
}

/// One name of the image: its path (relative, '/'-separated; empty for the root) and inode.
struct Item {
    path: Vec<u8>,
    inode: Inode,
}

impl Item {
    /// The parent's path and this entry's name.
    fn split(&self) -> (&[u8], &[u8]) {
        match self.path.iter().rposition(|&b| b == b'/') {
            Some(i) => (&self.path[..i], &self.path[i + 1..]),
            None => (&[], &self.path),
        }
    }
}

/// Every name of the image, sorted into the work of each phase.
struct Plan {
    items: Vec<Item>,
    /// Directories in walk order (the root first).
    dirs: Vec<usize>,
    /// Non-directories named for the first time.
    first_names: Vec<usize>,
    /// Further names of an inode: (this item, the item first named).
    extra_names: Vec<(usize, usize)>,
}

impl Plan {
    fn of(image: &Image) -> Result<Plan> {
        let mut plan = Plan {
            items: Vec::new(),
            dirs: Vec::new(),
            first_names: Vec::new(),
            extra_names: Vec::new(),
        };
        let mut first_of: std::collections::HashMap<MetaRef, usize> =
            std::collections::HashMap::new();
        image.walk(&mut |path, inode| {
            let i = plan.items.len();
            if inode.is_dir() {
                plan.dirs.push(i);
            } else if let Some(&first) = first_of.get(&inode.reference) {
                plan.extra_names.push((i, first));
            } else {
                first_of.insert(inode.reference, i);
                plan.first_names.push(i);
            }
            plan.items.push(Item {
                path: path.to_vec(),
                inode: inode.clone(),
            });
            Ok(())
        })?;
        Ok(plan)
    }
}

#[derive(Default)]
struct Counters {
    dirs: AtomicU64,
    files: AtomicU64,
    symlinks: AtomicU64,
    hardlinks: AtomicU64,
    specials: AtomicU64,
    bytes: AtomicU64,
    devices_skipped: AtomicU64,
    owners_not_set: AtomicU64,
    xattrs_skipped: AtomicU64,
}

impl Counters {
    fn report(&self) -> ExtractReport {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ExtractReport {
            dirs: g(&self.dirs),
            files: g(&self.files),
            symlinks: g(&self.symlinks),
            hardlinks: g(&self.hardlinks),
            specials: g(&self.specials),
            bytes: g(&self.bytes),
            devices_skipped: g(&self.devices_skipped),
            owners_not_set: g(&self.owners_not_set),
            xattrs_skipped: g(&self.xattrs_skipped),
        }
    }
}

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

struct Ctx<'a> {
    image: &'a Image,
    dest: &'a Path,
    root: BorrowedFd<'a>,
    opts: &'a ExtractOptions,
    set_owners: bool,
    privileged: bool,
    euid: u32,
    egid: u32,
    counters: Counters,
    failures: Mutex<Vec<Error>>,
}

/// Where an entry's metadata is applied: through an open descriptor of it, or by name in its
/// parent (symlinks, devices, fifos and sockets, which we do not open).
enum Target<'f> {
    Fd(BorrowedFd<'f>),
    Name {
        parent: BorrowedFd<'f>,
        name: &'f CString,
    },
}

impl Ctx<'_> {
    fn fail(&self, e: Error) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }

    fn dest_path(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.dest.to_path_buf()
        } else {
            self.dest.join(std::ffi::OsStr::from_bytes(rel))
        }
    }

    fn io(&self, op: &'static str, rel: &[u8], e: io::Error) -> Error {
        Error::io(op, self.dest_path(rel), e)
    }

    /// Create every directory, in walk order, keeping a descriptor of each ancestor of the
    /// current one so each is made relative to its parent without a path lookup.
    fn make_dirs(&self, plan: &Plan) -> Result<()> {
        let mut stack: Vec<(&[u8], OwnedFd)> = Vec::new();
        for &i in plan.dirs.iter().skip(1) {
            let item = &plan.items[i];
            let (parent, name) = item.split();
            while stack.last().is_some_and(|(p, _)| *p != parent) {
                stack.pop();
            }
            let parent_fd = match stack.last() {
                Some((_, fd)) => fd.as_fd(),
                None if parent.is_empty() => self.root,
                None => {
                    // Walk order puts a parent before its children; anything else is a bug.
                    return Err(self.io(
                        "find parent directory of",
                        &item.path,
                        io::ErrorKind::NotFound.into(),
                    ));
                }
            };
            let cname = c_name(name, &item.path, self)?;
            // SAFETY: valid descriptor and C string.
            let rc = unsafe { libc::mkdirat(parent_fd.as_raw_fd(), cname.as_ptr(), 0o700) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(self.io("create directory", &item.path, e));
                }
            }
            // An existing symlink fails here (O_NOFOLLOW): we never descend through one.
            let fd = openat_dir(parent_fd, &cname)
                .map_err(|e| self.io("open directory", &item.path, e))?;
            bump(&self.counters.dirs, 1);
            stack.push((&item.path, fd));
        }
        Ok(())
    }

    fn create_entry(&self, item: &Item) -> Result<()> {
        let (parent_rel, name) = item.split();
        let parent = open_beneath(self.root, parent_rel)
            .map_err(|e| self.io("open directory", parent_rel, e))?;
        let cname = c_name(name, &item.path, self)?;
        let meta = &item.inode.meta;
        match &item.inode.kind {
            InodeKind::File(_) => {
                let file = self.write_file(parent.as_fd(), &cname, item)?;
                self.apply_meta(Target::Fd(file.as_fd()), meta, &item.path, true)?;
                bump(&self.counters.files, 1);
            }
            InodeKind::Symlink(target) => {
                let t = CString::new(target.clone())
                    .map_err(|_| self.bad(item, "symlink target contains a NUL byte"))?;
                // SAFETY: valid descriptor and C strings.
                let rc = unsafe { libc::symlinkat(t.as_ptr(), parent.as_raw_fd(), cname.as_ptr()) };
                if rc != 0 {
                    return Err(self.io("create symlink", &item.path, io::Error::last_os_error()));
                }
                self.apply_meta(
                    Target::Name {
                        parent: parent.as_fd(),
                        name: &cname,
                    },
                    meta,
                    &item.path,
                    false,
                )?;
                bump(&self.counters.symlinks, 1);
            }
            InodeKind::Special(kind) => {
                if !self.make_node(parent.as_fd(), &cname, *kind, item)? {
                    return Ok(());
                }
                self.apply_meta(
                    Target::Name {
                        parent: parent.as_fd(),
                        name: &cname,
                    },
                    meta,
                    &item.path,
                    true,
                )?;
                bump(&self.counters.specials, 1);
            }
            InodeKind::Dir(_) => {}
        }
        Ok(())
    }

    fn bad(&self, item: &Item, what: &str) -> Error {
        Error::bad_entry(&item.path, what)
    }

    /// Create a regular file and write its content; sparse blocks become holes.
    fn write_file(&self, parent: BorrowedFd, name: &CString, item: &Item) -> Result<File> {
        let InodeKind::File(info) = &item.inode.kind else {
            return Err(self.bad(item, "not a regular file"));
        };
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: valid descriptor and C string; the result is checked before use.
        let fd = unsafe {
            libc::openat(
                parent.as_raw_fd(),
                name.as_ptr(),
                flags,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(self.io("create file", &item.path, io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor we own.
        let file = unsafe { File::from_raw_fd(fd) };
        let werr = |e| self.io("write", &item.path, e);
        let blocks = self.image.file_blocks(info)?;
        let mut offsets = Vec::with_capacity(blocks.len());
        let mut offset = 0u64;
        for loc in &blocks {
            offsets.push(offset);
            offset += u64::from(loc.size);
        }
        // Blocks of one file decompress in parallel too: one big file must not leave the
        // other cores idle. Positional writes need no ordering between them.
        let write_block = |buf: &mut Vec<u8>, (loc, at): (&BlockLoc, &u64)| -> Result<()> {
            if loc.is_sparse() {
                return Ok(());
            }
            self.image.read_block(loc, buf)?;
            file.write_all_at(buf, *at).map_err(werr)?;
            self.progress(buf.len() as u64);
            Ok(())
        };
        if blocks.len() >= PARALLEL_BLOCKS {
            blocks
                .par_iter()
                .zip(offsets.par_iter())
                .try_for_each_init(Vec::new, write_block)?;
        } else {
            let mut buf = Vec::new();
            blocks
                .iter()
                .zip(offsets.iter())
                .try_for_each(|b| write_block(&mut buf, b))?;
        }
        if let Some(tail) = self.image.read_tail(info)? {
            file.write_all_at(&tail, offset).map_err(werr)?;
            self.progress(tail.len() as u64);
        }
        // Sets the size even when the file ends in a hole.
        file.set_len(info.size).map_err(werr)?;
        bump(&self.counters.bytes, info.size);
        Ok(file)
    }

    fn progress(&self, n: u64) {
        if let Some(progress) = &self.opts.progress {
            progress.advance(n);
        }
    }

    /// mknod a device, fifo or socket. Returns false when a device was skipped by option.
    fn make_node(
        &self,
        parent: BorrowedFd,
        name: &CString,
        kind: Special,
        item: &Item,
    ) -> Result<bool> {
        let (ty, dev) = match kind {
            Special::CharDevice { major, minor } => (libc::S_IFCHR, libc::makedev(major, minor)),
            Special::BlockDevice { major, minor } => (libc::S_IFBLK, libc::makedev(major, minor)),
            Special::Fifo => (libc::S_IFIFO, 0),
            Special::Socket => (libc::S_IFSOCK, 0),
        };
        // SAFETY: valid descriptor and C string.
        let rc = unsafe { libc::mknodat(parent.as_raw_fd(), name.as_ptr(), ty | 0o600, dev) };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        let is_device = matches!(
            kind,
            Special::CharDevice { .. } | Special::BlockDevice { .. }
        );
        if is_device && e.raw_os_error() == Some(libc::EPERM) && self.opts.skip_devices {
            bump(&self.counters.devices_skipped, 1);
            return Ok(false);
        }
        let op = if is_device {
            "create device node (needs root or CAP_MKNOD)"
        } else {
            "create node"
        };
        Err(self.io(op, &item.path, e))
    }

    /// Another name for an inode already extracted.
    fn link_entry(&self, item: &Item, first: &Item) -> Result<()> {
        let (first_parent, first_name) = first.split();
        let (parent_rel, name) = item.split();
        let from = open_beneath(self.root, first_parent)
            .map_err(|e| self.io("open directory", first_parent, e))?;
        let to = open_beneath(self.root, parent_rel)
            .map_err(|e| self.io("open directory", parent_rel, e))?;
        let (from_name, to_name) = (
            c_name(first_name, &first.path, self)?,
            c_name(name, &item.path, self)?,
        );
        // Flags 0: linkat does not follow a symlink named as the source.
        // SAFETY: valid descriptors and C strings.
        let rc = unsafe {
            libc::linkat(
                from.as_raw_fd(),
                from_name.as_ptr(),
                to.as_raw_fd(),
                to_name.as_ptr(),
                0,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) && first_was_skipped(&first.inode, self.opts)
            {
                return Ok(());
            }
            return Err(self.io("create hardlink", &item.path, e));
        }
        bump(&self.counters.hardlinks, 1);
        Ok(())
    }

    /// Owner, mode, xattrs and times of a directory (the root is `dest` itself).
    fn finish_dir(&self, item: &Item) -> Result<()> {
        let fd = open_beneath(self.root, &item.path)
            .map_err(|e| self.io("open directory", &item.path, e))?;
        self.apply_meta(Target::Fd(fd.as_fd()), &item.inode.meta, &item.path, true)
    }

    /// chown, then chmod (chown clears setuid/setgid), then xattrs (chown also drops
    /// security.capability), then times last.
    fn apply_meta(&self, target: Target, meta: &Meta, rel: &[u8], chmod: bool) -> Result<()> {
        let (fd, name) = match &target {
            Target::Fd(fd) => (fd.as_raw_fd(), None),
            Target::Name { parent, name } => (parent.as_raw_fd(), Some(*name)),
        };
        if self.set_owners {
            // SAFETY: valid descriptor and C string.
            let rc = unsafe {
                match name {
                    None => libc::fchown(fd, meta.uid, meta.gid),
                    Some(n) => libc::fchownat(
                        fd,
                        n.as_ptr(),
                        meta.uid,
                        meta.gid,
                        libc::AT_SYMLINK_NOFOLLOW,
                    ),
                }
            };
            if rc != 0 {
                let e = io::Error::last_os_error();
                // Root of a user namespace: owners it does not map cannot be set (EINVAL).
                if self.privileged || e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(self.io("set owner of", rel, e));
                }
                bump(&self.counters.owners_not_set, 1);
            }
        } else if (meta.uid, meta.gid) != (self.euid, self.egid) {
            bump(&self.counters.owners_not_set, 1);
        }
        if chmod {
            let mode = libc::mode_t::from(meta.mode);
            // SAFETY: valid descriptor and C string; the named entry is a node we just made
            // (never a symlink: those take no chmod).
            let rc = unsafe {
                match name {
                    None => libc::fchmod(fd, mode),
                    Some(n) => libc::fchmodat(fd, n.as_ptr(), mode, 0),
                }
            };
            if rc != 0 {
                return Err(self.io("set mode of", rel, io::Error::last_os_error()));
            }
        }
        if self.opts.xattrs {
            self.set_xattrs(fd, name, meta, rel)?;
        }
        let t = libc::timespec {
            tv_sec: libc::time_t::from(meta.mtime),
            tv_nsec: 0,
        };
        let times = [t, t];
        // SAFETY: valid descriptor, C string and two timespecs.
        let rc = unsafe {
            match name {
                None => libc::futimens(fd, times.as_ptr()),
                Some(n) => {
                    libc::utimensat(fd, n.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
                }
            }
        };
        if rc != 0 {
            return Err(self.io("set times of", rel, io::Error::last_os_error()));
        }
        Ok(())
    }

    fn set_xattrs(&self, fd: RawFd, name: Option<&CString>, meta: &Meta, rel: &[u8]) -> Result<()> {
        if meta.xattrs.is_empty() {
            return Ok(());
        }
        // There is no "lsetxattr at": reach the entry through its parent's /proc/self/fd link,
        // which names the parent directory itself, then the entry without following it.
        let proc_path = match name {
            Some(n) => {
                let mut p = format!("/proc/self/fd/{fd}/").into_bytes();
                p.extend_from_slice(n.as_bytes());
                Some(
                    CString::new(p)
                        .map_err(|_| Error::bad_entry(rel, "name contains a NUL byte"))?,
                )
            }
            None => None,
        };
        for x in &meta.xattrs {
            let key = CString::new(x.name.clone())
                .map_err(|_| Error::bad_entry(rel, "xattr name contains a NUL byte"))?;
            // SAFETY: valid descriptor, C strings and a buffer of the stated length.
            let rc = unsafe {
                match &proc_path {
                    None => {
                        libc::fsetxattr(fd, key.as_ptr(), x.value.as_ptr().cast(), x.value.len(), 0)
                    }
                    Some(p) => libc::lsetxattr(
                        p.as_ptr(),
                        key.as_ptr(),
                        x.value.as_ptr().cast(),
                        x.value.len(),
                        0,
                    ),
                }
            };
            if rc != 0 {
                let e = io::Error::last_os_error();
                let refused = matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES));
                if refused && !self.privileged && !x.name.starts_with(b"user.") {
                    bump(&self.counters.xattrs_skipped, 1);
                    continue;
                }
                let e = io::Error::new(
                    e.kind(),
                    format!("{}: {e}", String::from_utf8_lossy(&x.name)),
                );
                return Err(self.io("set xattr on", rel, e));
            }
        }
        Ok(())
    }
}

fn first_was_skipped(inode: &Inode, opts: &ExtractOptions) -> bool {
    opts.skip_devices
        && matches!(
            inode.kind,
            InodeKind::Special(Special::CharDevice { .. } | Special::BlockDevice { .. })
        )
}

/// A single path component as a C string. The reader already refuses names with '/', NUL,
/// '.' or '..'; this is the last line of defence before a syscall sees the name.
fn c_name(name: &[u8], full: &[u8], ctx: &Ctx) -> Result<CString> {
    if !is_plain_name(name) {
        return Err(Error::bad_entry(
            full,
            format!(
                "unsafe name in image (extracting into {})",
                ctx.dest.display()
            ),
        ));
    }
    CString::new(name).map_err(|_| Error::bad_entry(full, "name contains a NUL byte"))
}

fn is_plain_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

fn open_dir_fd(path: &Path) -> io::Result<OwnedFd> {
    Ok(File::open(path)?.into())
}

/// Open directory `name` in `parent`, refusing a symlink.
fn openat_dir(parent: BorrowedFd, name: &CString) -> io::Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: valid descriptor and C string; the result is checked before use.
    let fd = unsafe { libc::openat(parent.as_raw_fd(), name.as_ptr(), flags) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR))
            && is_symlink_at(parent, name)
        {
            let shown = String::from_utf8_lossy(name.as_bytes()).into_owned();
            return Err(io::Error::other(format!(
                "'{shown}' is a symlink: refusing to follow it"
            )));
        }
        return Err(e);
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn is_symlink_at(parent: BorrowedFd, name: &CString) -> bool {
    // SAFETY: a zeroed stat is a valid out-buffer; valid descriptor and C string.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::fstatat(
            parent.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    rc == 0 && st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

/// Open the directory at relative path `rel` under `root`, one component at a time, never
/// following a symlink and never leaving `root` ('..' and '.' are refused).
pub(crate) fn open_beneath(root: BorrowedFd, rel: &[u8]) -> io::Result<OwnedFd> {
    let mut cur = root.try_clone_to_owned()?;
    for comp in rel.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        if !is_plain_name(comp) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "path component '.' or '..' or with NUL",
            ));
        }
        let name = CString::new(comp).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        cur = openat_dir(cur.as_fd(), &name)?;
    }
    Ok(cur)
}

#[cfg(test)]
mod tests;
