//! `imsctl images list|describe|delete|verify|import` (as `cray ims images`).
//!
//! `import` needs the converter (archive/directory → SquashFS), which lives elsewhere: the
//! caller passes it in as `convert(src, dest)`, a function that writes the SquashFS of `src` to
//! the path `dest`. Everything around it (temp space in the store, the move into place, the
//! record) is done here.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use crate::cli::{ImagesCommand, ImportArgs};
use imsctl::artifacts::verify_image;
use imsctl::interrupt::{Kind, TempGuard};
use imsctl::output::{render_list, render_one};
use imsctl::store::{Arch, ImageRecord, Store};

/// Builds the SquashFS of `src` at `dest` (a path that does not exist yet). A directory
/// source is walked without the paths of the third argument (the store, which may lie inside
/// it), compared by device and inode.
pub type Converter<'a> = &'a dyn Fn(&str, &Path, &[&Path]) -> anyhow::Result<()>;

pub fn run(
    store: &Store,
    cmd: &ImagesCommand,
    convert: Converter<'_>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let text = match cmd {
        ImagesCommand::List(args) => render_list(&store.list::<ImageRecord>()?, args.format)?,
        ImagesCommand::Describe(args) => {
            render_one(&store.get::<ImageRecord>(&args.id)?, args.format.format)?
        }
        ImagesCommand::Delete(args) => {
            store.delete_image(&args.id)?;
            String::new()
        }
        ImagesCommand::Verify(args) => return verify(store, &args.id, out),
        ImagesCommand::Import(args) => {
            render_one(&import(store, args, convert)?, args.format.format)?
        }
        ImagesCommand::Repair(_) => anyhow::bail!(
            "images repair cleans an S3 catalogue: run it with --store s3://BUCKET[/PREFIX]"
        ),
        // S3 work is dispatched to commands::s3 before reaching here.
        ImagesCommand::Publish(args) => {
            anyhow::bail!(
                "images publish {} {}: S3 is not configured here",
                args.id,
                args.dest
            )
        }
    };
    out.write_all(text.as_bytes())
        .context("failed to write the output")?;
    Ok(())
}

/// Print one line per artifact; an error (non-zero exit) when any does not match.
fn verify(store: &Store, id: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let report = verify_image(store, id)?;
    for entry in &report.entries {
        writeln!(out, "{entry}").context("failed to write the output")?;
    }
    if !report.is_ok() {
        anyhow::bail!(
            "image {}: {} of {} files failed verification",
            report.image_id,
            report.failures(),
            report.entries.len()
        );
    }
    Ok(())
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
