//! Uploading a file while another thread is still writing it (the rootfs while it is packed).
//!
//! The writer publishes a "settled" offset: the bytes before it (past a small header at the
//! front, written last) never change again. Parts 2, 3, … of a multipart upload are sent by
//! worker threads as soon as they lie wholly below that offset; when the writer has finished,
//! the rest goes, and part 1 (which holds the header) goes last. S3 accepts parts in any order.
//!
//! The object's md5 (`md5sum` metadata, as IMS stores it) is only known once the whole file is,
//! but S3 takes user metadata when the upload is created. So the streamed object is created
//! without it, and once complete it is copied onto itself with the full metadata (a server-side
//! copy: no bytes cross the network again). The md5 is computed from the page cache while part 1
//! and the last parts are in flight. As with [`super::upload_file`], the result is checked with
//! a HEAD (size and md5sum); any failure aborts the upload (or deletes the object) so no
//! half-made object stays behind.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::client::{Client, ListedPart, PartChecksums};
use super::multipart::{
    self, FilePart, Found, MD5SUM_META, PartTarget, Resume, UploadState, UploadStats,
    UploadedObject, check_uploaded, find_resumable, forget_state, one_part, write_state,
};
use super::{Error, Result};

/// How often an idle worker looks at the writer's progress again.
const POLL: Duration = Duration::from_millis(20);
/// S3's limit on parts per upload.
const MAX_PARTS: usize = 10_000;
/// The largest object `CopyObject` may copy (S3's limit); larger ones are copied in parts.
const MAX_SINGLE_COPY: u64 = 5 << 30;
/// Part size of a multipart copy (S3 allows 5 MiB to 5 GiB).
const COPY_PART: u64 = 1 << 30;

/// The writer's side of a streamed upload: how far the file is final. Anything that counts
/// final bytes as it writes can drive an upload (see `squashfs::writer::Writer::settled`).
pub type Settled = Arc<AtomicU64>;

/// How to stream one file.
#[derive(Clone, Debug, Default)]
pub struct StreamOptions {
    /// User metadata (names without `x-amz-meta-`); `md5sum` is added once it is known.
    pub metadata: Vec<(String, String)>,
    /// Whether an interrupted upload of the same key is looked for and its good parts kept.
    pub resume: Resume,
    /// The front of the file the writer rewrites at the end; it must fit in part 1.
    pub header: u64,
}

/// A multipart upload fed while the file is being written. Dropping it without
/// [`StreamUpload::finish`] aborts the upload.
pub struct StreamUpload {
    client: Client,
    key: String,
    path: PathBuf,
    file: Arc<File>,
    upload_id: String,
    part_size: u64,
    metadata: Vec<(String, String)>,
    state_file: Option<PathBuf>,
    /// Held until the upload is done (see `multipart::lock_state`).
    _state_lock: Option<nix::fcntl::Flock<File>>,
    resumed: bool,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    done: bool,
}

/// What the workers share with the owner.
struct Shared {
    settled: Settled,
    /// The file's size once the writer has finished; `u64::MAX` before.
    final_size: AtomicU64,
    /// The next part index (0-based) a worker may take; index 0 is kept for `finish`.
    next: AtomicUsize,
    stop: AtomicBool,
    etags: Mutex<Vec<Option<String>>>,
    first_error: Mutex<Option<Error>>,
    listed: Vec<ListedPart>,
    progress: Arc<AtomicU64>,
    sent_early: AtomicUsize,
    reused: AtomicUsize,
    bytes_sent: AtomicU64,
}

const UNKNOWN: u64 = u64::MAX;

impl StreamUpload {
    /// Start uploading `path` (which must exist: the writer has created it) to `key`, following
    /// `settled`. `progress` counts the file's bytes as they reach the server.
    pub fn start(
        client: &Client,
        key: &str,
        path: &Path,
        settled: Settled,
        options: &StreamOptions,
        progress: Arc<AtomicU64>,
    ) -> Result<StreamUpload> {
        let part_size = client.config().part_size;
        if options.header >= part_size {
            return Err(Error::Config(format!(
                "{}: a header of {} bytes does not fit in a part of {part_size}",
                path.display(),
                options.header
            )));
        }
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let mut metadata = options.metadata.clone();
        metadata.retain(|(k, _)| !k.eq_ignore_ascii_case(MD5SUM_META));
        let state_file = options.resume.state_file(client, key);
        let state_lock = super::multipart::lock_state(client, key, state_file.as_deref())?;
        // A streamed upload is started before its size and md5 are known: its state says so.
        let wanted = UploadState {
            upload_id: String::new(),
            size: 0,
            part_size,
            md5: String::new(),
            checksums: PartChecksums::None,
        };
        let mut found = match options.resume.enabled {
            true => find_resumable(client, key, state_file.as_deref(), &wanted)?,
            false => Found::default(),
        };
        // A stream declares no part checksums (its parts are numbered before the file is
        // final): an upload that declared some is not continued, only aborted with the others.
        if found.checksums != PartChecksums::None
            && let Some(id) = found.upload_id.take()
        {
            found.others.push(id);
            found.parts.clear();
        }
        let resumed = found.upload_id.is_some();
        for stale in &found.others {
            let _ = client.abort_multipart(key, stale);
        }
        let upload_id = match found.upload_id {
            Some(id) => id,
            None => client.create_multipart(key, &metadata, PartChecksums::None)?,
        };
        if let Some(state) = &state_file {
            let record = UploadState {
                upload_id: upload_id.clone(),
                ..wanted
            };
            if let Err(e) = write_state(state, &record) {
                let _ = client.abort_multipart(key, &upload_id);
                return Err(e);
            }
        }
        let shared = Arc::new(Shared {
            settled,
            final_size: AtomicU64::new(UNKNOWN),
            next: AtomicUsize::new(1),
            stop: AtomicBool::new(false),
            etags: Mutex::new(Vec::new()),
            first_error: Mutex::new(None),
            // Parts listed by an earlier run are kept only when their ETag is our bytes' md5:
            // a stream's earlier run may have packed different bytes.
            listed: found.parts,
            progress,
            sent_early: AtomicUsize::new(0),
            reused: AtomicUsize::new(0),
            bytes_sent: AtomicU64::new(0),
        });
        let mut upload = StreamUpload {
            client: client.clone(),
            key: key.to_string(),
            path: path.to_path_buf(),
            file: Arc::new(file),
            upload_id,
            part_size,
            metadata,
            state_file,
            _state_lock: state_lock,
            resumed,
            shared,
            workers: Vec::new(),
            done: false,
        };
        for i in 0..client.config().concurrency.max(1) {
            let worker = upload.worker();
            let spawned = std::thread::Builder::new()
                .name(format!("s3-stream-{i}"))
                .spawn(move || worker.run());
            match spawned {
                Ok(handle) => upload.workers.push(handle),
                // `upload` is dropped here, which stops the workers and aborts the upload.
                Err(e) => return Err(Error::io("start an upload thread for", path, e)),
            }
        }
        Ok(upload)
    }

    /// Parts sent so far while the writer was still writing (before `finish`).
    pub fn parts_sent_early(&self) -> usize {
        self.shared.sent_early.load(Ordering::Relaxed)
    }

    fn worker(&self) -> Worker {
        Worker {
            client: self.client.clone(),
            key: self.key.clone(),
            path: self.path.clone(),
            file: self.file.clone(),
            upload_id: self.upload_id.clone(),
            part_size: self.part_size,
            shared: self.shared.clone(),
        }
    }

    /// The writer has finished and the file will not change again: send what is left, part 1
    /// last, complete the upload, set the metadata with the md5, check the object.
    pub fn finish(mut self) -> Result<UploadedObject> {
        let started = std::time::Instant::now();
        let size = std::fs::metadata(&self.path)
            .map_err(|e| Error::io("stat", &self.path, e))?
            .len();
        let parts = usize::try_from(size.div_ceil(self.part_size).max(1)).unwrap_or(usize::MAX);
        if parts > MAX_PARTS {
            return Err(Error::Config(format!(
                "{}: {size} bytes need more than {MAX_PARTS} parts of {}; raise the part size",
                self.path.display(),
                self.part_size
            )));
        }
        if let Some(e) = self.shared.take_error() {
            return Err(e);
        }
        self.shared.final_size.store(size, Ordering::Release);
        // Part 1 and the md5 of the whole file side by side, while the workers send the rest.
        let (md5, first) = std::thread::scope(|scope| {
            let hashing = scope.spawn(|| crate::md5::md5_file(&self.path));
            let worker = self.worker();
            let first = worker.send(0, self.part_size.min(size));
            let md5 = hashing
                .join()
                .unwrap_or_else(|_| Err(Error::Config("the md5 thread panicked".into())));
            (md5, first)
        });
        self.join_workers();
        let md5 = md5?;
        first?;
        if let Some(e) = self.shared.take_error() {
            return Err(e);
        }
        let etags = self.shared.etags_in_order(parts).ok_or(Error::Cancelled)?;
        multipart::complete(
            &self.client,
            &self.key,
            &self.upload_id,
            (&etags, &[]),
            size,
        )?;
        self.done = true;
        forget_state(self.state_file.as_deref());
        let checked = self.with_md5(size, &md5).map(|mut object| {
            object.stats.after_writer = started.elapsed();
            object
        });
        if checked.is_err() {
            // Complete but without its md5sum: not an object to leave behind.
            let _ = self.client.delete_object(&self.key);
        }
        checked
    }

    /// Put the md5 into the complete object's metadata and check it.
    fn with_md5(&self, size: u64, md5: &str) -> Result<UploadedObject> {
        let mut metadata = self.metadata.clone();
        metadata.push((MD5SUM_META.to_string(), md5.to_string()));
        let copy_started = std::time::Instant::now();
        let etag = set_metadata(&self.client, &self.key, size, &metadata, MAX_SINGLE_COPY)?;
        let metadata_copy = copy_started.elapsed();
        check_uploaded(&self.client, &self.key, size, md5)?;
        let parts = usize::try_from(size.div_ceil(self.part_size).max(1)).unwrap_or(usize::MAX);
        Ok(UploadedObject {
            key: self.key.clone(),
            size,
            md5: md5.to_string(),
            etag,
            stats: UploadStats {
                parts,
                parts_reused: self.shared.reused.load(Ordering::Relaxed),
                bytes_sent: self.shared.bytes_sent.load(Ordering::Relaxed),
                resumed_upload: self.resumed,
                parts_while_writing: self.parts_sent_early(),
                after_writer: Default::default(),
                metadata_copy,
                already_there: false,
                checksums: PartChecksums::None,
            },
        })
    }

    fn join_workers(&mut self) {
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for StreamUpload {
    /// Not finished (the writer failed, or `finish` did): stop sending and abort, so the server
    /// keeps no parts. The error that brought us here is the caller's to report.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.join_workers();
        if !self.done {
            let _ = self.client.abort_multipart(&self.key, &self.upload_id);
            forget_state(self.state_file.as_deref());
        }
    }
}

impl Shared {
    fn take_error(&self) -> Option<Error> {
        self.first_error.lock().ok().and_then(|mut e| e.take())
    }

    fn fail(&self, e: Error) {
        self.stop.store(true, Ordering::Release);
        if let Ok(mut slot) = self.first_error.lock() {
            slot.get_or_insert(e);
        }
    }

    fn record(&self, index: usize, etag: String) {
        if let Ok(mut all) = self.etags.lock() {
            if all.len() <= index {
                all.resize(index + 1, None);
            }
            all[index] = Some(etag);
        }
    }

    /// The ETags of parts 1..=parts, if every one was sent.
    fn etags_in_order(&self, parts: usize) -> Option<Vec<String>> {
        let all = self.etags.lock().ok()?;
        (0..parts).map(|i| all.get(i).cloned().flatten()).collect()
    }
}

/// One upload thread's view.
struct Worker {
    client: Client,
    key: String,
    path: PathBuf,
    file: Arc<File>,
    upload_id: String,
    part_size: u64,
    shared: Arc<Shared>,
}

impl Worker {
    /// Take parts in order as they become final; after the writer finished, take the rest.
    fn run(&self) {
        while !self.shared.stop.load(Ordering::Acquire) {
            let index = self.shared.next.load(Ordering::Acquire);
            let offset = index as u64 * self.part_size;
            let size = self.shared.final_size.load(Ordering::Acquire);
            let len = if size == UNKNOWN {
                let settled = self.shared.settled.load(Ordering::Acquire);
                if index >= MAX_PARTS || offset + self.part_size > settled {
                    std::thread::sleep(POLL);
                    continue;
                }
                self.part_size
            } else if offset < size {
                self.part_size.min(size - offset)
            } else {
                return;
            };
            let claimed = self
                .shared
                .next
                .compare_exchange(index, index + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if !claimed {
                continue;
            }
            let early = size == UNKNOWN;
            match self.send(index, len) {
                Ok(()) if early => {
                    self.shared.sent_early.fetch_add(1, Ordering::Relaxed);
                }
                Ok(()) => {}
                Err(e) => self.shared.fail(e),
            }
        }
    }

    /// Send part `index` (0-based) of `len` bytes, or keep the server's identical copy.
    fn send(&self, index: usize, len: u64) -> Result<()> {
        let number = u16::try_from(index + 1)
            .map_err(|_| Error::Config(format!("part {} is beyond S3's limit", index + 1)))?;
        let to = PartTarget {
            client: &self.client,
            key: &self.key,
            upload_id: &self.upload_id,
            checksums: PartChecksums::None,
            listed: &self.shared.listed,
            trust_size: false,
        };
        let part = one_part(
            &to,
            FilePart {
                file: &self.file,
                path: &self.path,
                offset: index as u64 * self.part_size,
                len,
                number,
                known_md5: None,
            },
        )?;
        if part.reused {
            self.shared.reused.fetch_add(1, Ordering::Relaxed);
        } else {
            self.shared.bytes_sent.fetch_add(len, Ordering::Relaxed);
        }
        self.shared.progress.fetch_add(len, Ordering::Relaxed);
        self.shared.record(index, part.etag);
        Ok(())
    }
}

/// Give a complete object new user metadata by copying it onto itself on the server: one
/// `CopyObject` up to `single_copy_limit`, a multipart copy above (S3 refuses a single copy
/// over 5 GiB). Returns the object's new ETag.
pub(crate) fn set_metadata(
    client: &Client,
    key: &str,
    size: u64,
    metadata: &[(String, String)],
    single_copy_limit: u64,
) -> Result<String> {
    if size <= single_copy_limit {
        return client.replace_metadata(key, metadata);
    }
    let part = COPY_PART.min(single_copy_limit).max(5 << 20);
    let parts = usize::try_from(size.div_ceil(part)).unwrap_or(usize::MAX);
    let upload_id = client.create_multipart(key, metadata, PartChecksums::None)?;
    let copied = copy_parts(client, key, &upload_id, size, part, parts)
        .and_then(|etags| multipart::complete(client, key, &upload_id, (&etags, &[]), size));
    if copied.is_err() {
        let _ = client.abort_multipart(key, &upload_id);
    }
    copied
}

/// `UploadPartCopy` of every `part`-sized range of `key` onto itself, `concurrency` at a time.
fn copy_parts(
    client: &Client,
    key: &str,
    upload_id: &str,
    size: u64,
    part: u64,
    parts: usize,
) -> Result<Vec<String>> {
    multipart::in_parallel(client.config().concurrency, parts, |index| {
        let first = index as u64 * part;
        let last = (first + part).min(size) - 1;
        let number = u16::try_from(index + 1)
            .map_err(|_| Error::Config(format!("{key}: too many copy parts")))?;
        client.upload_part_copy(key, upload_id, number, key, (first, last))
    })
}
