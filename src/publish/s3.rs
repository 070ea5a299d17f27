//! Images in S3, the IMS way: `BUCKET/[PREFIX/]<image-id>/{rootfs,kernel,initrd,manifest.json}`.
//!
//! Publish uploads the artifacts (each with `md5sum` user metadata and the `x-shasta-ims-*`
//! names), HEADs each to check size and md5sum, and only then writes the manifest (itself
//! checked the same way): a manifest in the bucket means a complete image. The caller registers
//! the record only after `publish_s3` returned, then releases the image id's lease (see
//! `guard`): only the lease holder writes `<id>/*`. On failure the objects this run created are
//! deleted, and only while the lease is still ours and no record exists for the id; its
//! multipart uploads are aborted. A run killed outright leaves its multipart upload and its lease
//! for the next run of the same store to resume.
//!
//! Import downloads a manifest's artifacts with parallel ranged GETs, checks their md5s against
//! the manifest and registers them as a new image in the local store.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::local::{VerifyEntry, VerifyReport, VerifyStatus};
use crate::artifacts::manifest::{
    ArtifactKind, MANIFEST_FILE, MANIFEST_MIME, Manifest, ManifestArtifact,
};
use crate::context::{Context, CounterTicker};
use crate::s3::client::Client;
use crate::s3::download::{download_file, md5_of_object};
use crate::s3::guard::Lease;
use crate::s3::multipart::{
    MD5SUM_META, Resume, UploadOptions, UploadStats, UploadedObject, check_uploaded, upload_file,
};
use crate::s3::stream::{Settled, StreamOptions, StreamUpload};
use crate::s3::{Error, Result, S3Url};
use crate::store::records::ExtraFields;
use crate::store::{Arch, ImageRecord, Link, Store, Timestamp};

/// Link type of artifacts in S3 (IMS's own).
pub const LINK_TYPE_S3: &str = "s3";
/// User metadata IMS sets on every artifact besides `md5sum`.
pub const META_IMAGE_NAME: &str = "x-shasta-ims-image-name";
pub const META_IMAGE_ID: &str = "x-shasta-ims-image-id";
pub const META_JOB_ID: &str = "x-shasta-ims-job-id";

/// What is known about the image being published, for the objects' metadata.
#[derive(Clone, Debug, Default)]
pub struct ImageMeta {
    pub name: Option<String>,
    pub job_id: Option<Uuid>,
}

/// One file to publish; `md5` when the caller knows it already (e.g. from a local manifest).
#[derive(Clone, Debug)]
pub struct ArtifactFile<'a> {
    pub kind: ArtifactKind,
    pub path: &'a Path,
    pub md5: Option<String>,
}

/// Where an image's record lives, which decides what an existing manifest means and when
/// deleting is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registry {
    /// Elsewhere (a local store): an existing manifest is a published image.
    Elsewhere,
    /// At `record_key` in the same bucket (an S3 catalogue): a manifest without a record is
    /// what a run that died left, and is replaced; once the record exists nothing is deleted.
    Bucket { record_key: String },
}

impl Registry {
    /// Is the image registered? An error answers "maybe", which forbids deleting.
    fn registered(&self, client: &Client) -> Result<bool> {
        match self {
            Registry::Elsewhere => Ok(false),
            Registry::Bucket { record_key } => Ok(client.head_object(record_key)?.is_some()),
        }
    }
}

/// A published image in S3.
#[derive(Clone, Debug)]
pub struct S3ImageArtifacts {
    pub image_id: Uuid,
    /// `s3://bucket/[prefix/]<image-id>`.
    pub location: S3Url,
    pub manifest: Manifest,
    /// The manifest object: `type = "s3"`, the server's ETag.
    pub manifest_link: Link,
    /// The artifacts as uploaded (sizes, md5s, upload statistics), in upload order.
    pub objects: Vec<UploadedObject>,
    registry: Registry,
    /// The image id's lease, held until the record is registered (`release`) or the objects
    /// are discarded.
    lease: Arc<Mutex<Option<Lease>>>,
}

impl S3ImageArtifacts {
    /// `ims_image_artifacts` of the customize result: the manifest's entries and the manifest.
    pub fn ims_image_artifacts(&self) -> Vec<ManifestArtifact> {
        let mut all = self.manifest.artifacts.clone();
        all.push(ManifestArtifact {
            link: self.manifest_link.clone(),
            md5: self
                .objects
                .iter()
                .find(|o| o.key.ends_with(MANIFEST_FILE))
                .map(|o| o.md5.clone())
                .unwrap_or_default(),
            artifact_type: MANIFEST_MIME.to_string(),
            extra: ExtraFields::new(),
        });
        all
    }

    /// The image record pointing at this manifest (same id).
    pub fn image_record(&self, name: impl Into<String>, arch: Arch) -> ImageRecord {
        ImageRecord::with_id(self.image_id, name, arch, Some(self.manifest_link.clone()))
    }

    fn take_lease(&self) -> Option<Lease> {
        self.lease.lock().ok().and_then(|mut l| l.take())
    }

    /// The record is registered: give up the image id's lease.
    pub fn release(&self, client: &Client) -> Result<()> {
        match self.take_lease() {
            Some(lease) => lease.release(client),
            None => Ok(()),
        }
    }

    /// The record could not be registered: delete the objects this run created (the manifest
    /// first, so a half-deleted image is never mistaken for a complete one), but nothing at all
    /// once a record exists for the id or once the lease is no longer ours.
    pub fn discard(&self, client: &Client) -> Result<()> {
        let lease = self.take_lease();
        let created: Vec<&str> = self
            .objects
            .iter()
            .filter(|o| !o.stats.already_there)
            .map(|o| o.key.as_str())
            .collect();
        let result = delete_if_still_ours(client, &self.registry, lease.as_ref(), created);
        if let Some(lease) = lease {
            let _ = lease.release(client);
        }
        result
    }
}

/// Delete `keys` (manifest first) if `lease` is still ours and the image is not registered.
fn delete_if_still_ours(
    client: &Client,
    registry: &Registry,
    lease: Option<&Lease>,
    mut keys: Vec<&str>,
) -> Result<()> {
    if registry.registered(client)? {
        return Ok(());
    }
    match lease {
        Some(lease) if lease.still_ours(client)? => {}
        _ => return Ok(()),
    }
    keys.sort_by_key(|k| !k.ends_with(MANIFEST_FILE));
    for key in keys {
        client.delete_object(key)?;
    }
    Ok(())
}

/// Publish `files` as image `image_id` under `dest` (bucket and optional prefix; the client must
/// be for `dest.bucket`). With `resume`, objects already complete from an interrupted run (right
/// size and md5sum) are kept and interrupted multipart uploads are continued.
pub fn publish_s3(
    client: &Client,
    dest: &S3Url,
    image_id: Uuid,
    files: &[ArtifactFile<'_>],
    meta: &ImageMeta,
    resume: &Resume,
    ctx: &Context,
) -> Result<S3ImageArtifacts> {
    let registry = Registry::Elsewhere;
    publish_s3_to(client, dest, image_id, files, meta, resume, &registry, ctx)
}

/// As [`publish_s3`], for an image whose record goes to `registry`.
#[allow(clippy::too_many_arguments)]
pub fn publish_s3_to(
    client: &Client,
    dest: &S3Url,
    image_id: Uuid,
    files: &[ArtifactFile<'_>],
    meta: &ImageMeta,
    resume: &Resume,
    registry: &Registry,
    ctx: &Context,
) -> Result<S3ImageArtifacts> {
    if !files.iter().any(|f| f.kind == ArtifactKind::Rootfs) {
        return Err(Error::Config(format!(
            "image {image_id}: nothing to publish without a rootfs"
        )));
    }
    let mut publication =
        Publication::begin_for(client, dest, image_id, meta, resume, registry.clone())?;
    for file in files {
        publication.upload(file, ctx)?;
    }
    publication.finish()
}

/// An image on its way into S3: artifacts go up one by one (or streamed while they are being
/// written), the manifest last, once every artifact is in place and checked. The image id's
/// lease (see `guard`) is held from `begin` on. Dropped without [`Publication::finish`] (an
/// error on the way), it deletes what it created, if the lease is still ours.
pub struct Publication<'c> {
    client: &'c Client,
    image_id: Uuid,
    location: S3Url,
    /// `x-shasta-ims-*` metadata of every object.
    metadata: Vec<(String, String)>,
    resume: Resume,
    artifacts: Vec<(ArtifactKind, UploadedObject)>,
    registry: Registry,
    /// Ours until `finish` hands it to the result, or `drop` releases it.
    lease: Option<Lease>,
}

impl<'c> Publication<'c> {
    /// Start publishing image `image_id` under `dest`, its record kept elsewhere (a local
    /// store); an image already published there (its manifest exists) is an error.
    pub fn begin(
        client: &'c Client,
        dest: &S3Url,
        image_id: Uuid,
        meta: &ImageMeta,
        resume: &Resume,
    ) -> Result<Publication<'c>> {
        Self::begin_for(client, dest, image_id, meta, resume, Registry::Elsewhere)
    }

    /// Start publishing image `image_id` under `dest`, its record going to `registry`: check
    /// that it is not published yet, claim its lease, and check again (a run that finished
    /// between the two).
    pub fn begin_for(
        client: &'c Client,
        dest: &S3Url,
        image_id: Uuid,
        meta: &ImageMeta,
        resume: &Resume,
        registry: Registry,
    ) -> Result<Publication<'c>> {
        let location = dest.with_key(dest.join(&image_id.to_string()));
        let manifest_key = format!("{}/{MANIFEST_FILE}", location.key);
        let taken = || -> Result<Option<String>> {
            if registry.registered(client)? {
                return Ok(Some(format!(
                    "image {image_id} is already registered in {dest}"
                )));
            }
            let manifest_rules = registry == Registry::Elsewhere;
            if manifest_rules && client.head_object(&manifest_key)?.is_some() {
                return Ok(Some(format!(
                    "image {image_id} is already published at {location} (its manifest \
                     exists); delete it first"
                )));
            }
            Ok(None)
        };
        // The first request is a write (the probe, unless its answer is cached): a missing
        // bucket, a read-only key or a wrong region fail here, at once, with the server's code.
        crate::s3::guard::conditional_writes(client, dest)?;
        if let Some(why) = taken()? {
            return Err(Error::AlreadyPublished(why));
        }
        let origin = resume
            .state_dir
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        let state_dir = resume.state_dir.as_deref().filter(|_| resume.enabled);
        let lease = Lease::acquire(client, dest, image_id, state_dir, &origin)?;
        match taken() {
            Ok(None) => {}
            Ok(Some(why)) => {
                let _ = lease.release(client);
                return Err(Error::AlreadyPublished(why));
            }
            Err(e) => {
                let _ = lease.release(client);
                return Err(e);
            }
        }
        let mut metadata = vec![(META_IMAGE_ID.to_string(), image_id.to_string())];
        if let Some(name) = &meta.name {
            metadata.push((META_IMAGE_NAME.to_string(), header_safe(name)));
        }
        if let Some(job) = meta.job_id {
            metadata.push((META_JOB_ID.to_string(), job.to_string()));
        }
        Ok(Publication {
            client,
            image_id,
            location,
            metadata,
            resume: resume.clone(),
            artifacts: Vec::new(),
            registry,
            lease: Some(lease),
        })
    }

    fn key_of(&self, kind: ArtifactKind) -> String {
        format!("{}/{}", self.location.key, kind.file_name())
    }

    /// Upload one finished artifact file.
    pub fn upload(&mut self, file: &ArtifactFile<'_>, ctx: &Context) -> Result<()> {
        let key = self.key_of(file.kind);
        let object = upload_one(self.client, &key, file, &self.metadata, &self.resume, ctx)?;
        self.artifacts.push((file.kind, object));
        Ok(())
    }

    /// Start streaming an artifact that is still being written at `path`: `settled` says how
    /// far it is final past its first `header` bytes (see [`StreamUpload`]). Hand the upload
    /// back with [`Publication::add_streamed`] once the writer has finished.
    pub fn stream(
        &self,
        kind: ArtifactKind,
        path: &Path,
        settled: Settled,
        header: u64,
        progress: Arc<AtomicU64>,
    ) -> Result<StreamUpload> {
        let options = StreamOptions {
            metadata: self.metadata.clone(),
            resume: self.resume.clone(),
            header,
        };
        StreamUpload::start(
            self.client,
            &self.key_of(kind),
            path,
            settled,
            &options,
            progress,
        )
    }

    /// The writer of a streamed artifact has finished: complete its upload and check it.
    /// Returns the object as uploaded (with the stream's statistics).
    pub fn add_streamed(
        &mut self,
        kind: ArtifactKind,
        upload: StreamUpload,
    ) -> Result<UploadedObject> {
        let object = upload.finish()?;
        self.artifacts.push((kind, object.clone()));
        Ok(object)
    }

    /// Write the manifest (artifacts in rootfs, kernel, initrd order) and check it: from now on
    /// the image is complete in S3. The caller registers the record after this returns.
    pub fn finish(mut self) -> Result<S3ImageArtifacts> {
        if !self
            .artifacts
            .iter()
            .any(|(kind, _)| *kind == ArtifactKind::Rootfs)
        {
            return Err(Error::Config(format!(
                "image {}: nothing to publish without a rootfs",
                self.image_id
            )));
        }
        self.artifacts
            .sort_by_key(|(kind, _)| ArtifactKind::ALL.iter().position(|k| k == kind));
        let entries = self
            .artifacts
            .iter()
            .map(|(kind, object)| ManifestArtifact {
                link: Link {
                    link_type: LINK_TYPE_S3.to_string(),
                    path: self.client.target(&object.key),
                    etag: object.etag.clone(),
                },
                md5: object.md5.clone(),
                artifact_type: kind.mime_type().to_string(),
                extra: ExtraFields::new(),
            })
            .collect();
        // A writer that lost its claim (a stalled run on a server without conditional writes)
        // must not write the manifest over the holder's.
        let still_ours = match &self.lease {
            Some(lease) => lease.still_ours(self.client)?,
            None => false,
        };
        if !still_ours {
            return Err(Error::Busy(format!(
                "image {}: another run took over its lease while this one uploaded; this run \
                 leaves {} to it",
                self.image_id, self.location
            )));
        }
        let (manifest, manifest_link, manifest_object) = self.put_manifest(entries)?;
        let mut objects: Vec<UploadedObject> =
            self.artifacts.drain(..).map(|(_, object)| object).collect();
        objects.push(manifest_object);
        Ok(S3ImageArtifacts {
            image_id: self.image_id,
            location: self.location.clone(),
            manifest,
            manifest_link,
            objects,
            registry: self.registry.clone(),
            lease: Arc::new(Mutex::new(self.lease.take())),
        })
    }

    fn put_manifest(
        &mut self,
        entries: Vec<ManifestArtifact>,
    ) -> Result<(Manifest, Link, UploadedObject)> {
        let manifest = Manifest::new(Timestamp::now(), entries);
        let json = manifest.to_json()?;
        let manifest_key = format!("{}/{MANIFEST_FILE}", self.location.key);
        let md5 = {
            use md5::Digest;
            crate::artifacts::md5::hex(&md5::Md5::digest(json.as_bytes()))
        };
        let mut manifest_meta = self.metadata.clone();
        manifest_meta.push((MD5SUM_META.to_string(), md5.clone()));
        let put = self.client.put_bytes(
            &manifest_key,
            json.as_bytes(),
            &manifest_meta,
            Some(MANIFEST_MIME),
            false,
        );
        // Written or not, a failed check below must delete it with the rest.
        let object = UploadedObject {
            key: manifest_key.clone(),
            size: json.len() as u64,
            md5: md5.clone(),
            etag: put.as_ref().map(String::clone).unwrap_or_default(),
            stats: Default::default(),
        };
        let etag = put?;
        if let Err(e) = check_uploaded(self.client, &manifest_key, json.len() as u64, &md5) {
            let _ = self.client.delete_object(&manifest_key);
            return Err(e);
        }
        let link = Link {
            link_type: LINK_TYPE_S3.to_string(),
            path: self.client.target(&manifest_key),
            etag,
        };
        Ok((manifest, link, object))
    }
}

impl Drop for Publication<'_> {
    /// Not finished: delete what this run created, if the lease is still ours and no record
    /// exists, then release the lease. A failed delete leaves objects without a manifest, which
    /// no catalogue lists and `images repair`, `images delete` or a rerun replaces.
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let created: Vec<&str> = self
            .artifacts
            .iter()
            .filter(|(_, o)| !o.stats.already_there)
            .map(|(_, o)| o.key.as_str())
            .collect();
        let _ = delete_if_still_ours(self.client, &self.registry, Some(&lease), created);
        let _ = lease.release(self.client);
    }
}

/// Upload one artifact with a progress bar; with `resume`, an identical complete object is kept.
fn upload_one(
    client: &Client,
    key: &str,
    file: &ArtifactFile<'_>,
    metadata: &[(String, String)],
    resume: &Resume,
    ctx: &Context,
) -> Result<UploadedObject> {
    let size = std::fs::metadata(file.path)
        .map_err(|e| Error::io("stat", file.path, e))?
        .len();
    let md5 = match &file.md5 {
        Some(m) => m.clone(),
        None => crate::artifacts::md5::md5_file(file.path)?,
    };
    if resume.enabled
        && let Some(info) = client.head_object(key)?
    {
        let same_md5 = info
            .metadata
            .get(MD5SUM_META)
            .is_some_and(|m| m.eq_ignore_ascii_case(&md5));
        if info.size == size && same_md5 {
            ctx.info(format!("{} is already uploaded", client.target(key)));
            return Ok(UploadedObject {
                key: key.to_string(),
                size,
                md5,
                etag: info.etag,
                stats: UploadStats {
                    already_there: true,
                    ..Default::default()
                },
            });
        }
    }
    let counter = Arc::new(AtomicU64::new(0));
    let _ticker = CounterTicker::start(
        ctx.bytes_bar(&format!("{}", file.kind), Some(size)),
        counter.clone(),
    );
    let options = UploadOptions {
        metadata: metadata.to_vec(),
        content_type: None,
        known_md5: Some(md5),
        resume: resume.clone(),
    };
    upload_file(client, key, file.path, &options, &counter)
}

/// Header values must be visible ASCII: other characters of an image name become `_`.
fn header_safe(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Where an `images import s3://…` source points: the manifest key.
pub fn manifest_key_of(src: &S3Url) -> String {
    if src.key.ends_with(MANIFEST_FILE) {
        src.key.clone()
    } else {
        src.join(MANIFEST_FILE)
    }
}

/// `images import s3://BUCKET/[PREFIX/]<id>[/manifest.json]`: download the artifacts into the
/// store's work area, check their md5s against the manifest, register a new local image.
/// The name is `name`, else the rootfs' `x-shasta-ims-image-name`, else the source image id.
pub fn import_image(
    client: &Client,
    src: &S3Url,
    store: &Store,
    name: Option<&str>,
    arch: Arch,
    ctx: &Context,
) -> Result<ImageRecord> {
    let manifest_key = manifest_key_of(src);
    let bytes = client.get_bytes(&manifest_key)?;
    let manifest_url = client.target(&manifest_key);
    let manifest = Manifest::parse(&bytes, Path::new(&manifest_url))?;
    let scratch = tempfile::Builder::new()
        .prefix(".import-s3-")
        .tempdir_in(store.work_root())
        .map_err(|e| Error::io("create a scratch directory in", store.work_root(), e))?;
    let mut fetched_name = None;
    let mut paths = Vec::new();
    for kind in ArtifactKind::ALL {
        let Some(artifact) = manifest.artifact(kind) else {
            continue;
        };
        let link = S3Url::parse(&artifact.link.path)?;
        let owner;
        let source = if link.bucket == client.bucket() {
            client
        } else {
            owner = Client::new(client.config(), &link.bucket)?;
            &owner
        };
        let info = source
            .head_object(&link.key)?
            .ok_or_else(|| Error::Integrity {
                target: artifact.link.path.clone(),
                what: format!("listed in {manifest_url} but missing"),
            })?;
        if kind == ArtifactKind::Rootfs {
            fetched_name = info.metadata.get(META_IMAGE_NAME).cloned();
        }
        let dest = scratch.path().join(kind.file_name());
        let counter = Arc::new(AtomicU64::new(0));
        let got = {
            let _ticker = CounterTicker::start(
                ctx.bytes_bar(&format!("{kind}"), Some(info.size)),
                counter.clone(),
            );
            download_file(source, &link.key, info.size, &dest, &counter)?
        };
        if !got.md5.eq_ignore_ascii_case(&artifact.md5) {
            return Err(Error::Integrity {
                target: artifact.link.path.clone(),
                what: format!(
                    "md5 {} downloaded, the manifest says {}",
                    got.md5, artifact.md5
                ),
            });
        }
        paths.push((kind, dest, got.md5));
    }
    if !paths
        .iter()
        .any(|(kind, _, _)| *kind == ArtifactKind::Rootfs)
    {
        return Err(Error::Integrity {
            target: manifest_url.clone(),
            what: "the manifest lists no rootfs".into(),
        });
    }
    let name = name
        .map(str::to_string)
        .or(fetched_name)
        .unwrap_or_else(|| src_image_name(&manifest_key));
    // Hashed while downloading, fsynced once as they are moved into the store.
    let files: Vec<(ArtifactKind, &Path, &str)> = paths
        .iter()
        .map(|(kind, path, md5)| (*kind, path.as_path(), md5.as_str()))
        .collect();
    Ok(store.register_downloaded(&name, arch, &files)?)
}

/// The component before `manifest.json` (the image id in the IMS layout).
fn src_image_name(manifest_key: &str) -> String {
    manifest_key
        .trim_end_matches(MANIFEST_FILE)
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("imported")
        .to_string()
}

/// How `images verify` checks an S3 image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VerifyMode {
    /// HEAD each object: present, its ETag the one recorded, its md5sum metadata the manifest's.
    #[default]
    Metadata,
    /// Also download each object and re-hash it.
    Deep,
}

/// Verify an S3-backed image record: the manifest against the record's ETag, every artifact
/// against the manifest.
pub fn verify_s3_image(
    client: &Client,
    record: &ImageRecord,
    mode: VerifyMode,
    ctx: &Context,
) -> Result<VerifyReport> {
    let link = record.link.as_ref().ok_or_else(|| {
        Error::Config(format!(
            "image {}: the record has no link to a manifest",
            record.id
        ))
    })?;
    let manifest_url = S3Url::parse(&link.path)?;
    let mut entries = Vec::new();
    let manifest_entry = check_object(
        client,
        MANIFEST_FILE,
        &manifest_url,
        &link.etag,
        None,
        mode,
        ctx,
    )?;
    let manifest_ok = !matches!(manifest_entry.status, VerifyStatus::Missing(_));
    entries.push(manifest_entry);
    if manifest_ok {
        let bytes = client.get_bytes(&manifest_url.key)?;
        let manifest = Manifest::parse(&bytes, Path::new(&link.path))?;
        for artifact in &manifest.artifacts {
            let name = ArtifactKind::from_mime_type(&artifact.artifact_type)
                .map(|k| k.file_name().to_string())
                .unwrap_or_else(|| artifact.artifact_type.clone());
            let url = S3Url::parse(&artifact.link.path)?;
            entries.push(check_object(
                client,
                &name,
                &url,
                &artifact.link.etag,
                Some(&artifact.md5),
                mode,
                ctx,
            )?);
        }
    }
    Ok(VerifyReport {
        image_id: record.id,
        entries,
    })
}

/// One object: missing → Missing; ETag or md5sum metadata (or, deep, content md5) different →
/// Mismatch. `md5` is None for the manifest, whose md5 is its md5sum metadata.
fn check_object(
    client: &Client,
    name: &str,
    url: &S3Url,
    etag: &str,
    md5: Option<&str>,
    mode: VerifyMode,
    ctx: &Context,
) -> Result<VerifyEntry> {
    let owner;
    let client = if url.bucket == client.bucket() {
        client
    } else {
        owner = Client::new(client.config(), &url.bucket)?;
        &owner
    };
    let expected = md5.unwrap_or(etag).to_string();
    let entry = |status| VerifyEntry {
        name: name.to_string(),
        path: url.to_string(),
        expected: expected.clone(),
        status,
    };
    let Some(info) = client.head_object(&url.key)? else {
        return Ok(entry(VerifyStatus::Missing("no such object".into())));
    };
    if !etag.is_empty() && !info.etag.eq_ignore_ascii_case(etag) {
        return Ok(entry(VerifyStatus::Mismatch {
            actual: format!("etag {}", info.etag),
        }));
    }
    let meta_md5 = info.metadata.get(MD5SUM_META).cloned();
    if let (Some(want), Some(have)) = (md5, &meta_md5)
        && !want.eq_ignore_ascii_case(have)
    {
        return Ok(entry(VerifyStatus::Mismatch {
            actual: format!("md5sum metadata {have}"),
        }));
    }
    if mode == VerifyMode::Deep {
        let counter = Arc::new(AtomicU64::new(0));
        let _ticker = CounterTicker::start(ctx.bytes_bar(name, Some(info.size)), counter.clone());
        let got = md5_of_object(client, &url.key, &counter)?;
        let want = md5.map(str::to_string).or(meta_md5).unwrap_or_default();
        if !got.md5.eq_ignore_ascii_case(&want) {
            return Ok(entry(VerifyStatus::Mismatch { actual: got.md5 }));
        }
    }
    Ok(entry(VerifyStatus::Ok))
}
