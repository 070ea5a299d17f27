//! The store: records (images, jobs, public keys) and the local artifact backend.
//!
//! Layout of a store directory:
//!
//! ```text
//! <store>/lock                      flock(2) taken for every record update
//! <store>/config.toml               optional settings (`ca_cert = "/path/ca.crt"`)
//! <store>/images/<id>.json          image records
//! <store>/jobs/<id>.json            job records
//! <store>/public-keys/<id>.json     public-key records
//! <store>/artifacts/<image-id>/     rootfs, kernel, initrd, manifest.json
//! <store>/work/<job-id>/            job environments (0700: they hold image trees with setuid files)
//! ```
//!
//! Every record write is atomic (temp file in the same directory, fsync, rename, fsync of the
//! directory) and happens under the store lock, so concurrent imsctl processes never tear or lose
//! a record. Reads take no lock: a rename is atomic, a reader sees the old or the new record.
//!
//! Crash safety of images: artifacts are complete (and renamed into place) before the record that
//! points at them is written, and a deleted image loses its record before its artifacts. A crash
//! can therefore leave an artifacts directory without a record, never the reverse; `gc` removes
//! those orphans.

pub mod catalog;
pub mod lock;
pub mod records;

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use uuid::Uuid;

pub use catalog::ImageCatalog;
pub use lock::StoreLock;
pub use records::{
    Arch, ChangeReport, ImageRecord, JobNetwork, JobRecord, JobSettings, JobStatus, JobType,
    LINK_TYPE_FILE, Link, PackSpec, PublicKeyRecord, PublishTarget, Record, RecordKind, RootMode,
    SshContainer, Timestamp,
};

/// Errors of the store and of the artifact code. Each names what it was about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OS error is part of the message and not also a `source()`: printed once.
    #[error("failed to {op} {}: {cause}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error("invalid {kind} id {id:?}: not a UUID")]
    BadId { kind: RecordKind, id: String },
    #[error("no {kind} with id {id}")]
    NotFound { kind: RecordKind, id: String },
    #[error("{kind} {id} already exists")]
    AlreadyExists { kind: RecordKind, id: Uuid },
    #[error("{}: corrupt {what}", path.display())]
    Corrupt { path: PathBuf, what: String },
    /// Bad user input or a state that forbids the operation; the message says which and why.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A store error met while publishing to S3 travels with the transport's errors.
impl From<Error> for imsctl_s3::Error {
    fn from(e: Error) -> Self {
        imsctl_s3::Error::Caller(Box::new(e))
    }
}

/// Hashing a file (`artifacts::md5`) fails as the S3 transport's errors do.
impl From<imsctl_s3::Error> for Error {
    fn from(e: imsctl_s3::Error) -> Self {
        match e {
            imsctl_s3::Error::Io { op, path, cause } => Error::Io { op, path, cause },
            other => Error::Invalid(other.to_string()),
        }
    }
}

impl Error {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, cause: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            cause,
        }
    }

    /// True when the error means "there is no such record".
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}

/// The store's settings file, `<store>/config.toml`. Unknown keys are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct StoreConfig {
    /// CA certificate copied into every customized image (relative paths: from the store).
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
}

/// What `Store::gc` removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub removed: Vec<PathBuf>,
}

/// Name prefixes of the artifacts directory's scratch entries.
pub(crate) const STAGING_PREFIX: &str = ".staging-";
pub(crate) const TRASH_PREFIX: &str = ".trash-";

/// How long an orphan artifacts directory is left alone by `gc`: a publish renames the
/// directory into place and registers the record moments later, without holding the lock
/// in between.
pub const GC_GRACE: Duration = Duration::from_secs(3600);

/// An open store directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// Where the store lives when `--store` is not given: `IMSCTL_HOME`, else `/var/lib/imsctl` for
/// root, else `$XDG_DATA_HOME/imsctl` (an absolute XDG_DATA_HOME only, as the XDG spec says),
/// else `~/.local/share/imsctl`.
pub fn default_store_root(
    imsctl_home: Option<OsString>,
    is_root: bool,
    xdg_data_home: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf> {
    if let Some(dir) = imsctl_home.filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if is_root {
        return Ok(PathBuf::from("/var/lib/imsctl"));
    }
    if let Some(xdg) = xdg_data_home.map(PathBuf::from).filter(|p| p.is_absolute()) {
        return Ok(xdg.join("imsctl"));
    }
    match home.map(PathBuf::from).filter(|p| p.is_absolute()) {
        Some(home) => Ok(home.join(".local/share/imsctl")),
        None => Err(Error::Invalid(
            "cannot choose a store directory: HOME is not set; use --store DIR or IMSCTL_HOME"
                .into(),
        )),
    }
}

impl Store {
    /// Open the store at `explicit` (from `--store`), or at the default location.
    pub fn locate(explicit: Option<&Path>) -> Result<Store> {
        Store::open(Store::root_for(explicit)?)
    }

    /// Where [`Store::locate`] finds the store: `explicit`, else `IMSCTL_HOME`, else the
    /// default for who runs this process (decided before it enters a user namespace).
    pub fn root_for(explicit: Option<&Path>) -> Result<PathBuf> {
        match explicit {
            Some(dir) => Ok(dir.to_path_buf()),
            None => default_store_root(
                std::env::var_os("IMSCTL_HOME"),
                nix::unistd::geteuid().is_root(),
                std::env::var_os("XDG_DATA_HOME"),
                std::env::var_os("HOME"),
            ),
        }
    }

    /// Open (creating when missing) the store at `root`. The path is made absolute, because
    /// artifact links record absolute paths.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        let root = if root.is_absolute() {
            root
        } else {
            std::env::current_dir()
                .map_err(|e| Error::io("get the current directory for", &root, e))?
                .join(&root)
        };
        create_dir_with_mode(&root, 0o755)?;
        let store = Store { root };
        for kind in [RecordKind::Image, RecordKind::Job, RecordKind::PublicKey] {
            create_dir_with_mode(&store.records_dir(kind), 0o755)?;
        }
        create_dir_with_mode(&store.artifacts_dir(), 0o755)?;
        create_dir_with_mode(&store.work_root(), 0o700)?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn records_dir(&self, kind: RecordKind) -> PathBuf {
        self.root.join(kind.dir_name())
    }

    pub fn artifacts_dir(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    /// `<store>/artifacts/<image-id>`.
    pub fn image_artifacts_dir(&self, image_id: Uuid) -> PathBuf {
        self.artifacts_dir().join(image_id.to_string())
    }

    pub fn work_root(&self) -> PathBuf {
        self.root.join("work")
    }

    /// `<store>/work/<job-id>`: the job's environment (not created here).
    pub fn work_dir(&self, job_id: Uuid) -> PathBuf {
        self.work_root().join(job_id.to_string())
    }

    fn record_path(&self, kind: RecordKind, id: Uuid) -> PathBuf {
        self.records_dir(kind).join(format!("{id}.json"))
    }

    /// Take the store lock (blocks until free). Held for every record update.
    pub fn lock(&self) -> Result<StoreLock> {
        StoreLock::acquire(&self.root.join("lock"))
    }

    /// Read `<store>/config.toml`; a missing file is the default configuration.
    pub fn config(&self) -> Result<StoreConfig> {
        let path = self.root.join("config.toml");
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(StoreConfig::default()),
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        let mut config: StoreConfig = toml::from_str(&text).map_err(|e| Error::Corrupt {
            path: path.clone(),
            what: format!("configuration: {e}"),
        })?;
        if let Some(ca) = config.ca_cert.take() {
            config.ca_cert = Some(self.root.join(ca));
        }
        Ok(config)
    }

    /// Parse a record id given by the user; the error names the id.
    pub fn parse_id(kind: RecordKind, id: &str) -> Result<Uuid> {
        Uuid::parse_str(id.trim()).map_err(|_| Error::BadId {
            kind,
            id: id.to_string(),
        })
    }

    /// The record with this id (as typed by the user).
    pub fn get<R: Record>(&self, id: &str) -> Result<R> {
        self.get_by_id(Self::parse_id(R::KIND, id)?)
    }

    pub fn get_by_id<R: Record>(&self, id: Uuid) -> Result<R> {
        let path = self.record_path(R::KIND, id);
        match fs::read(&path) {
            Ok(bytes) => parse_record(&path, &bytes, id),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::NotFound {
                kind: R::KIND,
                id: id.to_string(),
            }),
            Err(e) => Err(Error::io("read", &path, e)),
        }
    }

    /// Every record of one kind, oldest first (ties by id), so listings are stable.
    pub fn list<R: Record>(&self) -> Result<Vec<R>> {
        let dir = self.records_dir(R::KIND);
        let mut records = Vec::new();
        for id in record_ids(&dir)? {
            let path = self.record_path(R::KIND, id);
            match fs::read(&path) {
                Ok(bytes) => records.push(parse_record::<R>(&path, &bytes, id)?),
                // Deleted between the directory read and now.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("read", &path, e)),
            }
        }
        records.sort_by_key(|r| (r.created(), r.id()));
        Ok(records)
    }

    /// Write a new record; fails if one with the same id exists.
    pub fn insert<R: Record>(&self, record: &R) -> Result<()> {
        let _lock = self.lock()?;
        self.write_record(record, false)
    }

    /// Write a record, replacing any with the same id.
    pub fn put<R: Record>(&self, record: &R) -> Result<()> {
        let _lock = self.lock()?;
        self.write_record(record, true)
    }

    /// Read-modify-write one record under the lock; `change` may refuse with an error, and then
    /// nothing is written. Returns the record as written.
    pub fn update<R: Record>(
        &self,
        id: Uuid,
        change: impl FnOnce(&mut R) -> Result<()>,
    ) -> Result<R> {
        let _lock = self.lock()?;
        let mut record: R = self.get_by_id(id)?;
        change(&mut record)?;
        if record.id() != id {
            return Err(Error::Invalid(format!(
                "{} {id}: an update may not change the record's id",
                R::KIND
            )));
        }
        self.write_record(&record, true)?;
        Ok(record)
    }

    /// Delete one record (only the record: see `delete_image` for images). Returns it.
    pub fn remove<R: Record>(&self, id: Uuid) -> Result<R> {
        let _lock = self.lock()?;
        self.remove_locked(id)
    }

    fn remove_locked<R: Record>(&self, id: Uuid) -> Result<R> {
        let record: R = self.get_by_id(id)?;
        let path = self.record_path(R::KIND, id);
        fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
        sync_dir(&self.records_dir(R::KIND))?;
        Ok(record)
    }

    /// Write under a lock the caller holds.
    pub(crate) fn write_record<R: Record>(&self, record: &R, replace: bool) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(record).map_err(|e| {
            Error::Invalid(format!("cannot serialize {} {}: {e}", R::KIND, record.id()))
        })?;
        bytes.push(b'\n');
        let path = self.record_path(R::KIND, record.id());
        match write_atomic(&path, &bytes, 0o644, replace) {
            Err(Error::Io { cause, .. }) if cause.kind() == io::ErrorKind::AlreadyExists => {
                Err(Error::AlreadyExists {
                    kind: R::KIND,
                    id: record.id(),
                })
            }
            other => other,
        }
    }

    /// Delete an image: its record first, then its local artifacts (so no record ever points at
    /// missing files), then orphans older than `GC_GRACE`. Refused while an unfinished job uses
    /// the image as its base.
    pub fn delete_image(&self, id: &str) -> Result<ImageRecord> {
        let id = Self::parse_id(RecordKind::Image, id)?;
        let trash = {
            let _lock = self.lock()?;
            // The record must exist (and the error name the id) before anything is touched.
            let _: ImageRecord = self.get_by_id(id)?;
            if let Some(job) = self
                .list::<JobRecord>()?
                .into_iter()
                .find(|j| j.artifact_id == id && !j.status.is_terminal())
            {
                return Err(Error::Invalid(format!(
                    "image {id} is the base of job {} (status {}); finish or delete the job first",
                    job.id, job.status
                )));
            }
            let record = self.remove_locked::<ImageRecord>(id)?;
            (record, self.move_to_trash(&self.image_artifacts_dir(id))?)
        };
        let (record, trash) = trash;
        if let Some(trash) = trash {
            fs::remove_dir_all(&trash).map_err(|e| Error::io("remove", &trash, e))?;
        }
        self.gc(GC_GRACE)?;
        Ok(record)
    }

    /// Rename a directory to a `.trash-` name in the artifacts dir (atomic, so a crash leaves
    /// either the whole directory or a trash entry `gc` removes). None when it does not exist.
    pub(crate) fn move_to_trash(&self, dir: &Path) -> Result<Option<PathBuf>> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let trash = self
            .artifacts_dir()
            .join(format!("{TRASH_PREFIX}{name}-{}", Uuid::new_v4().simple()));
        match fs::rename(dir, &trash) {
            Ok(()) => Ok(Some(trash)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("move to trash", dir, e)),
        }
    }

    /// Remove what interrupted runs left in the artifacts directory: trash, staging directories
    /// and image directories without a record, the last two only once older than `grace`
    /// (a publish in progress is younger).
    pub fn gc(&self, grace: Duration) -> Result<GcReport> {
        let _lock = self.lock()?;
        let dir = self.artifacts_dir();
        let entries = fs::read_dir(&dir).map_err(|e| Error::io("read directory", &dir, e))?;
        let mut report = GcReport::default();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read directory", &dir, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let remove = if name.starts_with(TRASH_PREFIX) {
                true
            } else if name.starts_with(STAGING_PREFIX) {
                older_than(&path, grace)?
            } else if let Ok(id) = Uuid::parse_str(&name) {
                !self.record_path(RecordKind::Image, id).exists() && older_than(&path, grace)?
            } else {
                false
            };
            if remove {
                remove_any(&path)?;
                report.removed.push(path);
            }
        }
        Ok(report)
    }
}

/// A record as the store reads it from `path`: JSON holding a record of kind `R` whose id is
/// `id` (the file's name). Public so that the fuzz targets reach it as the store does.
pub fn parse_record<R: Record>(path: &Path, bytes: &[u8], id: Uuid) -> Result<R> {
    let mut record: R = serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        what: format!("{} record: {e}", R::KIND),
    })?;
    if record.id() != id {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            what: format!(
                "{} record: its id {} does not match its file name",
                R::KIND,
                record.id()
            ),
        });
    }
    record.upgrade();
    Ok(record)
}

/// Ids of the records in a directory: `<uuid>.json` files; temp files and strays are skipped.
fn record_ids(dir: &Path) -> Result<Vec<Uuid>> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))?;
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        if let Ok(id) = Uuid::parse_str(stem) {
            ids.push(id);
        }
    }
    Ok(ids)
}

fn older_than(path: &Path, age: Duration) -> Result<bool> {
    let meta = fs::symlink_metadata(path).map_err(|e| Error::io("stat", path, e))?;
    let modified = meta.modified().map_err(|e| Error::io("stat", path, e))?;
    Ok(SystemTime::now()
        .duration_since(modified)
        .map(|d| d >= age)
        .unwrap_or(false))
}

fn remove_any(path: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(path).map_err(|e| Error::io("stat", path, e))?;
    let result = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    result.map_err(|e| Error::io("remove", path, e))
}

/// Create a directory (and its parents) when missing; a new one gets exactly `mode`.
pub(crate) fn create_dir_with_mode(path: &Path, mode: u32) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
    {
        Ok(()) => {}
        Err(e) => return Err(Error::io("create directory", path, e)),
    }
    // The umask may have taken bits away; the store's layout wants exactly `mode`.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("set permissions of", path, e))
}

/// fsync a directory, making renames and removals in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let handle = File::open(dir).map_err(|e| Error::io("open directory", dir, e))?;
    handle
        .sync_all()
        .map_err(|e| Error::io("sync directory", dir, e))
}

/// Write `bytes` to `path` atomically: a temp file in the same directory, fsync, rename over
/// (or, with `replace == false`, link into place failing with AlreadyExists), fsync the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32, replace: bool) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::Invalid(format!("{}: no parent directory", path.display())))?;
    let (mut tmp, guard) = crate::fsutil::temp_beside(path, mode)
        .map_err(|e| Error::io("create a temporary file in", dir, e))?;
    tmp.write_all(bytes)
        .map_err(|e| Error::io("write", tmp.path(), e))?;
    // The mode exactly, whatever the umask: records are private or not by design.
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("set permissions of", tmp.path(), e))?;
    // Durable: a record that was reported written survives a crash.
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io("sync", tmp.path(), e))?;
    crate::fsutil::commit(tmp, guard, path, replace)
        .map_err(|e| Error::io("rename into place", path, e))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("store")).expect("open store");
        (dir, store)
    }

    #[test]
    fn default_location_rules() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(
            default_store_root(os("/srv/ims"), true, None, None).ok(),
            Some(PathBuf::from("/srv/ims"))
        );
        assert_eq!(
            default_store_root(os(""), true, None, None).ok(),
            Some(PathBuf::from("/var/lib/imsctl"))
        );
        assert_eq!(
            default_store_root(None, false, os("/x/data"), os("/home/u")).ok(),
            Some(PathBuf::from("/x/data/imsctl"))
        );
        // A relative XDG_DATA_HOME is invalid per the spec and ignored.
        assert_eq!(
            default_store_root(None, false, os("rel"), os("/home/u")).ok(),
            Some(PathBuf::from("/home/u/.local/share/imsctl"))
        );
        assert!(default_store_root(None, false, None, None).is_err());
    }

    #[test]
    fn open_creates_the_layout() {
        let (_dir, store) = store();
        for sub in ["images", "jobs", "public-keys", "artifacts", "work"] {
            assert!(store.root().join(sub).is_dir(), "{sub}");
        }
        let mode = fs::metadata(store.work_root())
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
        // Opening again is fine.
        Store::open(store.root()).expect("reopen");
    }

    #[test]
    fn insert_get_list_remove() {
        let (_dir, store) = store();
        let a = PublicKeyRecord::new("a key", "ssh-ed25519 AAAA a");
        let b = PublicKeyRecord::new("b key", "ssh-ed25519 AAAA b");
        store.insert(&a).expect("insert a");
        store.insert(&b).expect("insert b");
        assert!(matches!(store.insert(&a), Err(Error::AlreadyExists { .. })));
        let got: PublicKeyRecord = store.get(&a.id.to_string()).expect("get");
        assert_eq!(got, a);
        let mut all: Vec<PublicKeyRecord> = store.list().expect("list");
        // Both were created within the same clock tick here: compare regardless of order.
        all.sort_by_key(|r| r.id);
        let mut expected = vec![a.clone(), b.clone()];
        expected.sort_by_key(|r| r.id);
        assert_eq!(all, expected);
        store.remove::<PublicKeyRecord>(a.id).expect("remove");
        let err = store
            .get::<PublicKeyRecord>(&a.id.to_string())
            .expect_err("gone");
        assert!(err.is_not_found());
        assert_eq!(err.to_string(), format!("no public key with id {}", a.id));
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(store.records_dir(RecordKind::PublicKey))
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![OsString::from(format!("{}.json", b.id))]);
    }

    #[test]
    fn bad_ids_are_named() {
        let (_dir, store) = store();
        let err = store
            .get::<ImageRecord>("../../etc/passwd")
            .expect_err("bad id");
        assert_eq!(
            err.to_string(),
            "invalid image id \"../../etc/passwd\": not a UUID"
        );
        let missing = Uuid::new_v4();
        let err = store
            .get::<JobRecord>(&missing.to_string())
            .expect_err("missing");
        assert_eq!(err.to_string(), format!("no job with id {missing}"));
    }

    #[test]
    fn corrupt_record_names_the_file() {
        let (_dir, store) = store();
        let id = Uuid::new_v4();
        let path = store
            .records_dir(RecordKind::Image)
            .join(format!("{id}.json"));
        fs::write(&path, b"{ not json").expect("write");
        let err = store.get_by_id::<ImageRecord>(id).expect_err("corrupt");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert!(store.list::<ImageRecord>().is_err());
    }

    #[test]
    fn update_keeps_unknown_fields() {
        let (_dir, store) = store();
        let id = Uuid::new_v4();
        let path = store
            .records_dir(RecordKind::Image)
            .join(format!("{id}.json"));
        let newer = serde_json::json!({
            "created": "2018-12-04T17:25:52.482514+00:00",
            "id": id.to_string(),
            "name": "base",
            "arch": "x86_64",
            "labels": {"site": "a", "nothing": null},
            "generation": 7
        });
        fs::write(&path, serde_json::to_vec(&newer).expect("json")).expect("write");
        let updated = store
            .update::<ImageRecord>(id, |r| {
                r.name = "renamed".into();
                Ok(())
            })
            .expect("update");
        assert_eq!(updated.name, "renamed");
        let on_disk: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).expect("read")).expect("json");
        assert_eq!(
            on_disk["labels"],
            serde_json::json!({"site": "a", "nothing": null})
        );
        assert_eq!(on_disk["generation"], 7);
        assert_eq!(on_disk["name"], "renamed");
        assert_eq!(on_disk["created"], "2018-12-04T17:25:52.482514+00:00");
    }

    #[test]
    fn refused_update_writes_nothing() {
        let (_dir, store) = store();
        let rec = ImageRecord::new("x", Arch::X86_64, None);
        store.insert(&rec).expect("insert");
        let err = store.update::<ImageRecord>(rec.id, |r| {
            r.name = "y".into();
            Err(Error::Invalid("no".into()))
        });
        assert!(err.is_err());
        assert_eq!(
            store.get_by_id::<ImageRecord>(rec.id).expect("get").name,
            "x"
        );
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let (_dir, store) = store();
        let shared = Uuid::new_v4();
        let mut counter = JobRecord::new_customize(Uuid::new_v4(), "counter", Arch::X86_64);
        counter.id = shared;
        counter.build_env_size = 0;
        store.insert(&counter).expect("insert counter");
        std::thread::scope(|scope| {
            for t in 0..2 {
                let store = store.clone();
                scope.spawn(move || {
                    for i in 0..100 {
                        let rec = ImageRecord::new(format!("t{t}-{i}"), Arch::X86_64, None);
                        store.insert(&rec).expect("insert");
                        // Read-modify-write of one shared record: lost updates would show.
                        store
                            .update::<JobRecord>(shared, |j| {
                                j.build_env_size += 1;
                                Ok(())
                            })
                            .expect("update");
                    }
                });
            }
        });
        let all: Vec<ImageRecord> = store.list().expect("list");
        assert_eq!(all.len(), 200);
        let job: JobRecord = store.get_by_id(shared).expect("get");
        assert_eq!(job.build_env_size, 200);
    }

    #[test]
    fn concurrent_processes_lose_nothing() {
        // Two real processes (this test binary re-run on a helper test) writing to one store:
        // flock must serialise them, not only threads in one process.
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let (_dir, store) = store();
        let children: Vec<_> = (0..2)
            .map(|_| {
                std::process::Command::new(&exe)
                    .args([
                        "--exact",
                        "store::tests::child_writer",
                        "--ignored",
                        "--nocapture",
                        "--test-threads=1",
                    ])
                    .env("IMSCTL_TEST_STORE", store.root())
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("spawn child")
            })
            .collect();
        for mut child in children {
            assert!(child.wait().expect("wait").success());
        }
        let all: Vec<ImageRecord> = store.list().expect("list");
        assert_eq!(all.len(), 200);
    }

    /// Helper for `concurrent_processes_lose_nothing`: run only as its child.
    #[test]
    #[ignore]
    fn child_writer() {
        let Some(root) = std::env::var_os("IMSCTL_TEST_STORE") else {
            return;
        };
        let store = Store::open(PathBuf::from(root)).expect("open");
        for i in 0..100 {
            store
                .insert(&ImageRecord::new(format!("p{i}"), Arch::X86_64, None))
                .expect("insert");
        }
    }

    #[test]
    fn config_reads_ca_cert_relative_to_store() {
        let (_dir, store) = store();
        assert_eq!(store.config().expect("no config"), StoreConfig::default());
        fs::write(
            store.root().join("config.toml"),
            "ca_cert = \"certs/ca.crt\"\nother = 1\n",
        )
        .expect("write");
        assert_eq!(
            store.config().expect("config").ca_cert,
            Some(store.root().join("certs/ca.crt"))
        );
        fs::write(store.root().join("config.toml"), "ca_cert = 5\n").expect("write");
        let err = store.config().expect_err("bad config");
        assert!(err.to_string().contains("config.toml"), "{err}");
    }

    #[test]
    fn gc_removes_old_orphans_and_trash_only() {
        let (_dir, store) = store();
        let kept = ImageRecord::new("kept", Arch::X86_64, None);
        store.insert(&kept).expect("insert");
        fs::create_dir(store.image_artifacts_dir(kept.id)).expect("mkdir");
        let orphan = store.image_artifacts_dir(Uuid::new_v4());
        fs::create_dir(&orphan).expect("mkdir");
        let trash = store.artifacts_dir().join(format!("{TRASH_PREFIX}x"));
        fs::create_dir(&trash).expect("mkdir");
        // A young orphan may be a publish in progress: kept.
        let report = store.gc(GC_GRACE).expect("gc");
        assert_eq!(report.removed, vec![trash.clone()]);
        assert!(orphan.exists());
        let report = store.gc(Duration::ZERO).expect("gc");
        assert_eq!(report.removed, vec![orphan.clone()]);
        assert!(store.image_artifacts_dir(kept.id).exists());
    }

    #[test]
    fn delete_image_refuses_while_a_job_uses_it() {
        let (_dir, store) = store();
        let image = ImageRecord::new("base", Arch::X86_64, None);
        store.insert(&image).expect("insert");
        fs::create_dir(store.image_artifacts_dir(image.id)).expect("mkdir");
        let mut job = JobRecord::new_customize(image.id, "out", Arch::X86_64);
        job.status = JobStatus::WaitingOnUser;
        store.insert(&job).expect("insert job");
        let err = store
            .delete_image(&image.id.to_string())
            .expect_err("in use");
        assert!(err.to_string().contains(&job.id.to_string()), "{err}");
        assert!(store.image_artifacts_dir(image.id).exists());
        store
            .update::<JobRecord>(job.id, |j| {
                j.status = JobStatus::Success;
                Ok(())
            })
            .expect("finish job");
        store.delete_image(&image.id.to_string()).expect("delete");
        assert!(!store.image_artifacts_dir(image.id).exists());
        assert!(
            store
                .get_by_id::<ImageRecord>(image.id)
                .expect_err("gone")
                .is_not_found()
        );
        let leftovers: Vec<_> = fs::read_dir(store.artifacts_dir())
            .expect("readdir")
            .collect();
        assert!(leftovers.is_empty());
        let err = store
            .delete_image(&image.id.to_string())
            .expect_err("twice");
        assert_eq!(err.to_string(), format!("no image with id {}", image.id));
    }
}
