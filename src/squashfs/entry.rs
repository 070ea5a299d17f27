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
