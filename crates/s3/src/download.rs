//! Downloading one object into a file with parallel ranged GETs, hashing it on the way.
//!
//! Ranges land out of order, so the md5 is computed by a thread that follows the download:
//! it waits for range i to be complete, reads it back (from the page cache) and hashes it. The
//! hash is therefore ready moments after the last byte arrives, without a second full pass.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use md5::{Digest, Md5};

use super::client::Client;
use super::{Error, Result};
use crate::md5::hex;

/// A downloaded file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Downloaded {
    pub size: u64,
    pub md5: String,
}

/// Download `key` (of `size` bytes, from HEAD or a listing) to `dest`, which must not exist.
/// `progress` counts bytes written. On failure `dest` is removed.
pub fn download_file(
    client: &Client,
    key: &str,
    size: u64,
    dest: &Path,
    progress: &AtomicU64,
) -> Result<Downloaded> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(dest)
        .map_err(|e| Error::io("create", dest, e))?;
    let result = fill(client, key, size, &file, dest, progress);
    if result.is_err() {
        drop(file);
        let _ = std::fs::remove_file(dest);
    }
    result
}

fn fill(
    client: &Client,
    key: &str,
    size: u64,
    file: &File,
    dest: &Path,
    progress: &AtomicU64,
) -> Result<Downloaded> {
    file.set_len(size)
        .map_err(|e| Error::io("allocate", dest, e))?;
    let chunk = client.config().part_size_for(size);
    let ranges = usize::try_from(size.div_ceil(chunk).max(1))
        .map_err(|_| Error::Config(format!("{}: too many ranges", dest.display())))?;
    let done = Mutex::new(vec![false; ranges]);
    let landed = Condvar::new();
    let failed = AtomicBool::new(false);
    let next = AtomicUsize::new(0);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let workers = client.config().concurrency.min(ranges).max(1);

    let md5 = std::thread::scope(|scope| {
        let hasher =
            scope.spawn(|| hash_in_order(file, dest, size, chunk, &done, &landed, &failed));
        for _ in 0..workers {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= ranges {
                        break;
                    }
                    let offset = index as u64 * chunk;
                    let len = chunk.min(size - offset);
                    match client.get_range_into(key, offset, len, file, dest, progress) {
                        Ok(()) => {
                            if let Ok(mut d) = done.lock() {
                                d[index] = true;
                            }
                            landed.notify_all();
                        }
                        Err(e) => {
                            if let Ok(mut slot) = first_error.lock() {
                                slot.get_or_insert(e);
                            }
                            // Under the lock the hasher waits on, so it cannot miss the news.
                            let guard = done.lock();
                            failed.store(true, Ordering::Relaxed);
                            drop(guard);
                            landed.notify_all();
                        }
                    }
                }
            });
        }
        hasher.join().unwrap_or(Err(Error::Cancelled))
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    // Not fsynced here: the caller syncs the file once, when it commits it (the store does,
    // as it moves a download in).
    Ok(Downloaded { size, md5: md5? })
}

/// Hash the file range by range, in order, as the ranges complete.
fn hash_in_order(
    file: &File,
    path: &Path,
    size: u64,
    chunk: u64,
    done: &Mutex<Vec<bool>>,
    landed: &Condvar,
    failed: &AtomicBool,
) -> Result<String> {
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    let mut index = 0usize;
    while offset < size {
        {
            let mut d = done.lock().map_err(|_| Error::Cancelled)?;
            while !d[index] {
                if failed.load(Ordering::Relaxed) {
                    return Err(Error::Cancelled);
                }
                d = landed.wait(d).map_err(|_| Error::Cancelled)?;
            }
        }
        let end = (offset + chunk).min(size);
        while offset < end {
            let want = usize::try_from((end - offset).min(buf.len() as u64)).unwrap_or(buf.len());
            file.read_exact_at(&mut buf[..want], offset)
                .map_err(|e| Error::io("read back", path, e))?;
            hasher.update(&buf[..want]);
            offset += want as u64;
        }
        index += 1;
    }
    Ok(hex(&hasher.finalize()))
}

/// Stream an object through md5 without storing it (deep verify). One connection; a broken
/// stream is resumed where it stopped with a Range request.
pub fn md5_of_object(client: &Client, key: &str, progress: &AtomicU64) -> Result<Downloaded> {
    let mut hasher = Md5::new();
    let size = client.stream_object(key, &mut |bytes: &[u8]| {
        hasher.update(bytes);
        progress.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    })?;
    Ok(Downloaded {
        size,
        md5: hex(&hasher.finalize()),
    })
}
