//! A tar stream (plain, gzip, xz or zstd; ustar, GNU or pax) fed to an [`EntrySink`] in one pass,
//! with nothing extracted to disk.
//!
//! The `tar` crate splits the stream into members and resolves GNU long names ('L', 'K') and old
//! GNU sparse members ('S'); everything else a root filesystem needs is read here: pax records
//! (global and local), xattrs in the three spellings tools write, GNU sparse pax formats 0.0, 0.1
//! and 1.0, and the path-safety rules of [`super::path`].
//!
//! Members that meet an earlier member's path follow GNU tar's extraction (checked against
//! `tar -xf` in it::engine), or fail naming both; nothing changes silently:
//! - a later member replaces an earlier one of the same path (the count and the first path are
//!   in the report's warnings), a directory over a directory only updates its metadata;
//! - a non-directory over a directory that holds entries is refused (GNU tar: "Cannot open:
//!   File exists"); over an empty one it replaces it;
//! - a member below an earlier non-directory is refused: below a file, as GNU tar refuses it
//!   ("Not a directory"); below a symlink, because an image is built without resolving the
//!   archive's symlinks (GNU tar follows one that stays inside the target directory and refuses
//!   the others; here the member is refused either way, never written somewhere else);
//! - a name component over 255 bytes (NAME_MAX) is refused, as no Linux filesystem takes it;
//! - a malformed pax `size` (`1e20`, `-5`) is refused, not replaced by the header's size.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use crossbeam_channel::{Receiver, Sender};

use super::path::{normalize_member_path, parent_of};
use super::{Error, LossTally, Result, lossy, xattr_storable};
use crate::{EntrySink, Meta, Special, Xattr, check_segments};

/// How to read a tar stream.
#[derive(Clone, Debug)]
pub struct TarOptions {
    /// Pass xattrs to the sink (on by default, as mksquashfs and tar2sqfs do).
    pub xattrs: bool,
    /// Read on past zero blocks, like `tar --ignore-zeros`: for concatenated archives.
    pub ignore_zeros: bool,
}

impl Default for TarOptions {
    fn default() -> Self {
        TarOptions {
            xattrs: true,
            ignore_zeros: false,
        }
    }
}

/// What [`tar_into`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TarReport {
    /// Members handed to the sink: the root, directories, files, symlinks, devices, fifos,
    /// hardlinks (not the implicit directories below).
    pub entries: u64,
    /// File content bytes handed to the sink (sparse files counted at their full size).
    pub bytes: u64,
    /// Hardlink members (also counted in `entries`).
    pub hardlinks: u64,
    /// Parent directories the archive did not list, created with mode 0755, owner 0:0, mtime 0
    /// (as tar2sqfs does).
    pub implicit_dirs: u64,
    /// Xattrs (and pax ACL records) SquashFS cannot store, left out; see `warnings`.
    pub skipped_xattrs: u64,
    /// Mtimes outside the 32-bit unsigned range SquashFS stores, clamped.
    pub clamped_mtimes: u64,
    /// Members that replaced an earlier member of the same path (a directory listed again is
    /// not counted: it only updates the metadata).
    pub replaced: u64,
    /// One line per kind of loss or oddity, in a stable order.
    pub warnings: Vec<String>,
}

/// The uncompressed tar stream is read in chunks this big.
const TAR_BUFFER: usize = 256 * 1024;
/// Compressed input is read from the file in chunks this big.
const FILE_BUFFER: usize = 1024 * 1024;
/// Decompressed chunks queued between the decompression thread and the tar reader.
const READ_AHEAD_CHUNK: usize = 1024 * 1024;
const READ_AHEAD_DEPTH: usize = 8;
/// Memory the multi-threaded xz decoder may use before it drops to fewer threads (it never
/// refuses to decode because of it). Keeps the whole conversion under the 512 MiB budget.
const XZ_THREADING_MEMLIMIT: u64 = 256 * 1024 * 1024;

const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const BZIP2_MAGIC: &[u8] = b"BZh";
const LZ4_MAGIC: &[u8] = &[0x04, 0x22, 0x4d, 0x18];

/// The compressions [`open_compressed`] recognizes by their magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

/// Sniffs the compression of a stream from its first bytes (not from a file name).
pub fn detect_compression(head: &[u8]) -> Result<Compression, &'static str> {
    // zstd skippable frames (0x184D2A50..=0x184D2A5F, little-endian) may precede the data.
    let zstd_skippable =
        head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18];
    if head.starts_with(XZ_MAGIC) {
        Ok(Compression::Xz)
    } else if head.starts_with(GZIP_MAGIC) {
        Ok(Compression::Gzip)
    } else if head.starts_with(ZSTD_MAGIC) || zstd_skippable {
        Ok(Compression::Zstd)
    } else if head.starts_with(BZIP2_MAGIC) {
        Err("bzip2-compressed input is not supported (recompress with xz, gzip or zstd)")
    } else if head.starts_with(LZ4_MAGIC) {
        Err("lz4-compressed input is not supported (recompress with xz, gzip or zstd)")
    } else {
        Ok(Compression::None)
    }
}

/// Opens a tar archive, plain or compressed with gzip, xz or zstd (detected from the magic
/// bytes). Compressed input is decompressed on a background thread (xz with liblzma's
/// multi-threaded decoder) so that decompression overlaps the conversion.
pub fn open_compressed(path: &Path) -> Result<Box<dyn Read + Send>> {
    let file = File::open(path).map_err(|e| Error::io("open archive", path, e))?;
    decompressing(file, path)
}

/// Like [`open_compressed`], for an archive already open as `input` (a file wrapped in a
/// progress counter, a pipe); `path` names it in errors.
pub fn decompressing<R: Read + Send + 'static>(
    mut input: R,
    path: &Path,
) -> Result<Box<dyn Read + Send>> {
    let mut head = Vec::with_capacity(512);
    (&mut input)
        .take(512)
        .read_to_end(&mut head)
        .map_err(|e| Error::io("read archive", path, e))?;
    let compression = detect_compression(&head).map_err(|what| Error::Unsupported {
        path: path.to_path_buf(),
        what: what.into(),
    })?;
    // The sniffed bytes go back in front so that pipes and fifos work as well as files.
    let raw = BufReader::with_capacity(FILE_BUFFER, io::Cursor::new(head).chain(input));
    let decoder: Box<dyn Read + Send> = match compression {
        Compression::None => return Ok(Box::new(raw)),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
        Compression::Xz => {
            Box::new(XzStreams::new(raw).map_err(|e| Error::io("start xz decoder for", path, e))?)
        }
        Compression::Zstd => {
            let mut dec = zstd::stream::read::Decoder::with_buffer(raw)
                .map_err(|e| Error::io("start zstd decoder for", path, e))?;
            // Archives made with `zstd --long` need windows past the 128 MiB default.
            dec.window_log_max(31)
                .map_err(|e| Error::io("start zstd decoder for", path, e))?;
            Box::new(dec)
        }
    };
    let name = match compression {
        Compression::Gzip => "gzip",
        Compression::Xz => "xz",
        _ => "zstd",
    };
    let reader = ReadAhead::spawn(decoder, name)
        .map_err(|e| Error::io("start decompression thread for", path, e))?;
    Ok(Box::new(reader))
}

/// Concatenated .xz streams (what `xz -dc` accepts: several streams, zero padding between),
/// each decoded with liblzma's multi-threaded decoder. The decoder uses its threads only for
/// multi-block files (`xz -T`), and decodes single-block files as fast as the plain one.
struct XzStreams<R: BufRead> {
    decoder: Option<liblzma::bufread::XzDecoder<R>>,
}

impl<R: BufRead> XzStreams<R> {
    fn new(input: R) -> io::Result<Self> {
        Ok(XzStreams {
            decoder: Some(Self::decoder(input)?),
        })
    }

    fn decoder(input: R) -> io::Result<liblzma::bufread::XzDecoder<R>> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let stream = liblzma::stream::MtStreamBuilder::new()
            .threads(u32::try_from(threads).unwrap_or(1))
            .memlimit_threading(XZ_THREADING_MEMLIMIT)
            .memlimit_stop(u64::MAX)
            .decoder()
            .map_err(io::Error::other)?;
        Ok(liblzma::bufread::XzDecoder::new_stream(input, stream))
    }

    /// After one stream's end: skips the zero padding, then reports whether more input follows.
    fn more_after_padding(input: &mut R) -> io::Result<bool> {
        loop {
            let buf = input.fill_buf()?;
            if buf.is_empty() {
                return Ok(false);
            }
            let zeros = buf.iter().take_while(|&&b| b == 0).count();
            let all_zeros = zeros == buf.len();
            input.consume(zeros);
            if !all_zeros {
                return Ok(true);
            }
        }
    }
}

impl<R: BufRead> Read for XzStreams<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(decoder) = self.decoder.as_mut() else {
                return Ok(0);
            };
            let n = decoder.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            let Some(decoder) = self.decoder.take() else {
                return Ok(0);
            };
            let mut input = decoder.into_inner();
            if !Self::more_after_padding(&mut input)? {
                return Ok(0);
            }
            if !input.fill_buf()?.starts_with(XZ_MAGIC) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "trailing garbage after the xz stream",
                ));
            }
            self.decoder = Some(Self::decoder(input)?);
        }
    }
}

/// Runs a decompressor on its own thread, handing over chunks through a bounded queue; used
/// buffers come back to be refilled, so the steady state allocates nothing.
struct ReadAhead {
    chunks: Receiver<io::Result<Vec<u8>>>,
    spent: Sender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    finished: bool,
}

impl ReadAhead {
    fn spawn(mut source: Box<dyn Read + Send>, codec: &'static str) -> io::Result<Self> {
        let (chunk_tx, chunks) = crossbeam_channel::bounded(READ_AHEAD_DEPTH);
        let (spent, spent_rx) = crossbeam_channel::unbounded::<Vec<u8>>();
        std::thread::Builder::new()
            .name(format!("imsctl-{codec}"))
            .spawn(move || {
                loop {
                    let mut buf = spent_rx
                        .try_recv()
                        .unwrap_or_else(|_| Vec::with_capacity(READ_AHEAD_CHUNK));
                    buf.resize(READ_AHEAD_CHUNK, 0);
                    let message = match crate::entry::read_full(&mut *source, &mut buf) {
                        Ok(filled) => {
                            buf.truncate(filled);
                            Ok(buf)
                        }
                        Err(e) => Err(io::Error::new(
                            e.kind(),
                            format!("{codec} decompression failed: {e}"),
                        )),
                    };
                    let last = !matches!(&message, Ok(b) if !b.is_empty());
                    // A send error means the reader was dropped: nobody wants the rest.
                    if chunk_tx.send(message).is_err() || last {
                        return;
                    }
                }
            })?;
        Ok(ReadAhead {
            chunks,
            spent,
            current: Vec::new(),
            pos: 0,
            finished: false,
        })
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            if self.finished || buf.is_empty() {
                return Ok(0);
            }
            let next = self
                .chunks
                .recv()
                .map_err(|_| io::Error::other("decompression thread ended unexpectedly"))?;
            match next {
                Ok(chunk) if chunk.is_empty() => self.finished = true,
                Ok(chunk) => {
                    let spent = std::mem::replace(&mut self.current, chunk);
                    let _ = self.spent.send(spent);
                    self.pos = 0;
                }
                Err(e) => {
                    self.finished = true;
                    return Err(e);
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Counts the bytes the tar parser consumed (the offset in the uncompressed stream, for error
/// messages) and whether it met the end of the input.
struct Counting<R> {
    inner: R,
    state: Rc<StreamState>,
}

#[derive(Default)]
struct StreamState {
    offset: Cell<u64>,
    eof: Cell<bool>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.state.eof.set(true);
        }
        self.state.offset.set(self.state.offset.get() + n as u64);
        Ok(n)
    }
}

/// Converts the tar stream `input` (already decompressed: see [`open_compressed`]) into sink
/// calls, in archive order. Members whose parents were not listed get implicit parent
/// directories first. A directory listed again (or after being made implicitly) is passed to
/// `add_dir` again: the later member's metadata wins, as when tar extracts.
pub fn tar_into(
    input: &mut dyn Read,
    sink: &mut dyn EntrySink,
    opts: &TarOptions,
) -> Result<TarReport> {
    let state = Rc::new(StreamState::default());
    let counting = Counting {
        inner: BufReader::with_capacity(TAR_BUFFER, input),
        state: Rc::clone(&state),
    };
    let mut archive = tar::Archive::new(counting);
    archive.set_ignore_zeros(opts.ignore_zeros);
    let mut conv = Converter {
        sink,
        opts,
        report: TarReport::default(),
        tally: LossTally::default(),
        seen: HashMap::new(),
        globals: Vec::new(),
        first_implicit: None,
        first_replaced: None,
    };
    let mut last_member: Option<String> = None;
    let corrupt = |what: String, after: &Option<String>| Error::Corrupt {
        offset: state.offset.get(),
        after: after.clone(),
        what,
    };

    let mut entries = archive
        .entries()
        .map_err(|e| corrupt(e.to_string(), &None))?;
    for entry in &mut entries {
        let entry = entry.map_err(|e| corrupt(e.to_string(), &last_member))?;
        last_member = Some(conv.convert(entry)?);
    }
    let missing_end_marker = state.eof.get() && !opts.ignore_zeros;
    // Read to the end so that the decompressor checks its trailing checksum.
    io::copy(&mut archive.into_inner(), &mut io::sink())
        .map_err(|e| corrupt(e.to_string(), &last_member))?;

    let mut report = conv.finish();
    if missing_end_marker {
        report.warnings.push(format!(
            "the archive has no end-of-archive marker: it may be truncated (last member: '{}')",
            last_member.as_deref().unwrap_or("none")
        ));
    }
    Ok(report)
}

/// The state of one conversion: the sink, what was done, which directories exist.
struct Converter<'s, 'o> {
    sink: &'s mut dyn EntrySink,
    opts: &'o TarOptions,
    report: TarReport,
    tally: LossTally,
    /// What is at each path so far (normalized paths; the root is not in it).
    seen: HashMap<Vec<u8>, Seen>,
    /// Global pax records ('g' members), in order; they apply to all later members.
    globals: Vec<(Vec<u8>, Vec<u8>)>,
    first_implicit: Option<String>,
    first_replaced: Option<String>,
}

/// What the members so far left at a path: what a later member at or below it must respect.
enum Seen {
    /// `first_entry`: the first path put in it (to name it should it be replaced).
    Dir {
        first_entry: Option<Vec<u8>>,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// A regular file, a device, a fifo, a hardlink.
    Other,
}

impl Seen {
    fn of_type(type_byte: u8, target: &[u8]) -> Seen {
        match type_byte {
            b'5' | b'D' => Seen::Dir { first_entry: None },
            b'2' => Seen::Symlink {
                target: target.to_vec(),
            },
            _ => Seen::Other,
        }
    }
}

impl Converter<'_, '_> {
    /// Converts one member; returns its name (for later error messages).
    fn convert<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<String> {
        let type_byte = entry.header().entry_type().as_byte();
        if type_byte == b'g' {
            self.read_global_header(&mut entry)?;
            return Ok(lossy(&entry.path_bytes()));
        }
        let local = local_pax_records(&mut entry)?;
        let mut pax = PaxAttrs::default();
        for (key, value) in &self.globals {
            pax.apply_global(key, value);
        }
        let raw_name =
            pax_sparse_name(&local).map_or_else(|| entry.path_bytes().into_owned(), <[u8]>::to_vec);
        for (key, value) in &local {
            pax.apply(key, value)
                .map_err(|what| Error::member(&raw_name, what))?;
        }
        let name = lossy(&raw_name);
        // Pre-POSIX archives mark directories only by a trailing slash on a regular member.
        let type_byte = match type_byte {
            b'0' | 0 if raw_name.ends_with(b"/") => b'5',
            other => other,
        };
        if type_byte == b'V' {
            self.report
                .warnings
                .push(format!("volume label '{name}' ignored"));
            return Ok(name);
        }
        let path = normalize_member_path(&raw_name)
            .map_err(|problem| Error::member(&raw_name, problem.to_string()))?;
        // A hardlink is another name of an inode described elsewhere: its own fields are not
        // looked at (nor counted in the report's losses).
        let meta = if type_byte == b'1' {
            Meta::default()
        } else {
            self.meta_of(&entry, &pax, &raw_name)?
        };

        let Some(path) = path else {
            if !matches!(type_byte, b'5' | b'D') {
                return Err(Error::member(
                    &raw_name,
                    "names the image root but is not a directory",
                ));
            }
            self.sink
                .set_root_meta(meta)
                .map_err(|e| Error::sink(b".", e))?;
            self.report.entries += 1;
            return Ok(name);
        };
        self.ensure_parents(&path, &raw_name)?;
        let target = pax
            .linkpath
            .clone()
            .or_else(|| entry.link_name_bytes().map(|t| t.into_owned()))
            .unwrap_or_default();
        let new = Seen::of_type(type_byte, &target);
        let linked_to_itself = type_byte == b'1'
            && normalize_member_path(&target).is_ok_and(|t| t.as_deref() == Some(&path[..]));
        if !linked_to_itself {
            self.check_replace(&path, &new, &raw_name)?;
        }
        match type_byte {
            b'0' | 0 | b'7' | b'S' => self.add_file(&mut entry, &path, meta, &pax, &raw_name)?,
            b'1' => self.add_hardlink(&entry, &path, &pax, &raw_name)?,
            b'2' => {
                if target.is_empty() {
                    return Err(Error::member(&raw_name, "symlink has an empty target"));
                }
                self.sink
                    .add_symlink(&path, meta, &target)
                    .map_err(|e| Error::sink(&path, e))?;
            }
            b'3' | b'4' => {
                let (major, minor) = device_numbers(entry.header())
                    .map_err(|what| Error::member(&raw_name, what))?;
                let kind = if type_byte == b'3' {
                    Special::CharDevice { major, minor }
                } else {
                    Special::BlockDevice { major, minor }
                };
                self.sink
                    .add_special(&path, meta, kind)
                    .map_err(|e| Error::sink(&path, e))?;
            }
            b'6' => self
                .sink
                .add_special(&path, meta, Special::Fifo)
                .map_err(|e| Error::sink(&path, e))?,
            // 'D' is a GNU incremental dump directory; its data (a listing) is not content.
            b'5' | b'D' => {
                self.sink
                    .add_dir(&path, meta)
                    .map_err(|e| Error::sink(&path, e))?;
            }
            other => {
                return Err(Error::member(
                    &raw_name,
                    format!(
                        "unsupported tar entry type '{}'",
                        char::from(other).escape_default()
                    ),
                ));
            }
        }
        self.note(path, new);
        self.report.entries += 1;
        Ok(name)
    }

    /// Whether a member may take `path`, where an earlier member may have left something
    /// (GNU tar's rules; see the module documentation).
    fn check_replace(&mut self, path: &[u8], new: &Seen, member: &[u8]) -> Result<()> {
        let new_is_dir = matches!(new, Seen::Dir { .. });
        match self.seen.get(path) {
            None => {}
            Some(Seen::Dir { .. }) if new_is_dir => {}
            Some(Seen::Dir {
                first_entry: Some(first),
            }) => {
                return Err(Error::member(
                    member,
                    format!(
                        "would replace the directory '{}' and what earlier members put in it \
                         (first: '{}'); GNU tar refuses this too (Cannot open: File exists)",
                        lossy(path),
                        lossy(first)
                    ),
                ));
            }
            Some(_) => {
                self.report.replaced += 1;
                self.first_replaced.get_or_insert_with(|| lossy(path));
            }
        }
        Ok(())
    }

    /// Remember what a member left at `path`. A directory listed again keeps its entries.
    fn note(&mut self, path: Vec<u8>, new: Seen) {
        if matches!(new, Seen::Dir { .. }) && matches!(self.seen.get(&path), Some(Seen::Dir { .. }))
        {
            return;
        }
        self.seen.insert(path, new);
    }

    fn read_global_header<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let name = entry.path_bytes().into_owned();
        let mut data = Vec::new();
        read_member_data(entry, &mut data, &name)?;
        for record in tar::PaxExtensions::new(&data) {
            let record =
                record.map_err(|e| Error::member(&name, format!("global pax header: {e}")))?;
            let key = record.key_bytes().to_vec();
            // A global record with an empty value deletes the key (POSIX pax).
            self.globals.retain(|(k, _)| *k != key);
            if !record.value_bytes().is_empty() {
                self.globals.push((key, record.value_bytes().to_vec()));
            }
        }
        Ok(())
    }

    fn meta_of<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        pax: &PaxAttrs,
        name: &[u8],
    ) -> Result<Meta> {
        let header = entry.header();
        let field_err = |field: &str, e: io::Error| {
            Error::member(name, format!("bad {field} field in the header: {e}"))
        };
        let mode = header.mode().map_err(|e| field_err("mode", e))?;
        let uid = match pax.uid {
            Some(uid) => uid,
            None => header.uid().map_err(|e| field_err("uid", e))?,
        };
        let gid = match pax.gid {
            Some(gid) => gid,
            None => header.gid().map_err(|e| field_err("gid", e))?,
        };
        let uid = u32::try_from(uid)
            .map_err(|_| Error::member(name, format!("uid {uid} does not fit in 32 bits")))?;
        let gid = u32::try_from(gid)
            .map_err(|_| Error::member(name, format!("gid {gid} does not fit in 32 bits")))?;
        let mtime = match pax.mtime {
            Some(t) => t,
            None => parse_numeric_field(&header.as_bytes()[136..148])
                .ok_or_else(|| Error::member(name, "bad mtime field in the header"))?,
        };
        let mtime = self.tally.clamp_mtime(mtime, name);
        let xattrs = if self.opts.xattrs {
            self.storable_xattrs(pax, name)
        } else {
            Vec::new()
        };
        Ok(Meta {
            mode: (mode & 0o7777) as u16,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    /// The member's xattrs SquashFS can hold, sorted by name; the rest are tallied.
    fn storable_xattrs(&mut self, pax: &PaxAttrs, name: &[u8]) -> Vec<Xattr> {
        for key in &pax.unstorable {
            self.tally.skip_xattr(key, name);
        }
        let mut merged = pax.libarchive_xattrs.clone();
        merged.extend(pax.xattrs.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut out = Vec::with_capacity(merged.len());
        for (key, value) in merged {
            if xattr_storable(&key) {
                out.push(Xattr { name: key, value });
            } else {
                self.tally.skip_xattr(&key, name);
            }
        }
        out
    }

    /// Adds the parents of `path` the archive has not listed (yet), outermost first. A parent
    /// an earlier member made a file or a symlink is never replaced nor followed: `member` is
    /// refused, naming both.
    fn ensure_parents(&mut self, path: &[u8], member: &[u8]) -> Result<()> {
        let Some(parent) = parent_of(path) else {
            return Ok(());
        };
        match self.seen.get_mut(parent) {
            Some(Seen::Dir { first_entry }) => {
                first_entry.get_or_insert_with(|| path.to_vec());
                return Ok(());
            }
            Some(Seen::Symlink { target }) => {
                return Err(Error::member(
                    member,
                    format!(
                        "lies below '{}', which an earlier member made a symlink (to '{}'): the \
                         archive's symlinks are not followed while the image is built",
                        lossy(parent),
                        lossy(target)
                    ),
                ));
            }
            Some(Seen::Other) => {
                return Err(Error::member(
                    member,
                    format!(
                        "lies below '{}', which an earlier member made a file, not a directory \
                         (GNU tar: Not a directory)",
                        lossy(parent)
                    ),
                ));
            }
            None => {}
        }
        self.ensure_parents(parent, member)?;
        let meta = Meta {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: Vec::new(),
        };
        self.sink
            .add_dir(parent, meta)
            .map_err(|e| Error::sink(parent, e))?;
        self.seen.insert(
            parent.to_vec(),
            Seen::Dir {
                first_entry: Some(path.to_vec()),
            },
        );
        self.report.implicit_dirs += 1;
        self.first_implicit.get_or_insert_with(|| lossy(parent));
        Ok(())
    }

    fn add_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &[u8],
        meta: Meta,
        pax: &PaxAttrs,
        name: &[u8],
    ) -> Result<()> {
        let start = entry.raw_file_position();
        let stored = entry.size();
        let mut data = Checked::new(entry, stored, start);
        let (added, expanded) = match pax
            .sparse
            .format()
            .map_err(|what| Error::member(name, what))?
        {
            None => (self.sink.add_file(path, meta, &mut data), None),
            Some(format) => {
                let (map, real_size) = pax
                    .sparse
                    .map(format, &mut data)
                    .map_err(|what| data.failure_or(name, what))?;
                check_segments(&map, real_size).map_err(|what| Error::member(name, what))?;
                // The holes are handed over as a map: never read, hashed nor compressed.
                let mut stored = MapData::new(&mut data, &map);
                let added = self
                    .sink
                    .add_sparse_file(path, meta, real_size, &map, &mut stored);
                if let Some(failure) = stored.failure.take() {
                    return Err(data.failure_or(name, failure));
                }
                if added.is_ok() && has_more(&mut data) {
                    // Data past what the map lists means a map that lies.
                    return Err(data.failure_or(
                        name,
                        "sparse member holds more data than its map lists".into(),
                    ));
                }
                (added, Some(real_size))
            }
        };
        if let Some(failure) = data.failure.take() {
            return Err(Error::member(name, failure));
        }
        added.map_err(|e| Error::sink(path, e))?;
        self.report.bytes += expanded.unwrap_or(data.read);
        Ok(())
    }

    fn add_hardlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        path: &[u8],
        pax: &PaxAttrs,
        name: &[u8],
    ) -> Result<()> {
        let raw_target = pax
            .linkpath
            .clone()
            .or_else(|| entry.link_name_bytes().map(|t| t.into_owned()))
            .unwrap_or_default();
        let target = normalize_member_path(&raw_target)
            .map_err(|problem| {
                Error::member(
                    name,
                    format!("hardlink target '{}': {problem}", lossy(&raw_target)),
                )
            })?
            .ok_or_else(|| Error::member(name, "hardlink to the image root"))?;
        self.sink
            .add_hardlink(path, &target)
            .map_err(|e| Error::sink(path, e))?;
        self.report.hardlinks += 1;
        Ok(())
    }

    fn finish(self) -> TarReport {
        let mut report = self.report;
        report.skipped_xattrs = self.tally.skipped_xattr_count();
        report.clamped_mtimes = self.tally.clamped_mtime_count();
        report.warnings.extend(self.tally.warnings());
        if let Some(first) = self.first_replaced {
            report.warnings.push(format!(
                "{} member(s) replaced an earlier member of the same path, as GNU tar extracts \
                 them (first: '{first}')",
                report.replaced
            ));
        }
        if let Some(first) = self.first_implicit {
            report.warnings.push(format!(
                "{} parent director{} not listed in the archive, created with mode 0755, owner 0:0, mtime 0 (first: '{first}')",
                report.implicit_dirs,
                if report.implicit_dirs == 1 { "y was" } else { "ies were" }
            ));
        }
        report
    }
}

fn read_member_data<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    out: &mut Vec<u8>,
    name: &[u8],
) -> Result<()> {
    let expected = entry.size();
    let start = entry.raw_file_position();
    let mut checked = Checked::new(entry, expected, start);
    let read = checked.read_to_end(out);
    if let Some(failure) = checked.failure.take() {
        return Err(Error::member(name, failure));
    }
    read.map(|_| ())
        .map_err(|e| Error::member(name, e.to_string()))
}

/// The member's own pax records, owned (the entry is read again for its data).
fn local_pax_records<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let name = entry.path_bytes().into_owned();
    let Some(records) = entry
        .pax_extensions()
        .map_err(|e| Error::member(&name, format!("pax header unreadable: {e}")))?
    else {
        return Ok(Vec::new());
    };
    records
        .map(|r| {
            r.map(|r| (r.key_bytes().to_vec(), r.value_bytes().to_vec()))
                .map_err(|e| Error::member(&name, format!("pax header: {e}")))
        })
        .collect()
}

/// GNU sparse 0.1 and 1.0 members keep their real name in `GNU.sparse.name` (the header holds
/// a made-up `GNUSparseFile.<pid>/` one).
fn pax_sparse_name(local: &[(Vec<u8>, Vec<u8>)]) -> Option<&[u8]> {
    local
        .iter()
        .rev()
        .find(|(k, _)| k == b"GNU.sparse.name")
        .map(|(_, v)| v.as_slice())
}

fn device_numbers(header: &tar::Header) -> Result<(u32, u32), String> {
    let major = header
        .device_major()
        .map_err(|e| format!("bad device major field: {e}"))?;
    let minor = header
        .device_minor()
        .map_err(|e| format!("bad device minor field: {e}"))?;
    match (major, minor) {
        (Some(major), Some(minor)) => Ok((major, minor)),
        _ => Err("device member in a pre-POSIX header, which has no device numbers".into()),
    }
}

/// A tar numeric field: octal text, or GNU base-256 (first byte 0x80 positive, 0xff negative).
fn parse_numeric_field(field: &[u8]) -> Option<i128> {
    let first = *field.first()?;
    if first & 0x80 != 0 {
        let mut value: i128 = i128::from(first & 0x7f);
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(i128::from(b))?;
        }
        if first & 0x40 != 0 {
            // Negative: the field is a two's-complement number of field.len() bytes.
            value -= 1i128.checked_shl(8 * field.len() as u32 - 1)?;
        }
        return Some(value);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if text.is_empty() {
        return Some(0);
    }
    i128::from_str_radix(std::str::from_utf8(&text).ok()?, 8).ok()
}

/// A pax time (`1700000000.123456789`, possibly negative): whole seconds, rounded down.
fn parse_pax_time(value: &[u8]) -> Option<i128> {
    let text = std::str::from_utf8(value).ok()?;
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i128 = whole.parse().ok()?;
    let below_whole = secs < 0 || whole.starts_with('-');
    Some(if below_whole && fraction.bytes().any(|b| b != b'0') {
        secs - 1
    } else {
        secs
    })
}

fn parse_decimal(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// What the pax records of a member say, after global and local records are merged.
#[derive(Default)]
struct PaxAttrs {
    linkpath: Option<Vec<u8>>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<i128>,
    /// `SCHILY.xattr.*` (GNU tar, star, bsdtar) and `RHT.security.selinux` (Red Hat's tar).
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// `LIBARCHIVE.xattr.*` (bsdtar): URL-encoded names, base64 values. The SCHILY spelling
    /// of the same name wins when both are present.
    libarchive_xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// ACL records (`SCHILY.acl.*`): no place for them in SquashFS.
    unstorable: Vec<Vec<u8>>,
    sparse: SparseKeys,
}

impl PaxAttrs {
    /// Global records may set owners, times and xattrs for all members; a global path, link
    /// target, size or sparse map would make no sense and is ignored.
    fn apply_global(&mut self, key: &[u8], value: &[u8]) {
        if matches!(key, b"path" | b"linkpath" | b"size") || key.starts_with(b"GNU.sparse.") {
            return;
        }
        // A malformed global value is ignored like GNU tar does; the header value stands.
        let _ = self.apply(key, value);
    }

    fn apply(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let bad = || format!("bad pax record {}={}", lossy(key), lossy(value));
        match key {
            b"linkpath" => self.linkpath = Some(value.to_vec()),
            // The tar crate takes a size it cannot parse as absent and uses the header's
            // (GNU tar: "Malformed extended header"): refused here, never silently.
            b"size" => {
                parse_decimal(value).ok_or_else(bad)?;
            }
            b"uid" => self.uid = Some(parse_decimal(value).ok_or_else(bad)?),
            b"gid" => self.gid = Some(parse_decimal(value).ok_or_else(bad)?),
            b"mtime" => self.mtime = Some(parse_pax_time(value).ok_or_else(bad)?),
            b"RHT.security.selinux" => {
                self.xattrs
                    .insert(b"security.selinux".to_vec(), value.to_vec());
            }
            _ if key.starts_with(b"SCHILY.xattr.") => {
                self.xattrs
                    .insert(key[b"SCHILY.xattr.".len()..].to_vec(), value.to_vec());
            }
            _ if key.starts_with(b"LIBARCHIVE.xattr.") => {
                let name = url_decode(&key[b"LIBARCHIVE.xattr.".len()..]).ok_or_else(bad)?;
                let value = base64_decode(value).ok_or_else(bad)?;
                self.libarchive_xattrs.insert(name, value);
            }
            _ if key.starts_with(b"SCHILY.acl.") => self.unstorable.push(key.to_vec()),
            _ if key.starts_with(b"GNU.sparse.") => {
                self.sparse.apply(key, value).ok_or_else(bad)?
            }
            // path is read before (it names the member in errors); names, atime, ctime,
            // charset, comments carry nothing SquashFS keeps.
            _ => {}
        }
        Ok(())
    }
}

/// `%XX` escapes, as libarchive writes xattr names in pax keys.
fn url_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            let hex = std::str::from_utf8(input.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Standard base64; libarchive omits the `=` padding, others may not.
fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT
        .decode(input)
        .ok()
}

/// The GNU sparse formats stored in pax records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SparseFormat {
    /// 0.0: repeated `GNU.sparse.offset` / `GNU.sparse.numbytes` records.
    V00,
    /// 0.1: one `GNU.sparse.map` record `offset,size,offset,size,...`.
    V01,
    /// 1.0: the map is text at the start of the member's data, padded to 512 bytes.
    V10,
}

#[derive(Default)]
struct SparseKeys {
    major: Option<u64>,
    minor: Option<u64>,
    /// `GNU.sparse.size` (0.x) or `GNU.sparse.realsize` (1.0): the file's full size.
    real_size: Option<u64>,
    offsets: Vec<u64>,
    numbytes: Vec<u64>,
    map: Option<Vec<u8>>,
}

impl SparseKeys {
    fn apply(&mut self, key: &[u8], value: &[u8]) -> Option<()> {
        let number = || parse_decimal(value);
        match key {
            b"GNU.sparse.major" => self.major = Some(number()?),
            b"GNU.sparse.minor" => self.minor = Some(number()?),
            b"GNU.sparse.size" | b"GNU.sparse.realsize" => self.real_size = Some(number()?),
            b"GNU.sparse.offset" => self.offsets.push(number()?),
            b"GNU.sparse.numbytes" => self.numbytes.push(number()?),
            b"GNU.sparse.map" => self.map = Some(value.to_vec()),
            // name was read already; numblocks is implied by the map.
            _ => {}
        }
        Some(())
    }

    fn format(&self) -> Result<Option<SparseFormat>, String> {
        match (self.major, self.minor) {
            (Some(1), Some(0)) => Ok(Some(SparseFormat::V10)),
            (Some(major), minor) => Err(format!(
                "GNU sparse format {major}.{} is not supported (0.0, 0.1 and 1.0 are)",
                minor.map_or("?".to_string(), |m| m.to_string())
            )),
            (None, _) if self.map.is_some() => Ok(Some(SparseFormat::V01)),
            (None, _) if !self.offsets.is_empty() || !self.numbytes.is_empty() => {
                Ok(Some(SparseFormat::V00))
            }
            (None, _) if self.real_size.is_some() => {
                Err("GNU sparse member without a sparse map".into())
            }
            (None, _) => Ok(None),
        }
    }

    /// The member's data segments `(offset, length)` and full size. For 1.0 the map is read
    /// from the front of `data`.
    fn map(
        &self,
        format: SparseFormat,
        data: &mut dyn Read,
    ) -> Result<(Vec<(u64, u64)>, u64), String> {
        let real_size = self
            .real_size
            .ok_or("GNU sparse member without its real size")?;
        let segments = match format {
            SparseFormat::V00 => {
                if self.offsets.len() != self.numbytes.len() {
                    return Err("GNU sparse 0.0 map has unpaired offset/numbytes records".into());
                }
                self.offsets
                    .iter()
                    .copied()
                    .zip(self.numbytes.iter().copied())
                    .collect()
            }
            SparseFormat::V01 => {
                let map = self.map.as_deref().unwrap_or_default();
                let numbers = map
                    .split(|&b| b == b',')
                    .filter(|n| !n.is_empty())
                    .map(|n| {
                        parse_decimal(n)
                            .ok_or_else(|| format!("bad GNU.sparse.map value '{}'", lossy(map)))
                    })
                    .collect::<Result<Vec<u64>, String>>()?;
                pairs(&numbers).ok_or("GNU.sparse.map has an odd number of values")?
            }
            SparseFormat::V10 => read_sparse_map_v1(data)?,
        };
        Ok((segments, real_size))
    }
}

fn pairs(numbers: &[u64]) -> Option<Vec<(u64, u64)>> {
    if !numbers.len().is_multiple_of(2) {
        return None;
    }
    Some(numbers.chunks(2).map(|p| (p[0], p[1])).collect())
}

/// The 1.0 map: decimal lines (count, then offset and length per segment), padded with NULs to
/// a 512-byte boundary.
fn read_sparse_map_v1(data: &mut dyn Read) -> Result<Vec<(u64, u64)>, String> {
    let mut text = Vec::new();
    let mut block = [0u8; 512];
    let mut numbers: Vec<u64> = Vec::new();
    let mut wanted: Option<u64> = None;
    let mut consumed = 0;
    loop {
        if wanted.is_some_and(|count| numbers.len() as u64 == 1 + 2 * count) {
            break;
        }
        if let Some(newline) = text[consumed..].iter().position(|&b| b == b'\n') {
            let line = &text[consumed..consumed + newline];
            let n = parse_decimal(line)
                .ok_or_else(|| format!("bad GNU sparse 1.0 map line '{}'", lossy(line)))?;
            numbers.push(n);
            consumed += newline + 1;
            wanted.get_or_insert(n);
            continue;
        }
        data.read_exact(&mut block)
            .map_err(|e| format!("GNU sparse 1.0 map unreadable: {e}"))?;
        text.extend_from_slice(&block);
        if text.len() > 64 * 1024 * 1024 {
            return Err("GNU sparse 1.0 map larger than 64 MiB".into());
        }
    }
    pairs(&numbers[1..]).ok_or_else(|| "GNU sparse 1.0 map is incomplete".into())
}

/// The stored data of a sparse member: exactly the bytes its map lists. The first failure is
/// kept, to name the member with the real cause even when the sink rewords it.
struct MapData<'d> {
    data: &'d mut dyn Read,
    left: u64,
    failure: Option<String>,
}

impl<'d> MapData<'d> {
    fn new(data: &'d mut dyn Read, map: &[(u64, u64)]) -> Self {
        MapData {
            data,
            left: map.iter().map(|&(_, len)| len).sum(),
            failure: None,
        }
    }
}

impl Read for MapData<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let result = match self.data.read(&mut buf[..want]) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "sparse member data ends before its map does",
            )),
            other => other,
        };
        match result {
            Ok(n) => {
                self.left -= n as u64;
                Ok(n)
            }
            Err(e) => {
                self.failure.get_or_insert_with(|| e.to_string());
                Err(e)
            }
        }
    }
}

/// Whether `data` has bytes left (a read error counts as none: the reader keeps it).
fn has_more(data: &mut dyn Read) -> bool {
    let mut probe = [0u8; 1];
    matches!(data.read(&mut probe), Ok(n) if n > 0)
}

/// A member's data with its length enforced: reading past the archive's end is an error, not
/// a short file. The first failure is kept, so that the member is named with the real cause
/// even when the sink wraps the error in its own words.
struct Checked<'e, R: Read> {
    inner: &'e mut R,
    expected: u64,
    /// Bytes read from the archive.
    read: u64,
    start: u64,
    failure: Option<String>,
}

impl<'e, R: Read> Checked<'e, R> {
    fn new(inner: &'e mut R, expected: u64, start: u64) -> Self {
        Checked {
            inner,
            expected,
            read: 0,
            start,
            failure: None,
        }
    }

    fn failure_or(&mut self, name: &[u8], what: String) -> Error {
        Error::member(name, self.failure.take().unwrap_or(what))
    }
}

impl<R: Read> Read for Checked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() && self.read < self.expected => {
                let what = format!(
                    "the archive ends inside the member's data (byte {} of the tar stream, {} of {} bytes read)",
                    self.start + self.read,
                    self.read,
                    self.expected
                );
                self.failure.get_or_insert(what.clone());
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, what))
            }
            Ok(n) => {
                self.read += n as u64;
                Ok(n)
            }
            Err(e) => {
                let what = format!(
                    "data unreadable at byte {} of the tar stream: {e}",
                    self.start + self.read
                );
                self.failure.get_or_insert(what.clone());
                Err(io::Error::new(e.kind(), what))
            }
        }
    }
}

#[cfg(test)]
#[path = "tar_tests.rs"]
mod tests;
