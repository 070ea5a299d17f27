//! The file model every source feeds the writer and the reader hands back: what one entry of
//! an image root is, independent of where it came from (directory, tar stream, SquashFS).

/// One extended attribute, with its full name (`security.capability`, `user.foo`, ...).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// Ownership, permission bits and times: what SquashFS keeps of an inode besides its content.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`); no file type bits.
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch; SquashFS stores 32 bits (unsigned).
    pub mtime: u32,
    /// Sorted by name; SquashFS can store only the `user.`, `trusted.` and `security.` namespaces.
    pub xattrs: Vec<Xattr>,
}

/// Device nodes, fifos and sockets: entries with no content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Special {
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
    Fifo,
    Socket,
}

/// Where sources (a directory walk, a tar stream, a SquashFS image) deliver entries. The SquashFS
/// writer is the real sink; tests use recording sinks to check a source on its own.
///
/// Paths are relative, '/'-separated byte strings with no empty, '.' or '..' components; the
/// root directory itself is `set_root_meta`.
pub trait EntrySink {
    fn set_root_meta(&mut self, meta: Meta) -> super::Result<()>;
    fn add_dir(&mut self, path: &[u8], meta: Meta) -> super::Result<()>;
    /// Reads `data` to its end; the file's size is what was read.
    fn add_file(
        &mut self,
        path: &[u8],
        meta: Meta,
        data: &mut dyn std::io::Read,
    ) -> super::Result<()>;
    fn add_symlink(&mut self, path: &[u8], meta: Meta, target: &[u8]) -> super::Result<()>;
    fn add_special(&mut self, path: &[u8], meta: Meta, kind: Special) -> super::Result<()>;
    /// Make `path` another name of the non-directory entry already added at `target`.
    fn add_hardlink(&mut self, path: &[u8], target: &[u8]) -> super::Result<()>;
}

/// Read until `buf` is full or the source ends; returns how much was read. Sources cut their
/// input into blocks with this, since one `read` may return less than asked.
pub fn read_full(r: &mut dyn std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
