//! Errors of the sandbox and of the image-root presentation. Each names the operation and the
//! path it was about, so that `failed to mount overlay on /x: EPERM` is all a user needs.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed; `op` reads as a verb phrase ("mount overlay on").
    #[error("failed to {op} {}: {errno}", path.display())]
    Sys {
        op: String,
        path: PathBuf,
        errno: Errno,
    },
    /// The OS error is part of the message and not also a `source()`: printed once.
    #[error("failed to {op} {}: {cause}", path.display())]
    Io {
        op: String,
        path: PathBuf,
        cause: io::Error,
    },
    /// The job's work dir is locked by a live process.
    #[error("job work dir {} is in use by process {pid}", path.display())]
    Locked { path: PathBuf, pid: u32 },
    /// A setup step inside the sandbox failed; the message was built by the child process.
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    /// Restoring state at the end of a session failed (the command itself ran).
    #[error("sandbox cleanup failed: {0}")]
    Cleanup(String),
    /// The run and the cleanup after it both failed: both are reported, with their causes.
    #[error("{}; and then {}", with_causes(run), with_causes(cleanup))]
    Both {
        run: Box<Error>,
        cleanup: Box<Error>,
    },
    #[error("invalid sandbox configuration: {0}")]
    Config(String),
    /// The closure that fills an extracted image root failed. Its error is the `source()`
    /// (printed by the chain at the top), not also part of this message.
    #[error("failed to populate image root {}", path.display())]
    Populate {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error with its chain of causes, each once (for a message that holds two errors).
fn with_causes(e: &Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
        cause = c.source();
    }
    text
}

impl Error {
    pub fn sys(op: impl Into<String>, path: impl Into<PathBuf>, errno: Errno) -> Self {
        Error::Sys {
            op: op.into(),
            path: path.into(),
            errno,
        }
    }
    pub fn io(op: impl Into<String>, path: impl Into<PathBuf>, cause: io::Error) -> Self {
        Error::Io {
            op: op.into(),
            path: path.into(),
            cause,
        }
    }
    /// Combine the outcome of a run with the outcome of its cleanup, keeping both failures.
    pub fn combine<T>(run: Result<T>, cleanup: Result<()>) -> Result<T> {
        match (run, cleanup) {
            (Ok(v), Ok(())) => Ok(v),
            (Ok(_), Err(c)) => Err(c),
            (Err(r), Ok(())) => Err(r),
            (Err(r), Err(c)) => Err(Error::Both {
                run: Box::new(r),
                cleanup: Box::new(c),
            }),
        }
    }
}

/// Shorthand for mapping a nix result into an [`Error::Sys`] that names the operation and path.
pub(crate) trait SysContext<T> {
    fn ctx(self, op: &str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> SysContext<T> for nix::Result<T> {
    fn ctx(self, op: &str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::sys(op, path, e))
    }
}

impl<T> SysContext<T> for io::Result<T> {
    fn ctx(self, op: &str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}
