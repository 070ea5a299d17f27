//! An SFTP server, protocol version 3 (draft-ietf-secsh-filexfer-02) with the extensions of
//! OpenSSH's sftp-server, speaking over a byte stream (stdin/stdout of `imsctl
//! internal-sftp-server`).
//!
//! The SSH server starts one such process per "sftp" subsystem channel after it has entered the
//! job's sandbox (namespaces joined, chrooted, uid 0), so this code only uses the process's own
//! view of the filesystem with plain syscalls. OpenSSH's `scp` (9.x) and Ansible's file transfers
//! both run over it, so the behaviour follows OpenSSH's sftp-server wherever the draft leaves room:
//! the errno → status mapping, SYMLINK's argument order, RENAME refusing to overwrite, READDIR
//! returning "." and "..", REALPATH accepting a missing last component.
//!
//! Memory is bounded: a request may be at most [`MAX_PACKET`] + 1 KiB long (longer ones end the
//! session, as in OpenSSH), READ answers at most [`MAX_READ`] bytes, and at most [`MAX_HANDLES`]
//! files and directories are open at once. Malformed requests get `SSH_FX_BAD_MESSAGE`; a stream
//! that cannot be framed (bad length, EOF inside a packet, no INIT first) ends the session with an
//! error.
//!
//! Files and directories are created with the requested permissions less 022, the usual umask of
//! an sshd session, applied here explicitly so that the result does not depend on the umask the
//! sandbox happens to leave: uploaded files must not become group/world-writable by accident,
//! while `put -p`, `scp -p` and `chmod` set exact modes through SETSTAT, which no mask touches.

use std::collections::{HashMap, VecDeque};
use std::ffi::{CStr, OsStr, OsString};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::dir::{Dir, OwningIter};
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, RenameFlags};
use nix::sys::stat::{FileStat, Mode, SFlag, UtimensatFlags};
use nix::sys::statvfs::{FsFlags, Statvfs};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

/// Where the server's relative paths, "." and "~" point.
#[derive(Debug, Clone)]
pub struct SftpOptions {
    pub home: PathBuf,
}

impl SftpOptions {
    /// `home` if it is a directory, else "/" (a root image without /root still gets a session).
    pub fn with_fallback(home: PathBuf) -> Self {
        let home = if home.is_dir() {
            home
        } else {
            PathBuf::from("/")
        };
        SftpOptions { home }
    }
}

/// Largest packet a client may send (advertised by limits@openssh.com, as OpenSSH's 256 KiB).
pub const MAX_PACKET: u32 = 256 * 1024;
/// Incoming packets get 1 KiB of slack for headers over the advertised size.
const MAX_INCOMING: u32 = MAX_PACKET + 1024;
/// Most data one READ returns (and one WRITE is advertised to carry).
pub const MAX_READ: u32 = MAX_PACKET - 1024;
/// Most files and directories open at once.
pub const MAX_HANDLES: usize = 256;
/// Most entries one READDIR reply carries (OpenSSH's batch size).
const READDIR_BATCH: usize = 100;
/// Bits taken from the modes of created files and directories (see the module comment).
const CREATE_UMASK: u32 = 0o022;
/// /etc/passwd and /etc/group larger than this are not read for names.
const MAX_NAME_DB: u64 = 8 * 1024 * 1024;
/// Symbolic links followed in one REALPATH, as the kernel's MAXSYMLINKS.
const MAX_SYMLINKS: usize = 40;

// Packet types.
const FXP_INIT: u8 = 1;
const FXP_VERSION: u8 = 2;
const FXP_OPEN: u8 = 3;
const FXP_CLOSE: u8 = 4;
const FXP_READ: u8 = 5;
const FXP_WRITE: u8 = 6;
const FXP_LSTAT: u8 = 7;
const FXP_FSTAT: u8 = 8;
const FXP_SETSTAT: u8 = 9;
const FXP_FSETSTAT: u8 = 10;
const FXP_OPENDIR: u8 = 11;
const FXP_READDIR: u8 = 12;
const FXP_REMOVE: u8 = 13;
const FXP_MKDIR: u8 = 14;
const FXP_RMDIR: u8 = 15;
const FXP_REALPATH: u8 = 16;
const FXP_STAT: u8 = 17;
const FXP_RENAME: u8 = 18;
const FXP_READLINK: u8 = 19;
const FXP_SYMLINK: u8 = 20;
const FXP_STATUS: u8 = 101;
const FXP_HANDLE: u8 = 102;
const FXP_DATA: u8 = 103;
const FXP_NAME: u8 = 104;
const FXP_ATTRS: u8 = 105;
const FXP_EXTENDED: u8 = 200;
const FXP_EXTENDED_REPLY: u8 = 201;

// Status codes.
const FX_OK: u32 = 0;
const FX_EOF: u32 = 1;
const FX_NO_SUCH_FILE: u32 = 2;
const FX_PERMISSION_DENIED: u32 = 3;
const FX_FAILURE: u32 = 4;
const FX_BAD_MESSAGE: u32 = 5;
const FX_OP_UNSUPPORTED: u32 = 8;

// OPEN flags.
const FXF_READ: u32 = 0x01;
const FXF_WRITE: u32 = 0x02;
const FXF_APPEND: u32 = 0x04;
const FXF_CREAT: u32 = 0x08;
const FXF_TRUNC: u32 = 0x10;
const FXF_EXCL: u32 = 0x20;

// Attribute flags.
const ATTR_SIZE: u32 = 0x01;
const ATTR_UIDGID: u32 = 0x02;
const ATTR_PERMISSIONS: u32 = 0x04;
const ATTR_ACMODTIME: u32 = 0x08;
const ATTR_EXTENDED: u32 = 0x8000_0000;

// statvfs@openssh.com flag bits.
const STATVFS_RDONLY: u64 = 0x1;
const STATVFS_NOSUID: u64 = 0x2;

/// The extensions announced in VERSION, with OpenSSH's version strings.
const EXTENSIONS: &[(&str, &str)] = &[
    ("posix-rename@openssh.com", "1"),
    ("statvfs@openssh.com", "2"),
    ("fstatvfs@openssh.com", "2"),
    ("hardlink@openssh.com", "1"),
    ("fsync@openssh.com", "1"),
    ("lsetstat@openssh.com", "1"),
    ("limits@openssh.com", "1"),
    ("expand-path@openssh.com", "1"),
    ("copy-data", "1"),
    ("home-directory", "1"),
];

/// Serve SFTP requests from `input`, replies to `output` (flushed after each), until `input` ends.
/// Returns Ok(()) on EOF between packets; an error when the stream cannot be framed or written.
pub fn serve(mut input: impl Read, mut output: impl Write, opts: &SftpOptions) -> io::Result<()> {
    let mut server = Server::new(opts.home.clone(), PathBuf::from("/etc"));
    let mut packet = Vec::new();
    while read_packet(&mut input, &mut packet)? {
        let reply = server.process(&packet)?;
        output.write_all(&reply)?;
        output.flush()?;
    }
    Ok(())
}

/// [`serve`] on this process's stdin and stdout, with `home` falling back to "/" when missing.
/// Stdout is used through its file descriptor, not Rust's line-buffered handle, so that each
/// reply goes out in one write.
pub fn serve_stdio(home: &Path) -> io::Result<()> {
    let opts = SftpOptions::with_fallback(home.to_path_buf());
    let stdin = File::from(io::stdin().as_fd().try_clone_to_owned()?);
    let stdout = File::from(io::stdout().as_fd().try_clone_to_owned()?);
    serve(BufReader::with_capacity(64 * 1024, stdin), stdout, &opts)
}

/// Read one packet (type byte and payload) into `packet`. Ok(false) on EOF before its length.
fn read_packet(input: &mut impl Read, packet: &mut Vec<u8>) -> io::Result<bool> {
    let mut len_bytes = [0u8; 4];
    let mut got = 0;
    while got < len_bytes.len() {
        match input.read(&mut len_bytes[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(protocol_error("input ended inside a packet length")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_be_bytes(len_bytes);
    if len == 0 || len > MAX_INCOMING {
        return Err(protocol_error(&format!(
            "packet length {len} is outside 1..={MAX_INCOMING}"
        )));
    }
    packet.resize(len as usize, 0);
    input.read_exact(packet).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            protocol_error(&format!("input ended inside a {len}-byte packet"))
        } else {
            e
        }
    })?;
    Ok(true)
}

fn protocol_error(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

/// A request that did not succeed: the status code and message the client gets.
#[derive(Debug)]
struct Fail {
    code: u32,
    message: String,
}

impl Fail {
    fn new(code: u32, message: impl Into<String>) -> Self {
        Fail {
            code,
            message: message.into(),
        }
    }

    fn bad_message(what: &str) -> Self {
        Fail::new(FX_BAD_MESSAGE, format!("malformed request: {what}"))
    }

    /// `op path: strerror`, with OpenSSH's errno → status mapping (errno_to_portable).
    fn errno(op: &str, path: &Path, errno: Errno) -> Self {
        let code = match errno {
            Errno::ENOENT | Errno::ENOTDIR | Errno::EBADF | Errno::ELOOP => FX_NO_SUCH_FILE,
            Errno::EPERM | Errno::EACCES | Errno::EFAULT => FX_PERMISSION_DENIED,
            Errno::ENAMETOOLONG | Errno::EINVAL => FX_BAD_MESSAGE,
            Errno::ENOSYS | Errno::EOPNOTSUPP => FX_OP_UNSUPPORTED,
            _ => FX_FAILURE,
        };
        Fail::new(code, format!("{op} {}: {}", path.display(), errno.desc()))
    }

    fn io(op: &str, path: &Path, err: io::Error) -> Self {
        match err.raw_os_error() {
            Some(raw) => Fail::errno(op, path, Errno::from_raw(raw)),
            None => Fail::new(FX_FAILURE, format!("{op} {}: {err}", path.display())),
        }
    }
}

type Outcome = Result<Msg, Fail>;

/// A reply being built: 4 bytes of length, the type, 4 bytes of request id, then the body.
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(ty: u8) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&[0, 0, 0, 0, ty, 0, 0, 0, 0]);
        Msg { buf }
    }

    fn status(code: u32, message: &str) -> Self {
        let mut m = Msg::new(FXP_STATUS);
        m.buf.put_u32(code);
        m.buf.put_bytes(message.as_bytes());
        m.buf.put_bytes(b""); // language tag
        m
    }

    fn ok() -> Self {
        Msg::status(FX_OK, "Success")
    }

    fn handle(handle: u32) -> Self {
        let mut m = Msg::new(FXP_HANDLE);
        m.buf.put_bytes(&handle.to_be_bytes());
        m
    }

    fn attrs(attrs: &Attrs) -> Self {
        let mut m = Msg::new(FXP_ATTRS);
        m.buf.put_attrs(attrs);
        m
    }

    /// A NAME reply with one entry whose long name is the name itself and no attributes, as
    /// OpenSSH answers REALPATH, READLINK and the path extensions.
    fn single_name(name: &[u8]) -> Self {
        let mut m = Msg::new(FXP_NAME);
        m.buf.put_u32(1);
        m.buf.put_bytes(name);
        m.buf.put_bytes(name);
        m.buf.put_attrs(&Attrs::default());
        m
    }

    fn extended_reply(values: &[u64]) -> Self {
        let mut m = Msg::new(FXP_EXTENDED_REPLY);
        for v in values {
            m.buf.put_u64(*v);
        }
        m
    }

    /// The finished packet, answering request `id`.
    fn finish(mut self, id: u32) -> Vec<u8> {
        let len = (self.buf.len() - 4) as u32;
        self.buf[0..4].copy_from_slice(&len.to_be_bytes());
        self.buf[5..9].copy_from_slice(&id.to_be_bytes());
        self.buf
    }
}

trait Put {
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_bytes(&mut self, b: &[u8]);
    fn put_attrs(&mut self, a: &Attrs);
}

impl Put for Vec<u8> {
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_be_bytes());
    }

    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_be_bytes());
    }

    fn put_bytes(&mut self, b: &[u8]) {
        // Every string we send is bounded by a packet, far below 4 GiB.
        self.put_u32(b.len() as u32);
        self.extend_from_slice(b);
    }

    fn put_attrs(&mut self, a: &Attrs) {
        let mut flags = 0;
        if a.size.is_some() {
            flags |= ATTR_SIZE;
        }
        if a.owner.is_some() {
            flags |= ATTR_UIDGID;
        }
        if a.perms.is_some() {
            flags |= ATTR_PERMISSIONS;
        }
        if a.times.is_some() {
            flags |= ATTR_ACMODTIME;
        }
        self.put_u32(flags);
        if let Some(size) = a.size {
            self.put_u64(size);
        }
        if let Some((uid, gid)) = a.owner {
            self.put_u32(uid);
            self.put_u32(gid);
        }
        if let Some(perms) = a.perms {
            self.put_u32(perms);
        }
        if let Some((atime, mtime)) = a.times {
            self.put_u32(atime);
            self.put_u32(mtime);
        }
    }
}

/// File attributes as SFTP v3 carries them; `None` = not present.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Attrs {
    size: Option<u64>,
    owner: Option<(u32, u32)>,
    perms: Option<u32>,
    times: Option<(u32, u32)>,
}

impl Attrs {
    fn of(st: &FileStat) -> Self {
        // SFTP v3 carries 32-bit times; wrapping is what OpenSSH's sftp-server does too.
        Attrs {
            size: Some(st.st_size as u64),
            owner: Some((st.st_uid, st.st_gid)),
            perms: Some(st.st_mode),
            times: Some((st.st_atime as u32, st.st_mtime as u32)),
        }
    }
}

/// A cursor over a request's bytes; every read checks the remaining length first.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Fail> {
        if self.buf.len() < n {
            return Err(Fail::bad_message(&format!("{what} is truncated")));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u32(&mut self, what: &str) -> Result<u32, Fail> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, Fail> {
        let hi = u64::from(self.u32(what)?);
        let lo = u64::from(self.u32(what)?);
        Ok(hi << 32 | lo)
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], Fail> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }

    fn attrs(&mut self) -> Result<Attrs, Fail> {
        let flags = self.u32("attribute flags")?;
        let mut a = Attrs::default();
        if flags & ATTR_SIZE != 0 {
            a.size = Some(self.u64("size")?);
        }
        if flags & ATTR_UIDGID != 0 {
            a.owner = Some((self.u32("uid")?, self.u32("gid")?));
        }
        if flags & ATTR_PERMISSIONS != 0 {
            a.perms = Some(self.u32("permissions")?);
        }
        if flags & ATTR_ACMODTIME != 0 {
            a.times = Some((self.u32("atime")?, self.u32("mtime")?));
        }
        if flags & ATTR_EXTENDED != 0 {
            // Each pair consumes at least 8 bytes, so a huge count just runs out of packet.
            let count = self.u32("extended attribute count")?;
            for _ in 0..count {
                self.bytes("extended attribute name")?;
                self.bytes("extended attribute data")?;
            }
        }
        Ok(a)
    }
}

enum Handle {
    File {
        file: File,
        path: PathBuf,
        append: bool,
    },
    Dir {
        /// A second descriptor of the directory, for fstatat of its entries.
        fd: OwnedFd,
        entries: OwningIter,
        path: PathBuf,
    },
}

impl Handle {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Handle::File { file, .. } => file.as_fd(),
            Handle::Dir { fd, .. } => fd.as_fd(),
        }
    }

    fn path(&self) -> &Path {
        match self {
            Handle::File { path, .. } | Handle::Dir { path, .. } => path,
        }
    }
}

/// Identity of a file for cache invalidation: inode, size, mtime.
type FileStamp = Option<(u64, i64, i64, i64)>;

/// User and group names and home directories, read from /etc/passwd and /etc/group directly:
/// after the chroot, glibc's NSS would load the image's libraries into this process.
#[derive(Default)]
struct NameCache {
    stamps: Option<(FileStamp, FileStamp)>,
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
    homes: HashMap<Vec<u8>, Vec<u8>>,
}

impl NameCache {
    /// Re-read the databases if they changed since the last look (a playbook may add users).
    fn refresh(&mut self, etc: &Path) {
        let passwd = etc.join("passwd");
        let group = etc.join("group");
        let stamps = (stamp(&passwd), stamp(&group));
        if self.stamps == Some(stamps) {
            return;
        }
        self.stamps = Some(stamps);
        self.users.clear();
        self.groups.clear();
        self.homes.clear();
        for fields in read_colon_file(&passwd) {
            if let (Some(name), Some(uid)) = (fields.first(), fields.get(2)) {
                if let Some(uid) = parse_id(uid) {
                    let name = String::from_utf8_lossy(name).into_owned();
                    self.users.entry(uid).or_insert(name);
                }
                if let Some(home) = fields.get(5) {
                    self.homes.entry(name.to_vec()).or_insert(home.to_vec());
                }
            }
        }
        for fields in read_colon_file(&group) {
            if let (Some(name), Some(gid)) = (fields.first(), fields.get(2))
                && let Some(gid) = parse_id(gid)
            {
                let name = String::from_utf8_lossy(name).into_owned();
                self.groups.entry(gid).or_insert(name);
            }
        }
    }

    fn user(&self, uid: u32) -> String {
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }

    fn group(&self, gid: u32) -> String {
        self.groups
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| gid.to_string())
    }
}

fn stamp(path: &Path) -> FileStamp {
    nix::sys::stat::stat(path)
        .ok()
        .map(|st| (st.st_ino, st.st_size, st.st_mtime, st.st_mtime_nsec))
}

fn parse_id(field: &[u8]) -> Option<u32> {
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// The lines of a colon-separated database, split into fields; a missing or oversized file is
/// empty (names then show as numbers).
fn read_colon_file(path: &Path) -> Vec<Vec<Vec<u8>>> {
    let mut text = Vec::new();
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    if file.take(MAX_NAME_DB).read_to_end(&mut text).is_err() {
        return Vec::new();
    }
    text.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty() && !line.starts_with(b"#"))
        .map(|line| line.split(|b| *b == b':').map(<[u8]>::to_vec).collect())
        .collect()
}

/// `ls -l` style long name, in OpenSSH's format: "%s %3u %-8s %-8s %8llu %s %s".
fn long_name(name: &[u8], st: &FileStat, names: &NameCache, tz: &jiff::tz::TimeZone) -> Vec<u8> {
    let now = jiff::Timestamp::now().as_second();
    let mtime = st.st_mtime;
    let recent = now - 365 * 24 * 60 * 60 / 2 < mtime && now >= mtime;
    let date = match jiff::Timestamp::from_second(mtime) {
        Ok(ts) => {
            let zoned = ts.to_zoned(tz.clone());
            let format = if recent { "%b %e %H:%M" } else { "%b %e  %Y" };
            zoned.strftime(format).to_string()
        }
        Err(_) => mtime.to_string(),
    };
    let mut line = format!(
        "{} {:>3} {:<8} {:<8} {:>8} {} ",
        mode_string(st.st_mode),
        st.st_nlink,
        names.user(st.st_uid),
        names.group(st.st_gid),
        st.st_size,
        date
    )
    .into_bytes();
    line.extend_from_slice(name);
    line
}

/// The 10-character mode of `ls -l` followed by the space OpenSSH's strmode leaves for ACLs.
fn mode_string(mode: u32) -> String {
    format!("{} ", crate::squashfs::listing::mode_string(mode))
}

fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

fn mode_of(bits: u32) -> Mode {
    Mode::from_bits_truncate(bits & 0o7777)
}

fn timespecs(atime: u32, mtime: u32) -> (TimeSpec, TimeSpec) {
    (
        TimeSpec::new(i64::from(atime), 0),
        TimeSpec::new(i64::from(mtime), 0),
    )
}

fn size_to_off(op: &str, path: &Path, size: u64) -> Result<i64, Fail> {
    i64::try_from(size).map_err(|_| Fail::errno(op, path, Errno::EFBIG))
}

/// How SETSTAT applies to a path: through a final symbolic link (SETSTAT) or not (lsetstat).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Links {
    Follow,
    NoFollow,
}

struct Server {
    home: PathBuf,
    etc: PathBuf,
    handles: Vec<Option<Handle>>,
    names: NameCache,
    tz: jiff::tz::TimeZone,
    initialized: bool,
}

impl Server {
    fn new(home: PathBuf, etc: PathBuf) -> Self {
        Server {
            home,
            etc,
            handles: Vec::new(),
            names: NameCache::default(),
            tz: jiff::tz::TimeZone::system(),
            initialized: false,
        }
    }

    /// Answer one packet (type byte + payload). Errors end the session: a first packet that is
    /// not INIT, a second INIT, or a packet too short to hold a request id.
    fn process(&mut self, packet: &[u8]) -> io::Result<Vec<u8>> {
        let (&ty, payload) = packet
            .split_first()
            .ok_or_else(|| protocol_error("empty packet"))?;
        if !self.initialized {
            if ty != FXP_INIT {
                return Err(protocol_error(&format!(
                    "the first packet has type {ty}, not INIT"
                )));
            }
            self.initialized = true;
            return Ok(version_reply());
        }
        if ty == FXP_INIT {
            return Err(protocol_error("INIT received twice"));
        }
        let mut r = Reader { buf: payload };
        let id = r
            .u32("request id")
            .map_err(|_| protocol_error(&format!("packet of type {ty} has no request id")))?;
        let msg = self
            .dispatch(ty, &mut r)
            .unwrap_or_else(|fail| Msg::status(fail.code, &fail.message));
        Ok(msg.finish(id))
    }

    fn dispatch(&mut self, ty: u8, r: &mut Reader) -> Outcome {
        match ty {
            FXP_OPEN => self.open(r),
            FXP_CLOSE => self.close(r),
            FXP_READ => self.read(r),
            FXP_WRITE => self.write(r),
            FXP_LSTAT => self.stat_path(r, Links::NoFollow),
            FXP_STAT => self.stat_path(r, Links::Follow),
            FXP_FSTAT => self.fstat(r),
            FXP_SETSTAT => self.setstat(r, Links::Follow),
            FXP_FSETSTAT => self.fsetstat(r),
            FXP_OPENDIR => self.opendir(r),
            FXP_READDIR => self.readdir(r),
            FXP_REMOVE => self.remove(r),
            FXP_MKDIR => self.mkdir(r),
            FXP_RMDIR => self.rmdir(r),
            FXP_REALPATH => self.realpath(r),
            FXP_RENAME => self.rename(r),
            FXP_READLINK => self.readlink(r),
            FXP_SYMLINK => self.symlink(r),
            FXP_EXTENDED => self.extended(r),
            other => Err(Fail::new(
                FX_OP_UNSUPPORTED,
                format!("unsupported request type {other}"),
            )),
        }
    }

    /// A client path made absolute against home. An empty path stays empty, so that the
    /// syscalls answer ENOENT as they do for OpenSSH.
    fn path(&self, raw: &[u8]) -> PathBuf {
        let p = Path::new(os(raw));
        if raw.is_empty() || p.is_absolute() {
            p.to_path_buf()
        } else {
            self.home.join(p)
        }
    }

    fn path_arg(&self, r: &mut Reader) -> Result<PathBuf, Fail> {
        Ok(self.path(r.bytes("path")?))
    }

    fn add_handle(&mut self, handle: Handle) -> Outcome {
        let slot = match self.handles.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                self.handles.push(None);
                self.handles.len() - 1
            }
        };
        self.handles[slot] = Some(handle);
        Ok(Msg::handle(slot as u32))
    }

    fn check_handle_room(&self, op: &str, path: &Path) -> Result<(), Fail> {
        let open = self.handles.iter().filter(|h| h.is_some()).count();
        if open >= MAX_HANDLES {
            return Err(Fail::new(
                FX_FAILURE,
                format!(
                    "{op} {}: too many open handles (limit {MAX_HANDLES})",
                    path.display()
                ),
            ));
        }
        Ok(())
    }

    fn handle_index(raw: &[u8]) -> Result<usize, Fail> {
        let bytes: [u8; 4] = raw
            .try_into()
            .map_err(|_| Fail::new(FX_FAILURE, "invalid handle"))?;
        Ok(u32::from_be_bytes(bytes) as usize)
    }

    fn handle(&self, raw: &[u8]) -> Result<&Handle, Fail> {
        let index = Self::handle_index(raw)?;
        self.handles
            .get(index)
            .and_then(Option::as_ref)
            .ok_or_else(|| Fail::new(FX_FAILURE, "invalid handle"))
    }

    fn file(&self, raw: &[u8]) -> Result<(&File, &Path, bool), Fail> {
        match self.handle(raw)? {
            Handle::File { file, path, append } => Ok((file, path, *append)),
            Handle::Dir { path, .. } => Err(Fail::new(
                FX_FAILURE,
                format!(
                    "{}: a directory handle is not a file handle",
                    path.display()
                ),
            )),
        }
    }

    fn open(&mut self, r: &mut Reader) -> Outcome {
        let path = self.path_arg(r)?;
        let pflags = r.u32("open flags")?;
        let attrs = r.attrs()?;
        let mut flags = match (pflags & FXF_READ != 0, pflags & FXF_WRITE != 0) {
            (true, true) => OFlag::O_RDWR,
            (false, true) => OFlag::O_WRONLY,
            _ => OFlag::O_RDONLY,
        };
        let append = pflags & FXF_APPEND != 0;
        for (bit, flag) in [
            (FXF_APPEND, OFlag::O_APPEND),
            (FXF_CREAT, OFlag::O_CREAT),
            (FXF_TRUNC, OFlag::O_TRUNC),
            (FXF_EXCL, OFlag::O_EXCL),
        ] {
            if pflags & bit != 0 {
                flags |= flag;
            }
        }
        flags |= OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
        let mode = attrs.perms.unwrap_or(0o666) & !CREATE_UMASK;
        self.check_handle_room("open", &path)?;
        let fd = nix::fcntl::open(&path, flags, mode_of(mode))
            .map_err(|e| Fail::errno("open", &path, e))?;
        self.add_handle(Handle::File {
            file: File::from(fd),
            path,
            append,
        })
    }

    fn close(&mut self, r: &mut Reader) -> Outcome {
        let index = Self::handle_index(r.bytes("handle")?)?;
        let handle = self
            .handles
            .get_mut(index)
            .and_then(Option::take)
            .ok_or_else(|| Fail::new(FX_FAILURE, "invalid handle"))?;
        match handle {
            // close(2) can report a delayed write error (NFS, quota); the client should see it.
            Handle::File { file, path, .. } => {
                nix::unistd::close(file).map_err(|e| Fail::errno("close", &path, e))?;
            }
            Handle::Dir { .. } => drop(handle),
        }
        Ok(Msg::ok())
    }

    fn read(&mut self, r: &mut Reader) -> Outcome {
        let raw = r.bytes("handle")?;
        let offset = r.u64("offset")?;
        let len = r.u32("length")?.min(MAX_READ) as usize;
        let (file, path, _) = self.file(raw)?;
        let mut m = Msg::new(FXP_DATA);
        let start = m.buf.len() + 4;
        m.buf.resize(start + len, 0);
        let n = loop {
            match file.read_at(&mut m.buf[start..], offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other.map_err(|e| Fail::io("read", path, e))?,
            }
        };
        if n == 0 {
            return Err(Fail::new(FX_EOF, "End of file"));
        }
        m.buf.truncate(start + n);
        m.buf[start - 4..start].copy_from_slice(&(n as u32).to_be_bytes());
        Ok(m)
    }

    fn write(&mut self, r: &mut Reader) -> Outcome {
        let raw = r.bytes("handle")?;
        let offset = r.u64("offset")?;
        let data = r.bytes("data")?;
        let (file, path, append) = self.file(raw)?;
        let written = if append {
            (&*file).write_all(data)
        } else {
            file.write_all_at(data, offset)
        };
        written.map_err(|e| Fail::io("write", path, e))?;
        Ok(Msg::ok())
    }

    fn stat_path(&mut self, r: &mut Reader, links: Links) -> Outcome {
        let path = self.path_arg(r)?;
        let st = match links {
            Links::Follow => nix::sys::stat::stat(&path).map_err(|e| Fail::errno("stat", &path, e)),
            Links::NoFollow => {
                nix::sys::stat::lstat(&path).map_err(|e| Fail::errno("lstat", &path, e))
            }
        }?;
        Ok(Msg::attrs(&Attrs::of(&st)))
    }

    fn fstat(&mut self, r: &mut Reader) -> Outcome {
        let handle = self.handle(r.bytes("handle")?)?;
        let st = nix::sys::stat::fstat(handle.fd())
            .map_err(|e| Fail::errno("fstat", handle.path(), e))?;
        Ok(Msg::attrs(&Attrs::of(&st)))
    }

    /// SETSTAT and lsetstat: size, permissions, times, then owner, in OpenSSH's order.
    fn setstat(&mut self, r: &mut Reader, links: Links) -> Outcome {
        let path = self.path_arg(r)?;
        let attrs = r.attrs()?;
        if let Some(size) = attrs.size {
            let len = size_to_off("truncate", &path, size)?;
            nix::unistd::truncate(&path, len).map_err(|e| Fail::errno("truncate", &path, e))?;
        }
        if let Some(perms) = attrs.perms {
            chmod_path(&path, perms, links)?;
        }
        if let Some((atime, mtime)) = attrs.times {
            let (a, m) = timespecs(atime, mtime);
            let flag = match links {
                Links::Follow => UtimensatFlags::FollowSymlink,
                Links::NoFollow => UtimensatFlags::NoFollowSymlink,
            };
            nix::sys::stat::utimensat(AT_FDCWD, &path, &a, &m, flag)
                .map_err(|e| Fail::errno("utimes", &path, e))?;
        }
        if let Some((uid, gid)) = attrs.owner {
            let flag = match links {
                Links::Follow => AtFlags::empty(),
                Links::NoFollow => AtFlags::AT_SYMLINK_NOFOLLOW,
            };
            let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
            nix::unistd::fchownat(AT_FDCWD, &path, uid, gid, flag)
                .map_err(|e| Fail::errno("chown", &path, e))?;
        }
        Ok(Msg::ok())
    }

    fn fsetstat(&mut self, r: &mut Reader) -> Outcome {
        let handle = self.handle(r.bytes("handle")?)?;
        let attrs = r.attrs()?;
        let (fd, path) = (handle.fd(), handle.path());
        if let Some(size) = attrs.size {
            let len = size_to_off("ftruncate", path, size)?;
            nix::unistd::ftruncate(fd, len).map_err(|e| Fail::errno("ftruncate", path, e))?;
        }
        if let Some(perms) = attrs.perms {
            nix::sys::stat::fchmod(fd, mode_of(perms))
                .map_err(|e| Fail::errno("fchmod", path, e))?;
        }
        if let Some((atime, mtime)) = attrs.times {
            let (a, m) = timespecs(atime, mtime);
            nix::sys::stat::futimens(fd, &a, &m).map_err(|e| Fail::errno("futimes", path, e))?;
        }
        if let Some((uid, gid)) = attrs.owner {
            let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
            nix::unistd::fchown(fd, uid, gid).map_err(|e| Fail::errno("fchown", path, e))?;
        }
        Ok(Msg::ok())
    }

    fn opendir(&mut self, r: &mut Reader) -> Outcome {
        let path = self.path_arg(r)?;
        self.check_handle_room("opendir", &path)?;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::open(&path, flags, Mode::empty())
            .map_err(|e| Fail::errno("opendir", &path, e))?;
        let stream_fd = fd.try_clone().map_err(|e| Fail::io("opendir", &path, e))?;
        let dir = Dir::from_fd(stream_fd).map_err(|e| Fail::errno("opendir", &path, e))?;
        self.add_handle(Handle::Dir {
            fd,
            entries: dir.into_iter(),
            path,
        })
    }

    fn readdir(&mut self, r: &mut Reader) -> Outcome {
        let index = Self::handle_index(r.bytes("handle")?)?;
        self.names.refresh(&self.etc);
        let Some(Some(Handle::Dir { fd, entries, path })) = self.handles.get_mut(index) else {
            return Err(Fail::new(FX_FAILURE, "invalid directory handle"));
        };
        let mut listed: Vec<(Vec<u8>, FileStat)> = Vec::new();
        while listed.len() < READDIR_BATCH {
            let entry = match entries.next() {
                None => break,
                Some(Ok(entry)) => entry,
                Some(Err(e)) if listed.is_empty() => return Err(Fail::errno("readdir", path, e)),
                Some(Err(_)) => break,
            };
            let name: &CStr = entry.file_name();
            // An entry removed since readdir saw it is skipped, as OpenSSH does.
            if let Ok(st) = nix::sys::stat::fstatat(&*fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                listed.push((name.to_bytes().to_vec(), st));
            }
        }
        if listed.is_empty() {
            return Err(Fail::new(FX_EOF, "End of file"));
        }
        let mut m = Msg::new(FXP_NAME);
        m.buf.put_u32(listed.len() as u32);
        for (name, st) in &listed {
            m.buf.put_bytes(name);
            m.buf.put_bytes(&long_name(name, st, &self.names, &self.tz));
            m.buf.put_attrs(&Attrs::of(st));
        }
        Ok(m)
    }

    fn remove(&mut self, r: &mut Reader) -> Outcome {
        let path = self.path_arg(r)?;
        nix::unistd::unlink(&path).map_err(|e| Fail::errno("remove", &path, e))?;
        Ok(Msg::ok())
    }

    fn mkdir(&mut self, r: &mut Reader) -> Outcome {
        let path = self.path_arg(r)?;
        let attrs = r.attrs()?;
        let mode = attrs.perms.unwrap_or(0o777) & !CREATE_UMASK;
        nix::unistd::mkdir(&path, mode_of(mode)).map_err(|e| Fail::errno("mkdir", &path, e))?;
        Ok(Msg::ok())
    }

    fn rmdir(&mut self, r: &mut Reader) -> Outcome {
        let path = self.path_arg(r)?;
        std::fs::remove_dir(&path).map_err(|e| Fail::io("rmdir", &path, e))?;
        Ok(Msg::ok())
    }

    fn realpath(&mut self, r: &mut Reader) -> Outcome {
        let raw = r.bytes("path")?;
        let raw = if raw.is_empty() { &b"."[..] } else { raw };
        let path = self.path(raw);
        let resolved = canonicalize(&path).map_err(|e| Fail::errno("realpath", &path, e))?;
        Ok(Msg::single_name(resolved.as_os_str().as_bytes()))
    }

    /// RENAME never replaces an existing target (v3 semantics; posix-rename does).
    fn rename(&mut self, r: &mut Reader) -> Outcome {
        let from = self.path_arg(r)?;
        let to = self.path_arg(r)?;
        let op = "rename";
        match nix::fcntl::renameat2(
            AT_FDCWD,
            &from,
            AT_FDCWD,
            &to,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => Ok(Msg::ok()),
            // Filesystems without RENAME_NOREPLACE: check, then rename (what OpenSSH does for
            // everything but regular files).
            Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                if nix::sys::stat::lstat(&to).is_ok() {
                    return Err(Fail::errno(op, &to, Errno::EEXIST));
                }
                std::fs::rename(&from, &to).map_err(|e| Fail::io(op, &from, e))?;
                Ok(Msg::ok())
            }
            Err(Errno::EEXIST) => Err(Fail::errno(op, &to, Errno::EEXIST)),
            Err(e) => Err(Fail::errno(op, &from, e)),
        }
    }

    fn readlink(&mut self, r: &mut Reader) -> Outcome {
        let path = self.path_arg(r)?;
        let target = nix::fcntl::readlink(&path).map_err(|e| Fail::errno("readlink", &path, e))?;
        Ok(Msg::single_name(target.as_bytes()))
    }

    /// OpenSSH's client and server swap the draft's order: target first, then the link path.
    /// The target is stored verbatim; a relative one stays relative to the link.
    fn symlink(&mut self, r: &mut Reader) -> Outcome {
        let target = r.bytes("symlink target")?;
        let link = self.path_arg(r)?;
        std::os::unix::fs::symlink(os(target), &link).map_err(|e| Fail::io("symlink", &link, e))?;
        Ok(Msg::ok())
    }

    fn extended(&mut self, r: &mut Reader) -> Outcome {
        let name = r.bytes("extension name")?;
        match name {
            b"posix-rename@openssh.com" => {
                let from = self.path_arg(r)?;
                let to = self.path_arg(r)?;
                std::fs::rename(&from, &to).map_err(|e| Fail::io("rename", &from, e))?;
                Ok(Msg::ok())
            }
            b"statvfs@openssh.com" => {
                let path = self.path_arg(r)?;
                let st = nix::sys::statvfs::statvfs(&path)
                    .map_err(|e| Fail::errno("statvfs", &path, e))?;
                Ok(statvfs_reply(&st))
            }
            b"fstatvfs@openssh.com" => {
                let handle = self.handle(r.bytes("handle")?)?;
                let st = nix::sys::statvfs::fstatvfs(handle.fd())
                    .map_err(|e| Fail::errno("fstatvfs", handle.path(), e))?;
                Ok(statvfs_reply(&st))
            }
            b"hardlink@openssh.com" => {
                let from = self.path_arg(r)?;
                let to = self.path_arg(r)?;
                std::fs::hard_link(&from, &to).map_err(|e| Fail::io("link", &to, e))?;
                Ok(Msg::ok())
            }
            b"fsync@openssh.com" => {
                let (file, path, _) = self.file(r.bytes("handle")?)?;
                file.sync_all().map_err(|e| Fail::io("fsync", path, e))?;
                Ok(Msg::ok())
            }
            b"lsetstat@openssh.com" => self.setstat(r, Links::NoFollow),
            b"limits@openssh.com" => Ok(Msg::extended_reply(&[
                u64::from(MAX_PACKET),
                u64::from(MAX_READ),
                u64::from(MAX_READ),
                MAX_HANDLES as u64,
            ])),
            b"expand-path@openssh.com" => self.expand_path(r),
            b"home-directory" => self.home_directory(r),
            b"copy-data" => self.copy_data(r),
            other => Err(Fail::new(
                FX_OP_UNSUPPORTED,
                format!("unsupported extension {}", String::from_utf8_lossy(other)),
            )),
        }
    }

    /// "~" and "~/x" against home, "~user/x" against the user's home in /etc/passwd, then the
    /// result canonicalized like REALPATH.
    fn expand_path(&mut self, r: &mut Reader) -> Outcome {
        let raw = r.bytes("path")?;
        let expanded: PathBuf = match raw.strip_prefix(b"~") {
            None => self.path(if raw.is_empty() { b"." } else { raw }),
            Some(rest) => {
                let (user, tail) = match rest.iter().position(|b| *b == b'/') {
                    Some(slash) => (&rest[..slash], &rest[slash + 1..]),
                    None => (rest, &rest[rest.len()..]),
                };
                let home = if user.is_empty() {
                    self.home.clone()
                } else {
                    self.user_home(user)?
                };
                home.join(os(tail))
            }
        };
        let resolved =
            canonicalize(&expanded).map_err(|e| Fail::errno("expand-path", &expanded, e))?;
        Ok(Msg::single_name(resolved.as_os_str().as_bytes()))
    }

    fn home_directory(&mut self, r: &mut Reader) -> Outcome {
        let user = r.bytes("user name")?;
        let home = if user.is_empty() {
            self.home.clone()
        } else {
            self.user_home(user)?
        };
        Ok(Msg::single_name(home.as_os_str().as_bytes()))
    }

    fn user_home(&mut self, user: &[u8]) -> Result<PathBuf, Fail> {
        self.names.refresh(&self.etc);
        match self.names.homes.get(user) {
            Some(home) => Ok(PathBuf::from(OsString::from_vec(home.clone()))),
            None => Err(Fail::new(
                FX_FAILURE,
                format!(
                    "no user {} in {}",
                    String::from_utf8_lossy(user),
                    self.etc.join("passwd").display()
                ),
            )),
        }
    }

    /// copy-data: copy a range between two open files on the server side (length 0 = to EOF).
    fn copy_data(&mut self, r: &mut Reader) -> Outcome {
        let read_raw = r.bytes("read handle")?;
        let read_offset = r.u64("read offset")?;
        let length = r.u64("length")?;
        let write_raw = r.bytes("write handle")?;
        let write_offset = r.u64("write offset")?;
        let (source, source_path, _) = self.file(read_raw)?;
        let (dest, dest_path, dest_append) = self.file(write_raw)?;
        if dest_append {
            return Err(Fail::new(
                FX_FAILURE,
                format!(
                    "copy-data to {}: the handle is open for appending",
                    dest_path.display()
                ),
            ));
        }
        let end = |start: u64| {
            if length == 0 {
                u64::MAX
            } else {
                start.saturating_add(length)
            }
        };
        if read_raw == write_raw
            && read_offset < end(write_offset)
            && write_offset < end(read_offset)
        {
            return Err(Fail::new(
                FX_FAILURE,
                format!(
                    "copy-data in {}: source and destination ranges overlap",
                    dest_path.display()
                ),
            ));
        }
        let mut buf = vec![0u8; 64 * 1024];
        let (mut from, mut to) = (read_offset, write_offset);
        let mut left = if length == 0 { u64::MAX } else { length };
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = source
                .read_at(&mut buf[..want], from)
                .map_err(|e| Fail::io("copy-data: read", source_path, e))?;
            if n == 0 {
                break;
            }
            dest.write_all_at(&buf[..n], to)
                .map_err(|e| Fail::io("copy-data: write", dest_path, e))?;
            from += n as u64;
            to += n as u64;
            left -= n as u64;
        }
        Ok(Msg::ok())
    }
}

fn version_reply() -> Vec<u8> {
    let mut body = vec![FXP_VERSION];
    body.put_u32(3);
    for (name, version) in EXTENSIONS {
        body.put_bytes(name.as_bytes());
        body.put_bytes(version.as_bytes());
    }
    let mut packet = Vec::with_capacity(body.len() + 4);
    packet.put_u32(body.len() as u32);
    packet.extend_from_slice(&body);
    packet
}

fn statvfs_reply(st: &Statvfs) -> Msg {
    let mut flags = 0;
    if st.flags().contains(FsFlags::ST_RDONLY) {
        flags |= STATVFS_RDONLY;
    }
    if st.flags().contains(FsFlags::ST_NOSUID) {
        flags |= STATVFS_NOSUID;
    }
    Msg::extended_reply(&[
        st.block_size(),
        st.fragment_size(),
        st.blocks(),
        st.blocks_free(),
        st.blocks_available(),
        st.files(),
        st.files_free(),
        st.files_available(),
        st.filesystem_id(),
        flags,
        st.name_max(),
    ])
}

/// chmod through or on a final symbolic link. Linux keeps no mode on symlinks, so lsetstat on
/// one is refused rather than silently changing the target.
fn chmod_path(path: &Path, perms: u32, links: Links) -> Result<(), Fail> {
    if links == Links::NoFollow {
        let st = nix::sys::stat::lstat(path).map_err(|e| Fail::errno("chmod", path, e))?;
        if st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFLNK.bits() {
            return Err(Fail::errno("chmod", path, Errno::EOPNOTSUPP));
        }
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(perms & 0o7777))
        .map_err(|e| Fail::io("chmod", path, e))
}

/// Resolve `path` (absolute) to a canonical path without "." / ".." / symbolic links, as OpenSSH's
/// sftp_realpath (OpenBSD's realpath): every component must exist except the last.
fn canonicalize(path: &Path) -> Result<PathBuf, Errno> {
    let mut pending: VecDeque<OsString> = components(path);
    let mut resolved = PathBuf::from("/");
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == "." {
            continue;
        }
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        match nix::sys::stat::lstat(&candidate) {
            Ok(st) if st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFLNK.bits() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(Errno::ELOOP);
                }
                let target = nix::fcntl::readlink(&candidate)?;
                let target = Path::new(&target);
                if target.is_absolute() {
                    resolved = PathBuf::from("/");
                }
                for part in components(target).into_iter().rev() {
                    pending.push_front(part);
                }
            }
            Ok(_) => resolved = candidate,
            Err(Errno::ENOENT) if pending.is_empty() => resolved = candidate,
            Err(e) => return Err(e),
        }
    }
    Ok(resolved)
}

/// The named parts of a path, "." and ".." kept (the root and prefixes dropped).
fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::CurDir => Some(OsString::from(".")),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A reply decoded by the test client.
    #[derive(Debug, PartialEq)]
    enum Reply {
        Status(u32, String),
        Handle(Vec<u8>),
        Data(Vec<u8>),
        Name(Vec<(Vec<u8>, Vec<u8>, Attrs)>),
        Attrs(Attrs),
        Extended(Vec<u8>),
    }

    /// A tiny SFTP client talking to a `Server` in the same process.
    struct Client {
        server: Server,
        next_id: u32,
        home: PathBuf,
        etc: PathBuf,
        _dir: tempfile::TempDir,
    }

    fn string(b: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.put_bytes(b);
        v
    }

    fn attrs_bytes(a: &Attrs) -> Vec<u8> {
        let mut v = Vec::new();
        v.put_attrs(a);
        v
    }

    fn perms(p: u32) -> Attrs {
        Attrs {
            perms: Some(p),
            ..Attrs::default()
        }
    }

    impl Client {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let home = dir.path().join("home");
            let etc = dir.path().join("etc");
            std::fs::create_dir(&home).expect("mkdir home");
            std::fs::create_dir(&etc).expect("mkdir etc");
            let mut server = Server::new(home.clone(), etc.clone());
            let version = server.process(&[FXP_INIT, 0, 0, 0, 3]).expect("init");
            assert_eq!(version[4], FXP_VERSION);
            Client {
                server,
                next_id: 1,
                home,
                etc,
                _dir: dir,
            }
        }

        fn request(&mut self, ty: u8, body: &[u8]) -> Reply {
            let id = self.next_id;
            self.next_id += 1;
            let mut packet = vec![ty];
            packet.put_u32(id);
            packet.extend_from_slice(body);
            let reply = self.server.process(&packet).expect("process");
            let len = u32::from_be_bytes(reply[0..4].try_into().expect("len")) as usize;
            assert_eq!(len, reply.len() - 4, "length field");
            assert_eq!(&reply[5..9], &id.to_be_bytes(), "reply id");
            decode(reply[4], &reply[9..])
        }

        fn path_request(&mut self, ty: u8, path: &str) -> Reply {
            self.request(ty, &string(path.as_bytes()))
        }

        fn extended(&mut self, name: &str, body: &[u8]) -> Reply {
            let mut b = string(name.as_bytes());
            b.extend_from_slice(body);
            self.request(FXP_EXTENDED, &b)
        }

        fn open(&mut self, path: &str, flags: u32, a: &Attrs) -> Reply {
            let mut b = string(path.as_bytes());
            b.put_u32(flags);
            b.extend_from_slice(&attrs_bytes(a));
            self.request(FXP_OPEN, &b)
        }

        fn open_ok(&mut self, path: &str, flags: u32, a: &Attrs) -> Vec<u8> {
            match self.open(path, flags, a) {
                Reply::Handle(h) => h,
                other => panic!("open {path}: {other:?}"),
            }
        }

        fn opendir_ok(&mut self, path: &str) -> Vec<u8> {
            match self.path_request(FXP_OPENDIR, path) {
                Reply::Handle(h) => h,
                other => panic!("opendir {path}: {other:?}"),
            }
        }

        fn write(&mut self, h: &[u8], offset: u64, data: &[u8]) -> Reply {
            let mut b = string(h);
            b.put_u64(offset);
            b.put_bytes(data);
            self.request(FXP_WRITE, &b)
        }

        fn read(&mut self, h: &[u8], offset: u64, len: u32) -> Reply {
            let mut b = string(h);
            b.put_u64(offset);
            b.put_u32(len);
            self.request(FXP_READ, &b)
        }

        fn close(&mut self, h: &[u8]) -> Reply {
            self.request(FXP_CLOSE, &string(h))
        }

        fn stat(&mut self, ty: u8, path: &str) -> Attrs {
            match self.path_request(ty, path) {
                Reply::Attrs(a) => a,
                other => panic!("stat {path}: {other:?}"),
            }
        }

        fn setstat(&mut self, ty: u8, target: &[u8], a: &Attrs) -> Reply {
            let mut b = string(target);
            b.extend_from_slice(&attrs_bytes(a));
            self.request(ty, &b)
        }

        fn two_paths(&mut self, ty: u8, a: &str, b: &str) -> Reply {
            let mut body = string(a.as_bytes());
            body.extend_from_slice(&string(b.as_bytes()));
            self.request(ty, &body)
        }

        fn single_name(&mut self, reply: Reply) -> String {
            match reply {
                Reply::Name(names) if names.len() == 1 => {
                    String::from_utf8(names[0].0.clone()).expect("utf-8 name")
                }
                other => panic!("expected one name: {other:?}"),
            }
        }

        fn readdir_all(&mut self, h: &[u8]) -> Vec<(Vec<u8>, Vec<u8>, Attrs)> {
            let mut all = Vec::new();
            loop {
                match self.request(FXP_READDIR, &string(h)) {
                    Reply::Name(names) => all.extend(names),
                    Reply::Status(FX_EOF, _) => return all,
                    other => panic!("readdir: {other:?}"),
                }
            }
        }
    }

    fn decode(ty: u8, body: &[u8]) -> Reply {
        let mut r = Reader { buf: body };
        let reply = match ty {
            FXP_STATUS => {
                let code = r.u32("code").expect("code");
                let msg = r.bytes("msg").expect("msg");
                r.bytes("lang").expect("lang");
                Reply::Status(code, String::from_utf8_lossy(msg).into_owned())
            }
            FXP_HANDLE => Reply::Handle(r.bytes("handle").expect("handle").to_vec()),
            FXP_DATA => Reply::Data(r.bytes("data").expect("data").to_vec()),
            FXP_ATTRS => Reply::Attrs(r.attrs().expect("attrs")),
            FXP_NAME => {
                let count = r.u32("count").expect("count");
                let names = (0..count)
                    .map(|_| {
                        let name = r.bytes("name").expect("name").to_vec();
                        let long = r.bytes("long").expect("long").to_vec();
                        (name, long, r.attrs().expect("attrs"))
                    })
                    .collect();
                Reply::Name(names)
            }
            FXP_EXTENDED_REPLY => return Reply::Extended(body.to_vec()),
            other => panic!("unexpected reply type {other}"),
        };
        assert!(r.buf.is_empty(), "trailing bytes in reply type {ty}");
        reply
    }

    fn ok() -> Reply {
        Reply::Status(FX_OK, "Success".into())
    }

    fn code(reply: &Reply) -> u32 {
        match reply {
            Reply::Status(code, _) => *code,
            other => panic!("expected a status: {other:?}"),
        }
    }

    const RW_CREATE: u32 = FXF_READ | FXF_WRITE | FXF_CREAT | FXF_TRUNC;

    #[test]
    fn version_announces_v3_and_the_extensions() {
        let mut server = Server::new(PathBuf::from("/"), PathBuf::from("/etc"));
        let reply = server.process(&[FXP_INIT, 0, 0, 0, 6]).expect("init");
        assert_eq!(&reply[4..9], &[FXP_VERSION, 0, 0, 0, 3]);
        let mut r = Reader { buf: &reply[9..] };
        let mut names = Vec::new();
        while !r.buf.is_empty() {
            names.push(String::from_utf8_lossy(r.bytes("name").expect("name")).into_owned());
            r.bytes("data").expect("data");
        }
        for wanted in [
            "posix-rename@openssh.com",
            "limits@openssh.com",
            "copy-data",
        ] {
            assert!(names.iter().any(|n| n == wanted), "{wanted} in {names:?}");
        }
    }

    #[test]
    fn write_then_read_back_and_eof() {
        let mut c = Client::new();
        let h = c.open_ok("f", RW_CREATE, &perms(0o640));
        assert_eq!(c.write(&h, 0, b"hello"), ok());
        assert_eq!(c.write(&h, 5, b" world"), ok());
        assert_eq!(c.read(&h, 0, 100), Reply::Data(b"hello world".to_vec()));
        assert_eq!(c.read(&h, 6, 3), Reply::Data(b"wor".to_vec()));
        assert_eq!(code(&c.read(&h, 11, 10)), FX_EOF);
        assert_eq!(c.close(&h), ok());
        assert_eq!(
            std::fs::read(c.home.join("f")).expect("read"),
            b"hello world"
        );
        let a = c.stat(FXP_STAT, "f");
        assert_eq!(a.size, Some(11));
        assert_eq!(a.perms, Some(0o100640));
        // The handle is gone after CLOSE.
        assert_eq!(code(&c.read(&h, 0, 1)), FX_FAILURE);
    }

    #[test]
    fn append_writes_at_the_end_whatever_the_offset() {
        let mut c = Client::new();
        std::fs::write(c.home.join("log"), "one\n").expect("write");
        let h = c.open_ok("log", FXF_WRITE | FXF_APPEND, &Attrs::default());
        assert_eq!(c.write(&h, 0, b"two\n"), ok());
        assert_eq!(c.close(&h), ok());
        assert_eq!(
            std::fs::read_to_string(c.home.join("log")).expect("read"),
            "one\ntwo\n"
        );
    }

    #[test]
    fn excl_refuses_an_existing_file() {
        let mut c = Client::new();
        std::fs::write(c.home.join("x"), "").expect("write");
        let reply = c.open("x", FXF_WRITE | FXF_CREAT | FXF_EXCL, &Attrs::default());
        assert_eq!(code(&reply), FX_FAILURE, "{reply:?}");
    }

    #[test]
    fn reads_are_capped_at_max_read() {
        let mut c = Client::new();
        std::fs::write(c.home.join("big"), vec![7u8; MAX_READ as usize + 10]).expect("write");
        let h = c.open_ok("big", FXF_READ, &Attrs::default());
        match c.read(&h, 0, u32::MAX) {
            Reply::Data(d) => assert_eq!(d.len(), MAX_READ as usize),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn created_files_and_dirs_lose_group_and_other_write() {
        let mut c = Client::new();
        let h = c.open_ok("f", FXF_WRITE | FXF_CREAT, &perms(0o666));
        c.close(&h);
        let h = c.open_ok("g", FXF_WRITE | FXF_CREAT, &Attrs::default());
        c.close(&h);
        assert_eq!(c.setstat(FXP_MKDIR, b"d", &perms(0o777)), ok());
        assert_eq!(c.setstat(FXP_MKDIR, b"e", &perms(0o700)), ok());
        let mode = |p: &str| std::fs::metadata(c.home.join(p)).expect("stat").mode() & 0o7777;
        assert_eq!(mode("f"), 0o644);
        assert_eq!(mode("g"), 0o644);
        assert_eq!(mode("d"), 0o755);
        assert_eq!(mode("e"), 0o700);
    }

    #[test]
    fn missing_paths_are_no_such_file_with_the_operation_and_path() {
        let mut c = Client::new();
        let missing = c.home.join("nope");
        for (ty, op) in [
            (FXP_STAT, "stat"),
            (FXP_LSTAT, "lstat"),
            (FXP_OPENDIR, "opendir"),
            (FXP_REMOVE, "remove"),
            (FXP_RMDIR, "rmdir"),
            (FXP_READLINK, "readlink"),
        ] {
            match c.path_request(ty, "nope") {
                Reply::Status(FX_NO_SUCH_FILE, msg) => {
                    assert_eq!(
                        msg,
                        format!("{op} {}: No such file or directory", missing.display())
                    )
                }
                other => panic!("{op}: {other:?}"),
            }
        }
        assert_eq!(
            code(&c.open("nope", FXF_READ, &Attrs::default())),
            FX_NO_SUCH_FILE
        );
        assert_eq!(
            code(&c.open("nope/x", FXF_READ, &Attrs::default())),
            FX_NO_SUCH_FILE
        );
    }

    #[test]
    fn readdir_lists_every_entry_with_long_names_then_eof() {
        let mut c = Client::new();
        // SAFETY: geteuid and getegid have no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        std::fs::write(
            c.etc.join("passwd"),
            format!("tester:x:{uid}:{gid}:Test:/home/tester:/bin/sh\n"),
        )
        .expect("passwd");
        std::fs::write(c.etc.join("group"), format!("testers:x:{gid}:\n")).expect("group");
        std::fs::write(c.home.join("file"), "abc").expect("write");
        std::fs::create_dir(c.home.join("sub")).expect("mkdir");
        for i in 0..150 {
            std::fs::write(c.home.join(format!("n{i:03}")), "").expect("write");
        }
        let h = c.opendir_ok(".");
        let entries = c.readdir_all(&h);
        assert_eq!(entries.len(), 2 + 2 + 150, "., .., file, sub and 150 more");
        let find = |name: &str| {
            entries
                .iter()
                .find(|e| e.0 == name.as_bytes())
                .unwrap_or_else(|| panic!("{name} listed"))
        };
        find(".");
        find("..");
        let (_, long, attrs) = find("file");
        let long = String::from_utf8_lossy(long);
        assert!(
            long.starts_with("-rw-r--r--    1 tester   testers         3 "),
            "{long}"
        );
        assert!(long.ends_with(" file"), "{long}");
        assert_eq!(attrs.size, Some(3));
        let (_, long, _) = find("sub");
        assert_eq!(
            long.first(),
            Some(&b'd'),
            "{}",
            String::from_utf8_lossy(long)
        );
        assert_eq!(c.close(&h), ok());
        // Without the databases, the owner shows as numbers.
        std::fs::remove_file(c.etc.join("passwd")).expect("rm");
        std::fs::remove_file(c.etc.join("group")).expect("rm");
        let h = c.opendir_ok(".");
        let entries = c.readdir_all(&h);
        let file = entries.iter().find(|e| e.0 == b"file").expect("file");
        let long = String::from_utf8_lossy(&file.1);
        assert!(long.contains(&format!(" {uid:<8} {gid:<8} ")), "{long}");
    }

    #[test]
    fn readdir_on_a_file_handle_fails() {
        let mut c = Client::new();
        let h = c.open_ok("f", RW_CREATE, &Attrs::default());
        assert_eq!(code(&c.request(FXP_READDIR, &string(&h))), FX_FAILURE);
        assert_eq!(code(&c.path_request(FXP_OPENDIR, "f")), FX_NO_SUCH_FILE);
    }

    #[test]
    fn rename_refuses_an_existing_target_but_posix_rename_replaces_it() {
        let mut c = Client::new();
        std::fs::write(c.home.join("a"), "A").expect("write");
        std::fs::write(c.home.join("b"), "B").expect("write");
        match c.two_paths(FXP_RENAME, "a", "b") {
            Reply::Status(FX_FAILURE, msg) => assert!(msg.starts_with("rename "), "{msg}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.two_paths(FXP_RENAME, "a", "c"), ok());
        assert!(!c.home.join("a").exists());
        let mut body = string(b"c");
        body.extend_from_slice(&string(b"b"));
        assert_eq!(c.extended("posix-rename@openssh.com", &body), ok());
        assert_eq!(
            std::fs::read_to_string(c.home.join("b")).expect("read"),
            "A"
        );
    }

    #[test]
    fn symlink_takes_target_first_and_readlink_returns_it_verbatim() {
        let mut c = Client::new();
        std::fs::write(c.home.join("real"), "data").expect("write");
        assert_eq!(c.two_paths(FXP_SYMLINK, "real", "link"), ok());
        let target = std::fs::read_link(c.home.join("link")).expect("readlink");
        assert_eq!(target, Path::new("real"));
        let reply = c.path_request(FXP_READLINK, "link");
        assert_eq!(c.single_name(reply), "real");
        let l = c.stat(FXP_LSTAT, "link");
        assert_eq!(l.perms.map(|m| m & 0o170000), Some(0o120000));
        let s = c.stat(FXP_STAT, "link");
        assert_eq!(s.size, Some(4));
    }

    #[test]
    fn setstat_truncates_chmods_and_sets_times() {
        let mut c = Client::new();
        std::fs::write(c.home.join("f"), "0123456789").expect("write");
        let a = Attrs {
            size: Some(4),
            perms: Some(0o4751),
            times: Some((1_000_000_000, 1_500_000_000)),
            owner: None,
        };
        assert_eq!(c.setstat(FXP_SETSTAT, b"f", &a), ok());
        let m = std::fs::metadata(c.home.join("f")).expect("stat");
        assert_eq!((m.len(), m.mode() & 0o7777), (4, 0o4751));
        assert_eq!((m.atime(), m.mtime()), (1_000_000_000, 1_500_000_000));
        // The same through a handle.
        let h = c.open_ok("f", FXF_WRITE, &Attrs::default());
        let a = Attrs {
            size: Some(1),
            perms: Some(0o600),
            times: Some((5, 6)),
            owner: None,
        };
        assert_eq!(c.setstat(FXP_FSETSTAT, &h, &a), ok());
        let m = std::fs::metadata(c.home.join("f")).expect("stat");
        assert_eq!((m.len(), m.mode() & 0o7777, m.mtime()), (1, 0o600, 6));
        match c.request(FXP_FSTAT, &string(&h)) {
            Reply::Attrs(a) => assert_eq!(a.times, Some((5, 6))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn setstat_to_own_ids_succeeds_and_missing_path_fails() {
        let mut c = Client::new();
        std::fs::write(c.home.join("f"), "").expect("write");
        // SAFETY: geteuid and getegid have no preconditions.
        let owner = unsafe { (libc::geteuid(), libc::getegid()) };
        let a = Attrs {
            owner: Some(owner),
            ..Attrs::default()
        };
        assert_eq!(c.setstat(FXP_SETSTAT, b"f", &a), ok());
        assert_eq!(
            code(&c.setstat(FXP_SETSTAT, b"missing", &perms(0o600))),
            FX_NO_SUCH_FILE
        );
    }

    #[test]
    fn lsetstat_sets_times_on_the_link_not_the_target() {
        let mut c = Client::new();
        std::fs::write(c.home.join("t"), "").expect("write");
        std::os::unix::fs::symlink("t", c.home.join("l")).expect("symlink");
        let mut body = string(b"l");
        body.extend_from_slice(&attrs_bytes(&Attrs {
            times: Some((7, 8)),
            ..Attrs::default()
        }));
        assert_eq!(c.extended("lsetstat@openssh.com", &body), ok());
        let link = std::fs::symlink_metadata(c.home.join("l")).expect("lstat");
        let target = std::fs::metadata(c.home.join("t")).expect("stat");
        assert_eq!(link.mtime(), 8);
        assert_ne!(target.mtime(), 8);
        // Modes cannot be set on a symlink itself.
        let mut body = string(b"l");
        body.extend_from_slice(&attrs_bytes(&perms(0o600)));
        assert_eq!(
            code(&c.extended("lsetstat@openssh.com", &body)),
            FX_OP_UNSUPPORTED
        );
    }

    #[test]
    fn realpath_resolves_against_home_dots_and_symlinks() {
        let mut c = Client::new();
        let home = c.home.canonicalize().expect("canonical home");
        c.server.home = home.clone();
        std::fs::create_dir(home.join("d")).expect("mkdir");
        std::os::unix::fs::symlink("d", home.join("ld")).expect("symlink");
        let real = |c: &mut Client, p: &str| {
            let reply = c.path_request(FXP_REALPATH, p);
            c.single_name(reply)
        };
        let h = home.display().to_string();
        assert_eq!(real(&mut c, "."), h);
        assert_eq!(real(&mut c, ""), h);
        assert_eq!(real(&mut c, "d/../d/./"), format!("{h}/d"));
        assert_eq!(
            real(&mut c, "ld/new"),
            format!("{h}/d/new"),
            "last part may be missing"
        );
        assert_eq!(real(&mut c, "/../.."), "/");
        assert_eq!(
            code(&c.path_request(FXP_REALPATH, "missing/x")),
            FX_NO_SUCH_FILE
        );
        std::os::unix::fs::symlink("loop", home.join("loop")).expect("symlink");
        assert_eq!(code(&c.path_request(FXP_REALPATH, "loop")), FX_NO_SUCH_FILE);
    }

    #[test]
    fn expand_path_and_home_directory() {
        let mut c = Client::new();
        let home = c.home.canonicalize().expect("canonical home");
        c.server.home = home.clone();
        std::fs::create_dir(home.join("sub")).expect("mkdir");
        std::fs::write(
            c.etc.join("passwd"),
            format!("ann:x:1000:1000::{}:/bin/sh\n", home.join("sub").display()),
        )
        .expect("passwd");
        let h = home.display().to_string();
        for (input, want) in [
            ("~", h.clone()),
            ("~/sub/x", format!("{h}/sub/x")),
            ("~ann", format!("{h}/sub")),
            ("sub", format!("{h}/sub")),
        ] {
            let reply = c.extended("expand-path@openssh.com", &string(input.as_bytes()));
            assert_eq!(c.single_name(reply), want, "{input}");
        }
        let reply = c.extended("expand-path@openssh.com", &string(b"~nobody/x"));
        assert_eq!(code(&reply), FX_FAILURE);
        let reply = c.extended("home-directory", &string(b"ann"));
        assert_eq!(c.single_name(reply), format!("{h}/sub"));
    }

    #[test]
    fn remove_mkdir_rmdir_and_hardlink() {
        let mut c = Client::new();
        std::fs::write(c.home.join("f"), "x").expect("write");
        let mut body = string(b"f");
        body.extend_from_slice(&string(b"g"));
        assert_eq!(c.extended("hardlink@openssh.com", &body), ok());
        assert_eq!(
            std::fs::metadata(c.home.join("g")).expect("stat").nlink(),
            2
        );
        assert_eq!(c.path_request(FXP_REMOVE, "f"), ok());
        assert!(!c.home.join("f").exists());
        assert_eq!(c.setstat(FXP_MKDIR, b"d", &Attrs::default()), ok());
        assert_eq!(
            code(&c.setstat(FXP_MKDIR, b"d", &Attrs::default())),
            FX_FAILURE
        );
        assert_eq!(code(&c.path_request(FXP_REMOVE, "d")), FX_FAILURE);
        assert_eq!(c.path_request(FXP_RMDIR, "d"), ok());
        assert!(!c.home.join("d").exists());
    }

    #[test]
    fn copy_data_copies_a_range_and_refuses_overlap() {
        let mut c = Client::new();
        std::fs::write(c.home.join("src"), "0123456789").expect("write");
        let src = c.open_ok("src", FXF_READ, &Attrs::default());
        let dst = c.open_ok("dst", RW_CREATE, &Attrs::default());
        let mut body = string(&src);
        body.put_u64(2);
        body.put_u64(5);
        body.extend_from_slice(&string(&dst));
        body.put_u64(1);
        assert_eq!(c.extended("copy-data", &body), ok());
        let mut body = string(&src);
        body.put_u64(8);
        body.put_u64(0);
        body.extend_from_slice(&string(&dst));
        body.put_u64(6);
        assert_eq!(c.extended("copy-data", &body), ok());
        assert_eq!(
            std::fs::read(c.home.join("dst")).expect("read"),
            b"\x002345689"
        );
        let mut body = string(&dst);
        body.put_u64(0);
        body.put_u64(4);
        body.extend_from_slice(&string(&dst));
        body.put_u64(2);
        assert_eq!(code(&c.extended("copy-data", &body)), FX_FAILURE);
    }

    #[test]
    fn limits_statvfs_and_fsync_answer() {
        let mut c = Client::new();
        match c.extended("limits@openssh.com", &[]) {
            Reply::Extended(b) => {
                assert_eq!(b.len(), 32);
                assert_eq!(&b[0..8], &u64::from(MAX_PACKET).to_be_bytes());
            }
            other => panic!("{other:?}"),
        }
        match c.extended("statvfs@openssh.com", &string(b".")) {
            Reply::Extended(b) => assert_eq!(b.len(), 11 * 8),
            other => panic!("{other:?}"),
        }
        let h = c.open_ok("f", RW_CREATE, &Attrs::default());
        assert_eq!(c.extended("fsync@openssh.com", &string(&h)), ok());
        match c.extended("fstatvfs@openssh.com", &string(&h)) {
            Reply::Extended(b) => assert_eq!(b.len(), 11 * 8),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            code(&c.extended("no-such@example.com", &[])),
            FX_OP_UNSUPPORTED
        );
    }

    #[test]
    fn open_handles_are_capped() {
        let mut c = Client::new();
        let handles: Vec<_> = (0..MAX_HANDLES).map(|_| c.opendir_ok(".")).collect();
        match c.path_request(FXP_OPENDIR, ".") {
            Reply::Status(FX_FAILURE, msg) => {
                assert!(msg.contains("too many open handles"), "{msg}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.close(&handles[3]), ok());
        let reused = c.opendir_ok(".");
        assert_eq!(reused, handles[3], "a freed slot is reused");
    }

    #[test]
    fn malformed_requests_get_bad_message_or_failure() {
        let mut c = Client::new();
        // A string whose length runs past the packet.
        let mut body = Vec::new();
        body.put_u32(1000);
        body.extend_from_slice(b"short");
        assert_eq!(code(&c.request(FXP_STAT, &body)), FX_BAD_MESSAGE);
        assert_eq!(code(&c.request(FXP_OPEN, &string(b"x"))), FX_BAD_MESSAGE);
        // Attributes claiming more extended pairs than the packet holds.
        let mut body = string(b"x");
        body.put_u32(ATTR_EXTENDED);
        body.put_u32(u32::MAX);
        assert_eq!(code(&c.request(FXP_SETSTAT, &body)), FX_BAD_MESSAGE);
        assert_eq!(
            code(&c.request(FXP_READ, &string(b"bogus-handle"))),
            FX_BAD_MESSAGE
        );
        assert_eq!(code(&c.read(b"nope", 0, 1)), FX_FAILURE);
        assert_eq!(code(&c.close(&[0, 0, 0, 9])), FX_FAILURE);
        assert_eq!(code(&c.request(99, &[])), FX_OP_UNSUPPORTED);
        // No request id at all ends the session, as does a second INIT.
        assert!(c.server.process(&[FXP_STAT, 0, 0]).is_err());
        assert!(c.server.process(&[FXP_INIT, 0, 0, 0, 3]).is_err());
    }

    #[test]
    fn random_packets_never_panic() {
        let mut c = Client::new();
        let mut rng = fastrand::Rng::with_seed(6);
        for _ in 0..20_000 {
            let ty = match rng.u8(0..4) {
                0 => rng.u8(..),
                _ => rng.u8(FXP_OPEN..=FXP_SYMLINK),
            };
            let len = rng.usize(0..40);
            let mut packet = vec![ty];
            packet.extend((0..len).map(|_| match rng.u8(0..4) {
                0 => 0,
                1 => 0xff,
                _ => rng.u8(..),
            }));
            if ty == FXP_INIT {
                continue;
            }
            // Only the ids and framing matter here: any reply or a clean error is fine.
            let _ = c.server.process(&packet);
        }
        // The server still works afterwards.
        assert_eq!(
            c.stat(FXP_STAT, ".").perms.map(|m| m & 0o170000),
            Some(0o040000)
        );
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.put_u32(body.len() as u32);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn serve_answers_until_clean_eof() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = SftpOptions::with_fallback(dir.path().to_path_buf());
        let mut input = frame(&[FXP_INIT, 0, 0, 0, 3]);
        let mut stat = vec![FXP_STAT, 0, 0, 0, 42];
        stat.put_bytes(b".");
        input.extend_from_slice(&frame(&stat));
        let mut output = Vec::new();
        serve(io::Cursor::new(input), &mut output, &opts).expect("serve");
        let version_len = u32::from_be_bytes(output[0..4].try_into().expect("len")) as usize;
        let attrs = &output[4 + version_len..];
        assert_eq!(attrs[4], FXP_ATTRS);
        assert_eq!(&attrs[5..9], &42u32.to_be_bytes());
    }

    #[test]
    fn serve_rejects_bad_framing() {
        let opts = SftpOptions::with_fallback(PathBuf::from("/nonexistent-home"));
        assert_eq!(opts.home, Path::new("/"));
        let run = |input: Vec<u8>| serve(io::Cursor::new(input), io::sink(), &opts);
        let mut oversized = Vec::new();
        oversized.put_u32(MAX_INCOMING + 1);
        assert!(run(oversized).is_err());
        assert!(run(vec![0, 0, 0, 0]).is_err(), "zero length");
        assert!(run(vec![0, 0]).is_err(), "EOF inside the length");
        assert!(
            run(vec![0, 0, 0, 9, FXP_INIT]).is_err(),
            "EOF inside a packet"
        );
        let mut stat_first = vec![FXP_STAT, 0, 0, 0, 1];
        stat_first.put_bytes(b"/");
        assert!(run(frame(&stat_first)).is_err(), "no INIT first");
        assert!(run(Vec::new()).is_ok(), "clean EOF");
    }

    #[test]
    fn mode_strings_match_ls() {
        assert_eq!(mode_string(0o100644), "-rw-r--r-- ");
        assert_eq!(mode_string(0o040755), "drwxr-xr-x ");
        assert_eq!(mode_string(0o104755), "-rwsr-xr-x ");
        assert_eq!(mode_string(0o102644), "-rw-r-Sr-- ");
        assert_eq!(mode_string(0o041777), "drwxrwxrwt ");
        assert_eq!(mode_string(0o120777), "lrwxrwxrwx ");
    }
}
