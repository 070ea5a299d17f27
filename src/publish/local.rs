//! The local artifact backend: `<store>/artifacts/<image-id>/{rootfs,kernel,initrd,manifest.json}`.
//!
//! Links in the manifest and in the image record are `type = "file"` with `path` the absolute
//! path of the file (not a file:// URL: no escaping questions, and `type` already says what it
//! is); `etag` is the file's md5, which is what S3 reports for a single-part upload.
//!
//! A publish builds everything in a `.staging-<id>-*` directory next to the final one, fsyncs it
//! and renames it into place (RENAME_NOREPLACE), so `<image-id>/` is either complete or absent.
//! On failure the staging directory is removed and files that were moved in are moved back.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use rayon::prelude::*;
use uuid::Uuid;

use crate::artifacts::manifest::{
    ArtifactKind, MANIFEST_FILE, MANIFEST_MIME, Manifest, ManifestArtifact,
};
use crate::artifacts::md5::{copy_with_md5, md5_file};
use crate::interrupt::{Kind, TempGuard};
use crate::store::records::ExtraFields;
use crate::store::{
    Arch, Error, ImageRecord, LINK_TYPE_FILE, Link, RecordKind, Result, STAGING_PREFIX, Store,
    Timestamp, sync_dir,
};

/// A published image's artifacts in the local store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageArtifacts {
    pub image_id: Uuid,
    /// `<store>/artifacts/<image-id>`.
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// What the image record's `link` is: the manifest, its md5 as etag.
    pub manifest_link: Link,
}

impl ImageArtifacts {
    /// The `ims_image_artifacts` list of ims_python_helper's result: the manifest's entries and
    /// the manifest itself (type application/json).
    pub fn ims_image_artifacts(&self) -> Vec<ManifestArtifact> {
        let mut all = self.manifest.artifacts.clone();
        all.push(ManifestArtifact {
            link: self.manifest_link.clone(),
            md5: self.manifest_link.etag.clone(),
            artifact_type: MANIFEST_MIME.to_string(),
            extra: ExtraFields::new(),
        });
        all
    }

    /// The image record that points at these artifacts (same id).
    pub fn image_record(&self, name: impl Into<String>, arch: Arch) -> ImageRecord {
        ImageRecord::with_id(self.image_id, name, arch, Some(self.manifest_link.clone()))
    }

    /// Register the image record for these artifacts. If that fails, the artifacts are removed
    /// too: no half-made image stays.
    pub fn register(
        &self,
        store: &Store,
        name: impl Into<String>,
        arch: Arch,
    ) -> Result<ImageRecord> {
        let record = self.image_record(name, arch);
        match store.insert(&record) {
            Ok(()) => Ok(record),
            Err(e) => {
                // The insert error is what matters; a failed cleanup is left for `gc`.
                let _ = self.discard(store);
                Err(e)
            }
        }
    }

    /// Remove these artifacts (used when the image could not be registered).
    pub fn discard(&self, store: &Store) -> Result<()> {
        if let Some(trash) = store.move_to_trash(&self.dir)? {
            fs::remove_dir_all(&trash).map_err(|e| Error::io("remove", &trash, e))?;
        }
        Ok(())
    }
}

/// How a source file gets into the staging directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transfer {
    /// rename(2) (copy + remove across filesystems): the caller hands the file over.
    Move,
    /// Hard link when on the same filesystem, else copy: the caller keeps its file.
    LinkOrCopy,
    /// Always copy (kernel and initrd live inside an image root that must not share inodes).
    Copy,
}

/// What a publish did to the caller's files, to undo or finish it.
#[derive(Default)]
struct Handover<'a> {
    /// Renamed into staging: renamed back if the publish fails.
    moved: Vec<(PathBuf, &'a Path)>,
    /// Moves done as copies (other filesystem): the sources go once the publish is committed.
    remove_after_commit: Vec<&'a Path>,
}

struct Input<'a> {
    kind: ArtifactKind,
    src: &'a Path,
    transfer: Transfer,
    /// The file's md5 when the caller computed it already (a download hashed on the way): a
    /// file moved in is then not read again.
    known_md5: Option<&'a str>,
}

/// Publish a customized image's artifacts to the local store under `image_id`. The rootfs is
/// hard-linked when possible (else copied); kernel and initrd are copied (pass paths already
/// resolved inside the image root: `find_boot_files` returns them). The caller then registers
/// the record (`ImageArtifacts::register`).
pub fn publish_local(
    store: &Store,
    image_id: Uuid,
    rootfs: &Path,
    kernel: &Path,
    initrd: &Path,
) -> Result<ImageArtifacts> {
    publish(
        store,
        image_id,
        &[
            Input {
                kind: ArtifactKind::Rootfs,
                src: rootfs,
                transfer: Transfer::LinkOrCopy,
                known_md5: None,
            },
            Input {
                kind: ArtifactKind::Kernel,
                src: kernel,
                transfer: Transfer::Copy,
                known_md5: None,
            },
            Input {
                kind: ArtifactKind::Initrd,
                src: initrd,
                transfer: Transfer::Copy,
                known_md5: None,
            },
        ],
    )
}

impl Store {
    /// `images import`, store side: take an already-built SquashFS (moved, not copied, when on
    /// the same filesystem) plus an optional kernel and initrd (copied), publish them under a new
    /// image id and write the image record. On failure nothing is registered, nothing stays in
    /// the store and a moved rootfs is put back where it was.
    pub fn register_image(
        &self,
        name: &str,
        arch: Arch,
        rootfs: &Path,
        kernel: Option<&Path>,
        initrd: Option<&Path>,
    ) -> Result<ImageRecord> {
        let mut inputs = vec![Input {
            kind: ArtifactKind::Rootfs,
            src: rootfs,
            transfer: Transfer::Move,
            known_md5: None,
        }];
        if let Some(kernel) = kernel {
            inputs.push(Input {
                kind: ArtifactKind::Kernel,
                src: kernel,
                transfer: Transfer::Copy,
                known_md5: None,
            });
        }
        if let Some(initrd) = initrd {
            inputs.push(Input {
                kind: ArtifactKind::Initrd,
                src: initrd,
                transfer: Transfer::Copy,
                known_md5: None,
            });
        }
        self.register_inputs(name, arch, rootfs, &inputs)
    }

    /// `images import s3://…`, store side: files this process downloaded (into the store's
    /// work area) and hashed on the way, each `(kind, path, md5)`, rootfs first. They are moved
    /// in, not read again; each is fsynced once, here.
    pub fn register_downloaded(
        &self,
        name: &str,
        arch: Arch,
        files: &[(ArtifactKind, &Path, &str)],
    ) -> Result<ImageRecord> {
        let inputs: Vec<Input<'_>> = files
            .iter()
            .map(|(kind, path, md5)| Input {
                kind: *kind,
                src: path,
                transfer: Transfer::Move,
                known_md5: Some(md5),
            })
            .collect();
        let rootfs = inputs
            .iter()
            .find(|i| i.kind == ArtifactKind::Rootfs)
            .map(|i| i.src)
            .ok_or_else(|| Error::Invalid("an image needs a rootfs".into()))?;
        self.register_inputs(name, arch, rootfs, &inputs)
    }

    fn register_inputs(
        &self,
        name: &str,
        arch: Arch,
        rootfs: &Path,
        inputs: &[Input<'_>],
    ) -> Result<ImageRecord> {
        let artifacts = publish(self, Uuid::new_v4(), inputs)?;
        let record = artifacts.image_record(name, arch);
        if let Err(e) = self.insert(&record) {
            // Hand the rootfs back before the artifacts go; both are best effort, the insert
            // error is the one to report.
            let _ = fs::rename(artifacts.dir.join(ArtifactKind::Rootfs.file_name()), rootfs);
            let _ = artifacts.discard(self);
            return Err(e);
        }
        Ok(record)
    }
}

fn publish(store: &Store, image_id: Uuid, inputs: &[Input<'_>]) -> Result<ImageArtifacts> {
    let final_dir = store.image_artifacts_dir(image_id);
    if final_dir.exists() {
        return Err(Error::AlreadyExists {
            kind: RecordKind::Image,
            id: image_id,
        });
    }
    let artifacts_dir = store.artifacts_dir();
    // Registered for removal should a signal end the process while it is filled (hashing a
    // large rootfs takes seconds); once renamed into place, its old name is simply gone.
    let (staging, _interrupt_guard) = TempGuard::create(Kind::Dir, || {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{STAGING_PREFIX}{image_id}-"))
            .tempdir_in(&artifacts_dir)?;
        let path = dir.path().to_path_buf();
        Ok((dir, path))
    })
    .map_err(|e| Error::io("create a staging directory in", &artifacts_dir, e))?;
    fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::io("set permissions of", staging.path(), e))?;

    let mut handover = Handover::default();
    let result = stage_and_commit(staging.path(), &final_dir, inputs, &mut handover);
    match result {
        Ok(manifest_and_link) => {
            // Renamed into place: the TempDir must not remove anything any more.
            let _ = staging.keep();
            sync_dir(&artifacts_dir)?;
            // The caller handed these over and they are safely copied; a failure to remove one
            // only leaves the caller's own file behind, so it does not undo the publish.
            for src in handover.remove_after_commit {
                let _ = fs::remove_file(src);
            }
            let (manifest, manifest_link) = manifest_and_link;
            Ok(ImageArtifacts {
                image_id,
                dir: final_dir,
                manifest,
                manifest_link,
            })
        }
        Err(e) => {
            for (staged, src) in handover.moved {
                let _ = fs::rename(&staged, src);
            }
            // Dropping `staging` removes the directory and what is left in it.
            Err(e)
        }
    }
}

/// Fill the staging directory, write the manifest, rename it to `final_dir`.
fn stage_and_commit<'a>(
    staging: &Path,
    final_dir: &Path,
    inputs: &[Input<'a>],
    handover: &mut Handover<'a>,
) -> Result<(Manifest, Link)> {
    let mut entries = Vec::with_capacity(inputs.len());
    for input in inputs {
        let staged = staging.join(input.kind.file_name());
        let md5 = transfer(input, &staged, handover)?;
        entries.push(ManifestArtifact {
            link: file_link(&final_dir.join(input.kind.file_name()), &md5),
            md5,
            artifact_type: input.kind.mime_type().to_string(),
            extra: ExtraFields::new(),
        });
    }
    let manifest = Manifest::new(Timestamp::now(), entries);
    let json = manifest.to_json()?;
    let manifest_path = staging.join(MANIFEST_FILE);
    write_new_file(&manifest_path, json.as_bytes())?;
    let manifest_md5 = crate::artifacts::md5::hex(&Md5::digest(json.as_bytes()));
    sync_dir(staging)?;
    renameat2(
        AT_FDCWD,
        staging,
        AT_FDCWD,
        final_dir,
        RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(|e| Error::io("rename the staged artifacts to", final_dir, e.into()))?;
    Ok((
        manifest,
        file_link(&final_dir.join(MANIFEST_FILE), &manifest_md5),
    ))
}

fn file_link(path: &Path, md5: &str) -> Link {
    Link {
        link_type: LINK_TYPE_FILE.to_string(),
        path: path.display().to_string(),
        etag: md5.to_string(),
    }
}

/// Bring one input into the staging dir; returns its md5. The staged file is 0644 and fsynced.
fn transfer<'a>(input: &Input<'a>, staged: &Path, handover: &mut Handover<'a>) -> Result<String> {
    let src = input.src;
    let meta = fs::metadata(src).map_err(|e| Error::io("read", src, e))?;
    if !meta.is_file() {
        return Err(Error::Invalid(format!(
            "{}: the {} artifact is not a regular file",
            src.display(),
            input.kind
        )));
    }
    // rename and link act on a symlink itself, not on what it points to: copy those instead.
    let is_symlink = fs::symlink_metadata(src)
        .map_err(|e| Error::io("read", src, e))?
        .file_type()
        .is_symlink();
    let how = if is_symlink {
        Transfer::Copy
    } else {
        input.transfer
    };
    let placed_without_copy = match how {
        Transfer::Move => match fs::rename(src, staged) {
            Ok(()) => {
                handover.moved.push((staged.to_path_buf(), src));
                true
            }
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => false,
            Err(e) => return Err(Error::io("move into the store", src, e)),
        },
        // Any failure to link (other filesystem, no permission, links not supported) falls
        // back to a copy, which reports its own errors.
        Transfer::LinkOrCopy => fs::hard_link(src, staged).is_ok(),
        Transfer::Copy => false,
    };
    let md5 = if placed_without_copy {
        match input.known_md5 {
            Some(md5) => md5.to_ascii_lowercase(),
            None => md5_file(staged)?,
        }
    } else {
        let mut out = create_new_file(staged)?;
        let md5 = copy_with_md5(src, &mut out, staged)?;
        out.sync_all().map_err(|e| Error::io("sync", staged, e))?;
        md5
    };
    fs::set_permissions(staged, fs::Permissions::from_mode(0o644))
        .map_err(|e| Error::io("set permissions of", staged, e))?;
    if placed_without_copy {
        File::open(staged)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io("sync", staged, e))?;
    }
    if how == Transfer::Move && !placed_without_copy {
        // Copied across filesystems: the source is removed only once the publish is committed.
        handover.remove_after_commit.push(src);
    }
    Ok(md5)
}

fn create_new_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io("create", path, e))
}

fn write_new_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = create_new_file(path)?;
    file.write_all(bytes)
        .map_err(|e| Error::io("write", path, e))?;
    // Exactly 0644 like the other artifacts: the umask (077, say) must not hide the manifest
    // from the other users the store serves.
    file.set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(|e| Error::io("set permissions of", path, e))?;
    file.sync_all().map_err(|e| Error::io("sync", path, e))
}

/// Outcome of re-hashing one artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyStatus {
    Ok,
    Mismatch {
        actual: String,
    },
    /// Unreadable or absent; the text says why.
    Missing(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyEntry {
    /// `rootfs`, `kernel`, `initrd`, `manifest.json`, or the artifact's type when unknown.
    pub name: String,
    pub path: String,
    pub expected: String,
    pub status: VerifyStatus,
}

impl std::fmt::Display for VerifyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.status {
            VerifyStatus::Ok => write!(f, "OK        {:<13} {}", self.name, self.path),
            VerifyStatus::Mismatch { actual } => write!(
                f,
                "MISMATCH  {:<13} {} (expected md5 {}, found {actual})",
                self.name, self.path, self.expected
            ),
            VerifyStatus::Missing(why) => {
                write!(f, "MISSING   {:<13} {} ({why})", self.name, self.path)
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub image_id: Uuid,
    pub entries: Vec<VerifyEntry>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.entries.iter().all(|e| e.status == VerifyStatus::Ok)
    }

    pub fn failures(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.status != VerifyStatus::Ok)
            .count()
    }
}

/// `images verify`: re-hash the manifest against the record's etag and every artifact against
/// the manifest's md5. Artifacts that are not local files are an error (S3 is another backend).
pub fn verify_image(store: &Store, id: &str) -> Result<VerifyReport> {
    let record: ImageRecord = store.get(id)?;
    let link = record.link.as_ref().ok_or_else(|| {
        Error::Invalid(format!(
            "image {}: the record has no link to a manifest",
            record.id
        ))
    })?;
    require_file_link(record.id, link)?;
    let manifest_path = PathBuf::from(&link.path);
    let mut entries = vec![check(MANIFEST_FILE.to_string(), link, &link.etag)];
    if entries[0].status != VerifyStatus::Ok && !manifest_path.exists() {
        return Ok(VerifyReport {
            image_id: record.id,
            entries,
        });
    }
    let manifest = Manifest::read(&manifest_path)?;
    for artifact in &manifest.artifacts {
        require_file_link(record.id, &artifact.link)?;
    }
    let checked: Vec<VerifyEntry> = manifest
        .artifacts
        .par_iter()
        .map(|a| {
            let name = ArtifactKind::from_mime_type(&a.artifact_type)
                .map(|k| k.file_name().to_string())
                .unwrap_or_else(|| a.artifact_type.clone());
            check(name, &a.link, &a.md5)
        })
        .collect();
    entries.extend(checked);
    Ok(VerifyReport {
        image_id: record.id,
        entries,
    })
}

fn require_file_link(image_id: Uuid, link: &Link) -> Result<()> {
    if link.link_type == LINK_TYPE_FILE {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "image {image_id}: {} is a {:?} link; only local (\"file\") artifacts can be verified here",
        link.path, link.link_type
    )))
}

fn check(name: String, link: &Link, expected: &str) -> VerifyEntry {
    let status = match md5_file(Path::new(&link.path)) {
        Ok(actual) if actual.eq_ignore_ascii_case(expected) => VerifyStatus::Ok,
        Ok(actual) => VerifyStatus::Mismatch { actual },
        Err(imsctl_s3::Error::Io { cause, .. }) => VerifyStatus::Missing(cause.to_string()),
        Err(other) => VerifyStatus::Missing(other.to_string()),
    };
    VerifyEntry {
        name,
        path: link.path.clone(),
        expected: expected.to_string(),
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::CustomizeResult;
    use crate::store::JobRecord;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        rootfs: PathBuf,
        kernel: PathBuf,
        initrd: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("store")).expect("store");
        let work = store.work_dir(Uuid::new_v4());
        fs::create_dir_all(work.join("root/boot")).expect("mkdir");
        let rootfs = work.join("image.sqsh");
        fs::write(&rootfs, b"hsqs rootfs bytes").expect("write");
        let kernel = work.join("root/boot/vmlinuz-6.1.0");
        fs::write(&kernel, b"kernel bytes").expect("write");
        let initrd = work.join("root/boot/initrd.img-6.1.0");
        fs::write(&initrd, b"initrd bytes").expect("write");
        Fixture {
            _dir: dir,
            store,
            rootfs,
            kernel,
            initrd,
        }
    }

    fn md5_of(bytes: &[u8]) -> String {
        crate::artifacts::md5::hex(&Md5::digest(bytes))
    }

    fn artifacts_entries(store: &Store) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(store.artifacts_dir())
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn publish_writes_the_ims_layout_and_manifest() {
        let f = fixture();
        let id = Uuid::new_v4();
        let published =
            publish_local(&f.store, id, &f.rootfs, &f.kernel, &f.initrd).expect("publish");
        let dir = f.store.image_artifacts_dir(id);
        assert_eq!(published.dir, dir);
        for (name, content) in [
            ("rootfs", &b"hsqs rootfs bytes"[..]),
            ("kernel", b"kernel bytes"),
            ("initrd", b"initrd bytes"),
        ] {
            let path = dir.join(name);
            assert_eq!(fs::read(&path).expect(name), content);
            let entry = published
                .manifest
                .artifacts
                .iter()
                .find(|a| a.link.path == path.display().to_string())
                .expect("entry");
            assert_eq!(entry.md5, md5_of(content));
            assert_eq!(entry.link.etag, entry.md5);
            assert_eq!(entry.link.link_type, "file");
            let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode, 0o644, "{name}");
        }
        let types: Vec<&str> = published
            .manifest
            .artifacts
            .iter()
            .map(|a| a.artifact_type.as_str())
            .collect();
        assert_eq!(
            types,
            [
                "application/vnd.cray.image.rootfs.squashfs",
                "application/vnd.cray.image.kernel",
                "application/vnd.cray.image.initrd"
            ]
        );
        // On disk: exactly the bytes of the manifest we return, and the link's etag is its md5.
        let on_disk = fs::read(dir.join(MANIFEST_FILE)).expect("manifest");
        assert_eq!(
            on_disk,
            published.manifest.to_json().expect("json").into_bytes()
        );
        assert_eq!(published.manifest_link.etag, md5_of(&on_disk));
        assert_eq!(
            Manifest::read(&dir.join(MANIFEST_FILE)).expect("parse"),
            published.manifest
        );
        // The caller keeps its files (rootfs hard-linked or copied, kernel/initrd copied).
        assert!(f.rootfs.exists() && f.kernel.exists() && f.initrd.exists());
        assert_eq!(artifacts_entries(&f.store), vec![id.to_string()]);

        let record = published
            .register(&f.store, "demo", Arch::X86_64)
            .expect("register");
        assert_eq!(record.id, id);
        let report = verify_image(&f.store, &id.to_string()).expect("verify");
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.entries.len(), 4);
    }

    #[test]
    fn failed_publish_leaves_nothing() {
        let f = fixture();
        let id = Uuid::new_v4();
        let missing = f.kernel.with_file_name("vmlinuz-missing");
        let err = publish_local(&f.store, id, &f.rootfs, &missing, &f.initrd)
            .expect_err("missing kernel");
        assert!(err.to_string().contains("vmlinuz-missing"), "{err}");
        assert!(
            artifacts_entries(&f.store).is_empty(),
            "{:?}",
            artifacts_entries(&f.store)
        );
        assert!(f.rootfs.exists());
        // A directory is not an artifact.
        let err = publish_local(
            &f.store,
            id,
            &f.rootfs,
            f.kernel.parent().expect("dir"),
            &f.initrd,
        )
        .expect_err("dir");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert!(artifacts_entries(&f.store).is_empty());
    }

    #[test]
    fn publishing_over_an_existing_image_is_refused() {
        let f = fixture();
        let id = Uuid::new_v4();
        publish_local(&f.store, id, &f.rootfs, &f.kernel, &f.initrd).expect("first");
        let err = publish_local(&f.store, id, &f.rootfs, &f.kernel, &f.initrd).expect_err("second");
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        assert_eq!(artifacts_entries(&f.store), vec![id.to_string()]);
    }

    #[test]
    fn register_image_moves_the_rootfs_and_rolls_back_on_failure() {
        let f = fixture();
        let record = f
            .store
            .register_image("base", Arch::Aarch64, &f.rootfs, None, None)
            .expect("register");
        assert!(!f.rootfs.exists(), "the rootfs is moved, not copied");
        let dir = f.store.image_artifacts_dir(record.id);
        assert_eq!(
            fs::read(dir.join("rootfs")).expect("read"),
            b"hsqs rootfs bytes"
        );
        assert!(!dir.join("kernel").exists());
        let manifest = Manifest::read(&dir.join(MANIFEST_FILE)).expect("manifest");
        assert_eq!(manifest.artifacts.len(), 1);
        assert_eq!(
            f.store
                .get_by_id::<ImageRecord>(record.id)
                .expect("get")
                .arch,
            Arch::Aarch64
        );

        // A failing kernel copy: the moved rootfs goes back where it was.
        let again = f.rootfs.with_file_name("second.sqsh");
        fs::write(&again, b"second").expect("write");
        let err = f
            .store
            .register_image(
                "b2",
                Arch::X86_64,
                &again,
                Some(&f.kernel.with_file_name("nope")),
                None,
            )
            .expect_err("missing kernel");
        assert!(err.to_string().contains("nope"), "{err}");
        assert_eq!(fs::read(&again).expect("rootfs back"), b"second");
        assert_eq!(artifacts_entries(&f.store), vec![record.id.to_string()]);
        assert_eq!(f.store.list::<ImageRecord>().expect("list").len(), 1);
    }

    #[test]
    fn discard_removes_unregistered_artifacts() {
        let f = fixture();
        let published = publish_local(&f.store, Uuid::new_v4(), &f.rootfs, &f.kernel, &f.initrd)
            .expect("publish");
        published.discard(&f.store).expect("discard");
        assert!(artifacts_entries(&f.store).is_empty());
    }

    #[test]
    fn verify_reports_a_tampered_manifest_and_refuses_s3_links() {
        let f = fixture();
        let id = Uuid::new_v4();
        let published =
            publish_local(&f.store, id, &f.rootfs, &f.kernel, &f.initrd).expect("publish");
        published
            .register(&f.store, "x", Arch::X86_64)
            .expect("register");
        let manifest_path = published.dir.join(MANIFEST_FILE);
        let mut text = fs::read_to_string(&manifest_path).expect("read");
        text.push('\n');
        fs::write(&manifest_path, text).expect("write");
        let report = verify_image(&f.store, &id.to_string()).expect("verify");
        assert_eq!(report.failures(), 1);
        assert!(
            report.entries[0]
                .to_string()
                .starts_with("MISMATCH  manifest.json"),
            "{}",
            report.entries[0]
        );

        let mut s3 = ImageRecord::new("remote", Arch::X86_64, None);
        s3.link = Some(Link {
            link_type: "s3".into(),
            path: "s3://boot-images/x/manifest.json".into(),
            etag: String::new(),
        });
        f.store.insert(&s3).expect("insert");
        let err = verify_image(&f.store, &s3.id.to_string()).expect_err("s3");
        assert!(
            err.to_string().contains("s3://boot-images/x/manifest.json"),
            "{err}"
        );
        let bare = ImageRecord::new("bare", Arch::X86_64, None);
        f.store.insert(&bare).expect("insert");
        assert!(verify_image(&f.store, &bare.id.to_string()).is_err());
    }

    #[test]
    fn customize_result_has_the_helper_shape() {
        let f = fixture();
        let id = Uuid::new_v4();
        let published =
            publish_local(&f.store, id, &f.rootfs, &f.kernel, &f.initrd).expect("publish");
        let image = published
            .register(&f.store, "sles15_barebones_image", Arch::X86_64)
            .expect("register");
        let mut job =
            JobRecord::new_customize(Uuid::new_v4(), "sles15_barebones_image", Arch::X86_64);
        job.resultant_image_id = Some(id);
        let result = CustomizeResult::success(published.ims_image_artifacts(), image, job);
        let text = result.to_json().expect("json");
        let value: serde_json::Value = serde_json::from_str(&text).expect("parse");
        let keys: Vec<&String> = value.as_object().expect("object").keys().collect();
        assert_eq!(
            keys,
            [
                "ims_image_artifacts",
                "ims_image_record",
                "ims_job_record",
                "result"
            ]
        );
        assert_eq!(value["result"], "success");
        let artifacts = value["ims_image_artifacts"].as_array().expect("array");
        assert_eq!(artifacts.len(), 4);
        assert_eq!(artifacts[3]["type"], "application/json");
        assert_eq!(artifacts[3]["link"], value["ims_image_record"]["link"]);
        assert_eq!(
            value["ims_job_record"]["resultant_image_id"],
            id.to_string()
        );
        assert!(
            text.starts_with(
                "{\n    \"ims_image_artifacts\": [\n        {\n            \"link\": {"
            ),
            "{text}"
        );
    }

    #[test]
    fn across_filesystems_moves_become_copies() {
        use std::os::unix::fs::MetadataExt;
        let f = fixture();
        let Ok(other) = tempfile::tempdir_in("/dev/shm") else {
            imsctl_testkit::not_run!("no /dev/shm: cross-filesystem test skipped");
            return;
        };
        let dev = |p: &Path| fs::metadata(p).expect("stat").dev();
        if dev(other.path()) == dev(f.store.root()) {
            imsctl_testkit::not_run!(
                "/dev/shm is on the store's filesystem: cross-filesystem test skipped"
            );
            return;
        }
        let rootfs = other.path().join("rootfs.sqsh");
        fs::write(&rootfs, b"far away").expect("write");
        // publish_local: link fails across devices, the copy keeps the caller's file.
        let published = publish_local(&f.store, Uuid::new_v4(), &rootfs, &f.kernel, &f.initrd)
            .expect("publish");
        assert!(rootfs.exists());
        assert_eq!(
            fs::read(published.dir.join("rootfs")).expect("read"),
            b"far away"
        );
        // register_image: the move is a copy, and the source goes once committed.
        let record = f
            .store
            .register_image("far", Arch::X86_64, &rootfs, None, None)
            .expect("register");
        assert!(!rootfs.exists());
        let dir = f.store.image_artifacts_dir(record.id);
        assert_eq!(fs::read(dir.join("rootfs")).expect("read"), b"far away");
    }

    #[test]
    fn a_symlinked_source_is_copied_not_linked() {
        let f = fixture();
        let link = f.rootfs.with_file_name("rootfs-link");
        std::os::unix::fs::symlink(&f.rootfs, &link).expect("symlink");
        let record = f
            .store
            .register_image("l", Arch::X86_64, &link, None, None)
            .expect("register");
        let staged = f.store.image_artifacts_dir(record.id).join("rootfs");
        assert!(fs::symlink_metadata(&staged).expect("stat").is_file());
        assert_eq!(fs::read(&staged).expect("read"), b"hsqs rootfs bytes");
        assert!(fs::symlink_metadata(&link).is_ok() && f.rootfs.exists());
    }
}
