//! Publishing: where a customized or imported image's artifacts go, and its record with them.
//!
//! Two artifact backends — the local store directory ([`local`]) and S3 ([`s3`]) — behind one
//! interface, [`ArtifactBackend`]: `begin` a publication for an image id, `upload` each artifact
//! (or `follow` the rootfs while it is being packed, where the backend can stream), then
//! `finish` (manifest written, record registered) or `discard` (nothing left behind). The job
//! layer calls it once, whatever the destination. [`s3_catalog`] is the catalogue kept in a
//! bucket (`--store s3://…`).

pub mod local;
pub mod s3;
pub mod s3_catalog;
#[cfg(test)]
mod s3_shared_tests;
#[cfg(test)]
mod s3_tests;

pub use local::{
    ImageArtifacts, VerifyEntry, VerifyReport, VerifyStatus, publish_local, verify_image,
};
pub use s3::{
    ArtifactFile, ImageMeta, LINK_TYPE_S3, Publication, S3ImageArtifacts, VerifyMode, import_image,
    publish_s3, verify_s3_image,
};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use anyhow::{Result, anyhow};
use uuid::Uuid;

use crate::artifacts::{ArtifactKind, ManifestArtifact};
use crate::context::{Context, CounterTicker};
use crate::s3::{Client, Resume, S3Config, S3Options, S3Url, Settled, StreamUpload};
use crate::store::{Arch, ImageCatalog, ImageRecord, PublishTarget, Store};

/// An image published and registered: what `customize` prints as `ims_image_artifacts` and the
/// new record.
pub struct Published {
    pub ims_image_artifacts: Vec<ManifestArtifact>,
    pub record: ImageRecord,
}

/// Where artifacts go.
pub trait ArtifactBackend {
    /// Start publishing image `image_id`. `resume_dir` keeps the state of interrupted uploads
    /// (where the backend has any).
    fn begin<'a>(
        &'a self,
        image_id: Uuid,
        meta: &ImageMeta,
        resume_dir: Option<&Path>,
    ) -> Result<Box<dyn Publishing + 'a>>;
}

/// One image on its way into a backend. Dropped without [`Publishing::finish`], it leaves
/// nothing behind (what it created is removed).
pub trait Publishing {
    /// Whether [`Publishing::follow`] uploads an artifact while it is still being written.
    fn streams(&self) -> bool {
        false
    }

    /// The artifact `kind` at `path` is being written and is final up to what `settled` says:
    /// start sending it. Called once, by the writer; the artifact is then handed over with
    /// [`Publishing::upload`] once written. A backend that does not stream ignores this.
    fn follow(
        &mut self,
        _kind: ArtifactKind,
        _path: &Path,
        _settled: Settled,
        _ctx: &Context,
    ) -> Result<()> {
        Ok(())
    }

    /// Add the finished artifact `kind` at `path`.
    fn upload(&mut self, kind: ArtifactKind, path: &Path, ctx: &Context) -> Result<()>;

    /// Write the manifest and register the image's record under `name` in the backend's
    /// catalogue. If the record cannot be written, the artifacts are removed again.
    fn finish(self: Box<Self>, name: &str, arch: Arch) -> Result<Published>;
}

/// The publish target `url` as a job records it: with the endpoint, region, profile and
/// addressing style in effect now, so that completing the job later (another process, another
/// shell) publishes to the same place. Credentials are never recorded.
pub fn target_of(url: &str, s3: &S3Options) -> PublishTarget {
    PublishTarget {
        url: url.to_string(),
        endpoint: s3.endpoint.clone(),
        region: s3.region.clone(),
        profile: s3
            .profile
            .clone()
            .or_else(|| std::env::var("AWS_PROFILE").ok()),
        addressing_style: Some(s3.addressing_style.to_string()),
    }
}

/// The S3 settings of `ctx`, with what the target recorded taking precedence.
fn options_for(target: &PublishTarget, s3: &S3Options) -> Result<S3Options> {
    let mut options = s3.clone();
    options.endpoint = target.endpoint.clone().or(options.endpoint);
    options.region = target.region.clone().or(options.region);
    options.profile = target.profile.clone().or(options.profile);
    if let Some(style) = &target.addressing_style {
        options.addressing_style = style.parse().map_err(anyhow::Error::msg)?;
    }
    Ok(options)
}

/// The backend for a publish target (`s3://BUCKET[/PREFIX]` with how to reach it), or the
/// local store when there is none.
pub fn backend<'s>(
    ctx: &Context,
    store: &'s Store,
    target: Option<&PublishTarget>,
) -> Result<Box<dyn ArtifactBackend + 's>> {
    Ok(match target {
        None => Box::new(LocalBackend { store }),
        Some(target) => {
            let dest = S3Url::parse(&target.url)?;
            let config = S3Config::resolve(&options_for(target, &ctx.s3)?)?;
            let client = Client::new(&config, &dest.bucket)?;
            Box::new(S3Backend {
                client,
                dest,
                catalog: store,
            })
        }
    })
}

/// The local store's `artifacts/<image-id>/`.
pub struct LocalBackend<'s> {
    pub store: &'s Store,
}

impl ArtifactBackend for LocalBackend<'_> {
    fn begin<'a>(
        &'a self,
        image_id: Uuid,
        _meta: &ImageMeta,
        _resume_dir: Option<&Path>,
    ) -> Result<Box<dyn Publishing + 'a>> {
        Ok(Box::new(LocalPublishing {
            store: self.store,
            image_id,
            files: Vec::new(),
        }))
    }
}

/// The local backend publishes in one step at `finish` (staged, fsynced and renamed into
/// place, so the image directory is complete or absent): `upload` only names the files.
struct LocalPublishing<'s> {
    store: &'s Store,
    image_id: Uuid,
    files: Vec<(ArtifactKind, PathBuf)>,
}

impl LocalPublishing<'_> {
    fn file(&self, kind: ArtifactKind) -> Result<&Path> {
        self.files
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, p)| p.as_path())
            .ok_or_else(|| {
                anyhow!(
                    "image {}: no {} to publish",
                    self.image_id,
                    kind.file_name()
                )
            })
    }
}

impl Publishing for LocalPublishing<'_> {
    fn upload(&mut self, kind: ArtifactKind, path: &Path, _ctx: &Context) -> Result<()> {
        self.files.push((kind, path.to_path_buf()));
        Ok(())
    }

    fn finish(self: Box<Self>, name: &str, arch: Arch) -> Result<Published> {
        let published = publish_local(
            self.store,
            self.image_id,
            self.file(ArtifactKind::Rootfs)?,
            self.file(ArtifactKind::Kernel)?,
            self.file(ArtifactKind::Initrd)?,
        )?;
        let record = published.register(self.store, name, arch)?;
        Ok(Published {
            ims_image_artifacts: published.ims_image_artifacts(),
            record,
        })
    }
}

/// A bucket: `<prefix>/<image-id>/{rootfs,kernel,initrd,manifest.json}`, as IMS lays it out;
/// the records go to `catalog` (a job's: the local store).
pub struct S3Backend<'s> {
    pub client: Client,
    pub dest: S3Url,
    pub catalog: &'s dyn ImageCatalog,
}

impl ArtifactBackend for S3Backend<'_> {
    fn begin<'a>(
        &'a self,
        image_id: Uuid,
        meta: &ImageMeta,
        resume_dir: Option<&Path>,
    ) -> Result<Box<dyn Publishing + 'a>> {
        let resume = Resume::on(resume_dir.map(Path::to_path_buf));
        let publication = Publication::begin(&self.client, &self.dest, image_id, meta, &resume)?;
        Ok(Box::new(S3Publishing {
            backend: self,
            publication,
            streaming: None,
        }))
    }
}

struct S3Publishing<'a> {
    backend: &'a S3Backend<'a>,
    publication: Publication<'a>,
    /// The artifact being streamed while written, its upload, and its progress bar.
    streaming: Option<(ArtifactKind, StreamUpload, CounterTicker)>,
}

impl Publishing for S3Publishing<'_> {
    fn streams(&self) -> bool {
        self.backend.client.config().stream_uploads
    }

    fn follow(
        &mut self,
        kind: ArtifactKind,
        path: &Path,
        settled: Settled,
        ctx: &Context,
    ) -> Result<()> {
        if !self.streams() {
            return Ok(());
        }
        let sent = Arc::new(AtomicU64::new(0));
        let ticker = CounterTicker::start(
            ctx.bytes_bar(&format!("{}→S3", kind.file_name()), None),
            sent.clone(),
        );
        let upload = self.publication.stream(
            kind,
            path,
            settled,
            crate::squashfs::writer::HEADER_MAX,
            sent,
        )?;
        self.streaming = Some((kind, upload, ticker));
        Ok(())
    }

    fn upload(&mut self, kind: ArtifactKind, path: &Path, ctx: &Context) -> Result<()> {
        match self.streaming.take() {
            Some((streamed, upload, ticker)) if streamed == kind => {
                let object = self.publication.add_streamed(kind, upload)?;
                drop(ticker);
                let stats = &object.stats;
                ctx.info(format!(
                    "{} uploaded to s3://{}/{}: {} of {} parts while packing, done {:.2}s after \
                     packing (md5sum metadata copy {:.2}s)",
                    kind.file_name(),
                    self.backend.client.bucket(),
                    object.key,
                    stats.parts_while_writing,
                    stats.parts,
                    stats.after_writer.as_secs_f64(),
                    stats.metadata_copy.as_secs_f64()
                ));
                Ok(())
            }
            other => {
                self.streaming = other;
                let file = ArtifactFile {
                    kind,
                    path,
                    md5: None,
                };
                Ok(self.publication.upload(&file, ctx)?)
            }
        }
    }

    fn finish(self: Box<Self>, name: &str, arch: Arch) -> Result<Published> {
        let S3Backend {
            client, catalog, ..
        } = self.backend;
        let published = self.publication.finish()?;
        let record = s3_catalog::register_published(*catalog, client, &published, name, arch)?;
        Ok(Published {
            ims_image_artifacts: published.ims_image_artifacts(),
            record,
        })
    }
}
