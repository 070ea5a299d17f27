//! The S3 client: one bucket, requests presigned by rusty-s3 and sent by ureq, each retried with
//! exponential backoff and full jitter on 5xx, 429/408, timeouts and broken connections.
//!
//! A URL is signed afresh for every attempt, so a long backoff never sends an expired signature.
//! Errors name the operation, `s3://bucket/key` and the endpoint, plus the S3 error code and
//! message when the server sent one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusty_s3::actions::{CreateMultipartUpload, ListObjectsV2, ListParts};
use rusty_s3::{Bucket, Credentials, Method, S3Action};
use ureq::Agent;
use ureq::http::{self, HeaderMap, Response};
use url::Url;

use super::config::S3Config;
use super::{Error, Result};

/// How long a presigned URL stays valid: one attempt, with room for a slow part.
const SIGNATURE_LIFETIME: Duration = Duration::from_secs(3600);
/// Responses read whole into memory (XML listings, manifests, records) are at most this big.
const SMALL_BODY_LIMIT: u64 = 64 << 20;

/// What HEAD says about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    /// Without quotes.
    pub etag: String,
    /// `x-amz-meta-*` headers, names without the prefix, lowercase.
    pub metadata: BTreeMap<String, String>,
}

/// One entry of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub etag: String,
}

/// A part already on the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedPart {
    pub number: u16,
    pub size: u64,
    pub etag: String,
    /// Its `ChecksumCRC32` (base64), listed when the upload declared CRC32 checksums.
    pub crc32: Option<String>,
}

/// The additional checksum (S3's "flexible checksums") a multipart upload declares when it is
/// created; its parts then carry it, and the server checks each part against it.
///
/// Declaring CRC32 is also what `aws s3 cp` does. A server that computes a default full-object
/// checksum for uploads that declare none (S3 computes CRC64NVME; moto emulates it by copying
/// the whole object twice more in memory at CompleteMultipartUpload, seconds per GiB) is spared
/// that: a composite CRC32 is built from the parts' checksums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PartChecksums {
    /// None declared: parts carry only their Content-MD5.
    #[default]
    None,
    /// `x-amz-checksum-algorithm: CRC32`: every part also carries `x-amz-checksum-crc32`, and
    /// CompleteMultipartUpload lists each part's `ChecksumCRC32`.
    Crc32,
}

/// A multipart upload in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingUpload {
    pub key: String,
    pub upload_id: String,
    /// As the server wrote it (ISO 8601, so it sorts).
    pub initiated: String,
}

/// A body read whole.
struct Reply {
    headers: HeaderMap,
    body: Vec<u8>,
}

/// Why one attempt failed.
struct AttemptError {
    retryable: bool,
    status: Option<u16>,
    code: Option<String>,
    detail: String,
    /// The region the server says the bucket is in (`x-amz-bucket-region`, or `<Region>` of an
    /// AuthorizationHeaderMalformed body).
    region: Option<String>,
    /// The connection broke while the request was being sent: the server may have answered
    /// (and closed) before reading the body, so the next attempt asks first (100-continue).
    broke_while_sending: bool,
}

impl AttemptError {
    fn transient(detail: impl Into<String>) -> Self {
        AttemptError {
            retryable: true,
            status: None,
            code: None,
            detail: detail.into(),
            region: None,
            broke_while_sending: false,
        }
    }

    fn fatal(detail: impl Into<String>) -> Self {
        AttemptError {
            retryable: false,
            ..AttemptError::transient(detail)
        }
    }
}

/// An S3 bucket at an endpoint, with credentials; cheap to share between threads (`&Client`).
#[derive(Clone, Debug)]
pub struct Client {
    config: S3Config,
    bucket: Bucket,
    agent: Agent,
    /// Whether the bucket honours `If-None-Match: *` (see `guard::conditional_writes`), once
    /// known; shared by the clones.
    conditional_writes: std::sync::Arc<std::sync::OnceLock<bool>>,
}

impl Client {
    pub fn new(config: &S3Config, bucket: &str) -> Result<Client> {
        let rusty_bucket = Bucket::new(
            config.endpoint.clone(),
            config.url_style(),
            bucket.to_string(),
            config.region.clone(),
        )
        .map_err(|e| {
            Error::Config(format!(
                "cannot address bucket {bucket:?} at {}: {e}",
                config.endpoint
            ))
        })?;
        let mut builder = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(config.timeouts.connect))
            .timeout_recv_response(Some(config.timeouts.response))
            .timeout_per_read(Some(config.timeouts.idle))
            .timeout_per_write(Some(config.timeouts.idle))
            // One pool for every request of this client: parts, ranges and HEADs reuse warm
            // connections instead of opening one each.
            .max_idle_connections(config.concurrency.max(4) * 2)
            .max_idle_connections_per_host(config.concurrency.max(4) * 2)
            .user_agent(concat!("imsctl/", env!("CARGO_PKG_VERSION")));
        if let Some(bundle) = &config.ca_bundle {
            builder = builder.tls_config(tls_with_bundle(bundle)?);
        }
        Ok(Client {
            config: config.clone(),
            bucket: rusty_bucket,
            agent: builder.build().new_agent(),
            conditional_writes: Default::default(),
        })
    }

    pub(super) fn conditional_writes_known(&self) -> Option<bool> {
        self.conditional_writes.get().copied()
    }

    pub(super) fn set_conditional_writes(&self, honoured: bool) {
        let _ = self.conditional_writes.set(honoured);
    }

    pub fn config(&self) -> &S3Config {
        &self.config
    }

    pub fn bucket(&self) -> &str {
        self.bucket.name()
    }

    /// `s3://bucket/key`, for messages and manifests.
    pub fn target(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket.name())
    }

    fn credentials(&self) -> Option<&Credentials> {
        self.config.credentials.as_ref()
    }

    /// HEAD: `None` when there is no such object.
    pub fn head_object(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let sign = || {
            self.bucket
                .head_object(self.credentials(), key)
                .sign(SIGNATURE_LIFETIME)
        };
        match self.call("HEAD", key, Method::Head, &sign, &[], None) {
            Ok(reply) => Ok(Some(object_info(&reply.headers))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// GET a small object whole (manifests, records).
    pub fn get_bytes(&self, key: &str) -> Result<Vec<u8>> {
        let sign = || {
            self.bucket
                .get_object(self.credentials(), key)
                .sign(SIGNATURE_LIFETIME)
        };
        Ok(self.call("GET", key, Method::Get, &sign, &[], None)?.body)
    }

    /// GET bytes `offset..offset+len` of an object into the same range of `file` (at `path`),
    /// adding the bytes written to `progress`. A retried range is written again from its start
    /// (and `progress` corrected).
    pub fn get_range_into(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        file: &File,
        path: &Path,
        progress: &AtomicU64,
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let range = format!("bytes={}-{}", offset, offset + len - 1);
        let sign = || {
            self.bucket
                .get_object(self.credentials(), key)
                .sign(SIGNATURE_LIFETIME)
        };
        let headers = [("range", range.as_str())];
        self.with_retries("GET", key, |_| {
            let response = self.send(Method::Get, &sign, &headers, None)?;
            let mut response = check_status(response)?;
            // A 200 (whole object) from offset 0 still starts with the bytes we want.
            if response.status() != http::StatusCode::PARTIAL_CONTENT && offset != 0 {
                return Err(AttemptError {
                    status: Some(response.status().as_u16()),
                    ..AttemptError::fatal("the server ignored the Range header")
                });
            }
            let mut reader = response.body_mut().with_config().limit(len).reader();
            let mut buf = vec![0u8; 1 << 20];
            let mut done = 0u64;
            let result = loop {
                if done == len {
                    // Read on to the body's end (nothing is left): only a body read to its end
                    // gives the connection back to the pool; else every range opens a new one.
                    let mut probe = [0u8; 1];
                    let _ = reader.read(&mut probe);
                    break Ok(());
                }
                let want = usize::try_from((len - done).min(buf.len() as u64)).unwrap_or(buf.len());
                match reader.read(&mut buf[..want]) {
                    Ok(0) => {
                        break Err(AttemptError::transient(format!(
                            "connection closed after {done} of {len} bytes"
                        )));
                    }
                    Ok(n) => {
                        if let Err(e) = file.write_all_at(&buf[..n], offset + done) {
                            break Err(AttemptError::fatal(format!(
                                "failed to write {}: {e}",
                                path.display()
                            )));
                        }
                        done += n as u64;
                        progress.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => break Err(AttemptError::transient(format!("reading the body: {e}"))),
                }
            };
            if result.is_err() {
                progress.fetch_sub(done, Ordering::Relaxed);
            }
            result
        })
    }

    /// GET a whole object, handing its bytes to `sink` in order; returns the size. A stream
    /// that breaks is continued from where it stopped (Range), so `sink` sees every byte once.
    pub fn stream_object(&self, key: &str, sink: &mut dyn FnMut(&[u8])) -> Result<u64> {
        let sign = || {
            self.bucket
                .get_object(self.credentials(), key)
                .sign(SIGNATURE_LIFETIME)
        };
        let mut done = 0u64;
        self.with_retries("GET", key, |_| {
            let range = format!("bytes={done}-");
            let headers: Vec<(&str, &str)> = if done > 0 {
                vec![("range", range.as_str())]
            } else {
                Vec::new()
            };
            let response = self.send(Method::Get, &sign, &headers, None)?;
            let mut response = check_status(response)?;
            if done > 0 && response.status() != http::StatusCode::PARTIAL_CONTENT {
                return Err(AttemptError {
                    status: Some(response.status().as_u16()),
                    ..AttemptError::fatal("the server ignored the Range header of a resumed read")
                });
            }
            let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => return Ok(done),
                    Ok(n) => {
                        sink(&buf[..n]);
                        done += n as u64;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(AttemptError::transient(format!("reading the body: {e}")));
                    }
                }
            }
        })
    }

    /// PUT a whole object from memory; returns the ETag. `metadata` names are without the
    /// `x-amz-meta-` prefix. With `if_none_match`, the write fails (412/409) when the key exists.
    pub fn put_bytes(
        &self,
        key: &str,
        body: &[u8],
        metadata: &[(String, String)],
        content_type: Option<&str>,
        if_none_match: bool,
    ) -> Result<String> {
        let meta_headers = meta_headers(metadata);
        let sign = || {
            signed_with(
                self.bucket.put_object(self.credentials(), key),
                &meta_headers,
            )
        };
        let content_md5 = content_md5(body);
        let mut headers = as_pairs(&meta_headers);
        headers.push(("content-md5", &content_md5));
        if let Some(ct) = content_type {
            headers.push(("content-type", ct));
        }
        // Sent, not signed: a server (or proxy) that drops the condition must still accept
        // the signature, so that `guard` can tell it ignores conditional writes.
        if if_none_match {
            headers.push(("if-none-match", "*"));
        }
        let reply = self.call("PUT", key, Method::Put, &sign, &headers, Some(body))?;
        etag_of(&reply.headers).ok_or_else(|| self.missing_etag("PUT", key))
    }

    pub fn delete_object(&self, key: &str) -> Result<()> {
        let sign = || {
            self.bucket
                .delete_object(self.credentials(), key)
                .sign(SIGNATURE_LIFETIME)
        };
        match self.call("DELETE", key, Method::Delete, &sign, &[], None) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Every object whose key starts with `prefix`, in key order.
    pub fn list_objects(&self, prefix: &str) -> Result<Vec<ListedObject>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        // Bounded: 100,000 pages of 1,000 keys is far beyond any image catalogue.
        for _ in 0..100_000 {
            let sign = || {
                let mut action = ListObjectsV2::new(&self.bucket, self.credentials());
                action.with_prefix(prefix);
                if let Some(t) = &token {
                    action.with_continuation_token(t.as_str());
                }
                action.sign(SIGNATURE_LIFETIME)
            };
            let reply = self.call("LIST", prefix, Method::Get, &sign, &[], None)?;
            let text = String::from_utf8_lossy(&reply.body);
            let page = ListObjectsV2::parse_response(&text)
                .map_err(|e| self.bad_xml("LIST", prefix, &e.to_string()))?;
            for item in page.contents {
                out.push(ListedObject {
                    key: item.key,
                    size: item.size.unwrap_or(0),
                    etag: item.etag.map(|e| unquote(&e)).unwrap_or_default(),
                });
            }
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
        Err(self.bad_xml("LIST", prefix, "the listing never ends"))
    }

    /// Start a multipart upload declaring `checksums`; returns its upload id.
    pub fn create_multipart(
        &self,
        key: &str,
        metadata: &[(String, String)],
        checksums: PartChecksums,
    ) -> Result<String> {
        let mut meta_headers = meta_headers(metadata);
        if checksums == PartChecksums::Crc32 {
            meta_headers.push(("x-amz-checksum-algorithm".into(), "CRC32".into()));
        }
        let sign = || {
            signed_with(
                self.bucket.create_multipart_upload(self.credentials(), key),
                &meta_headers,
            )
        };
        let headers = as_pairs(&meta_headers);
        let reply = self.call(
            "CreateMultipartUpload",
            key,
            Method::Post,
            &sign,
            &headers,
            Some(&[]),
        )?;
        let text = String::from_utf8_lossy(&reply.body);
        let parsed = CreateMultipartUpload::parse_response(&text)
            .map_err(|e| self.bad_xml("CreateMultipartUpload", key, &e.to_string()))?;
        Ok(parsed.upload_id().to_string())
    }

    /// Upload one part; returns its ETag. `Content-MD5` makes the server reject a corrupted body.
    pub fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u16,
        body: &[u8],
    ) -> Result<String> {
        use md5::Digest;
        let md5 = md5::Md5::digest(body).into();
        self.upload_part_hashed(key, upload_id, number, body, &md5, None)
    }

    /// [`Client::upload_part`] of a body whose md5 the caller has already computed; with
    /// `crc32` (an upload that declared CRC32 checksums) the part carries it as well.
    pub fn upload_part_hashed(
        &self,
        key: &str,
        upload_id: &str,
        number: u16,
        body: &[u8],
        md5: &[u8; 16],
        crc32: Option<u32>,
    ) -> Result<String> {
        let crc32 = crc32.map(|c| base64(&c.to_be_bytes()));
        let sign = || {
            let mut action = self
                .bucket
                .upload_part(self.credentials(), key, number, upload_id);
            // Signed, as every x-amz-* header of a request should be.
            if let Some(crc32) = &crc32 {
                action
                    .headers_mut()
                    .insert("x-amz-checksum-crc32", crc32.as_str());
            }
            action.sign(SIGNATURE_LIFETIME)
        };
        let md5 = base64(md5);
        let mut headers = vec![("content-md5", md5.as_str())];
        if let Some(crc32) = &crc32 {
            headers.push(("x-amz-checksum-crc32", crc32.as_str()));
        }
        let reply = self.call("UploadPart", key, Method::Put, &sign, &headers, Some(body))?;
        etag_of(&reply.headers).ok_or_else(|| self.missing_etag("UploadPart", key))
    }

    /// Complete a multipart upload from its parts' ETags (in part order) and, for an upload
    /// that declared CRC32 checksums, their CRC32s (same order; else empty); returns the ETag.
    pub fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
        crc32s: &[u32],
    ) -> Result<String> {
        let body = if crc32s.is_empty() {
            let action = self.bucket.complete_multipart_upload(
                self.credentials(),
                key,
                upload_id,
                etags.iter().map(String::as_str),
            );
            action.body()
        } else {
            complete_body_with_crc32s(etags, crc32s)
                .ok_or_else(|| self.bad_request("CompleteMultipartUpload", key))?
        };
        let sign = || {
            self.bucket
                .complete_multipart_upload(
                    self.credentials(),
                    key,
                    upload_id,
                    etags.iter().map(String::as_str),
                )
                .sign(SIGNATURE_LIFETIME)
        };
        let reply = self.call(
            "CompleteMultipartUpload",
            key,
            Method::Post,
            &sign,
            &[],
            Some(body.as_bytes()),
        )?;
        let text = String::from_utf8_lossy(&reply.body);
        // S3 may answer 200 and report the failure in the body.
        if let Some((code, message)) = s3_error_of(&text) {
            return Err(self.request_error(
                "CompleteMultipartUpload",
                key,
                None,
                Some(code.clone()),
                None,
                format!("{code}: {message}"),
            ));
        }
        match xml_text(&text, "ETag") {
            Some(etag) if !etag.trim().is_empty() => Ok(unquote(&etag)),
            _ => etag_of(&reply.headers)
                .ok_or_else(|| self.missing_etag("CompleteMultipartUpload", key)),
        }
    }

    /// Replace an object's user metadata by copying it onto itself (`CopyObject` with
    /// `x-amz-metadata-directive: REPLACE`; S3 allows this up to 5 GiB). Returns the new ETag.
    pub fn replace_metadata(&self, key: &str, metadata: &[(String, String)]) -> Result<String> {
        let mut extra = meta_headers(metadata);
        extra.push(("x-amz-copy-source".into(), self.copy_source(key)));
        extra.push(("x-amz-metadata-directive".into(), "REPLACE".into()));
        let sign = || signed_with(self.bucket.put_object(self.credentials(), key), &extra);
        let headers = as_pairs(&extra);
        let reply = self.call("CopyObject", key, Method::Put, &sign, &headers, Some(&[]))?;
        self.copy_result_etag("CopyObject", key, &reply)
    }

    /// Copy bytes `[first, last]` of object `source` into part `number` of a multipart upload
    /// of `key` (`UploadPartCopy`); returns the part's ETag.
    pub fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: u16,
        source: &str,
        (first, last): (u64, u64),
    ) -> Result<String> {
        let extra = [
            ("x-amz-copy-source".to_string(), self.copy_source(source)),
            (
                "x-amz-copy-source-range".to_string(),
                format!("bytes={first}-{last}"),
            ),
        ];
        let sign = || {
            signed_with(
                self.bucket
                    .upload_part(self.credentials(), key, number, upload_id),
                &extra,
            )
        };
        let headers = as_pairs(&extra);
        let reply = self.call(
            "UploadPartCopy",
            key,
            Method::Put,
            &sign,
            &headers,
            Some(&[]),
        )?;
        self.copy_result_etag("UploadPartCopy", key, &reply)
    }

    /// `x-amz-copy-source` for an object of this bucket: `/bucket/key`, URL-encoded.
    fn copy_source(&self, key: &str) -> String {
        let mut out = format!("/{}/", self.bucket.name());
        for b in key.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    /// The ETag of a copy: S3 may answer 200 and put the failure in the body.
    fn copy_result_etag(&self, op: &'static str, key: &str, reply: &Reply) -> Result<String> {
        let text = String::from_utf8_lossy(&reply.body);
        if let Some((code, message)) = s3_error_of(&text) {
            return Err(self.request_error(
                op,
                key,
                None,
                Some(code.clone()),
                None,
                format!("{code}: {message}"),
            ));
        }
        match xml_text(&text, "ETag") {
            Some(etag) if !etag.trim().is_empty() => Ok(unquote(&etag)),
            _ => etag_of(&reply.headers).ok_or_else(|| self.missing_etag(op, key)),
        }
    }

    /// Abort a multipart upload: the server drops its parts. An unknown upload is not an error.
    pub fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        let sign = || {
            self.bucket
                .abort_multipart_upload(self.credentials(), key, upload_id)
                .sign(SIGNATURE_LIFETIME)
        };
        match self.call(
            "AbortMultipartUpload",
            key,
            Method::Delete,
            &sign,
            &[],
            None,
        ) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// The parts of an upload, by part number. `None` when the upload no longer exists.
    pub fn list_parts(&self, key: &str, upload_id: &str) -> Result<Option<Vec<ListedPart>>> {
        let mut out = Vec::new();
        let mut marker: Option<u16> = None;
        for _ in 0..=10 {
            let sign = || {
                let mut action = ListParts::new(&self.bucket, self.credentials(), key, upload_id);
                if let Some(m) = marker {
                    action.set_part_number_marker(m);
                }
                action.sign(SIGNATURE_LIFETIME)
            };
            let reply = match self.call("ListParts", key, Method::Get, &sign, &[], None) {
                Ok(reply) => reply,
                Err(e) if e.is_not_found() => return Ok(None),
                Err(e) => return Err(e),
            };
            let text = String::from_utf8_lossy(&reply.body);
            for part in xml_blocks(&text, "Part") {
                let number = xml_text(part, "PartNumber").and_then(|n| n.trim().parse().ok());
                let size = xml_text(part, "Size").and_then(|n| n.trim().parse().ok());
                let (Some(number), Some(size)) = (number, size) else {
                    return Err(self.bad_xml("ListParts", key, "a part without number or size"));
                };
                out.push(ListedPart {
                    number,
                    size,
                    etag: unquote(&xml_text(part, "ETag").unwrap_or_default()),
                    crc32: xml_text(part, "ChecksumCRC32")
                        .map(|c| c.trim().to_string())
                        .filter(|c| !c.is_empty()),
                });
            }
            // Some servers (moto) answer <ListPartsResponse>, not <ListPartsResult>: read the
            // elements, not the root's name.
            let truncated = xml_text(&text, "IsTruncated").is_some_and(|t| t.trim() == "true");
            let next = xml_text(&text, "NextPartNumberMarker").and_then(|n| n.trim().parse().ok());
            match (truncated, next) {
                (true, Some(m)) if Some(m) != marker && m > 0 => marker = Some(m),
                (true, _) => {
                    return Err(self.bad_xml(
                        "ListParts",
                        key,
                        "truncated without a usable marker",
                    ));
                }
                (false, _) => {
                    out.sort_by_key(|p| p.number);
                    out.dedup_by_key(|p| p.number);
                    return Ok(Some(out));
                }
            }
        }
        Err(self.bad_xml("ListParts", key, "more than 10,000 parts listed"))
    }

    /// Multipart uploads in progress for exactly `key`, oldest first. rusty-s3 has no action
    /// for ListMultipartUploads, so the request is presigned with its public `signing::sign`.
    pub fn list_multipart_uploads(&self, key: &str) -> Result<Vec<PendingUpload>> {
        let mut uploads = self.list_multipart_uploads_under(key)?;
        uploads.retain(|u| u.key == key);
        Ok(uploads)
    }

    /// Multipart uploads in progress for every key under `prefix`, oldest first (up to the
    /// 1,000 of one page, which is far more than a catalogue leaves behind).
    pub fn list_multipart_uploads_under(&self, prefix: &str) -> Result<Vec<PendingUpload>> {
        let key = prefix;
        let sign = || match self.credentials() {
            Some(c) => rusty_s3::signing::sign(
                &jiff::Timestamp::now(),
                Method::Get,
                self.bucket.base_url().clone(),
                c.key(),
                c.secret(),
                c.token(),
                self.bucket.region(),
                SIGNATURE_LIFETIME.as_secs(),
                [("prefix", key), ("uploads", "")].into_iter(),
                std::iter::empty(),
            ),
            None => {
                let mut url = self.bucket.base_url().clone();
                url.query_pairs_mut()
                    .append_pair("prefix", key)
                    .append_pair("uploads", "");
                url
            }
        };
        let reply = self.call("ListMultipartUploads", key, Method::Get, &sign, &[], None)?;
        let text = String::from_utf8_lossy(&reply.body);
        let mut uploads = Vec::new();
        for upload in xml_blocks(&text, "Upload") {
            let (Some(k), Some(id)) = (xml_text(upload, "Key"), xml_text(upload, "UploadId"))
            else {
                return Err(self.bad_xml(
                    "ListMultipartUploads",
                    key,
                    "an upload without key or id",
                ));
            };
            if k.starts_with(key) {
                uploads.push(PendingUpload {
                    key: k,
                    upload_id: id,
                    initiated: xml_text(upload, "Initiated").unwrap_or_default(),
                });
            }
        }
        uploads.sort_by(|a, b| a.initiated.cmp(&b.initiated));
        Ok(uploads)
    }

    /// Create the bucket (tests and benchmarks); an existing bucket of ours is fine.
    pub fn create_bucket(&self) -> Result<()> {
        let Some(credentials) = self.credentials() else {
            return Err(Error::Config("creating a bucket needs credentials".into()));
        };
        let sign = || {
            self.bucket
                .create_bucket(credentials)
                .sign(SIGNATURE_LIFETIME)
        };
        match self.call("CreateBucket", "", Method::Put, &sign, &[], Some(&[])) {
            Err(Error::Request {
                code: Some(code), ..
            }) if code == "BucketAlreadyOwnedByYou" => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// One request with retries; the body read whole.
    fn call(
        &self,
        op: &'static str,
        key: &str,
        method: Method,
        sign: &dyn Fn() -> Url,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Reply> {
        // Not on the first attempt: measured with 16 MiB parts of a 300 MB publish, asking
        // first cost nothing on moto and ~1 s (of 2.5 s) on s3s-fs.
        let mut ask_first = false;
        self.with_retries(op, key, |_| {
            let mut all_headers = headers.to_vec();
            // After the connection broke while we sent a body, ask before sending it again:
            // a server that refuses the request (403, NoSuchBucket) then says so, with its
            // code, instead of hanging up mid-body.
            if ask_first {
                all_headers.push(("expect", "100-continue"));
            }
            let response = self
                .send(method, sign, &all_headers, body)
                .inspect_err(|e| {
                    ask_first |= e.broke_while_sending && body.is_some_and(|b| !b.is_empty())
                })?;
            let mut response = check_status(response)?;
            let headers = response.headers().clone();
            let body = if method == Method::Head {
                Vec::new()
            } else {
                response
                    .body_mut()
                    .with_config()
                    .limit(SMALL_BODY_LIMIT)
                    .read_to_vec()
                    .map_err(|e| classify_transport(&e))?
            };
            Ok(Reply { headers, body })
        })
    }

    /// Run `attempt` until it succeeds, fails for good, or the retry budget is spent: after the
    /// first failure, retries go on (exponential backoff, full jitter) until `budget` has passed.
    fn with_retries<T>(
        &self,
        op: &'static str,
        key: &str,
        mut attempt: impl FnMut(u32) -> std::result::Result<T, AttemptError>,
    ) -> Result<T> {
        let policy = self.config.retry;
        let mut first_failure: Option<Instant> = None;
        let mut n = 0;
        loop {
            n += 1;
            let e = match attempt(n) {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            let failing_since = *first_failure.get_or_insert_with(Instant::now);
            let left = policy.budget.saturating_sub(failing_since.elapsed());
            if e.retryable && n < policy.attempts && !left.is_zero() {
                std::thread::sleep(backoff(&policy, n).min(left));
                continue;
            }
            let detail = if n > 1 {
                format!(
                    "{} (after {n} attempts over {:.1}s)",
                    e.detail,
                    failing_since.elapsed().as_secs_f64()
                )
            } else {
                e.detail
            };
            return Err(self.request_error(op, key, e.status, e.code, e.region, detail));
        }
    }

    /// Send one request (no retry).
    fn send(
        &self,
        method: Method,
        sign: &dyn Fn() -> Url,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> std::result::Result<Response<ureq::Body>, AttemptError> {
        let url = sign();
        let method = match method {
            Method::Head => http::Method::HEAD,
            Method::Get => http::Method::GET,
            Method::Post => http::Method::POST,
            Method::Put => http::Method::PUT,
            Method::Delete => http::Method::DELETE,
        };
        let mut builder = http::Request::builder().method(method).uri(url.as_str());
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let unbuildable =
            |e: http::Error| AttemptError::fatal(format!("cannot build the request: {e}"));
        let result = match body {
            Some(bytes) => builder
                .body(bytes)
                .map_err(unbuildable)
                .map(|req| self.agent.run(req)),
            None => builder
                .body(())
                .map_err(unbuildable)
                .map(|req| self.agent.run(req)),
        }?;
        result.map_err(|e| {
            let mut failure = classify_transport(&e);
            failure.broke_while_sending = body.is_some() && is_broken_connection(&e);
            failure
        })
    }

    fn request_error(
        &self,
        op: &'static str,
        key: &str,
        status: Option<u16>,
        code: Option<String>,
        region: Option<String>,
        detail: String,
    ) -> Error {
        let wrong_region = region.filter(|r| *r != self.config.region);
        let hint = match (status, code.as_deref(), wrong_region) {
            (_, _, Some(theirs)) => format!(
                " (the bucket is in region {theirs}, not {}: set AWS_REGION={theirs} or the \
                 profile's region)",
                self.config.region
            ),
            (_, Some("AccessDenied"), _) => " (the credentials may not do this here: a \
                read-only key, or a bucket policy)"
                .to_string(),
            (_, Some("InvalidAccessKeyId" | "SignatureDoesNotMatch"), _) | (Some(403), _, _) => {
                " (check the credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or the \
                 AWS_PROFILE profile in ~/.aws/credentials)"
                    .to_string()
            }
            (_, Some("NoSuchBucket"), _) => {
                " (the bucket does not exist at this endpoint)".to_string()
            }
            _ => String::new(),
        };
        Error::Request {
            op,
            target: self.target(key),
            endpoint: self.config.endpoint.to_string(),
            status,
            code,
            detail: format!("{detail}{hint}"),
        }
    }

    fn bad_xml(&self, op: &'static str, key: &str, why: &str) -> Error {
        self.request_error(
            op,
            key,
            None,
            None,
            None,
            format!("unreadable response: {why}"),
        )
    }

    fn bad_request(&self, op: &'static str, key: &str) -> Error {
        Error::Config(format!(
            "{op} {}: as many CRC32s as parts are needed",
            self.target(key)
        ))
    }

    fn missing_etag(&self, op: &'static str, key: &str) -> Error {
        self.request_error(op, key, None, None, None, "the response has no ETag".into())
    }
}

/// A response with a status that is not success becomes an attempt error: retryable for 5xx,
/// 429 (SlowDown), 408 and S3's transient 400s, final otherwise.
fn check_status(
    mut response: Response<ureq::Body>,
) -> std::result::Result<Response<ureq::Body>, AttemptError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let code = status.as_u16();
    let header_region = response
        .headers()
        .get("x-amz-bucket-region")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .unwrap_or_default();
    let (s3_code, detail) = match s3_error_of(&body) {
        Some((c, m)) => (Some(c.clone()), format!("{code} {c}: {m}")),
        None => (
            None,
            format!("{code} {}", status.canonical_reason().unwrap_or(""))
                .trim_end()
                .to_string(),
        ),
    };
    let region = header_region.or_else(|| xml_text(&body, "Region"));
    // S3 reports a client too slow to send its body (RequestTimeout) and a body damaged in
    // transit (BadDigest, thanks to Content-MD5) as 400s: both deserve another attempt.
    let transient_400 = matches!(s3_code.as_deref(), Some("RequestTimeout" | "BadDigest"));
    Err(AttemptError {
        // 501 Not Implemented is an answer, not an outage.
        retryable: (status.is_server_error() && code != 501)
            || code == 429
            || code == 408
            || transient_400,
        status: Some(code),
        code: s3_code,
        detail,
        region,
        broke_while_sending: false,
    })
}

/// Transport failures worth another attempt: timeouts, resets, refused or dropped connections,
/// a server that hung up mid-response, a name server that could not answer for now. TLS, URL
/// errors and a name that does not exist are final.
fn classify_transport(e: &ureq::Error) -> AttemptError {
    let retryable = match e {
        ureq::Error::Io(io) => !is_unknown_host(io),
        ureq::Error::Timeout(_)
        | ureq::Error::ConnectionFailed
        | ureq::Error::Protocol(_)
        | ureq::Error::BodyStalled => true,
        _ => false,
    };
    AttemptError {
        retryable,
        ..AttemptError::transient(e.to_string())
    }
}

/// getaddrinfo's answer that the name does not exist (EAI_NONAME and friends). The standard
/// library reports those as an I/O error "failed to lookup address information: …"; only
/// EAI_AGAIN ("Temporary failure in name resolution") is worth another attempt.
fn is_unknown_host(e: &std::io::Error) -> bool {
    let text = e.to_string();
    text.contains("failed to lookup address information") && !text.contains("Temporary failure")
}

/// The peer closed or reset the connection: while we were sending, this is how a server that
/// rejects a request before reading its body (403, 404 NoSuchBucket) looks from our side.
fn is_broken_connection(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::UnexpectedEof
        ),
        ureq::Error::Protocol(_) => true,
        _ => false,
    }
}

/// Full jitter: a uniform delay in [0, min(max, base·2^(n-1))]; spreads retries of many
/// workers hitting the same outage (AWS architecture blog, "Exponential Backoff And Jitter").
fn backoff(policy: &super::RetryPolicy, attempt: u32) -> Duration {
    let exp = policy
        .base_delay
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let cap = exp.min(policy.max_delay);
    let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fastrand::u64(0..=millis))
}

/// `x-amz-meta-*` headers for user metadata given without the prefix.
/// Sign `action` with `headers` added: they are part of the signature.
fn signed_with<'a>(mut action: impl S3Action<'a>, headers: &'a [(String, String)]) -> Url {
    for (k, v) in headers {
        action.headers_mut().insert(k.as_str(), v.as_str());
    }
    action.sign(SIGNATURE_LIFETIME)
}

fn as_pairs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn meta_headers(metadata: &[(String, String)]) -> Vec<(String, String)> {
    metadata
        .iter()
        .map(|(k, v)| (format!("x-amz-meta-{}", k.to_ascii_lowercase()), v.clone()))
        .collect()
}

/// `<Error><Code>…</Code><Message>…</Message></Error>` of an S3 error body.
fn s3_error_of(body: &str) -> Option<(String, String)> {
    let error = body.find("<Error>").map(|i| &body[i..])?;
    let code = xml_text(error, "Code")?;
    let message = xml_text(error, "Message").unwrap_or_default();
    Some((code, message))
}

/// The contents of every `<tag>…</tag>` in `xml` (not nested in each other).
fn xml_blocks<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        out.push(&body[..end]);
        rest = &body[end + close.len()..];
    }
    out
}

/// The text of the first `<tag>…</tag>` in `xml`, entities decoded.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&close)? + start;
    Some(
        xml[start..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

fn object_info(headers: &HeaderMap) -> ObjectInfo {
    let size = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let metadata = headers
        .iter()
        .filter_map(|(name, value)| {
            let name = name.as_str().strip_prefix("x-amz-meta-")?;
            Some((name.to_string(), value.to_str().ok()?.to_string()))
        })
        .collect();
    ObjectInfo {
        size,
        etag: etag_of(headers).unwrap_or_default(),
        metadata,
    }
}

fn etag_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(http::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(unquote)
}

fn unquote(etag: &str) -> String {
    etag.trim().trim_matches('"').to_string()
}

/// The CompleteMultipartUpload body of an upload with CRC32 checksums: each part's number,
/// ETag and `ChecksumCRC32` (what S3 needs to build the object's composite checksum). None when
/// the lists differ in length or there are more parts than S3 allows.
fn complete_body_with_crc32s(etags: &[String], crc32s: &[u32]) -> Option<String> {
    if etags.len() != crc32s.len() || etags.len() > 10_000 {
        return None;
    }
    let mut body = String::from("<CompleteMultipartUpload>");
    for (index, (etag, crc32)) in etags.iter().zip(crc32s).enumerate() {
        body.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag><ChecksumCRC32>{}</ChecksumCRC32></Part>",
            index + 1,
            xml_escape(etag),
            base64(&crc32.to_be_bytes())
        ));
    }
    body.push_str("</CompleteMultipartUpload>");
    Some(body)
}

/// Text escaped for an XML element (ETags are opaque strings from the server).
fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The `Content-MD5` header value: base64 of the body's md5.
fn content_md5(body: &[u8]) -> String {
    use md5::Digest;
    base64(&md5::Md5::digest(body))
}

fn base64(bytes: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
}

/// TLS trusting only the certificates of a PEM bundle (a site's private CA).
fn tls_with_bundle(path: &Path) -> Result<ureq::tls::TlsConfig> {
    let pem = std::fs::read(path).map_err(|e| Error::io("read the CA bundle", path, e))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => certs.push(cert),
            Ok(_) => {}
            Err(e) => {
                return Err(Error::Config(format!(
                    "{}: not a PEM certificate bundle: {e}",
                    path.display()
                )));
            }
        }
    }
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "{}: the CA bundle holds no certificate",
            path.display()
        )));
    }
    Ok(ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_content_md5() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        // RFC 1864's example digest of the empty body.
        assert_eq!(content_md5(b""), "1B2M2Y8AsgTpgAmY7PhCfg==");
    }

    #[test]
    fn ca_bundle_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let err = tls_with_bundle(&missing).expect_err("missing");
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").expect("write");
        let err = tls_with_bundle(&empty).expect_err("empty");
        assert!(err.to_string().contains("empty.pem"), "{err}");
        let mut config = S3Config::for_endpoint("https://127.0.0.1:1", "k", "s").expect("config");
        config.ca_bundle = Some(empty);
        assert!(Client::new(&config, "bucket").is_err());
    }

    #[test]
    fn s3_error_bodies() {
        let body = "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code>\
                    <Message>The key &lt;x&gt; does not exist</Message></Error>";
        assert_eq!(
            s3_error_of(body),
            Some(("NoSuchKey".into(), "The key <x> does not exist".into()))
        );
        assert_eq!(s3_error_of("<html>oops</html>"), None);
    }

    #[test]
    fn backoff_is_capped_and_grows() {
        let policy = super::super::RetryPolicy {
            budget: Duration::from_secs(30),
            attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        for attempt in 1..40 {
            let d = backoff(&policy, attempt);
            let cap = (100u64 << (attempt - 1).min(16)).min(1000);
            assert!(d <= Duration::from_millis(cap), "{attempt}: {d:?}");
        }
    }

    #[test]
    fn complete_body_lists_each_parts_crc32() {
        let etags = ["a".to_string(), "b&c".to_string()];
        let body = complete_body_with_crc32s(&etags, &[0xCBF4_3926, 0]).expect("body");
        assert_eq!(
            body,
            "<CompleteMultipartUpload>\
             <Part><PartNumber>1</PartNumber><ETag>a</ETag><ChecksumCRC32>y/Q5Jg==</ChecksumCRC32></Part>\
             <Part><PartNumber>2</PartNumber><ETag>b&amp;c</ETag><ChecksumCRC32>AAAAAA==</ChecksumCRC32></Part>\
             </CompleteMultipartUpload>"
        );
        assert_eq!(complete_body_with_crc32s(&etags, &[1]), None);
    }

    #[test]
    fn multipart_listing_parses() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker></UploadIdMarker>
  <MaxUploads>1000</MaxUploads><IsTruncated>false</IsTruncated>
  <Upload><Key>id/rootfs</Key><UploadId>u1</UploadId>
    <Initiator><ID>x</ID><DisplayName>y</DisplayName></Initiator>
    <StorageClass>STANDARD</StorageClass><Initiated>2024-01-02T00:00:00.000Z</Initiated></Upload>
  <Upload><Key>id/rootfs2</Key><UploadId>u2</UploadId><Initiated>2024-01-01T00:00:00.000Z</Initiated></Upload>
</ListMultipartUploadsResult>"#;
        let uploads: Vec<(String, String)> = xml_blocks(xml, "Upload")
            .into_iter()
            .filter_map(|u| Some((xml_text(u, "Key")?, xml_text(u, "UploadId")?)))
            .collect();
        assert_eq!(
            uploads,
            [
                ("id/rootfs".into(), "u1".into()),
                ("id/rootfs2".into(), "u2".into())
            ]
        );
        assert!(
            xml_blocks(
                "<ListMultipartUploadsResult><Bucket>b</Bucket></ListMultipartUploadsResult>",
                "Upload"
            )
            .is_empty()
        );
        let parts = "<ListPartsResponse><Part><PartNumber>2</PartNumber><ETag>&quot;ab&quot;</ETag>\
                     <Size>5</Size></Part><IsTruncated>false</IsTruncated></ListPartsResponse>";
        let blocks = xml_blocks(parts, "Part");
        assert_eq!(blocks.len(), 1);
        assert_eq!(
            xml_text(blocks[0], "ETag").map(|e| unquote(&e)),
            Some("ab".into())
        );
    }
}
