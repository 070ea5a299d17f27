//! Command-line definitions, and nothing else: clap parsing lives here, the work in `commands`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "imsctl",
    version,
    about = "Customize boot images locally, the IMS way, with no cluster"
)]
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
pub enum Command {
    /// Image records and their artifacts (as `cray ims images`).
    #[command(subcommand)]
    Images(ImagesCommand),
    /// Public keys for the customization shell (as `cray ims public-keys`).
    #[command(subcommand)]
    PublicKeys(PublicKeysCommand),
}

/// `--format` of every list/describe.
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct FormatArg {
    /// Output format: toml (as `cray ims`) or json (sorted keys, stable for scripts).
    #[arg(long, value_enum, default_value_t)]
    pub format: OutputFormat,
}

/// A record id, and the output format.
#[derive(Args, Debug, Clone)]
pub struct IdFormatArgs {
    /// The record's id (UUID).
    pub id: String,
    #[command(flatten)]
    pub format: FormatArg,
}

/// A record id.
#[derive(Args, Debug, Clone)]
pub struct IdArg {
    /// The record's id (UUID).
    pub id: String,
}

#[derive(Subcommand, Debug)]
pub enum ImagesCommand {
    /// List image records.
    List(FormatArg),
    /// Show one image record.
    Describe(IdFormatArgs),
    /// Delete an image: its record and its artifacts in the store.
    Delete(IdArg),
    /// Re-hash an image's artifacts against its manifest; non-zero exit on any mismatch.
    Verify(IdArg),
    /// Store SRC (.txz, .tar*, .sqsh or a directory) as a SquashFS base image and register it.
    Import(ImportArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// The image to import: an archive, a SquashFS file or a directory.
    pub src: String,
    /// Name of the image record (default: SRC's file name).
    #[arg(long)]
    pub name: Option<String>,
    /// Architecture of the image: x86_64 or aarch64 (default: this machine's).
    #[arg(long)]
    pub arch: Option<crate::store::Arch>,
    #[command(flatten)]
    pub format: FormatArg,
}

#[derive(Subcommand, Debug)]
pub enum PublicKeysCommand {
    /// Register an SSH public key (an OpenSSH `.pub` file).
    Create(PublicKeyCreateArgs),
    /// List public-key records.
    List(FormatArg),
    /// Show one public-key record.
    Describe(IdFormatArgs),
    /// Delete a public-key record.
    Delete(IdArg),
}

#[derive(Args, Debug, Clone)]
pub struct PublicKeyCreateArgs {
    /// Name of the record, e.g. "username public key".
    #[arg(long)]
    pub name: String,
    /// The public key file, e.g. ~/.ssh/id_ed25519.pub.
    #[arg(long = "public-key", value_name = "FILE")]
    pub public_key: PathBuf,
    #[command(flatten)]
    pub format: FormatArg,
}
