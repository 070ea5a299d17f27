//! imsctl's S3 transport: a blocking client on rusty-s3 (sans-IO SigV4 presigning) and ureq,
//! with retries under a time budget, parallel multipart uploads that resume, uploads streamed
//! while their file is written, parallel ranged downloads, and per-key leases for servers
//! without conditional writes (`guard`). It knows objects and files, not images or records:
//! the IMS artifact layout is the application's (`imsctl::publish`). Progress is an atomic
//! counter the caller reads.
//!
//! Every request is presigned by rusty-s3 (query-string SigV4, unsigned payload) and sent by
//! ureq; integrity comes from `Content-MD5` on every upload (the server recomputes it) and from
//! our own md5 of each whole file, stored as `x-amz-meta-md5sum` and checked after the upload.

pub mod client;
pub mod config;
pub mod download;
pub mod guard;
pub mod md5;
pub mod multipart;
pub mod stream;

use std::fmt;
use std::io;
use std::path::PathBuf;

pub use client::{Client, ObjectInfo};
pub use config::{AddressingStyle, RetryPolicy, S3Config, S3Options, Timeouts};
pub use download::{Downloaded, download_file, md5_of_object};
pub use multipart::{Resume, UploadOptions, UploadStats, UploadedObject, upload_file};
/// Local S3 servers (moto, s3s-fs) and a fault-injecting proxy, for tests here and above.
#[cfg(any(test, feature = "testserver"))]
pub mod testserver;

pub use stream::{Settled, StreamOptions, StreamUpload};

#[cfg(test)]
mod tests;

/// Errors of the S3 code. Request errors name the operation, the object and the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("S3 {op} {target} at {endpoint}: {detail}")]
    Request {
        op: &'static str,
        /// `s3://bucket/key`.
        target: String,
        endpoint: String,
        /// HTTP status when the server answered.
        status: Option<u16>,
        /// S3 error code (`NoSuchKey`, `InvalidAccessKeyId`, …) when the body had one.
        code: Option<String>,
        detail: String,
    },
    /// The OS error is part of the message and not also a `source()`: printed once.
    #[error("failed to {op} {}: {cause}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    /// An object is not what was uploaded (size or md5 differ).
    #[error("{target}: {what}")]
    Integrity { target: String, what: String },
    #[error("{0}")]
    Config(String),
    #[error("interrupted")]
    Cancelled,
    /// An error of the layer above, met while it drove a transfer (a record it could not
    /// write, a manifest it could not parse), carried through unchanged.
    #[error(transparent)]
    Caller(Box<dyn std::error::Error + Send + Sync>),
    /// Another run holds the image id (its lease, or this store's lock): nothing was changed.
    #[error("{0}")]
    Busy(String),
    /// The image id is already registered or published there.
    #[error("{0}")]
    AlreadyPublished(String),
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

    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Request { status, .. } => *status,
            _ => None,
        }
    }

    /// The object (or upload) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// A conditional write found the key taken.
    pub fn is_precondition_failed(&self) -> bool {
        matches!(self.status(), Some(412) | Some(409))
    }
}

/// `s3://BUCKET[/KEY-OR-PREFIX]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Without leading or trailing slashes; empty for the bucket itself.
    pub key: String,
}

impl S3Url {
    /// Is this an `s3://` URL at all (as opposed to a local path)?
    pub fn is_s3(text: &str) -> bool {
        text.starts_with("s3://")
    }

    pub fn parse(text: &str) -> Result<S3Url> {
        let rest = text.strip_prefix("s3://").ok_or_else(|| {
            Error::Config(format!(
                "{text:?} is not an s3:// URL (s3://BUCKET[/PREFIX])"
            ))
        })?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            return Err(Error::Config(format!(
                "{text:?}: {bucket:?} is not a valid bucket name (3-63 of a-z, 0-9, '-', '.')"
            )));
        }
        let key = key.trim_matches('/');
        if key.split('/').any(|c| c == ".." || c == ".") || key.contains("//") {
            return Err(Error::Config(format!(
                "{text:?}: the key may not contain empty, '.' or '..' components"
            )));
        }
        Ok(S3Url {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }

    /// `key` under this URL's prefix: `prefix/key`, or `key` at the bucket's top.
    pub fn join(&self, key: &str) -> String {
        if self.key.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.key)
        }
    }

    /// The same bucket, another key.
    pub fn with_key(&self, key: impl Into<String>) -> S3Url {
        S3Url {
            bucket: self.bucket.clone(),
            key: key.into(),
        }
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.key)
        }
    }
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn s3_urls() {
        let u = S3Url::parse("s3://boot-images").expect("bucket");
        assert_eq!((u.bucket.as_str(), u.key.as_str()), ("boot-images", ""));
        assert_eq!(u.join("x/rootfs"), "x/rootfs");
        assert_eq!(u.to_string(), "s3://boot-images");
        let u = S3Url::parse("s3://boot-images/site/a/").expect("prefix");
        assert_eq!(u.key, "site/a");
        assert_eq!(u.join("id/rootfs"), "site/a/id/rootfs");
        assert_eq!(u.to_string(), "s3://boot-images/site/a");
        for bad in [
            "s3://",
            "s3://Bad_Bucket/x",
            "http://b/x",
            "s3://bucket/a/../b",
            "s3://bucket/a//b",
        ] {
            assert!(S3Url::parse(bad).is_err(), "{bad}");
        }
        assert!(S3Url::is_s3("s3://b") && !S3Url::is_s3("/tmp/s3://b"));
    }
}
