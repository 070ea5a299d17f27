//! `imsctl convert | pack | extract | ls`: the SquashFS engine's own commands.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Read, Write};
use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::cli::{ConvertArgs, ExtractArgs, LsArgs, PackArgs, PackOptions};
use imsctl::archive::{self, DirOptions, LeftOut, TarOptions};
use imsctl::context::{Context, CounterTicker};
use imsctl::squashfs::extract::{self, ExtractOptions};
use imsctl::squashfs::reader::Image;
use imsctl::squashfs::writer::{Summary, Writer, WriterOptions};
use imsctl::squashfs::{from_image, listing};
use imsctl::store::PackSpec;

/// Writer options from the command line; the superblock time defaults to now.
pub fn writer_options(p: &PackOptions) -> Result<WriterOptions> {
    imsctl::job::writer_options(&pack_spec(p))
}

/// The pack flags as the typed spec a job records.
pub fn pack_spec(p: &PackOptions) -> PackSpec {
    PackSpec {
        compressor: p.comp.clone(),
        level: p.level,
        block_size: p.block_size,
        mkfs_time: p.mkfs_time,
        fragments: !p.no_fragments,
        tail_ends: p.tail_ends,
        xattrs: !p.no_xattrs,
        exportable: !p.no_exports,
        threads: p.threads,
        reuse_base: !p.full_repack,
    }
}

/// What a conversion's input is, judged by content, not by name.
#[derive(Debug, PartialEq, Eq)]
pub enum InputKind {
    SquashFs,
    Directory,
    Archive,
}

pub fn input_kind(path: &Path) -> Result<InputKind> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("failed to stat {}", path.display()))?;
    if meta.is_dir() {
        return Ok(InputKind::Directory);
    }
    let mut magic = [0u8; 4];
    let n = File::open(path)
        .and_then(|mut f| f.read(&mut magic))
        .with_context(|| format!("failed to read {}", path.display()))?;
    Ok(if n == 4 && &magic == b"hsqs" {
        InputKind::SquashFs
    } else {
        InputKind::Archive
    })
}

/// Build a SquashFS image at `output` from any supported input, atomically. `dir_opts` applies
/// when the input is a directory.
pub fn build_image(
    ctx: &Context,
    input: &Path,
    output: &Path,
    opts: WriterOptions,
    dir_opts: &DirOptions,
) -> Result<Summary> {
    let kind = input_kind(input)?;
    imsctl::fsutil::write_atomically(output, |tmp| {
        let mut writer = Writer::create(tmp, opts)?;
        match kind {
            InputKind::Directory => {
                let dir_opts = leaving_out_outputs(dir_opts, tmp, output)?;
                let bar = ctx.bytes_bar("packing", None);
                let _ticker = CounterTicker::start(bar, writer.progress());
                let report = archive::dir_into(input, &mut writer, &dir_opts)?;
                ctx.warn_all(&report.warnings);
            }
            InputKind::Archive => {
                let _ticker =
                    CounterTicker::start(ctx.bytes_bar("converting", None), writer.progress());
                let mut stream = archive::open_compressed(input)?;
                let report = archive::tar_into(&mut stream, &mut writer, &TarOptions::default())
                    .with_context(|| format!("failed to convert {}", input.display()))?;
                ctx.warn_all(&report.warnings);
            }
            InputKind::SquashFs => {
                let image = Image::open(input)?;
                let bar = ctx.bytes_bar("repacking", None);
                let _ticker = CounterTicker::start(bar, writer.progress());
                from_image::copy_image_into(&image, &mut writer)?;
            }
        }
        let summary = writer.finish()?;
        Ok(summary)
    })
}

/// `dir_opts` that also leave out the image being written (`tmp`) and the output it replaces,
/// should they lie in the tree: the walk would read its own growing output without end.
fn leaving_out_outputs(dir_opts: &DirOptions, tmp: &Path, output: &Path) -> Result<DirOptions> {
    let mut opts = dir_opts.clone();
    opts.leave_out
        .extend(LeftOut::at(tmp, "the image being written")?);
    opts.leave_out
        .extend(LeftOut::at(output, "the output file the image replaces")?);
    Ok(opts)
}

/// `images import`'s converter: a SquashFS source is checked and copied as it is (re-compressing
/// it would only cost time); anything else is converted with the IMS defaults. A directory
/// source is walked without `leave_out` (the store), should it lie inside.
pub fn import_source(ctx: &Context, src: &str, dest: &Path, leave_out: &[&Path]) -> Result<()> {
    let src = Path::new(src);
    if input_kind(src)? == InputKind::SquashFs {
        let image = Image::open(src)?;
        image.root()?;
        std::fs::copy(src, dest)
            .with_context(|| format!("failed to copy {} to {}", src.display(), dest.display()))?;
        return Ok(());
    }
    let opts = writer_options(&default_pack_options())?;
    let mut dir_opts = DirOptions::default();
    for path in leave_out {
        dir_opts.leave_out.extend(LeftOut::at(
            path,
            "the imsctl store the image is imported into",
        )?);
    }
    build_image(ctx, src, dest, opts, &dir_opts)?;
    Ok(())
}

fn default_pack_options() -> PackOptions {
    PackOptions {
        comp: "gzip".into(),
        level: None,
        block_size: 131072,
        mkfs_time: std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|v| v.parse().ok()),
        no_fragments: false,
        tail_ends: false,
        no_xattrs: false,
        no_exports: false,
        threads: 0,
        full_repack: false,
    }
}

fn print_summary(ctx: &Context, output: &Path, s: &Summary, secs: f64) {
    if ctx.verbose > 0 || ctx.progress {
        eprintln!(
            "imsctl: wrote {} ({} inodes, {:.1} MiB of files into {:.1} MiB, {} duplicate files) in {:.1}s",
            imsctl::output::escape_controls(&output.display().to_string()),
            s.inodes,
            s.file_bytes as f64 / 1048576.0,
            s.bytes_used as f64 / 1048576.0,
            s.duplicate_files,
            secs
        );
    }
}

pub fn convert(ctx: &Context, args: &ConvertArgs) -> Result<()> {
    if input_kind(&args.input)? == InputKind::Directory {
        bail!(
            "{} is a directory: use `imsctl pack DIR OUT`",
            args.input.display()
        );
    }
    let started = std::time::Instant::now();
    let opts = writer_options(&args.pack)?;
    let summary = build_image(ctx, &args.input, &args.output, opts, &DirOptions::default())?;
    print_summary(ctx, &args.output, &summary, started.elapsed().as_secs_f64());
    Ok(())
}

pub fn pack(ctx: &Context, args: &PackArgs) -> Result<()> {
    if input_kind(&args.dir)? != InputKind::Directory {
        bail!("{} is not a directory", args.dir.display());
    }
    let started = std::time::Instant::now();
    let dir_opts = DirOptions {
        one_file_system: args.one_file_system,
        ..DirOptions::default()
    };
    let opts = writer_options(&args.pack)?;
    let summary = build_image(ctx, &args.dir, &args.output, opts, &dir_opts)?;
    print_summary(ctx, &args.output, &summary, started.elapsed().as_secs_f64());
    Ok(())
}

pub fn extract(ctx: &Context, args: &ExtractArgs) -> Result<()> {
    let image = Image::open(&args.image)?;
    let bar = ctx.bytes_bar("extracting", None);
    let opts = ExtractOptions {
        skip_devices: args.skip_devices,
        progress: Some(imsctl::squashfs::extract::Progress::new({
            let bar = bar.clone();
            move |n| bar.inc(n)
        })),
        ..ExtractOptions::default()
    };
    let report = extract::extract(&image, &args.dir, &opts)?;
    bar.finish_and_clear();
    ctx.info(format!(
        "extracted {} files, {} directories, {} symlinks, {} hardlinks, {} special files to {}",
        report.files,
        report.dirs,
        report.symlinks,
        report.hardlinks,
        report.specials,
        args.dir.display()
    ));
    if report.devices_skipped > 0 {
        eprintln!(
            "imsctl: warning: {} device nodes could not be created (not permitted) and were skipped",
            report.devices_skipped
        );
    }
    Ok(())
}

pub fn ls(_ctx: &Context, args: &LsArgs) -> Result<()> {
    let image = Image::open(&args.image)?;
    let stdout = std::io::stdout();
    // Exact bytes into a pipe (as unsquashfs -lln prints them), escaped names on a terminal.
    let names = if stdout.is_terminal() {
        listing::Names::Escaped
    } else {
        listing::Names::Exact
    };
    let mut out = BufWriter::new(stdout.lock());
    listing::list_with(&image, &mut out, names)?;
    out.flush().context("failed to write the listing")?;
    Ok(())
}
