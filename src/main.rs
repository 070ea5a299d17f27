//! imsctl's entry point: parse, dispatch, map errors to exit codes — nothing else.

use std::process::ExitCode;

use clap::Parser;
use imsctl::cli::{Cli, Command};
use imsctl::commands;
use imsctl::context::Context;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = Context::new(
        cli.global.store.clone(),
        cli.global.verbose,
        cli.global.quiet,
    );
    let result = match cli.command {
        Command::Convert(args) => commands::squashfs::convert(&ctx, &args),
        Command::Pack(args) => commands::squashfs::pack(&ctx, &args),
        Command::Extract(args) => commands::squashfs::extract(&ctx, &args),
        Command::Ls(args) => commands::squashfs::ls(&ctx, &args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imsctl: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
