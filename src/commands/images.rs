//! `imsctl images …` (as `cray ims images`), on either catalogue: the local store, or an S3
//! bucket named by `--store s3://BUCKET[/PREFIX]` that several build hosts share. `list`,
//! `describe` and `delete` go through the catalogue trait; `publish` sends a local image to S3;
//! `import` takes an archive, a directory, a SquashFS or an image in S3; `verify` checks the
//! artifacts where the record's link points.
//!
//! `import` needs the converter (archive/directory → SquashFS), which lives elsewhere: the
//! caller passes it in as `convert(src, dest)`, a function that writes the SquashFS of `src` to
//! the path `dest`. Everything around it (temp space in the store, the move into place, the
//! record) is done here.

use std::io::Write;
use std::path::Path;

use anyhow::{Context as _, bail};

use crate::cli::{ImagesCommand, ImportArgs, S3Args, VerifyArgs};
use imsctl::context::Context;
use imsctl::interrupt::{Kind, TempGuard};
use imsctl::output::{render_list, render_one};
use imsctl::publish::s3_catalog::S3Store;
use imsctl::publish::{LINK_TYPE_S3, VerifyMode, import_image, verify_image, verify_s3_image};
use imsctl::s3::{Client, Resume, S3Config, S3Url};
use imsctl::store::{Arch, ImageCatalog, ImageRecord, Store};

/// Builds the SquashFS of `src` at `dest` (a path that does not exist yet). A directory
/// source is walked without the paths of the third argument (the store, which may lie inside
/// it), compared by device and inode.
pub type Converter<'a> = &'a dyn Fn(&str, &Path, &[&Path]) -> anyhow::Result<()>;

/// The catalogue `--store` names.
enum Catalog {
    Local(Store),
    S3(Box<S3Store>),
}

impl Catalog {
    fn open(ctx: &Context, s3: &S3Args) -> anyhow::Result<Catalog> {
        match ctx.store.as_deref().and_then(Path::to_str) {
            Some(text) if S3Url::is_s3(text) => {
                let root = S3Url::parse(text)?;
                Ok(Catalog::S3(Box::new(S3Store::open(
                    &s3_config(s3)?,
                    &root,
                )?)))
            }
            _ => Ok(Catalog::Local(Store::locate(ctx.store.as_deref())?)),
        }
    }

    fn records(&self) -> &dyn ImageCatalog {
        match self {
            Catalog::Local(store) => store,
            Catalog::S3(store) => store.as_ref(),
        }
    }

    /// The local store, for the verbs that read or write local artifacts.
    fn local(&self, verb: &str) -> anyhow::Result<&Store> {
        match self {
            Catalog::Local(store) => Ok(store),
            Catalog::S3(store) => bail!(
                "images {verb} works on the local store; run it without --store {}",
                store.root()
            ),
        }
    }
}

fn s3_config(args: &S3Args) -> anyhow::Result<S3Config> {
    Ok(S3Config::resolve(&args.options())?)
}

pub fn run(
    ctx: &Context,
    s3: &S3Args,
    cmd: &ImagesCommand,
    convert: Converter<'_>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let catalog = Catalog::open(ctx, s3)?;
    let text = match cmd {
        ImagesCommand::List(args) => render_list(&catalog.records().list_images()?, args.format)?,
        ImagesCommand::Describe(args) => {
            render_one(&catalog.records().get_image(&args.id)?, args.format.format)?
        }
        ImagesCommand::Delete(args) => delete(&catalog, &args.id)?,
        ImagesCommand::Repair(args) => match &catalog {
            Catalog::S3(store) => repair(store, args.older_than, args.dry_run)?,
            Catalog::Local(_) => bail!(
                "images repair cleans an S3 catalogue: run it with --store s3://BUCKET[/PREFIX]"
            ),
        },
        ImagesCommand::Verify(args) => return verify(ctx, s3, &catalog, args, out),
        ImagesCommand::Import(args) => {
            let store = catalog.local("import").map_err(|_| {
                anyhow::anyhow!(
                    "cannot import {} into an S3 store: import into a local store, then \
                     `imsctl images publish ID s3://…`",
                    args.src
                )
            })?;
            let record = if S3Url::is_s3(&args.src) {
                import_from_s3(ctx, &s3_config(s3)?, store, args)?
            } else {
                import(store, args, convert)?
            };
            render_one(&record, args.format.format)?
        }
        ImagesCommand::Publish(args) => {
            let store = catalog.local("publish")?;
            let dest = S3Url::parse(&args.dest)?;
            let target = S3Store::open(&s3_config(s3)?, &dest)?;
            // Upload ids are remembered in the store's work area, so a rerun after a kill
            // resumes even on servers that cannot list uploads in progress.
            let resume = match args.no_resume {
                true => Resume::off(),
                false => Resume::on(Some(store.work_root().join("s3-uploads"))),
            };
            let record = target
                .publish_from_local(store, &args.id, &resume, ctx)
                .with_context(|| format!("failed to publish image {} to {dest}", args.id))?;
            render_one(&record, args.format.format)?
        }
    };
    out.write_all(text.as_bytes())
        .context("failed to write the output")?;
    Ok(())
}

/// Delete the record and the artifacts it owns. In an S3 catalogue, an id without a record
/// may still hold what a publish that died left: those objects are removed and listed.
fn delete(catalog: &Catalog, id: &str) -> anyhow::Result<String> {
    let error = match catalog.records().delete_image(id) {
        Ok(_) => return Ok(String::new()),
        Err(e) => e,
    };
    let Catalog::S3(store) = catalog else {
        return Err(error);
    };
    if !error.to_string().starts_with("no image with id") {
        return Err(error);
    }
    let removed = store.delete_orphan(id)?;
    if removed.is_empty() {
        return Err(error);
    }
    Ok(removed.iter().map(|line| format!("{line}\n")).collect())
}

fn repair(
    store: &S3Store,
    older_than: std::time::Duration,
    dry_run: bool,
) -> anyhow::Result<String> {
    let actions = store.repair(older_than, dry_run)?;
    if actions.is_empty() {
        return Ok(format!("{}: nothing to repair\n", store.root()));
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    Ok(actions
        .iter()
        .map(|line| format!("{verb} {line}\n"))
        .collect())
}

fn import_from_s3(
    ctx: &Context,
    config: &S3Config,
    store: &Store,
    args: &ImportArgs,
) -> anyhow::Result<ImageRecord> {
    let src = S3Url::parse(&args.src)?;
    let client = Client::new(config, &src.bucket)?;
    import_image(
        &client,
        &src,
        store,
        args.name.as_deref(),
        args.arch.unwrap_or_else(Arch::host),
        ctx,
    )
    .with_context(|| format!("failed to import {src}"))
}

/// Print one line per artifact where the record's link points (the local store or S3); an
/// error (non-zero exit) when any does not match.
fn verify(
    ctx: &Context,
    s3: &S3Args,
    catalog: &Catalog,
    args: &VerifyArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let record = catalog.records().get_image(&args.id)?;
    let in_s3 = record
        .link
        .as_ref()
        .is_some_and(|l| l.link_type == LINK_TYPE_S3);
    let (report, what) = match catalog {
        Catalog::Local(store) if !in_s3 => (verify_image(store, &args.id)?, "files"),
        Catalog::S3(store) => (
            verify_s3(ctx, store.client(), &record, args.deep)?,
            "objects",
        ),
        Catalog::Local(_) => {
            let link = record.link.as_ref().map(|l| l.path.as_str()).unwrap_or("");
            let url = S3Url::parse(link)?;
            let client = Client::new(&s3_config(s3)?, &url.bucket)?;
            (verify_s3(ctx, &client, &record, args.deep)?, "objects")
        }
    };
    for entry in &report.entries {
        writeln!(out, "{entry}").context("failed to write the output")?;
    }
    if !report.is_ok() {
        bail!(
            "image {}: {} of {} {what} failed verification",
            report.image_id,
            report.failures(),
            report.entries.len()
        );
    }
    Ok(())
}

fn verify_s3(
    ctx: &Context,
    client: &Client,
    record: &ImageRecord,
    deep: bool,
) -> anyhow::Result<imsctl::publish::VerifyReport> {
    let mode = if deep {
        VerifyMode::Deep
    } else {
        VerifyMode::Metadata
    };
    Ok(verify_s3_image(client, record, mode, ctx)?)
}

/// Convert `args.src` into a SquashFS inside the store's work area (same filesystem as the
/// artifacts, so the final move is a rename), then register it as a new image.
pub fn import(
    store: &Store,
    args: &ImportArgs,
    convert: Converter<'_>,
) -> anyhow::Result<ImageRecord> {
    let name = match &args.name {
        Some(name) => name.clone(),
        None => default_image_name(&args.src).with_context(|| {
            format!(
                "cannot derive an image name from {:?}; give --name",
                args.src
            )
        })?,
    };
    // Registered for removal should a signal end the process (Ctrl-C of a long import).
    let (scratch, guard) = TempGuard::create(Kind::Dir, || {
        let dir = tempfile::Builder::new()
            .prefix(".import-")
            .tempdir_in(store.work_root())?;
        let path = dir.path().to_path_buf();
        Ok((dir, path))
    })
    .with_context(|| {
        format!(
            "failed to create a scratch directory in {}",
            store.work_root().display()
        )
    })?;
    let rootfs = scratch.path().join("rootfs");
    // The store is left out of a directory source that holds it: the conversion would read
    // its own growing output.
    let registered = convert(&args.src, &rootfs, &[store.root()])
        .with_context(|| format!("failed to import {}", args.src))
        .and_then(|()| {
            Ok(store.register_image(
                &name,
                args.arch.unwrap_or_else(Arch::host),
                &rootfs,
                None,
                None,
            )?)
        });
    // The directory goes before its registration does.
    drop(scratch);
    drop(guard);
    registered
}

/// The last component of SRC (`/data/sles15.sqsh` → `sles15.sqsh`, `s3://b/id/` → `id`).
fn default_image_name(src: &str) -> Option<String> {
    let name = src.trim_end_matches('/').rsplit('/').next()?;
    (!name.is_empty() && name != "." && name != "..").then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{FormatArg, IdArg, IdFormatArgs, OutputFormat, VerifyArgs};
    use imsctl::artifacts::manifest::{ArtifactKind, Manifest};
    use std::fs;

    fn no_converter(_: &str, _: &Path, _: &[&Path]) -> anyhow::Result<()> {
        anyhow::bail!("no converter in this test")
    }

    /// `run` on the local store at `store`'s root, S3 settings left at their defaults.
    fn run(
        store: &Store,
        cmd: &ImagesCommand,
        convert: Converter<'_>,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let ctx = Context::new(Some(store.root().to_path_buf()), 0, true);
        super::run(&ctx, &S3Args::default(), cmd, convert, out)
    }

    /// A stand-in converter: "converts" by copying the source file.
    fn copy_converter(src: &str, dest: &Path, _: &[&Path]) -> anyhow::Result<()> {
        fs::copy(src, dest)?;
        Ok(())
    }

    fn setup() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("store")).expect("store");
        (dir, store)
    }

    fn import_one(dir: &Path, store: &Store, content: &[u8]) -> ImageRecord {
        let src = dir.join("base.sqsh");
        fs::write(&src, content).expect("write");
        let args = ImportArgs {
            src: src.display().to_string(),
            name: None,
            arch: Some(Arch::X86_64),
            format: FormatArg {
                format: OutputFormat::Json,
            },
        };
        let mut out = Vec::new();
        run(
            store,
            &ImagesCommand::Import(args),
            &copy_converter,
            &mut out,
        )
        .expect("import");
        serde_json::from_slice(&out).expect("record json")
    }

    #[test]
    fn import_registers_and_publishes_a_rootfs() {
        let (dir, store) = setup();
        let record = import_one(dir.path(), &store, b"squashfs bytes");
        assert_eq!(record.name, "base.sqsh");
        let link = record.link.clone().expect("link");
        assert_eq!(link.link_type, "file");
        let manifest = Manifest::read(Path::new(&link.path)).expect("manifest");
        let rootfs = manifest.artifact(ArtifactKind::Rootfs).expect("rootfs");
        use md5::Digest;
        assert_eq!(
            rootfs.md5,
            imsctl::artifacts::md5::hex(&md5::Md5::digest(b"squashfs bytes"))
        );
        assert_eq!(rootfs.link.etag, rootfs.md5);
        assert_eq!(
            fs::read(&rootfs.link.path).expect("read"),
            b"squashfs bytes"
        );
        // The scratch area is cleaned up.
        let leftovers: Vec<_> = fs::read_dir(store.work_root()).expect("readdir").collect();
        assert!(leftovers.is_empty());
        let stored: ImageRecord = store.get_by_id(record.id).expect("get");
        assert_eq!(stored, record);
    }

    #[test]
    fn failed_conversion_leaves_nothing() {
        let (_dir, store) = setup();
        let args = ImportArgs {
            src: "/x/y.txz".into(),
            name: None,
            arch: None,
            format: FormatArg::default(),
        };
        let err = run(
            &store,
            &ImagesCommand::Import(args),
            &no_converter,
            &mut Vec::new(),
        )
        .expect_err("fails");
        assert!(format!("{err:#}").contains("/x/y.txz"), "{err:#}");
        assert!(store.list::<ImageRecord>().expect("list").is_empty());
        assert_eq!(fs::read_dir(store.work_root()).expect("readdir").count(), 0);
        assert_eq!(
            fs::read_dir(store.artifacts_dir())
                .expect("readdir")
                .count(),
            0
        );
    }

    #[test]
    fn list_describe_verify_delete() {
        let (dir, store) = setup();
        let record = import_one(dir.path(), &store, b"rootfs v1");
        let id = record.id.to_string();

        let mut out = Vec::new();
        run(
            &store,
            &ImagesCommand::List(FormatArg::default()),
            &no_converter,
            &mut out,
        )
        .expect("list");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.starts_with("[[results]]\ncreated = "), "{text}");
        assert!(text.contains("[results.link]\ntype = \"file\""), "{text}");

        let describe = ImagesCommand::Describe(IdFormatArgs {
            id: id.clone(),
            format: FormatArg::default(),
        });
        let mut out = Vec::new();
        run(&store, &describe, &no_converter, &mut out).expect("describe");
        assert!(
            String::from_utf8(out)
                .expect("utf8")
                .contains(&format!("id = \"{id}\""))
        );

        let verify = ImagesCommand::Verify(VerifyArgs {
            id: id.clone(),
            deep: false,
        });
        let mut out = Vec::new();
        run(&store, &verify, &no_converter, &mut out).expect("verify ok");
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.lines().all(|l| l.starts_with("OK ")), "{text}");

        // Corrupt the rootfs: verify reports it and fails.
        let rootfs = store.image_artifacts_dir(record.id).join("rootfs");
        fs::write(&rootfs, b"rootfs v2").expect("write");
        let mut out = Vec::new();
        let err = run(&store, &verify, &no_converter, &mut out).expect_err("mismatch");
        assert!(err.to_string().contains("1 of 2"), "{err}");
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            text.lines().any(|l| l.starts_with("MISMATCH  rootfs")),
            "{text}"
        );

        // Missing file.
        fs::remove_file(&rootfs).expect("rm");
        let mut out = Vec::new();
        run(&store, &verify, &no_converter, &mut out).expect_err("missing");
        assert!(
            String::from_utf8(out)
                .expect("utf8")
                .contains("MISSING   rootfs")
        );

        run(
            &store,
            &ImagesCommand::Delete(IdArg { id: id.clone() }),
            &no_converter,
            &mut Vec::new(),
        )
        .expect("delete");
        assert!(!store.image_artifacts_dir(record.id).exists());
        let err = run(&store, &describe, &no_converter, &mut Vec::new()).expect_err("gone");
        assert_eq!(err.to_string(), format!("no image with id {id}"));
        let err = run(
            &store,
            &ImagesCommand::Verify(VerifyArgs {
                id: "xyz".into(),
                deep: false,
            }),
            &no_converter,
            &mut Vec::new(),
        )
        .expect_err("bad id");
        assert_eq!(err.to_string(), "invalid image id \"xyz\": not a UUID");
    }

    #[test]
    fn default_names() {
        assert_eq!(
            default_image_name("/data/sles15.sqsh").as_deref(),
            Some("sles15.sqsh")
        );
        assert_eq!(
            default_image_name("rootfs-dir/").as_deref(),
            Some("rootfs-dir")
        );
        assert_eq!(
            default_image_name("s3://bucket/abc/").as_deref(),
            Some("abc")
        );
        assert_eq!(default_image_name("/"), None);
    }
}
