//! Guarding an image id in a bucket shared by many build hosts: who may write `<id>/*`, and so
//! who may ever delete it.
//!
//! A publication first claims the id with a lease object, `<prefix>/.imsctl/leases/<id>.json`,
//! holding a token unique to the run. Only the lease holder uploads, writes the manifest and, if
//! it fails, deletes what it created; every delete is preceded by a re-read of the lease (still
//! our token?) and, in an S3 catalogue, of the record (none yet?). The lease is deleted once the
//! record is registered.
//!
//! How the claim is made depends on the server, probed once per endpoint and bucket (and cached
//! for a day in `~/.cache/imsctl/s3-conditional-writes.json`):
//!
//! - **Conditional writes honoured** (AWS, MinIO, Ceph RGW recent, moto): the lease is written
//!   with `If-None-Match: *`; the server grants it to exactly one writer.
//! - **Conditional writes ignored** (Garage, older MinIO/Ceph; a PUT overwrites): read the lease
//!   (absent, or ours), write ours, then wait `settle` and read it again; the claim stands only if
//!   our token is still there. A writer's read-then-write is bounded by `settle / 2` (else it
//!   starts over), so every writer that saw no lease wrote its token before anyone's second read:
//!   all second reads see the same last token, and exactly one writer proceeds. This needs only a
//!   server with read-after-write consistency (S3, Garage) and no synchronised clocks.
//!
//! A run killed outright leaves its lease. The token is remembered in the run's resume state
//! directory, so the same store's next run takes it over and resumes; anyone else is told who
//! holds it (host, pid, store, since when), and `images repair` / `images delete ID` clear it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::client::Client;
use super::{Error, Result, S3Url};
use crate::md5::hex;

/// Where the bookkeeping objects of imsctl live under a prefix (outside the IMS layout).
pub const META_DIR: &str = ".imsctl";
/// How long a probe result is trusted.
const PROBE_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Attempts at a claim whose read-then-write took too long.
const CLAIM_ROUNDS: usize = 5;

/// The key of the lease of image `id` under `root`.
pub fn lease_key(root: &S3Url, id: Uuid) -> String {
    root.join(&format!("{META_DIR}/leases/{id}.json"))
}

/// The prefix under which leases live.
pub fn leases_prefix(root: &S3Url) -> String {
    root.join(&format!("{META_DIR}/leases/"))
}

/// What a lease object says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub token: String,
    pub host: String,
    pub pid: u32,
    /// The local store (or job work directory) the publication runs from.
    #[serde(default)]
    pub origin: String,
    /// Seconds since the epoch.
    pub started: u64,
}

impl LeaseInfo {
    fn new(token: String, origin: &str) -> LeaseInfo {
        LeaseInfo {
            token,
            host: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "unknown-host".into()),
            pid: std::process::id(),
            origin: origin.to_string(),
            started: now_secs(),
        }
    }

    /// `host H, pid P, from ORIGIN, since 12:00:00 UTC (5 min ago)`.
    pub fn describe(&self) -> String {
        let age = now_secs().saturating_sub(self.started);
        let origin = if self.origin.is_empty() {
            String::new()
        } else {
            format!(", from {}", self.origin)
        };
        format!(
            "host {}, pid {}{origin}, started {} s ago",
            self.host, self.pid, age
        )
    }

    pub fn age(&self) -> Duration {
        Duration::from_secs(now_secs().saturating_sub(self.started))
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Read a lease object; None when there is none (or it is unreadable, which only a foreign
/// writer could cause: treated as held by nobody we know, see `Lease::acquire`).
pub fn read_lease(client: &Client, key: &str) -> Result<Option<LeaseInfo>> {
    match client.get_bytes(key) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// A claim on an image id in a bucket, held by this run.
#[derive(Debug)]
pub struct Lease {
    key: String,
    info: LeaseInfo,
    /// Held for the whole publication: no other imsctl process of the same store or job takes
    /// over the same token.
    _local: Option<LocalClaim>,
}

impl Lease {
    /// Claim image `id` under `root`. `state_dir` (the resume state directory) remembers the
    /// token across runs and holds a local lock; `origin` names this store in messages.
    pub fn acquire(
        client: &Client,
        root: &S3Url,
        id: Uuid,
        state_dir: Option<&Path>,
        origin: &str,
    ) -> Result<Lease> {
        let key = lease_key(root, id);
        let local = match state_dir {
            Some(dir) => Some(LocalClaim::take(dir, client, &key, id)?),
            None => None,
        };
        let token = match &local {
            Some(claim) => claim.token.clone(),
            None => Uuid::new_v4().to_string(),
        };
        let info = LeaseInfo::new(token, origin);
        let body = serde_json::to_vec_pretty(&info)
            .map_err(|e| Error::Config(format!("cannot serialize the lease: {e}")))?;
        let held = |other: &LeaseInfo| {
            Error::Busy(format!(
                "image {id} is being published to {root} by another run ({}); lease {} \
                 (if that run is dead: `imsctl --store {root} images repair --older-than 0`)",
                other.describe(),
                client.target(&key)
            ))
        };
        if conditional_writes(client, root)? {
            return match client.put_bytes(&key, &body, &[], Some("application/json"), true) {
                Ok(_) => Ok(Lease {
                    key,
                    info,
                    _local: local,
                }),
                Err(e) if e.is_precondition_failed() => match read_lease(client, &key)? {
                    // Ours, from a run of the same store that was killed: take it over.
                    Some(other) if other.token == info.token => Ok(Lease {
                        key,
                        info,
                        _local: local,
                    }),
                    Some(other) => Err(held(&other)),
                    None => Err(Error::Busy(format!(
                        "image {id}: the lease {} changed while being claimed; try again",
                        client.target(&key)
                    ))),
                },
                Err(e) => Err(e),
            };
        }
        let settle = client.config().lease_settle;
        for _ in 0..CLAIM_ROUNDS {
            let start = Instant::now();
            if let Some(other) = read_lease(client, &key)?
                && other.token != info.token
            {
                return Err(held(&other));
            }
            client.put_bytes(&key, &body, &[], Some("application/json"), false)?;
            if start.elapsed() > settle / 2 {
                // Too slow to be sure nobody wrote in between: look again.
                continue;
            }
            std::thread::sleep(settle);
            return match read_lease(client, &key)? {
                Some(now) if now.token == info.token => Ok(Lease {
                    key,
                    info,
                    _local: local,
                }),
                Some(other) => Err(held(&other)),
                None => Err(Error::Busy(format!(
                    "image {id}: the lease {} vanished while being claimed; try again",
                    client.target(&key)
                ))),
            };
        }
        Err(Error::Busy(format!(
            "image {id}: could not claim {} (each read-then-write took over {:?})",
            client.target(&key),
            settle / 2
        )))
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn token(&self) -> &str {
        &self.info.token
    }

    /// Does the lease object still hold our token? Asked before every delete and before the
    /// manifest is written.
    pub fn still_ours(&self, client: &Client) -> Result<bool> {
        Ok(read_lease(client, &self.key)?.is_some_and(|l| l.token == self.info.token))
    }

    /// Give the claim up: delete the lease object if it is still ours, and forget the token.
    pub fn release(self, client: &Client) -> Result<()> {
        if self.still_ours(client)? {
            client.delete_object(&self.key)?;
        }
        if let Some(local) = &self._local {
            local.forget();
        }
        Ok(())
    }
}

/// The token of the process holding the lock on `path`. The holder writes it just after it
/// takes the lock, so a reader that lost the race may find the file empty for a moment: look
/// again for up to half a second before giving up.
fn holder_of(path: &Path) -> Option<LocalToken> {
    for _ in 0..50 {
        let token = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<LocalToken>(&b).ok());
        if token.is_some() {
            return token;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    None
}

/// The local side of a lease: a token file in the resume state directory, and an flock on it
/// held for the whole publication.
#[derive(Debug)]
struct LocalClaim {
    token: String,
    path: PathBuf,
    _lock: Flock<File>,
}

impl LocalClaim {
    fn take(dir: &Path, client: &Client, key: &str, id: Uuid) -> Result<LocalClaim> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        let name = format!("{}\n{}\n{key}", client.config().endpoint, client.bucket());
        let path = dir.join(format!("lease-{}.json", hex(&Md5::digest(name.as_bytes()))));
        let lock = match try_lock(&path)? {
            Some(lock) => lock,
            None => {
                let holder = match holder_of(&path) {
                    Some(token) => format!(" (pid {})", token.pid),
                    None => " (pid not yet written)".to_string(),
                };
                return Err(Error::Busy(format!(
                    "image {id} is being published to {} by another imsctl process of this \
                     store{holder}; lock {}",
                    client.target(key),
                    path.display()
                )));
            }
        };
        let previous = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<LocalToken>(&b).ok());
        let token = previous
            .map(|t| t.token)
            .unwrap_or_else(|| Uuid::new_v4().to_string());
        let record = LocalToken {
            token: token.clone(),
            pid: std::process::id(),
        };
        let bytes = serde_json::to_vec(&record)
            .map_err(|e| Error::Config(format!("cannot serialize the lease token: {e}")))?;
        // Written in place under the lock: a reader without the lock only wants the pid.
        let write = |mut f: &File| -> std::io::Result<()> {
            f.set_len(0)?;
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(0))?;
            f.write_all(&bytes)?;
            f.sync_all()
        };
        write(&lock).map_err(|e| Error::io("write", &path, e))?;
        Ok(LocalClaim {
            token,
            path,
            _lock: lock,
        })
    }

    /// The publication is over: the next one starts with a fresh token.
    fn forget(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Take an exclusive flock on `path` (created if missing) without waiting: None when another
/// process (or another open of the file in this one) holds it. The lock is on the file that is
/// at `path` once locked: a holder that removes the file when done cannot leave a waiter
/// holding a lock on the removed inode.
pub(super) fn try_lock(path: &Path) -> Result<Option<Flock<File>>> {
    use std::os::unix::fs::MetadataExt;
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::io("open", path, e))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, errno)) => return Err(Error::io("lock", path, errno.into())),
        };
        let held = lock.metadata().map_err(|e| Error::io("stat", path, e))?;
        match std::fs::metadata(path) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => return Ok(Some(lock)),
            // Removed or replaced by the previous holder after we opened it: lock the new one.
            _ => continue,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct LocalToken {
    token: String,
    pid: u32,
}

/// Does the server refuse a `PUT` with `If-None-Match: *` on an existing key? Asked once per
/// client, cached on disk per endpoint and bucket. The probe's first PUT also surfaces, at
/// once and with the server's own code, a missing bucket, a read-only key or a wrong region.
pub fn conditional_writes(client: &Client, root: &S3Url) -> Result<bool> {
    if let Some(known) = client.conditional_writes_known() {
        return Ok(known);
    }
    let cache = client
        .config()
        .cache_dir
        .as_ref()
        .map(|d| d.join("s3-conditional-writes.json"));
    let cache_key = format!("{} {}", client.config().endpoint, client.bucket());
    if let Some(known) = cache.as_deref().and_then(|c| cached(c, &cache_key)) {
        client.set_conditional_writes(known);
        return Ok(known);
    }
    let honoured = probe(client, root)?;
    client.set_conditional_writes(honoured);
    if let Some(path) = &cache {
        // A cache that cannot be written only costs a probe next time.
        let _ = store_cached(path, &cache_key, honoured);
    }
    Ok(honoured)
}

fn probe(client: &Client, root: &S3Url) -> Result<bool> {
    let key = root.join(&format!("{META_DIR}/probe-{}", Uuid::new_v4()));
    match client.put_bytes(&key, b"first", &[], None, true) {
        Ok(_) => {}
        Err(e) if e.status() == Some(501) => return Ok(false),
        Err(e) => return Err(e),
    }
    let second = client.put_bytes(&key, b"second", &[], None, true);
    let _ = client.delete_object(&key);
    match second {
        Ok(_) => Ok(false),
        Err(e) if e.is_precondition_failed() => Ok(true),
        Err(e) if e.status() == Some(501) => Ok(false),
        Err(e) => Err(e),
    }
}

#[derive(Serialize, Deserialize, Default)]
struct ProbeCache {
    /// "endpoint bucket" → result.
    servers: BTreeMap<String, ProbeResult>,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
struct ProbeResult {
    honoured: bool,
    probed: u64,
}

fn cached(path: &Path, key: &str) -> Option<bool> {
    let bytes = std::fs::read(path).ok()?;
    let cache: ProbeCache = serde_json::from_slice(&bytes).ok()?;
    let hit = cache.servers.get(key)?;
    (now_secs().saturating_sub(hit.probed) < PROBE_CACHE_TTL.as_secs()).then_some(hit.honoured)
}

fn store_cached(path: &Path, key: &str, honoured: bool) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut cache: ProbeCache = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    cache.servers.insert(
        key.to_string(),
        ProbeResult {
            honoured,
            probed: now_secs(),
        },
    );
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&serde_json::to_vec_pretty(&cache).map_err(std::io::Error::other)?)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_cache_round_trip_and_expiry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/cache.json");
        assert_eq!(cached(&path, "e b"), None);
        store_cached(&path, "e b", false).expect("store");
        store_cached(&path, "e c", true).expect("store");
        assert_eq!(cached(&path, "e b"), Some(false));
        assert_eq!(cached(&path, "e c"), Some(true));
        let mut cache: ProbeCache =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        cache.servers.get_mut("e b").expect("entry").probed -= PROBE_CACHE_TTL.as_secs() + 1;
        std::fs::write(&path, serde_json::to_vec(&cache).expect("json")).expect("write");
        assert_eq!(cached(&path, "e b"), None, "expired");
    }

    #[test]
    fn lease_keys_sit_outside_the_ims_layout() {
        let root = S3Url::parse("s3://bucket/site").expect("url");
        let id = Uuid::nil();
        assert_eq!(
            lease_key(&root, id),
            format!("site/.imsctl/leases/{id}.json")
        );
        assert!(lease_key(&root, id).starts_with(&leases_prefix(&root)));
    }
}
