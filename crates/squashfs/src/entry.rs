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
    /// A sparse file of `size` bytes, given as its data `segments` (offset, length; in order,
    /// not overlapping, within `size`: see [`check_segments`]); `data` holds the segments'
    /// bytes back to back, and everything else reads as zeros. A sink that knows holes (the
    /// writer) never reads nor stores them; this default expands them and calls `add_file`.
    fn add_sparse_file(
        &mut self,
        path: &[u8],
        meta: Meta,
        size: u64,
        segments: &[(u64, u64)],
        data: &mut dyn std::io::Read,
    ) -> super::Result<()> {
        let mut expanded = SparseExpand::new(data, segments, size);
        self.add_file(path, meta, &mut expanded)
    }
}

/// Why a sparse map cannot describe a file of `size` bytes, or `Ok`: segments must come in
/// order, not overlap, and end within the file.
pub fn check_segments(segments: &[(u64, u64)], size: u64) -> Result<(), String> {
    let mut end = 0u64;
    for &(offset, len) in segments {
        let seg_end = offset
            .checked_add(len)
            .ok_or("sparse map segment overflows")?;
        if offset < end || seg_end > size {
            return Err(format!(
                "sparse map segment {offset}+{len} overlaps another or lies past the size {size}"
            ));
        }
        end = seg_end;
    }
    Ok(())
}

/// A sparse file read whole: zeros for the holes, the segments' bytes from `data` in between.
pub struct SparseExpand<'r> {
    data: &'r mut dyn std::io::Read,
    segments: &'r [(u64, u64)],
    next: usize,
    pos: u64,
    size: u64,
}

impl<'r> SparseExpand<'r> {
    /// `segments` must pass [`check_segments`] for `size`.
    pub fn new(data: &'r mut dyn std::io::Read, segments: &'r [(u64, u64)], size: u64) -> Self {
        SparseExpand {
            data,
            segments,
            next: 0,
            pos: 0,
            size,
        }
    }

    fn zeros(&mut self, buf: &mut [u8], available: u64) -> usize {
        let n = buf
            .len()
            .min(usize::try_from(available).unwrap_or(usize::MAX));
        buf[..n].fill(0);
        self.pos += n as u64;
        n
    }
}

impl std::io::Read for SparseExpand<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(&(offset, len)) = self.segments.get(self.next) {
            if self.pos < offset {
                return Ok(self.zeros(buf, offset - self.pos));
            }
            let left = (offset + len).saturating_sub(self.pos);
            if left == 0 {
                self.next += 1;
                continue;
            }
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = self.data.read(&mut buf[..want])?;
            if n == 0 && want > 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "sparse file data ends before its map does",
                ));
            }
            self.pos += n as u64;
            return Ok(n);
        }
        let rest = self.size.saturating_sub(self.pos);
        Ok(self.zeros(buf, rest))
    }
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
