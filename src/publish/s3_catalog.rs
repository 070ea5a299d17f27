//! The image catalogue behind a small trait, with two backends: the local store directory and an
//! S3 bucket (`--store s3://BUCKET[/PREFIX]`), so that several build hosts share one catalogue.
//!
//! Layout of an S3 store (the artifacts exactly as IMS lays them out):
//!
//! ```text
//! <prefix>/<image-id>/{rootfs,kernel,initrd,manifest.json}
//! <prefix>/records/images/<image-id>.json      one object per record
//! ```
//!
//! Two hosts never overwrite each other's records: each record is its own object, named by the
//! image id, written only by the holder of the id's lease (`s3::guard`: exclusive whether or not
//! the server honours conditional writes), and with `If-None-Match: *` besides. Two hosts that
//! publish the same image id at once (the same local image copied to both) end with one
//! registered image: the other run fails naming the holder, or, arriving after it finished,
//! finds the same content registered and succeeds without changing anything.

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use rayon::prelude::*;
use uuid::Uuid;

use super::s3::{ArtifactFile, ImageMeta, META_JOB_ID, Registry, S3ImageArtifacts, publish_s3_to};
use crate::artifacts::manifest::{ArtifactKind, MANIFEST_FILE, Manifest};
use crate::context::Context;
use crate::s3::guard::{LeaseInfo, lease_key, leases_prefix, read_lease};
use crate::s3::{Client, Resume, S3Config, S3Url};
use crate::store::{Arch, ImageCatalog, ImageRecord, LINK_TYPE_FILE, RecordKind, Store};

/// Register the record of an image `publish_s3` uploaded, in any catalogue (the local store
/// or an S3 store), then release the image id's lease. If the record cannot be written the
/// objects this run created are deleted (unless a record exists by then: see `discard`).
pub fn register_published(
    catalog: &dyn ImageCatalog,
    client: &Client,
    published: &S3ImageArtifacts,
    name: &str,
    arch: Arch,
) -> anyhow::Result<ImageRecord> {
    let record = published.image_record(name, arch);
    if let Err(e) = catalog.insert_image(&record) {
        // The insert error is the one to report; objects a failed cleanup leaves have no
        // record and no catalogue lists them (`images repair` removes them).
        let _ = published.discard(client);
        return Err(e);
    }
    // A lease left behind only makes others wait for `images repair`: not worth failing a
    // registered image for.
    let _ = published.release(client);
    Ok(record)
}

/// A catalogue and artifact store in a bucket.
#[derive(Clone, Debug)]
pub struct S3Store {
    client: Client,
    root: S3Url,
}

impl S3Store {
    /// Open `s3://BUCKET[/PREFIX]` (no request is made).
    pub fn open(config: &S3Config, root: &S3Url) -> anyhow::Result<S3Store> {
        Ok(S3Store {
            client: Client::new(config, &root.bucket)?,
            root: root.clone(),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn root(&self) -> &S3Url {
        &self.root
    }

    fn records_prefix(&self) -> String {
        self.root.join("records/images/")
    }

    fn record_key(&self, id: Uuid) -> String {
        format!("{}{id}.json", self.records_prefix())
    }

    /// `s3://bucket/prefix/<id>`: where this store keeps an image's artifacts.
    pub fn image_location(&self, id: Uuid) -> S3Url {
        self.root.with_key(self.root.join(&id.to_string()))
    }

    fn read_record(&self, key: &str) -> anyhow::Result<Option<ImageRecord>> {
        let bytes = match self.client.get_bytes(key) {
            Ok(bytes) => bytes,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let record = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: corrupt image record", self.client.target(key)))?;
        Ok(Some(record))
    }

    /// Upload an image's artifacts (the IMS layout under this store) and register its record.
    /// Nothing is registered unless every object is there and checked; if the record cannot be
    /// written, the objects are deleted again.
    #[allow(clippy::too_many_arguments)]
    pub fn publish_image(
        &self,
        image_id: Uuid,
        name: &str,
        arch: Arch,
        files: &[ArtifactFile<'_>],
        job_id: Option<Uuid>,
        resume: &Resume,
        ctx: &Context,
    ) -> anyhow::Result<(ImageRecord, S3ImageArtifacts)> {
        let meta = ImageMeta {
            name: Some(name.to_string()),
            job_id,
        };
        let registry = Registry::Bucket {
            record_key: self.record_key(image_id),
        };
        let published = publish_s3_to(
            &self.client,
            &self.root,
            image_id,
            files,
            &meta,
            resume,
            &registry,
            ctx,
        )?;
        let record = register_published(self, &self.client, &published, name, arch)?;
        Ok((record, published))
    }

    /// `images publish ID s3://…`: copy an image of the local store here, under the same id,
    /// name and arch. The local md5s are re-used (the server checks each part's Content-MD5).
    /// Publishing is idempotent: when the image is already registered here with the same
    /// content (another host published the same image first), that record is the result.
    pub fn publish_from_local(
        &self,
        store: &Store,
        id: &str,
        resume: &Resume,
        ctx: &Context,
    ) -> anyhow::Result<ImageRecord> {
        let local: ImageRecord = store.get(id)?;
        let link = local
            .link
            .as_ref()
            .ok_or_else(|| anyhow!("image {}: the record has no artifacts to publish", local.id))?;
        if link.link_type != LINK_TYPE_FILE {
            bail!(
                "image {}: its artifacts are at {} ({:?}), not in the local store",
                local.id,
                link.path,
                link.link_type
            );
        }
        let manifest = Manifest::read(Path::new(&link.path))?;
        let mut files = Vec::new();
        for kind in ArtifactKind::ALL {
            if let Some(a) = manifest.artifact(kind) {
                if a.link.link_type != LINK_TYPE_FILE {
                    bail!(
                        "image {}: {kind} is not a local file ({})",
                        local.id,
                        a.link.path
                    );
                }
                files.push((kind, a.link.path.clone(), a.md5.clone()));
            }
        }
        let artifact_files: Vec<ArtifactFile<'_>> = files
            .iter()
            .map(|(kind, path, md5)| ArtifactFile {
                kind: *kind,
                path: Path::new(path),
                md5: Some(md5.clone()),
            })
            .collect();
        let published = self.publish_image(
            local.id,
            &local.name,
            local.arch,
            &artifact_files,
            None,
            resume,
            ctx,
        );
        match published {
            Ok((record, _)) => Ok(record),
            Err(e) if is_already_published(&e) => {
                let wanted: Vec<(ArtifactKind, String)> =
                    files.into_iter().map(|(k, _, md5)| (k, md5)).collect();
                let record = self.same_content_registered(local.id, &wanted)?;
                ctx.info(format!(
                    "image {} is already registered in {} with the same content",
                    local.id, self.root
                ));
                Ok(record)
            }
            Err(e) => Err(e),
        }
    }

    /// The record of image `id` here, if its manifest lists exactly `wanted` (kind, md5);
    /// an error saying what differs otherwise.
    fn same_content_registered(
        &self,
        id: Uuid,
        wanted: &[(ArtifactKind, String)],
    ) -> anyhow::Result<ImageRecord> {
        let record = self.get_image(&id.to_string())?;
        let link = record.link.as_ref().ok_or_else(|| {
            anyhow!(
                "image {id} is registered in {} without a manifest",
                self.root
            )
        })?;
        let url = S3Url::parse(&link.path)?;
        let bytes = self.client.get_bytes(&url.key)?;
        let theirs = Manifest::parse(&bytes, Path::new(&link.path))?;
        for kind in ArtifactKind::ALL {
            let mine = wanted
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, m)| m.as_str());
            let there = theirs.artifact(kind).map(|a| a.md5.as_str());
            if mine.map(str::to_ascii_lowercase) != there.map(str::to_ascii_lowercase) {
                bail!(
                    "image {id} is already registered in {} with other content ({kind}: md5 {} \
                     there, {} here); delete it first to replace it",
                    self.root,
                    there.unwrap_or("none"),
                    mine.unwrap_or("none")
                );
            }
        }
        Ok(record)
    }
}

/// What a run left under one image id, found by `S3Store::leftovers`.
#[derive(Debug, Default)]
struct Leftovers {
    /// Objects under `<id>/`.
    keys: Vec<String>,
    /// Multipart uploads of keys under `<id>/`: (key, upload id).
    uploads: Vec<(String, String)>,
    lease: Option<LeaseInfo>,
}

impl S3Store {
    fn image_prefix(&self, id: Uuid) -> String {
        format!("{}/", self.image_location(id).key)
    }

    /// Objects, uploads and lease of image `id`. A server that cannot list uploads (501)
    /// has none to show.
    fn leftovers(&self, id: Uuid) -> anyhow::Result<Leftovers> {
        let prefix = self.image_prefix(id);
        let keys = self
            .client
            .list_objects(&prefix)?
            .into_iter()
            .map(|o| o.key)
            .collect();
        let uploads = match self.client.list_multipart_uploads_under(&prefix) {
            Ok(all) => all.into_iter().map(|u| (u.key, u.upload_id)).collect(),
            Err(e) if e.status() == Some(501) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let lease = read_lease(&self.client, &lease_key(&self.root, id))?;
        Ok(Leftovers {
            keys,
            uploads,
            lease,
        })
    }

    /// Remove what `leftovers` found (manifest first, lease last); one line per thing.
    fn remove_leftovers(
        &self,
        id: Uuid,
        found: &Leftovers,
        dry_run: bool,
    ) -> anyhow::Result<Vec<String>> {
        let mut done = Vec::new();
        let mut keys: Vec<&String> = found.keys.iter().collect();
        keys.sort_by_key(|k| !k.ends_with(MANIFEST_FILE));
        for key in keys {
            if !dry_run {
                self.client.delete_object(key)?;
            }
            done.push(format!("object {}", self.client.target(key)));
        }
        for (key, upload) in &found.uploads {
            if !dry_run {
                self.client.abort_multipart(key, upload)?;
            }
            done.push(format!(
                "multipart upload {upload} of {}",
                self.client.target(key)
            ));
        }
        if let Some(lease) = &found.lease {
            let key = lease_key(&self.root, id);
            if !dry_run {
                self.client.delete_object(&key)?;
            }
            done.push(format!(
                "lease {} ({})",
                self.client.target(&key),
                lease.describe()
            ));
        }
        Ok(done)
    }

    /// `images delete ID` of an id without a record: remove what a publish that died left
    /// under it (an orphan manifest and artifacts, multipart uploads). Refused while a run holds
    /// the id's lease. Returns one line per object removed (none: nothing was there).
    pub fn delete_orphan(&self, id: &str) -> anyhow::Result<Vec<String>> {
        let id = Store::parse_id(RecordKind::Image, id)?;
        let found = self.leftovers(id)?;
        if let Some(lease) = &found.lease {
            bail!(
                "image {id} has no record in {} and is being published ({}); if that run is \
                 dead: `imsctl --store {} images repair --older-than 0`",
                self.root,
                lease.describe(),
                self.root
            );
        }
        if self.client.head_object(&self.record_key(id))?.is_some() {
            bail!("image {id} was registered meanwhile in {}", self.root);
        }
        self.remove_leftovers(id, &found, false)
    }

    /// `images repair`: for every image id under this catalogue without a record and without a
    /// lease younger than `older_than`, remove its objects, multipart uploads and lease; remove
    /// stale leases of registered images. Images published by a job (their record lives in a
    /// build host's local store, their rootfs says `x-shasta-ims-job-id`) are kept.
    pub fn repair(
        &self,
        older_than: std::time::Duration,
        dry_run: bool,
    ) -> anyhow::Result<Vec<String>> {
        let registered: std::collections::BTreeSet<Uuid> =
            self.list_images()?.into_iter().map(|r| r.id).collect();
        let mut ids = std::collections::BTreeSet::new();
        let top = if self.root.key.is_empty() {
            String::new()
        } else {
            format!("{}/", self.root.key)
        };
        for object in self.client.list_objects(&top)? {
            let rest = object.key.strip_prefix(&top).unwrap_or(&object.key);
            let first = rest.split('/').next().unwrap_or_default();
            let first = first.strip_suffix(".json").unwrap_or(first);
            if let Ok(id) = Uuid::parse_str(first) {
                ids.insert(id);
            }
        }
        for lease in self.client.list_objects(&leases_prefix(&self.root))? {
            let name = lease.key.rsplit('/').next().unwrap_or_default();
            if let Ok(id) = Uuid::parse_str(name.trim_end_matches(".json")) {
                ids.insert(id);
            }
        }
        match self.client.list_multipart_uploads_under(&top) {
            Ok(uploads) => {
                for upload in uploads {
                    let rest = upload.key.strip_prefix(&top).unwrap_or(&upload.key);
                    if let Some(Ok(id)) = rest.split('/').next().map(Uuid::parse_str) {
                        ids.insert(id);
                    }
                }
            }
            Err(e) if e.status() == Some(501) => {}
            Err(e) => return Err(e.into()),
        }
        let mut done = Vec::new();
        for id in ids {
            let mut found = self.leftovers(id)?;
            if found.lease.as_ref().is_some_and(|l| l.age() < older_than) {
                continue;
            }
            if registered.contains(&id) {
                // Its objects are the image's: only a stale lease (and uploads) go.
                found.keys.clear();
            } else if self.published_by_a_job(id, &found)? {
                continue;
            }
            done.extend(self.remove_leftovers(id, &found, dry_run)?);
        }
        Ok(done)
    }

    /// Does the image's rootfs (or any object) name the job that published it?
    fn published_by_a_job(&self, id: Uuid, found: &Leftovers) -> anyhow::Result<bool> {
        let rootfs = format!(
            "{}{}",
            self.image_prefix(id),
            ArtifactKind::Rootfs.file_name()
        );
        if !found.keys.contains(&rootfs) {
            return Ok(false);
        }
        Ok(self
            .client
            .head_object(&rootfs)?
            .is_some_and(|info| info.metadata.contains_key(META_JOB_ID)))
    }
}

fn is_already_published(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<crate::s3::Error>(),
        Some(crate::s3::Error::AlreadyPublished(_))
    )
}

impl ImageCatalog for S3Store {
    fn location(&self) -> String {
        self.root.to_string()
    }

    fn list_images(&self) -> anyhow::Result<Vec<ImageRecord>> {
        let prefix = self.records_prefix();
        let keys: Vec<String> = self
            .client
            .list_objects(&prefix)?
            .into_iter()
            .map(|o| o.key)
            .filter(|k| {
                k.strip_prefix(&prefix)
                    .and_then(|n| n.strip_suffix(".json"))
                    .is_some_and(|id| Uuid::parse_str(id).is_ok())
            })
            .collect();
        let records: anyhow::Result<Vec<Option<ImageRecord>>> =
            keys.par_iter().map(|k| self.read_record(k)).collect();
        // A record deleted between the listing and the read is simply gone.
        let mut records: Vec<ImageRecord> = records?.into_iter().flatten().collect();
        records.sort_by_key(|r| (r.created, r.id));
        Ok(records)
    }

    fn get_image(&self, id: &str) -> anyhow::Result<ImageRecord> {
        let id = Store::parse_id(RecordKind::Image, id)?;
        self.read_record(&self.record_key(id))?
            .ok_or_else(|| anyhow!("no image with id {id} in {}", self.root))
    }

    fn insert_image(&self, record: &ImageRecord) -> anyhow::Result<()> {
        let key = self.record_key(record.id);
        let exists = || anyhow!("image {} already exists in {}", record.id, self.root);
        if self.client.head_object(&key)?.is_some() {
            return Err(exists());
        }
        let mut bytes = serde_json::to_vec_pretty(record)
            .with_context(|| format!("cannot serialize image {}", record.id))?;
        bytes.push(b'\n');
        let json = Some("application/json");
        match self.client.put_bytes(&key, &bytes, &[], json, true) {
            Ok(_) => Ok(()),
            Err(e) if e.is_precondition_failed() => Err(exists()),
            // The server does not implement conditional writes: the HEAD above is the guard.
            Err(e) if e.status() == Some(501) => {
                self.client.put_bytes(&key, &bytes, &[], json, false)?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn delete_image(&self, id: &str) -> anyhow::Result<ImageRecord> {
        let record = self.get_image(id)?;
        self.client.delete_object(&self.record_key(record.id))?;
        // Only artifacts this store laid out are deleted: a record may point elsewhere.
        let location = self.image_location(record.id);
        let owned = record
            .link
            .as_ref()
            .is_some_and(|l| l.path == format!("{location}/{MANIFEST_FILE}"));
        if owned {
            let prefix = format!("{}/", location.key);
            let mut keys: Vec<String> = self
                .client
                .list_objects(&prefix)?
                .into_iter()
                .map(|o| o.key)
                .collect();
            // The manifest first: a half-deleted image never looks complete.
            keys.sort_by_key(|k| !k.ends_with(MANIFEST_FILE));
            for key in keys {
                self.client.delete_object(&key)?;
            }
        }
        Ok(record)
    }
}
