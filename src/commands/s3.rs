//! The `images` verbs that involve S3: any verb with `--store s3://BUCKET[/PREFIX]` (the shared
//! catalogue), `images publish ID s3://…`, `images import s3://…`, and `images verify` of an
//! image whose record links to S3. Everything else stays with `commands::images`.

use std::io::Write;
use std::path::Path;

use anyhow::{Context as _, bail};

use crate::cli::{ImagesCommand, S3Args};
use imsctl::context::Context;
use imsctl::output::{render_list, render_one};
use imsctl::s3::{
    Client, LINK_TYPE_S3, Resume, S3Config, S3Url, VerifyMode, import_image, verify_s3_image,
};
use imsctl::store::s3_backend::{ImageCatalog, S3Store};
use imsctl::store::{Arch, ImageRecord, Store};

/// `--store` when it names a bucket.
pub fn s3_store_url(ctx: &Context) -> anyhow::Result<Option<S3Url>> {
    match ctx.store.as_deref().and_then(Path::to_str) {
        Some(text) if S3Url::is_s3(text) => Ok(Some(S3Url::parse(text)?)),
        _ => Ok(None),
    }
}

/// Does this `images` command go through S3?
pub fn handles(ctx: &Context, cmd: &ImagesCommand) -> anyhow::Result<bool> {
    if s3_store_url(ctx)?.is_some() {
        return Ok(true);
    }
    Ok(match cmd {
        ImagesCommand::Publish(_) => true,
        ImagesCommand::Import(args) => S3Url::is_s3(&args.src),
        ImagesCommand::Verify(args) => {
            let store = Store::locate(ctx.store.as_deref())?;
            let record: ImageRecord = store.get(&args.id)?;
            record.link.is_some_and(|l| l.link_type == LINK_TYPE_S3)
        }
        _ => false,
    })
}

pub fn config(args: &S3Args) -> anyhow::Result<S3Config> {
    Ok(S3Config::resolve(&args.options())?)
}

/// Run an `images` command that `handles` accepted.
pub fn run_images(
    ctx: &Context,
    args: &S3Args,
    cmd: &ImagesCommand,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let config = config(args)?;
    let text = match s3_store_url(ctx)? {
        Some(root) => with_s3_store(ctx, &config, &root, cmd, out)?,
        None => with_local_store(ctx, &config, cmd, out)?,
    };
    out.write_all(text.as_bytes())
        .context("failed to write the output")?;
    Ok(())
}

fn with_s3_store(
    ctx: &Context,
    config: &S3Config,
    root: &S3Url,
    cmd: &ImagesCommand,
    out: &mut dyn Write,
) -> anyhow::Result<String> {
    let store = S3Store::open(config, root)?;
    Ok(match cmd {
        ImagesCommand::List(args) => render_list(&store.list_images()?, args.format)?,
        ImagesCommand::Describe(args) => {
            render_one(&store.get_image(&args.id)?, args.format.format)?
        }
        ImagesCommand::Delete(args) => match store.delete_image(&args.id) {
            Ok(_) => String::new(),
            // No record: what a publish that died left under the id, if anything.
            Err(e) if is_no_such_image(&e) => {
                let removed = store.delete_orphan(&args.id)?;
                if removed.is_empty() {
                    return Err(e);
                }
                removed.iter().map(|line| format!("{line}\n")).collect()
            }
            Err(e) => return Err(e),
        },
        ImagesCommand::Repair(args) => {
            let actions = store.repair(args.older_than, args.dry_run)?;
            let verb = if args.dry_run {
                "would remove"
            } else {
                "removed"
            };
            let mut text: String = actions
                .iter()
                .map(|line| format!("{verb} {line}\n"))
                .collect();
            if actions.is_empty() {
                text = format!("{root}: nothing to repair\n");
            }
            text
        }
        ImagesCommand::Verify(args) => {
            let record = store.get_image(&args.id)?;
            verify(ctx, store.client(), &record, args.deep, out)?;
            String::new()
        }
        ImagesCommand::Import(args) => bail!(
            "cannot import {} into the S3 store {root}: import into a local store, then \
             `imsctl images publish ID {root}`",
            args.src
        ),
        ImagesCommand::Publish(args) => bail!(
            "images publish reads image {} from the local store; run it without --store {root}",
            args.id
        ),
    })
}

fn is_no_such_image(e: &anyhow::Error) -> bool {
    e.to_string().starts_with("no image with id")
}

fn with_local_store(
    ctx: &Context,
    config: &S3Config,
    cmd: &ImagesCommand,
    out: &mut dyn Write,
) -> anyhow::Result<String> {
    let store = Store::locate(ctx.store.as_deref())?;
    Ok(match cmd {
        ImagesCommand::Publish(args) => {
            let dest = S3Url::parse(&args.dest)?;
            let target = S3Store::open(config, &dest)?;
            // Upload ids are remembered in the store's work area, so a rerun after a kill
            // resumes even on servers that cannot list uploads in progress.
            let resume = match args.no_resume {
                true => Resume::off(),
                false => Resume::on(Some(store.work_root().join("s3-uploads"))),
            };
            let record = target
                .publish_from_local(&store, &args.id, &resume, ctx)
                .with_context(|| format!("failed to publish image {} to {dest}", args.id))?;
            render_one(&record, args.format.format)?
        }
        ImagesCommand::Import(args) => {
            let src = S3Url::parse(&args.src)?;
            let client = Client::new(config, &src.bucket)?;
            let record = import_image(
                &client,
                &src,
                &store,
                args.name.as_deref(),
                args.arch.unwrap_or_else(Arch::host),
                ctx,
            )
            .with_context(|| format!("failed to import {src}"))?;
            render_one(&record, args.format.format)?
        }
        ImagesCommand::Verify(args) => {
            let record: ImageRecord = store.get(&args.id)?;
            let link = record
                .link
                .as_ref()
                .map(|l| l.path.clone())
                .unwrap_or_default();
            let url = S3Url::parse(&link)?;
            let client = Client::new(config, &url.bucket)?;
            verify(ctx, &client, &record, args.deep, out)?;
            String::new()
        }
        ImagesCommand::Repair(_) => {
            bail!("images repair cleans an S3 catalogue: run it with --store s3://BUCKET[/PREFIX]")
        }
        other => bail!("{other:?} does not involve S3"),
    })
}

/// Print one line per object; an error (non-zero exit) when any does not match.
fn verify(
    ctx: &Context,
    client: &Client,
    record: &ImageRecord,
    deep: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mode = if deep {
        VerifyMode::Deep
    } else {
        VerifyMode::Metadata
    };
    let report = verify_s3_image(client, record, mode, ctx)?;
    for entry in &report.entries {
        writeln!(out, "{entry}").context("failed to write the output")?;
    }
    if !report.is_ok() {
        bail!(
            "image {}: {} of {} objects failed verification",
            report.image_id,
            report.failures(),
            report.entries.len()
        );
    }
    Ok(())
}
