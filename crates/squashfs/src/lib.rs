// The crate's documentation is its README, whose example runs as a doctest.
#![doc = include_str!("../README.md")]

pub mod archive;
pub mod compress;
pub mod entry;
pub mod extract;
pub mod format;
pub mod from_image;
pub mod listing;
pub mod metadata;
pub mod names;
pub mod reader;
pub mod writer;

use std::io;
use std::path::PathBuf;

pub use compress::{Algorithm, Compressor};
pub use entry::{EntrySink, Meta, SparseExpand, Special, Xattr, check_segments};

/// Errors of the engine. Each names the operation and the file it was about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OS error is part of the message and not also a `source()`: printed once.
    #[error("failed to {op} {}: {cause}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error("{}: corrupt SquashFS image: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },
    #[error("{}: {what}", path.display())]
    Unsupported { path: PathBuf, what: String },
    /// Independent items of one operation failed (e.g. entries of a parallel extraction): how
    /// many, and the first few messages.
    #[error("failed to {op} {}: {count} error(s): {}", path.display(), first.join("; "))]
    Many {
        op: &'static str,
        path: PathBuf,
        count: usize,
        first: Vec<String>,
    },
    /// Bad input handed to the writer: a path conflict, a hardlink to nothing, an invalid name.
    #[error("{entry}: {what}")]
    BadEntry { entry: String, what: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(op: &'static str, path: impl Into<PathBuf>, cause: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            cause,
        }
    }
    pub fn bad_entry(entry: &[u8], what: impl Into<String>) -> Self {
        Error::BadEntry {
            entry: String::from_utf8_lossy(entry).into_owned(),
            what: what.into(),
        }
    }
}
