//! Command-line definitions, and nothing else: clap parsing lives here, the work in `commands`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "imsctl", version, about = "Customize boot images locally, the IMS way, with no cluster")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Store directory (records and artifacts). Default: $IMSCTL_HOME, else /var/lib/imsctl as
    /// root and $XDG_DATA_HOME/imsctl otherwise.
    #[arg(long, global = true, env = "IMSCTL_HOME")]
    pub store: Option<PathBuf>,
    /// More step logs on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Toml,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {}
