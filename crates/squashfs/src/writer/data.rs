//! File data: cut into blocks, compressed on a thread pool, written in order by one writer
//! thread, packed into fragments, deduplicated.
//!
//! Every decision that shapes the output (block boundaries, which tail goes into which fragment,
//! which file is a duplicate) is made in a fixed order on the calling thread or the writer
//! thread; the pool only compresses. So the image is byte-identical whatever the thread count.
//!
//! Dedup compares content, never a hash alone: a hash only nominates a candidate. Block runs are
//! compared as compressed bytes on disk (compression is deterministic, so equal input gives equal
//! output and equal output decompresses to equal input); fragment tails are compared as
//! uncompressed bytes.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded};
use xxhash_rust::xxh3::Xxh3;

use super::super::compress::Compressor;
use super::super::format::DATA_UNCOMPRESSED;
use super::super::{Error, Result};

/// Where a fragment tail lives: fragment block index and byte offset inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FragRef {
    pub index: u32,
    pub offset: u32,
}

/// What the caller thread knows about one file's data once it has been read.
#[derive(Clone, Debug, Default)]
pub(crate) struct FileData {
    pub size: u64,
    /// Index into the writer thread's block-run table, when the file has full blocks.
    pub run: Option<u32>,
    pub fragment: Option<FragRef>,
    /// Bytes of the file held in sparse (all-zero, not stored) blocks.
    pub sparse: u64,
}

/// A file's blocks as finally laid out: where the first stored block starts and the size word of
/// each block (bit 24 = stored uncompressed, 0 = sparse).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct BlockRun {
    pub start: u64,
    pub sizes: Vec<u32>,
}

impl BlockRun {
    fn stored_len(&self) -> u64 {
        self.sizes
            .iter()
            .map(|s| u64::from(s & !DATA_UNCOMPRESSED))
            .sum()
    }
}

/// One fragment table entry: where the block starts and its size word.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FragEntry {
    pub start: u64,
    pub size: u32,
}

/// What the writer thread leaves behind.
pub(crate) struct DataLayout {
    pub runs: Vec<BlockRun>,
    pub fragments: Vec<FragEntry>,
    /// First byte after the data area.
    pub end: u64,
    pub duplicate_runs: u64,
}

struct Block {
    bytes: Vec<u8>,
    compressed: bool,
}

type Pending = Receiver<io::Result<Block>>;

enum Op {
    RunStart(u32),
    Block(Pending),
    /// This many sparse (all-zero, not stored) blocks.
    Sparse(u64),
    /// Bytes copied verbatim (a block taken whole from another image) with their size word.
    Raw(Vec<u8>, u32),
    RunEnd {
        run: u32,
        candidate: Option<u32>,
    },
    /// A fragment block with its id (ids are handed out before blocks are written, so blocks
    /// may reach the file out of id order; the table is laid out by id).
    Fragment {
        id: u32,
        block: FragBlock,
    },
}

enum FragBlock {
    Pending(Pending),
    /// Stored bytes copied verbatim from another image, with their size word.
    Raw(Vec<u8>, u32),
}

/// The last piece of a file whose blocks are copied from another image.
pub enum RawTail {
    /// Uncompressed bytes, packed into a new fragment.
    Bytes(Vec<u8>),
    /// Already in a fragment block copied with [`Writer::add_raw_fragment`](super::Writer::add_raw_fragment).
    Reused { fragment: u32, offset: u32 },
}

/// Fragment blocks the writer thread has put on disk, shared so the caller thread can read a
/// tail back when it must compare against it.
struct Written {
    fragments: Mutex<Vec<Option<FragEntry>>>,
    cond: Condvar,
}

pub(crate) struct DataWriter {
    compressor: Compressor,
    block_size: usize,
    fragments_enabled: bool,
    tail_ends: bool,
    pool: Arc<rayon::ThreadPool>,
    ops: Option<Sender<Op>>,
    thread: Option<JoinHandle<io::Result<DataLayout>>>,
    written: Arc<Written>,
    reader: File,
    path: PathBuf,
    next_run: u32,
    run_index: HashMap<(u128, u64), u32>,
    tail_index: HashMap<(u128, u32), FragRef>,
    frag_buf: Vec<u8>,
    /// Id of the open fragment block, given when its first tail goes in.
    open_frag: Option<u32>,
    next_frag: u32,
    frag_cache: VecDeque<(u32, Arc<Vec<u8>>)>,
    pub bytes_in: Arc<AtomicU64>,
    /// End of the data the writer thread will never rewrite (see `OrderedOut::settle`).
    pub settled: Arc<AtomicU64>,
    pub duplicate_tails: u64,
    /// Blocks of holes queued so far (see [`MAX_HOLE_BLOCKS`]).
    hole_blocks: u64,
}

/// The compression threads to start for `requested` (0: one per core): at most 4 per core and
/// [`super::MAX_THREADS`], since more only contend (the output is the same for any count).
pub(crate) fn compression_threads(requested: usize, cores: usize) -> usize {
    let wanted = if requested == 0 { cores } else { requested };
    wanted.clamp(1, (4 * cores).min(super::MAX_THREADS))
}

/// One file's data on its way in: what is known so far, its block run, the run's dedup hash.
#[derive(Default)]
struct FileBuild {
    data: FileData,
    hasher: Xxh3,
    run: Option<u32>,
    run_bytes: u64,
}

impl FileBuild {
    /// A zero block enters the dedup hash as its length only, so that holes never read are
    /// hashed as cheaply as, and the same as, zero blocks that were read. (Equal hashes only
    /// nominate a candidate: runs are compared byte for byte before they are shared.)
    fn hash_zero_block(&mut self, len: u64) {
        self.hasher.update(&[0]);
        self.hasher.update(&len.to_le_bytes());
    }
}

fn read_error(entry: &[u8], e: io::Error) -> Error {
    Error::io("read", String::from_utf8_lossy(entry).into_owned(), e)
}

/// Fill `buf` from `data`; a sparse file's data that ends early is an error.
fn read_exactly(data: &mut dyn Read, buf: &mut [u8]) -> io::Result<()> {
    if super::super::entry::read_full(data, buf)? < buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "sparse file data ends before its map does",
        ));
    }
    Ok(())
}

pub(crate) struct DataConfig {
    pub compressor: Compressor,
    pub block_size: u32,
    pub fragments: bool,
    pub tail_ends: bool,
    pub threads: usize,
    /// Where the data area starts in the file (after superblock and compressor options).
    pub start: u64,
}

const FRAG_CACHE_BLOCKS: usize = 32;

/// Blocks of holes one image may hold in all: 2^25, which is 4 TiB of holes at 128 KiB blocks
/// and 128 GiB at 4 KiB. A hole costs no input, but each block of it takes a size word in
/// memory and in the inode table; without a bound, a sparse tar member of a few hundred bytes
/// declaring an exabyte took the writer's memory and time without end.
pub(crate) const MAX_HOLE_BLOCKS: u64 = 1 << 25;

impl DataWriter {
    pub fn new(file: File, path: PathBuf, cfg: DataConfig) -> Result<Self> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = compression_threads(cfg.threads, cores);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("sqfs-compress-{i}"))
            .build()
            .map_err(|e| Error::io("start compression threads for", &path, io::Error::other(e)))?;
        let reader = file
            .try_clone()
            .map_err(|e| Error::io("reopen", &path, e))?;
        let written = Arc::new(Written {
            fragments: Mutex::new(Vec::new()),
            cond: Condvar::new(),
        });
        // Enough ops in flight to keep every thread busy while the writer waits on the oldest.
        let (tx, rx) = bounded(threads * 4 + 16);
        let thread_written = written.clone();
        let start = cfg.start;
        let settled = Arc::new(AtomicU64::new(start));
        let thread_settled = settled.clone();
        let thread = std::thread::Builder::new()
            .name("sqfs-writer".into())
            .spawn(move || write_in_order(file, start, rx, &thread_written, &thread_settled))
            .map_err(|e| Error::io("start writer thread for", &path, e))?;
        Ok(DataWriter {
            compressor: cfg.compressor,
            block_size: cfg.block_size as usize,
            fragments_enabled: cfg.fragments,
            tail_ends: cfg.tail_ends,
            pool: Arc::new(pool),
            ops: Some(tx),
            thread: Some(thread),
            written,
            reader,
            path,
            next_run: 0,
            run_index: HashMap::new(),
            tail_index: HashMap::new(),
            frag_buf: Vec::new(),
            open_frag: None,
            next_frag: 0,
            frag_cache: VecDeque::new(),
            bytes_in: Arc::new(AtomicU64::new(0)),
            settled,
            duplicate_tails: 0,
            hole_blocks: 0,
        })
    }

    fn send(&mut self, op: Op) -> Result<()> {
        let sent = match &self.ops {
            Some(tx) => tx.send(op).is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The writer thread stopped early: its error is the one worth reporting.
        Err(self.join_error())
    }

    fn join_error(&mut self) -> Error {
        self.ops = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Err(e))) => Error::io("write", &self.path, e),
            Some(Err(_)) => Error::io(
                "write",
                &self.path,
                io::Error::other("writer thread panicked"),
            ),
            _ => Error::io(
                "write",
                &self.path,
                io::Error::other("writer thread stopped"),
            ),
        }
    }

    fn compress_async(&self, bytes: Vec<u8>) -> Pending {
        let (tx, rx) = bounded(1);
        let compressor = self.compressor;
        self.pool.spawn(move || {
            let mut out = Vec::new();
            let result = compressor.compress(&bytes, &mut out).map(|smaller| {
                if smaller {
                    Block {
                        bytes: out,
                        compressed: true,
                    }
                } else {
                    Block {
                        bytes,
                        compressed: false,
                    }
                }
            });
            let _ = tx.send(result);
        });
        rx
    }

    /// Read one file to its end and queue its data. `entry` names it in errors.
    pub fn add_file(&mut self, entry: &[u8], data: &mut dyn Read) -> Result<FileData> {
        let mut file = FileBuild::default();
        loop {
            let mut buf = vec![0u8; self.block_size];
            let n =
                super::super::entry::read_full(data, &mut buf).map_err(|e| read_error(entry, e))?;
            if n == 0 {
                return self.finish_file(file, None);
            }
            buf.truncate(n);
            if let Some(tail) = self.push_block(&mut file, buf)? {
                return self.finish_file(file, Some(tail));
            }
            if n < self.block_size {
                return self.finish_file(file, None);
            }
        }
    }

    /// Queue a sparse file of `size` bytes given as its data `segments` (checked by the
    /// caller: in order, not overlapping, within `size`) and their bytes back to back in
    /// `data`. Whole blocks of holes are queued as sparse blocks without being read, hashed
    /// or compressed; blocks with data are built and queued as `add_file` queues them, so
    /// the image is the same as for the expanded file.
    pub fn add_sparse_file(
        &mut self,
        entry: &[u8],
        size: u64,
        segments: &[(u64, u64)],
        data: &mut dyn Read,
    ) -> Result<FileData> {
        let block = self.block_size as u64;
        let mut file = FileBuild::default();
        let mut next = 0usize; // the first segment not wholly before `pos`
        let mut pos = 0u64;
        while pos < size {
            while segments.get(next).is_some_and(|&(o, l)| o + l <= pos) {
                next += 1;
            }
            // Whole blocks before the next data (never the file's short last piece, which
            // takes the tail path) are holes.
            let data_at = segments.get(next).map_or(size, |&(o, _)| o.max(pos));
            let holes = ((data_at - pos) / block).min((size - pos) / block);
            if holes > 0 {
                self.count_holes(entry, size, holes)?;
                self.push_holes(&mut file, holes)?;
                pos += holes * block;
                continue;
            }
            let end = (pos + block).min(size);
            let mut buf = vec![0u8; (end - pos) as usize];
            for &(offset, len) in segments[next..].iter().take_while(|&&(o, _)| o < end) {
                let (from, to) = (offset.max(pos), (offset + len).min(end));
                if to > from {
                    let range = (from - pos) as usize..(to - pos) as usize;
                    read_exactly(data, &mut buf[range]).map_err(|e| read_error(entry, e))?;
                }
            }
            let short = end - pos < block;
            pos = end;
            if let Some(tail) = self.push_block(&mut file, buf)? {
                return self.finish_file(file, Some(tail));
            }
            if short {
                break;
            }
        }
        self.finish_file(file, None)
    }

    /// Queue one block of a file (shorter than a block only as the file's last piece). A
    /// short last piece goes into a fragment when the file is small (always) or when tail-end
    /// packing is on, as mksquashfs does; then it is handed back, to be queued after the run
    /// ends (so that a run's blocks stay contiguous).
    fn push_block(&mut self, file: &mut FileBuild, buf: Vec<u8>) -> Result<Option<Vec<u8>>> {
        let n = buf.len() as u64;
        file.data.size += n;
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
        let is_tail = buf.len() < self.block_size;
        if is_tail && self.fragments_enabled && (file.run.is_none() || self.tail_ends) {
            return Ok(Some(buf));
        }
        self.start_run(file)?;
        file.run_bytes += n;
        if buf.iter().all(|&b| b == 0) {
            file.hash_zero_block(n);
            file.data.sparse += n;
            self.send(Op::Sparse(1))?;
        } else {
            file.hasher.update(&[1]);
            file.hasher.update(&buf);
            let pending = self.compress_async(buf);
            self.send(Op::Block(pending))?;
        }
        Ok(None)
    }

    /// Count `holes` more blocks of holes against [`MAX_HOLE_BLOCKS`], or refuse the file.
    fn count_holes(&mut self, entry: &[u8], size: u64, holes: u64) -> Result<()> {
        let total = self.hole_blocks.saturating_add(holes);
        if total > MAX_HOLE_BLOCKS {
            let block = self.block_size as u64;
            return Err(Error::bad_entry(
                entry,
                format!(
                    "sparse file of {size} bytes: its holes would take the image past the \
                     {MAX_HOLE_BLOCKS} blocks of holes it may hold ({} GiB at {block}-byte \
                     blocks; a larger block size holds more)",
                    (MAX_HOLE_BLOCKS * block) >> 30
                ),
            ));
        }
        self.hole_blocks = total;
        Ok(())
    }

    /// Queue `count` whole blocks of zeros (holes), as `push_block` would queue them.
    fn push_holes(&mut self, file: &mut FileBuild, count: u64) -> Result<()> {
        let block = self.block_size as u64;
        let bytes = count * block;
        file.data.size += bytes;
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        self.start_run(file)?;
        file.run_bytes += bytes;
        for _ in 0..count {
            file.hash_zero_block(block);
        }
        file.data.sparse += bytes;
        self.send(Op::Sparse(count))
    }

    fn start_run(&mut self, file: &mut FileBuild) -> Result<()> {
        if file.run.is_none() {
            let id = self.next_run;
            self.next_run += 1;
            self.send(Op::RunStart(id))?;
            file.run = Some(id);
        }
        Ok(())
    }

    /// End the file's block run (naming an earlier equal run as a dedup candidate) and put its
    /// tail into a fragment.
    fn finish_file(&mut self, file: FileBuild, tail: Option<Vec<u8>>) -> Result<FileData> {
        let FileBuild {
            mut data,
            hasher,
            run,
            run_bytes,
        } = file;
        if let Some(id) = run {
            let key = (hasher.digest128(), run_bytes);
            let candidate = match self.run_index.get(&key) {
                Some(&first) => Some(first),
                None => {
                    self.run_index.insert(key, id);
                    None
                }
            };
            self.send(Op::RunEnd { run: id, candidate })?;
            data.run = Some(id);
        }
        if let Some(tail) = tail {
            data.fragment = Some(self.add_tail(tail)?);
        }
        Ok(data)
    }

    /// Queue a file whose blocks are copied verbatim from another image of the same compressor
    /// and block size. `blocks` are (stored bytes, size word) pairs; `tail` is the uncompressed
    /// last piece that goes into a fragment, if any.
    pub fn add_file_raw(
        &mut self,
        size: u64,
        blocks: Vec<(Vec<u8>, u32)>,
        tail: Option<RawTail>,
    ) -> Result<FileData> {
        let mut file = FileData {
            size,
            ..FileData::default()
        };
        self.bytes_in.fetch_add(size, Ordering::Relaxed);
        if !blocks.is_empty() {
            let id = self.next_run;
            self.next_run += 1;
            self.send(Op::RunStart(id))?;
            let mut hasher = Xxh3::new();
            let mut stored = 0u64;
            for (bytes, word) in blocks {
                hasher.update(&word.to_le_bytes());
                hasher.update(&bytes);
                stored += bytes.len() as u64;
                if word == 0 {
                    file.sparse += self.block_size as u64;
                    self.send(Op::Sparse(1))?;
                } else {
                    self.send(Op::Raw(bytes, word))?;
                }
            }
            // Raw runs are keyed by their stored bytes; they dedup among themselves only.
            let key = (hasher.digest128() ^ u128::MAX, stored);
            let candidate = self.run_index.get(&key).copied();
            if candidate.is_none() {
                self.run_index.insert(key, id);
            }
            self.send(Op::RunEnd { run: id, candidate })?;
            file.run = Some(id);
        }
        file.fragment = match tail {
            Some(RawTail::Bytes(tail)) => Some(self.add_tail(tail)?),
            Some(RawTail::Reused { fragment, offset }) => Some(FragRef {
                index: fragment,
                offset,
            }),
            None => None,
        };
        Ok(file)
    }

    /// Copy a whole fragment block (stored bytes and size word) from another image; returns
    /// its index in this one, for [`RawTail::Reused`].
    pub fn add_raw_fragment(&mut self, bytes: Vec<u8>, word: u32) -> Result<u32> {
        let id = self.next_frag;
        self.next_frag += 1;
        self.send(Op::Fragment {
            id,
            block: FragBlock::Raw(bytes, word),
        })?;
        Ok(id)
    }

    /// Put a tail into the open fragment block, unless an identical tail is already stored.
    fn add_tail(&mut self, tail: Vec<u8>) -> Result<FragRef> {
        let key = (xxhash_rust::xxh3::xxh3_128(&tail), tail.len() as u32);
        if let Some(&candidate) = self.tail_index.get(&key)
            && self.tail_bytes(candidate, tail.len())? == tail.as_slice()
        {
            self.duplicate_tails += 1;
            return Ok(candidate);
        }
        if self.frag_buf.len() + tail.len() > self.block_size {
            self.flush_fragment()?;
        }
        let index = match self.open_frag {
            Some(id) => id,
            None => {
                let id = self.next_frag;
                self.next_frag += 1;
                self.open_frag = Some(id);
                id
            }
        };
        let at = FragRef {
            index,
            offset: self.frag_buf.len() as u32,
        };
        self.frag_buf.extend_from_slice(&tail);
        self.tail_index.entry(key).or_insert(at);
        Ok(at)
    }

    fn flush_fragment(&mut self) -> Result<()> {
        if self.frag_buf.is_empty() {
            return Ok(());
        }
        let Some(id) = self.open_frag.take() else {
            return Ok(());
        };
        let block = std::mem::take(&mut self.frag_buf);
        let shared = Arc::new(block.clone());
        self.remember_fragment(id, shared);
        let pending = self.compress_async(block);
        self.send(Op::Fragment {
            id,
            block: FragBlock::Pending(pending),
        })?;
        Ok(())
    }

    fn remember_fragment(&mut self, index: u32, bytes: Arc<Vec<u8>>) {
        if self.frag_cache.len() == FRAG_CACHE_BLOCKS {
            self.frag_cache.pop_front();
        }
        self.frag_cache.push_back((index, bytes));
    }

    /// The stored bytes of an earlier tail: from the open block, the cache, or read back from
    /// the image once the writer thread has put its block on disk.
    fn tail_bytes(&mut self, at: FragRef, len: usize) -> Result<Vec<u8>> {
        let range = at.offset as usize..at.offset as usize + len;
        if Some(at.index) == self.open_frag {
            return Ok(self.frag_buf.get(range).unwrap_or_default().to_vec());
        }
        if let Some((_, block)) = self.frag_cache.iter().find(|(i, _)| *i == at.index) {
            return Ok(block.get(range).unwrap_or_default().to_vec());
        }
        let entry = self.wait_for_fragment(at.index)?;
        let block = self.read_back(entry)?;
        let tail = block.get(range).unwrap_or_default().to_vec();
        self.remember_fragment(at.index, Arc::new(block));
        Ok(tail)
    }

    fn wait_for_fragment(&mut self, index: u32) -> Result<FragEntry> {
        let mut done = self
            .written
            .fragments
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(Some(e)) = done.get(index as usize) {
                return Ok(*e);
            }
            if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                drop(done);
                return Err(self.join_error());
            }
            done = self
                .written
                .cond
                .wait_timeout(done, std::time::Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn read_back(&self, entry: FragEntry) -> Result<Vec<u8>> {
        let len = (entry.size & !DATA_UNCOMPRESSED) as usize;
        let mut stored = vec![0u8; len];
        self.reader
            .read_exact_at(&mut stored, entry.start)
            .map_err(|e| Error::io("read back fragment from", &self.path, e))?;
        if entry.size & DATA_UNCOMPRESSED != 0 {
            return Ok(stored);
        }
        let mut out = Vec::new();
        self.compressor
            .decompress(&stored, &mut out, self.block_size)
            .map_err(|e| Error::io("decompress fragment of", &self.path, e))?;
        Ok(out)
    }

    /// Flush the last fragment, wait for every block to be written, and return the layout.
    pub fn finish(mut self) -> Result<DataLayout> {
        self.flush_fragment()?;
        self.ops = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Ok(layout))) => Ok(layout),
            Some(Ok(Err(e))) => Err(Error::io("write", &self.path, e)),
            _ => Err(Error::io(
                "write",
                &self.path,
                io::Error::other("writer thread panicked"),
            )),
        }
    }
}

/// The writer thread: takes ops in order, waits for each block's compression, writes it.
fn write_in_order(
    file: File,
    start: u64,
    ops: Receiver<Op>,
    written: &Written,
    settled: &AtomicU64,
) -> io::Result<DataLayout> {
    let mut out = OrderedOut {
        file,
        pos: start,
        runs: Vec::new(),
        current: None,
        duplicate_runs: 0,
    };
    for op in ops {
        match op {
            Op::RunStart(id) => {
                debug_assert_eq!(id as usize, out.runs.len());
                out.runs.push(BlockRun {
                    start: out.pos,
                    sizes: Vec::new(),
                });
                out.current = Some(id as usize);
            }
            Op::Block(pending) => {
                let block = pending
                    .recv()
                    .map_err(|_| io::Error::other("compression thread vanished"))??;
                let word = out.put(&block)?;
                out.push_size(word);
            }
            Op::Raw(bytes, word) => {
                out.write(&bytes)?;
                out.push_size(word);
            }
            Op::Sparse(count) => {
                for _ in 0..count {
                    out.push_size(0);
                }
            }
            Op::RunEnd { run, candidate } => {
                out.current = None;
                if let Some(c) = candidate {
                    out.dedup(run as usize, c as usize)?;
                }
            }
            Op::Fragment { id, block } => {
                let start = out.pos;
                let size = match block {
                    FragBlock::Pending(pending) => {
                        let block = pending
                            .recv()
                            .map_err(|_| io::Error::other("compression thread vanished"))??;
                        out.put(&block)?
                    }
                    FragBlock::Raw(bytes, word) => {
                        out.write(&bytes)?;
                        word
                    }
                };
                let mut done = written.fragments.lock().unwrap_or_else(|p| p.into_inner());
                if done.len() <= id as usize {
                    done.resize(id as usize + 1, None);
                }
                done[id as usize] = Some(FragEntry { start, size });
                written.cond.notify_all();
            }
        }
        out.settle(settled);
    }
    let by_id = std::mem::take(&mut *written.fragments.lock().unwrap_or_else(|p| p.into_inner()));
    let fragments = by_id
        .into_iter()
        .enumerate()
        .map(|(id, e)| {
            e.ok_or_else(|| io::Error::other(format!("internal: fragment {id} was never written")))
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok(DataLayout {
        runs: out.runs,
        fragments,
        end: out.pos,
        duplicate_runs: out.duplicate_runs,
    })
}

struct OrderedOut {
    file: File,
    pos: u64,
    runs: Vec<BlockRun>,
    current: Option<usize>,
    duplicate_runs: u64,
}

impl OrderedOut {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, self.pos)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Write a block and return its size word.
    fn put(&mut self, block: &Block) -> io::Result<u32> {
        self.write(&block.bytes)?;
        let len = block.bytes.len() as u32;
        Ok(if block.compressed {
            len
        } else {
            len | DATA_UNCOMPRESSED
        })
    }

    /// Publish how far the file is final. Only the run being written can still change (a
    /// duplicate run is cut off again in `dedup`), so everything before its start is final, and
    /// everything written when no run is open.
    fn settle(&self, settled: &AtomicU64) {
        let end = match self.current {
            Some(run) => self.runs[run].start,
            None => self.pos,
        };
        settled.store(end, Ordering::Release);
    }

    fn push_size(&mut self, word: u32) {
        if let Some(i) = self.current {
            self.runs[i].sizes.push(word);
        }
    }

    /// If run `id` (just written, at the end of the file) equals the earlier run `candidate`
    /// byte for byte, drop it from the file and point it at the candidate.
    fn dedup(&mut self, id: usize, candidate: usize) -> io::Result<()> {
        let (new, old) = (&self.runs[id], &self.runs[candidate]);
        if new.sizes != old.sizes || !self.same_bytes(new.start, old.start, new.stored_len())? {
            return Ok(());
        }
        let start = new.start;
        self.runs[id] = self.runs[candidate].clone();
        self.file.set_len(start)?;
        self.pos = start;
        self.duplicate_runs += 1;
        Ok(())
    }

    fn same_bytes(&self, a: u64, b: u64, len: u64) -> io::Result<bool> {
        const CHUNK: u64 = 1 << 20;
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let mut done = 0;
        while done < len {
            let n = CHUNK.min(len - done) as usize;
            x.resize(n, 0);
            y.resize(n, 0);
            self.file.read_exact_at(&mut x, a + done)?;
            self.file.read_exact_at(&mut y, b + done)?;
            if x != y {
                return Ok(false);
            }
            done += n as u64;
        }
        Ok(true)
    }
}
