//! imsctl's entry point: parse, dispatch, map errors to exit codes — nothing else.

use std::io::Write;
use std::process::ExitCode;

mod cli;
mod commands;

use clap::{CommandFactory, FromArgMatches};
use cli::{Cli, Command};
use imsctl::context::Context;
use imsctl::store::Store;

/// Open the store and run a record command writing to stdout.
fn with_store(
    ctx: &Context,
    f: impl FnOnce(&Store, &mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let store = Store::locate(ctx.store.as_deref())?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    f(&store, &mut out)?;
    out.flush()?;
    Ok(())
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Command::InternalEnter(args) = &cli.command {
        // First, while this process is single-threaded: it joins namespaces.
        return report(commands::ssh::enter(args));
    }
    let steps = cli::customize_steps(&matches);
    let mut ctx = Context::new(
        cli.global.store.clone(),
        cli.global.verbose,
        cli.global.quiet,
    );
    ctx.s3 = cli.global.s3.options();
    // Still single-threaded: the last moment a user namespace can be entered.
    if let Err(e) = commands::rootless::enter_if_needed(&cli.command, &mut ctx) {
        return report(Err(e));
    }
    let result = match cli.command {
        Command::Convert(args) => commands::squashfs::convert(&ctx, &args),
        Command::Pack(args) => commands::squashfs::pack(&ctx, &args),
        Command::Extract(args) => commands::squashfs::extract(&ctx, &args),
        Command::Ls(args) => commands::squashfs::ls(&ctx, &args),
        Command::Images(cmd) => {
            let convert = |src: &str, dest: &std::path::Path, leave_out: &[&std::path::Path]| {
                commands::squashfs::import_source(&ctx, src, dest, leave_out)
            };
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            commands::images::run(&ctx, &cli.global.s3, &cmd, &convert, &mut out)
                .and_then(|()| Ok(out.flush()?))
        }
        Command::Jobs(cmd) => with_store(&ctx, |store, out| {
            commands::jobs::run(&ctx, store, &cmd, out)
        }),
        Command::Customize(args) => with_store(&ctx, |store, out| {
            commands::jobs::customize(&ctx, store, &args, &steps, out)
        }),
        Command::PublicKeys(cmd) => with_store(&ctx, |store, out| {
            commands::public_keys::run(store, &cmd, out)
        }),
        Command::InternalSshServer(args) => {
            with_store(&ctx, |store, _| commands::ssh::serve(&ctx, store, &args))
        }
        Command::InternalEnter(_) => Ok(()), // handled above
        Command::InternalSftpServer { home } => {
            imsctl::ssh::sftp::serve_stdio(&home).map_err(|e| anyhow::anyhow!("sftp server: {e}"))
        }
    };
    report(result)
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imsctl: error: {}", imsctl::output::error_text(&e));
            ExitCode::FAILURE
        }
    }
}
