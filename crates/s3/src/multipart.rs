//! Uploading one file: a single PUT when it fits in one part, else a multipart upload with
//! parts sent in parallel, that resumes an interrupted run and cleans up after a failed one.
//!
//! Resume: a run killed mid-upload leaves its multipart upload on the server. The next run finds
//! it (the upload id remembered in a small state file when a state directory is given, else
//! ListMultipartUploads for the key, newest first; s3s-fs, for one, has no ListMultipartUploads),
//! lists its parts, and sends only the parts
//! that are missing or differ: a listed part is kept when its size is the expected one and its
//! ETag equals the md5 of our bytes for that part (S3 and compatible servers use the part's md5
//! as its ETag; a server with opaque ETags gets every part again, which is correct, only slower).
//! A run that fails with an error (not a kill) aborts its upload, so no orphan parts stay.
//!
//! Every part carries its Content-MD5, which the server checks. A multipart upload also declares
//! CRC32 checksums (as `aws s3 cp` does): each part carries its CRC32 too, and the server builds
//! the object's composite checksum from them instead of computing a full-object checksum of its
//! own after the last part (moto spends seconds per GiB on that). A server that refuses the
//! declaration gets an upload without it.
//!
//! The object's md5 is stored as `x-amz-meta-md5sum` when the upload is created, and checked with
//! a HEAD at the end (with the size). A resumed upload created for an older version of the file
//! would carry a stale md5sum: the check catches it, and the file is uploaded again from scratch.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use super::client::{Client, ListedPart, PartChecksums};
use super::{Error, Result};
use crate::md5::hex;

/// The user-metadata name IMS gives the md5 of an object (`x-amz-meta-md5sum`).
pub const MD5SUM_META: &str = "md5sum";

/// How to upload one file.
#[derive(Clone, Debug, Default)]
pub struct UploadOptions {
    /// User metadata (names without `x-amz-meta-`), besides `md5sum` which is always set.
    pub metadata: Vec<(String, String)>,
    /// Sent with single-PUT objects (the manifest's `application/json`).
    pub content_type: Option<String>,
    /// The file's md5 when the caller already knows it (saves reading the file twice); it is
    /// still checked part by part by the server's Content-MD5 checks of what we send.
    pub known_md5: Option<String>,
    /// Whether to look for an interrupted upload of the same key and keep its good parts.
    pub resume: Resume,
}

/// Whether and how an interrupted upload is resumed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    pub enabled: bool,
    /// Where upload ids are remembered between runs (one small JSON file per upload in
    /// progress). Needed with servers that lack ListMultipartUploads; spares the listing on
    /// the others.
    pub state_dir: Option<PathBuf>,
}

impl Resume {
    pub fn off() -> Resume {
        Resume::default()
    }

    pub fn on(state_dir: Option<PathBuf>) -> Resume {
        Resume {
            enabled: true,
            state_dir,
        }
    }

    /// The state file of one upload: named by the md5 of endpoint, bucket and key.
    pub(super) fn state_file(&self, client: &Client, key: &str) -> Option<PathBuf> {
        let dir = self.state_dir.as_ref().filter(|_| self.enabled)?;
        let id = format!("{}\n{}\n{key}", client.config().endpoint, client.bucket());
        Some(dir.join(format!("{}.json", hex(&Md5::digest(id.as_bytes())))))
    }
}

/// What the state file remembers about an upload in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct UploadState {
    pub(super) upload_id: String,
    pub(super) size: u64,
    pub(super) part_size: u64,
    pub(super) md5: String,
    /// What the upload declared at its creation (absent in state files of older versions,
    /// whose uploads declared nothing).
    #[serde(default)]
    pub(super) checksums: PartChecksums,
}

fn read_state(path: &Path) -> Option<UploadState> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub(super) fn write_state(path: &Path, state: &UploadState) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
    }
    let bytes = serde_json::to_vec(state)
        .map_err(|e| Error::Config(format!("cannot serialize the upload state: {e}")))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename into place", path, e))
}

pub(super) fn forget_state(path: Option<&Path>) {
    if let Some(path) = path {
        // Best effort: a stale state file only costs one ListParts that finds nothing.
        let _ = std::fs::remove_file(path);
    }
}

/// What an upload did, for tests and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UploadStats {
    /// The object was already on the server, complete (an earlier run's), and was kept: this
    /// run did not create it, so it never deletes it.
    pub already_there: bool,
    pub parts: usize,
    /// Parts found on the server from an interrupted run and not sent again.
    pub parts_reused: usize,
    /// Body bytes sent (retries included).
    pub bytes_sent: u64,
    pub resumed_upload: bool,
    /// What a multipart upload declared: CRC32 when its parts carried their CRC32 as well.
    pub checksums: PartChecksums,
    /// Streamed uploads: parts sent while the file was still being written.
    pub parts_while_writing: usize,
    /// Streamed uploads: how long the upload took after the writer finished (the part of it
    /// that did not overlap), and of that the server-side copy that sets the md5sum metadata.
    pub after_writer: std::time::Duration,
    pub metadata_copy: std::time::Duration,
}

/// An object as uploaded and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadedObject {
    pub key: String,
    pub size: u64,
    /// Our md5 of the file (hex).
    pub md5: String,
    /// What the server returned (for a multipart upload: md5 of the parts' md5s, `-N`).
    pub etag: String,
    pub stats: UploadStats,
}

/// Upload `path` to `key`, then HEAD it and check size and md5sum. `progress` counts the
/// file's bytes as they reach the server (reused parts included).
pub fn upload_file(
    client: &Client,
    key: &str,
    path: &Path,
    options: &UploadOptions,
    progress: &AtomicU64,
) -> Result<UploadedObject> {
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let size = file
        .metadata()
        .map_err(|e| Error::io("stat", path, e))?
        .len();
    // One read hashes the whole file (its md5sum metadata, needed before the upload starts)
    // and each part (their Content-MD5), so the parts are not hashed a second time.
    let part_size = client.config().part_size_for(size);
    let (md5, part_md5s) = match &options.known_md5 {
        Some(m) => (m.to_ascii_lowercase(), None),
        None if size > part_size => {
            let (md5, parts) = crate::md5::md5_file_with_parts(path, part_size)?;
            (md5, Some(parts))
        }
        None => (crate::md5::md5_file(path)?, None),
    };
    let part_md5s = part_md5s.as_deref();
    let mut metadata = options.metadata.clone();
    metadata.retain(|(k, _)| !k.eq_ignore_ascii_case(MD5SUM_META));
    metadata.push((MD5SUM_META.to_string(), md5.clone()));

    let start = progress.load(Ordering::Relaxed);
    let mut uploaded = send(
        client, key, &file, path, size, &md5, part_md5s, &metadata, options, progress,
    )?;
    match check_uploaded(client, key, size, &md5) {
        Ok(()) => {}
        Err(Error::Integrity { .. }) if uploaded.stats.resumed_upload => {
            // A stale upload from another version of the file: start over, without resuming.
            client.delete_object(key)?;
            progress.store(start, Ordering::Relaxed);
            let fresh = UploadOptions {
                resume: Resume::off(),
                ..options.clone()
            };
            uploaded = send(
                client, key, &file, path, size, &md5, part_md5s, &metadata, &fresh, progress,
            )?;
            check_uploaded(client, key, size, &md5)?;
        }
        Err(e) => return Err(e),
    }
    Ok(uploaded)
}

#[allow(clippy::too_many_arguments)]
fn send(
    client: &Client,
    key: &str,
    file: &File,
    path: &Path,
    size: u64,
    md5: &str,
    part_md5s: Option<&[[u8; 16]]>,
    metadata: &[(String, String)],
    options: &UploadOptions,
    progress: &AtomicU64,
) -> Result<UploadedObject> {
    let part_size = client.config().part_size_for(size);
    if size <= part_size {
        let body = read_range(file, path, 0, size)?;
        let etag =
            client.put_bytes(key, &body, metadata, options.content_type.as_deref(), false)?;
        progress.fetch_add(size, Ordering::Relaxed);
        return Ok(UploadedObject {
            key: key.to_string(),
            size,
            md5: md5.to_string(),
            etag,
            stats: UploadStats {
                parts: 1,
                parts_reused: 0,
                bytes_sent: size,
                resumed_upload: false,
                ..UploadStats::default()
            },
        });
    }
    multipart(
        client, key, file, path, size, part_size, md5, part_md5s, metadata, options, progress,
    )
}

#[allow(clippy::too_many_arguments)]
fn multipart(
    client: &Client,
    key: &str,
    file: &File,
    path: &Path,
    size: u64,
    part_size: u64,
    md5: &str,
    part_md5s: Option<&[[u8; 16]]>,
    metadata: &[(String, String)],
    options: &UploadOptions,
    progress: &AtomicU64,
) -> Result<UploadedObject> {
    let parts = usize::try_from(size.div_ceil(part_size))
        .map_err(|_| Error::Config(format!("{}: too many parts", path.display())))?;
    let state_file = options.resume.state_file(client, key);
    let wanted = UploadState {
        upload_id: String::new(),
        size,
        part_size,
        md5: md5.to_string(),
        checksums: PartChecksums::Crc32,
    };
    let _state_lock = lock_state(client, key, state_file.as_deref())?;
    let found = match options.resume.enabled {
        true => find_resumable(client, key, state_file.as_deref(), &wanted)?,
        false => Found::default(),
    };
    let (upload_id, listed, leftovers) = (found.upload_id, found.parts, found.others);
    let trust_size = found.same_file;
    let resumed_upload = upload_id.is_some();
    let (upload_id, checksums): (String, PartChecksums) = match upload_id {
        Some(id) => (id, found.checksums),
        None => {
            let (id, checksums) = create_with_checksums(client, key, metadata)?;
            if let Some(path) = &state_file {
                let state = UploadState {
                    upload_id: id.clone(),
                    checksums,
                    ..wanted.clone()
                };
                if let Err(e) = write_state(path, &state) {
                    let _ = client.abort_multipart(key, &id);
                    return Err(e);
                }
            }
            (id, checksums)
        }
    };

    let to = PartTarget {
        client,
        key,
        upload_id: &upload_id,
        checksums,
        listed: &listed,
        trust_size,
    };
    let result = upload_parts(
        &to,
        (file, path, size),
        (part_size, parts, part_md5s),
        progress,
    )
    .and_then(|(sent, stats)| {
        let etags: Vec<String> = sent.iter().map(|p| p.etag.clone()).collect();
        let crc32s: Vec<u32> = sent.iter().filter_map(|p| p.crc32).collect();
        let etag = complete(client, key, &upload_id, (&etags, &crc32s), size)?;
        Ok((etag, stats))
    });
    match result {
        Ok((etag, (reused, sent))) => {
            forget_state(state_file.as_deref());
            // Older interrupted uploads of the same key would keep their parts forever.
            for stale in leftovers {
                let _ = client.abort_multipart(key, &stale);
            }
            Ok(UploadedObject {
                key: key.to_string(),
                size,
                md5: md5.to_string(),
                etag,
                stats: UploadStats {
                    parts,
                    parts_reused: reused,
                    bytes_sent: sent,
                    resumed_upload,
                    checksums,
                    ..UploadStats::default()
                },
            })
        }
        Err(e) => {
            // The error is what matters; an abort that fails too leaves parts the server's
            // lifecycle rules (or the next run, which resumes them) will deal with.
            let _ = client.abort_multipart(key, &upload_id);
            forget_state(state_file.as_deref());
            Err(e)
        }
    }
}

/// Create a multipart upload declaring CRC32 part checksums; a server that refuses the
/// declaration (one without S3's additional checksums) gets an upload without, whose parts
/// Content-MD5 alone checks, as before.
fn create_with_checksums(
    client: &Client,
    key: &str,
    metadata: &[(String, String)],
) -> Result<(String, PartChecksums)> {
    match client.create_multipart(key, metadata, PartChecksums::Crc32) {
        Ok(id) => Ok((id, PartChecksums::Crc32)),
        Err(e) if matches!(e.status(), Some(400 | 501)) => {
            let id = client.create_multipart(key, metadata, PartChecksums::None)?;
            Ok((id, PartChecksums::None))
        }
        Err(e) => Err(e),
    }
}

/// An upload of `key` to continue, its parts, and the ids of other (older) uploads of the key.
/// The state file's upload comes first, when it was for the same file (size, part size, md5);
/// then the newest upload the server lists that has parts (without parts nothing is saved, and
/// what it declared at its creation could not be told from its listing).
pub(super) fn find_resumable(
    client: &Client,
    key: &str,
    state_file: Option<&Path>,
    wanted: &UploadState,
) -> Result<Found> {
    if let Some(state) = state_file.and_then(read_state) {
        let same_file = UploadState {
            upload_id: state.upload_id.clone(),
            checksums: state.checksums,
            ..wanted.clone()
        } == state;
        if same_file {
            if let Some(parts) = client.list_parts(key, &state.upload_id)? {
                return Ok(Found {
                    upload_id: Some(state.upload_id),
                    parts,
                    others: Vec::new(),
                    same_file: true,
                    checksums: state.checksums,
                });
            }
        } else {
            // Started for another version of the file: its parts are of no use.
            let _ = client.abort_multipart(key, &state.upload_id);
        }
        forget_state(state_file);
    }
    let mut pending = match client.list_multipart_uploads(key) {
        Ok(pending) => pending,
        // The server cannot list uploads: without a state file there is nothing to resume.
        Err(e) if e.status() == Some(501) => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut empty = Vec::new();
    while let Some(newest) = pending.pop() {
        match client.list_parts(key, &newest.upload_id)? {
            Some(parts) if !parts.is_empty() => {
                let mut others: Vec<String> = pending.iter().map(|u| u.upload_id.clone()).collect();
                others.append(&mut empty);
                // Parts of an upload that declared CRC32 are listed with their CRC32.
                let checksums = match parts.iter().any(|p| p.crc32.is_some()) {
                    true => PartChecksums::Crc32,
                    false => PartChecksums::None,
                };
                return Ok(Found {
                    upload_id: Some(newest.upload_id),
                    parts,
                    others,
                    same_file: false,
                    checksums,
                });
            }
            Some(_) => empty.push(newest.upload_id),
            // Gone between the two listings (completed or aborted elsewhere): try an older one.
            None => {}
        }
    }
    Ok(Found {
        others: empty,
        ..Found::default()
    })
}

/// Lock an upload's state file for the whole upload (`<state>.lock`, kept): two runs sharing
/// a state directory never drive the same multipart upload; the second fails at once, naming
/// the lock.
pub(super) fn lock_state(
    client: &Client,
    key: &str,
    state_file: Option<&Path>,
) -> Result<Option<nix::fcntl::Flock<File>>> {
    let Some(state) = state_file else {
        return Ok(None);
    };
    if let Some(dir) = state.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    }
    let mut lock_path = state.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    match super::guard::try_lock(&lock_path)? {
        Some(lock) => Ok(Some(lock)),
        None => Err(Error::Busy(format!(
            "{} is being uploaded by another imsctl process sharing {}",
            client.target(key),
            lock_path.display()
        ))),
    }
}

/// An upload to continue.
#[derive(Default)]
pub(super) struct Found {
    pub(super) upload_id: Option<String>,
    pub(super) parts: Vec<ListedPart>,
    /// Other uploads of the key, aborted once this one completes.
    pub(super) others: Vec<String>,
    /// Known (from the state file) to have been started for a file with the same md5, size and
    /// part size: its parts are our bytes (the server checked each one's Content-MD5), so a
    /// part of the right size is good even when the server lists no ETag (s3s-fs).
    pub(super) same_file: bool,
    /// What the upload declared at its creation: its remaining parts must carry the same.
    pub(super) checksums: PartChecksums,
}

/// A part on the server, sent by this run or kept from an earlier one.
pub(super) struct SentPart {
    pub(super) etag: String,
    /// Its CRC32, for an upload that declared CRC32 checksums.
    pub(super) crc32: Option<u32>,
    pub(super) reused: bool,
}

/// Send the parts with `concurrency` threads. Returns the parts in part order and
/// (parts reused, bytes sent).
#[allow(clippy::too_many_arguments)]
fn upload_parts(
    to: &PartTarget<'_>,
    (file, path, size): (&File, &Path, u64),
    (part_size, parts, part_md5s): (u64, usize, Option<&[[u8; 16]]>),
    progress: &AtomicU64,
) -> Result<(Vec<SentPart>, (usize, u64))> {
    let client = to.client;
    let reused = AtomicUsize::new(0);
    let sent = AtomicU64::new(0);
    let all = in_parallel(client.config().concurrency, parts, |index| {
        let offset = index as u64 * part_size;
        let len = part_size.min(size - offset);
        let number = u16::try_from(index + 1).unwrap_or(u16::MAX);
        let known_md5 = part_md5s.and_then(|m| m.get(index));
        let part = one_part(
            to,
            FilePart {
                file,
                path,
                offset,
                len,
                number,
                known_md5,
            },
        )?;
        if part.reused {
            reused.fetch_add(1, Ordering::Relaxed);
        } else {
            sent.fetch_add(len, Ordering::Relaxed);
        }
        progress.fetch_add(len, Ordering::Relaxed);
        Ok(part)
    })?;
    Ok((all, (reused.into_inner(), sent.into_inner())))
}

/// Run `part(index)` for every index below `parts` on up to `concurrency` threads; the results
/// (ETags, parts) in part order, or the first error (after which no new part starts).
pub(super) fn in_parallel<T: Send>(
    concurrency: usize,
    parts: usize,
    part: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let etags: Mutex<Vec<Option<T>>> = Mutex::new((0..parts).map(|_| None).collect());
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..concurrency.clamp(1, parts.max(1)) {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= parts {
                        break;
                    }
                    match part(index) {
                        Ok(etag) => {
                            if let Ok(mut all) = etags.lock() {
                                all[index] = Some(etag);
                            }
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            if let Ok(mut slot) = first_error.lock() {
                                slot.get_or_insert(e);
                            }
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    let etags = etags.into_inner().map_err(|_| Error::Cancelled)?;
    etags
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or(Error::Cancelled)
}

/// Read one part, keep the server's copy when it is the same bytes, else send it. A listed
/// ETag must be the md5 of our bytes; a part listed without one is kept only when `trust_size`
/// (see `Found::same_file`), and our md5 stands in as its ETag. With CRC32 `checksums` the part
/// carries its CRC32 as well (the server checks both it and the Content-MD5); a kept part's
/// CRC32 is that of our bytes, which it equals.
/// The multipart upload parts go to, and what the server already has of it.
#[derive(Clone, Copy)]
pub(super) struct PartTarget<'a> {
    pub client: &'a Client,
    pub key: &'a str,
    pub upload_id: &'a str,
    pub checksums: PartChecksums,
    /// Parts the server listed for this upload (a resumed one).
    pub listed: &'a [ListedPart],
    /// A listed part of the right size is taken as ours without reading it back.
    pub trust_size: bool,
}

/// One part of a file: where it lies, its number, and its MD5 when already known.
pub(super) struct FilePart<'a> {
    pub file: &'a File,
    pub path: &'a Path,
    pub offset: u64,
    pub len: u64,
    pub number: u16,
    pub known_md5: Option<&'a [u8; 16]>,
}

pub(super) fn one_part(to: &PartTarget<'_>, part: FilePart<'_>) -> Result<SentPart> {
    let PartTarget {
        client,
        key,
        upload_id,
        checksums,
        listed,
        trust_size,
    } = *to;
    let FilePart {
        file,
        path,
        offset,
        len,
        number,
        known_md5,
    } = part;
    let body = read_range(file, path, offset, len)?;
    let digest: [u8; 16] = match known_md5 {
        Some(d) => *d,
        None => Md5::digest(&body).into(),
    };
    let crc32 = match checksums {
        PartChecksums::Crc32 => Some(crc32_of(&body)),
        PartChecksums::None => None,
    };
    if let Some(existing) = listed.iter().find(|p| p.number == number)
        && existing.size == len
    {
        let md5 = hex(&digest);
        let kept = |etag: String| SentPart {
            etag,
            crc32,
            reused: true,
        };
        if existing.etag.eq_ignore_ascii_case(&md5) {
            return Ok(kept(existing.etag.clone()));
        }
        if existing.etag.is_empty() && trust_size {
            return Ok(kept(md5));
        }
    }
    let etag = client.upload_part_hashed(key, upload_id, number, &body, &digest, crc32)?;
    Ok(SentPart {
        etag,
        crc32,
        reused: false,
    })
}

/// CRC-32 (IEEE, as S3's `x-amz-checksum-crc32`) of `bytes`.
pub(super) fn crc32_of(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

/// Complete the upload. A Complete that succeeded on the server but whose answer was lost is
/// retried and then finds no upload: the object itself, with the right size, is the proof.
pub(super) fn complete(
    client: &Client,
    key: &str,
    upload_id: &str,
    (etags, crc32s): (&[String], &[u32]),
    size: u64,
) -> Result<String> {
    match client.complete_multipart(key, upload_id, etags, crc32s) {
        Ok(etag) => Ok(etag),
        Err(e) if e.is_not_found() => match client.head_object(key)? {
            Some(info)
                if info.size == size && info.etag.ends_with(&format!("-{}", etags.len())) =>
            {
                Ok(info.etag)
            }
            _ => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// HEAD the object: it must exist with our size and our md5 as `md5sum` metadata.
pub fn check_uploaded(client: &Client, key: &str, size: u64, md5: &str) -> Result<()> {
    let target = client.target(key);
    let info = client.head_object(key)?.ok_or_else(|| Error::Integrity {
        target: target.clone(),
        what: "missing after the upload".into(),
    })?;
    if info.size != size {
        return Err(Error::Integrity {
            target,
            what: format!("size {} on the server, {size} uploaded", info.size),
        });
    }
    match info.metadata.get(MD5SUM_META) {
        Some(m) if m.eq_ignore_ascii_case(md5) => Ok(()),
        Some(m) => Err(Error::Integrity {
            target,
            what: format!("md5sum metadata {m}, expected {md5}"),
        }),
        None => Err(Error::Integrity {
            target,
            what: "no md5sum metadata".into(),
        }),
    }
}

fn read_range(file: &File, path: &Path, offset: u64, len: u64) -> Result<Vec<u8>> {
    let len = usize::try_from(len)
        .map_err(|_| Error::Config(format!("{}: part too large for memory", path.display())))?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| Error::io("read", path, e))?;
    Ok(buf)
}
