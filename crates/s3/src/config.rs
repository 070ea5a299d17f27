//! S3 configuration, resolved the way the AWS CLI and SDKs do it, so that a site's existing
//! `~/.aws` setup and environment just work:
//!
//! - endpoint: `--s3-endpoint`, else `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`, else the
//!   profile's `endpoint_url` in `~/.aws/config`, else AWS itself (`https://s3.<region>.amazonaws.com`);
//! - region: `AWS_REGION`, else `AWS_DEFAULT_REGION`, else the profile's `region`, else us-east-1;
//! - credentials: `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`), else the
//!   profile (`AWS_PROFILE`, default `default`) in `AWS_SHARED_CREDENTIALS_FILE` or
//!   `~/.aws/credentials`; no credentials at all means unsigned (anonymous) requests;
//! - addressing: path-style for custom endpoints (MinIO, Ceph RGW, Garage and moto all accept it,
//!   and it needs no wildcard DNS), virtual-host for AWS; `--s3-addressing-style` overrides;
//! - TLS: the WebPKI roots, or only the PEM certificates of `--ca-bundle` / `AWS_CA_BUNDLE`
//!   (a private CA); plain `http://` endpoints are used as given (local servers).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusty_s3::{Credentials, UrlStyle};
use url::Url;

use super::{Error, Result};

/// 16 MiB parts: 1 GiB is 64 requests (per-request overhead is amortised, and a failed part
/// costs at most 16 MiB to resend), `concurrency × part size` of buffers stays at 128 MiB with
/// the default concurrency, and 10,000 parts (the S3 limit) still cover 156 GiB before the part
/// size has to grow (it then grows automatically). aws-cli uses 8 MiB; measured on loopback,
/// 16 MiB was faster (fewer requests) and the same on a real network.
pub const DEFAULT_PART_SIZE: u64 = 16 << 20;
/// Parallel requests per object: enough to fill a 10 Gb/s link with 16 MiB parts at typical
/// object-store latencies, while few enough not to trip request-rate limits (aws-cli uses 10).
pub const DEFAULT_CONCURRENCY: usize = 8;
/// S3's smallest part (except the last one).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 << 30;
/// S3's most parts in one upload.
pub const MAX_PARTS: u64 = 10_000;

/// How a bucket is addressed in URLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AddressingStyle {
    /// Path-style for custom endpoints, virtual-host for AWS.
    #[default]
    Auto,
    Path,
    Virtual,
}

impl std::fmt::Display for AddressingStyle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AddressingStyle::Auto => "auto",
            AddressingStyle::Path => "path",
            AddressingStyle::Virtual => "virtual",
        })
    }
}

impl std::str::FromStr for AddressingStyle {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(AddressingStyle::Auto),
            "path" => Ok(AddressingStyle::Path),
            "virtual" => Ok(AddressingStyle::Virtual),
            other => Err(format!(
                "unknown addressing style {other:?} (expected auto, path or virtual)"
            )),
        }
    }
}

/// What the command line says about S3 (each `None` falls back to the environment).
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// The credentials profile; None: `AWS_PROFILE`, else `default`.
    pub profile: Option<String>,
    pub ca_bundle: Option<PathBuf>,
    pub addressing_style: AddressingStyle,
    pub part_size: Option<u64>,
    pub concurrency: Option<usize>,
    /// Upload a rootfs while it is packed (`--s3-stream`; see [`S3Config::stream_uploads`]).
    pub stream: bool,
    /// `--retry-budget` (else IMSCTL_S3_RETRY_BUDGET, else 30 s).
    pub retry_budget: Option<Duration>,
}

/// Default of `--retry-budget`: how long a failing request keeps being retried.
pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(30);

/// Retries of one request: exponential backoff with full jitter, within a total time budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// A request that fails with a transient error is retried until this long after its first
    /// failure (the last attempt starts at the latest then).
    pub budget: Duration,
    /// At most this many attempts in all, the first one included (tests cap it; the budget is
    /// what bounds a real run).
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // 30 s of retries, delays drawn from [0, min(5 s, 200 ms·2^n)]: rides out a server
        // restart or a network outage of up to ~25 s (the last delay may land near the end).
        RetryPolicy {
            budget: DEFAULT_RETRY_BUDGET,
            attempts: u32::MAX,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
        }
    }
}

/// A duration as given on the command line or in IMSCTL_S3_RETRY_BUDGET: seconds (`30`,
/// `2.5`), or with a unit (`500ms`, `30s`, `2m`).
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 30, 30s, 500ms, 2m)"))?;
    if !value.is_finite() || value < 0.0 || value * scale > 86_400.0 {
        return Err(format!("{text:?}: expected 0 to 24 hours"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

/// Network timeouts. A stalled connection must fail (and be retried), never hang.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// From the end of the request to the response's status line.
    pub response: Duration,
    /// Longest pause in any one read or write of a body.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            response: Duration::from_secs(120),
            idle: Duration::from_secs(60),
        }
    }
}

/// Everything needed to talk to one S3 service.
#[derive(Clone, Debug)]
pub struct S3Config {
    pub endpoint: Url,
    /// True when the endpoint was given (not AWS's own): decides the default addressing.
    pub custom_endpoint: bool,
    pub region: String,
    pub credentials: Option<Credentials>,
    pub addressing_style: AddressingStyle,
    /// PEM bundle whose certificates replace the default roots.
    pub ca_bundle: Option<PathBuf>,
    pub part_size: u64,
    pub concurrency: usize,
    pub retry: RetryPolicy,
    pub timeouts: Timeouts,
    /// Upload a rootfs while it is being packed (`--s3-stream`, `IMSCTL_S3_STREAM=1`). Off by default: the
    /// md5sum metadata then needs a server-side copy of the object, which on a local server
    /// sharing the CPU costs more than the overlap saves (moto on loopback, 370 MB rootfs:
    /// 1.5 s of copy against ~0.3 s saved); it pays when the upload is network-bound and the
    /// server copies fast (a remote S3).
    pub stream_uploads: bool,
    /// On servers that ignore conditional writes, how long a lease claim waits before reading
    /// the lease back (see `guard`); a claim's read-then-write must take under half of it.
    pub lease_settle: Duration,
    /// Where the conditional-write probe's result is cached (`$IMSCTL_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/imsctl`, else `~/.cache/imsctl`); None: probe once per run.
    pub cache_dir: Option<PathBuf>,
}

/// Default of `S3Config::lease_settle`: long beside a loopback or LAN round trip, short beside a
/// publication.
pub const DEFAULT_LEASE_SETTLE: Duration = Duration::from_secs(1);

impl S3Config {
    /// Resolve the configuration from options, the process environment and `~/.aws`.
    pub fn resolve(options: &S3Options) -> Result<S3Config> {
        Self::resolve_with(options, &|name| std::env::var(name).ok())
    }

    /// As `resolve`, reading variables through `var` (tests pass a map).
    pub fn resolve_with(options: &S3Options, var: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let home = var("HOME").map(PathBuf::from);
        let profile = options
            .profile
            .clone()
            .or_else(|| var("AWS_PROFILE"))
            .unwrap_or_else(|| "default".to_string());

        let config_file = var("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws/config")));
        // In ~/.aws/config the profile is `[profile NAME]`, except `[default]`.
        let config_section = if profile == "default" {
            profile.clone()
        } else {
            format!("profile {profile}")
        };
        let profile_config = match &config_file {
            Some(path) => read_ini_section(path, &config_section)?,
            None => BTreeMap::new(),
        };

        let region = options
            .region
            .clone()
            .or_else(|| var("AWS_REGION"))
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .or_else(|| profile_config.get("region").cloned())
            .unwrap_or_else(|| "us-east-1".to_string());

        let given_endpoint = options
            .endpoint
            .clone()
            .or_else(|| var("AWS_ENDPOINT_URL_S3"))
            .or_else(|| var("AWS_ENDPOINT_URL"))
            .or_else(|| profile_config.get("endpoint_url").cloned());
        let custom_endpoint = given_endpoint.is_some();
        let endpoint_text =
            given_endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let endpoint = parse_endpoint(&endpoint_text)?;

        let env_keys = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"));
        let credentials = match env_keys {
            (Some(key), Some(secret)) => Some(match var("AWS_SESSION_TOKEN") {
                Some(token) => Credentials::new_with_token(key, secret, token),
                None => Credentials::new(key, secret),
            }),
            _ => {
                let file = var("AWS_SHARED_CREDENTIALS_FILE")
                    .map(PathBuf::from)
                    .or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")));
                match file {
                    Some(path) => credentials_from_file(&path, &profile)?,
                    None => None,
                }
            }
        };

        let ca_bundle = options
            .ca_bundle
            .clone()
            .or_else(|| var("AWS_CA_BUNDLE").map(PathBuf::from));

        let part_size = options.part_size.unwrap_or(DEFAULT_PART_SIZE);
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&part_size) {
            return Err(Error::Config(format!(
                "part size {part_size} is outside S3's limits (5 MiB to 5 GiB)"
            )));
        }
        let concurrency = options.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if concurrency == 0 || concurrency > 256 {
            return Err(Error::Config(format!(
                "concurrency {concurrency} must be between 1 and 256"
            )));
        }

        let retry_budget = match (options.retry_budget, var("IMSCTL_S3_RETRY_BUDGET")) {
            (Some(budget), _) => budget,
            (None, Some(text)) => parse_duration(&text)
                .map_err(|e| Error::Config(format!("IMSCTL_S3_RETRY_BUDGET: {e}")))?,
            (None, None) => DEFAULT_RETRY_BUDGET,
        };

        Ok(S3Config {
            endpoint,
            custom_endpoint,
            region,
            credentials,
            addressing_style: options.addressing_style,
            ca_bundle,
            part_size,
            concurrency,
            retry: RetryPolicy {
                budget: retry_budget,
                ..RetryPolicy::default()
            },
            timeouts: Timeouts::default(),
            stream_uploads: options.stream
                || var("IMSCTL_S3_STREAM")
                    .is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes")),
            lease_settle: DEFAULT_LEASE_SETTLE,
            cache_dir: var("IMSCTL_CACHE_DIR")
                .map(PathBuf::from)
                .or_else(|| var("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("imsctl")))
                .or_else(|| home.as_ref().map(|h| h.join(".cache/imsctl"))),
        })
    }

    /// A configuration for a local test server: given endpoint and keys, nothing from the
    /// environment.
    pub fn for_endpoint(endpoint: &str, key: &str, secret: &str) -> Result<S3Config> {
        Ok(S3Config {
            endpoint: parse_endpoint(endpoint)?,
            custom_endpoint: true,
            region: "us-east-1".to_string(),
            credentials: Some(Credentials::new(key, secret)),
            addressing_style: AddressingStyle::Path,
            ca_bundle: None,
            part_size: DEFAULT_PART_SIZE,
            concurrency: DEFAULT_CONCURRENCY,
            retry: RetryPolicy::default(),
            timeouts: Timeouts::default(),
            stream_uploads: false,
            lease_settle: DEFAULT_LEASE_SETTLE,
            cache_dir: None,
        })
    }

    /// The URL style rusty-s3 builds.
    pub fn url_style(&self) -> UrlStyle {
        match self.addressing_style {
            AddressingStyle::Path => UrlStyle::Path,
            AddressingStyle::Virtual => UrlStyle::VirtualHost,
            AddressingStyle::Auto if self.custom_endpoint => UrlStyle::Path,
            AddressingStyle::Auto => UrlStyle::VirtualHost,
        }
    }

    /// The part size for an object of `size` bytes: the configured one, grown (to a whole MiB)
    /// when the object would otherwise need more than 10,000 parts.
    pub fn part_size_for(&self, size: u64) -> u64 {
        let needed = size.div_ceil(MAX_PARTS);
        if needed <= self.part_size {
            return self.part_size;
        }
        needed.div_ceil(1 << 20) * (1 << 20)
    }
}

fn parse_endpoint(text: &str) -> Result<Url> {
    let url = Url::parse(text)
        .map_err(|e| Error::Config(format!("invalid S3 endpoint {text:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::Config(format!(
            "invalid S3 endpoint {text:?}: expected http://HOST[:PORT] or https://HOST[:PORT]"
        )));
    }
    Ok(url)
}

/// The credentials of `profile` in an AWS credentials file; a missing file is no credentials.
fn credentials_from_file(path: &Path, profile: &str) -> Result<Option<Credentials>> {
    let section = read_ini_section(path, profile)?;
    let key = section.get("aws_access_key_id");
    let secret = section.get("aws_secret_access_key");
    match (key, secret) {
        (Some(key), Some(secret)) => {
            let token = section.get("aws_session_token").cloned();
            Ok(Some(match token {
                Some(token) => Credentials::new_with_token(key, secret, token),
                None => Credentials::new(key, secret),
            }))
        }
        (None, None) => Ok(None),
        _ => Err(Error::Config(format!(
            "{}: profile [{profile}] has only one of aws_access_key_id and aws_secret_access_key",
            path.display()
        ))),
    }
}

/// The `key = value` pairs of one `[section]` of an INI file (AWS's dialect: `#`/`;` comments,
/// keys case-insensitive). A missing file is an empty section.
fn read_ini_section(path: &Path, section: &str) -> Result<BTreeMap<String, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => {
            return Err(Error::Io {
                op: "read",
                path: path.to_path_buf(),
                cause: e,
            });
        }
    };
    Ok(parse_ini_section(&text, section))
}

fn parse_ini_section(text: &str, section: &str) -> BTreeMap<String, String> {
    let mut values = BTreeMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if !inside {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            values.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(vars: &[(&str, &str)], options: &S3Options) -> Result<S3Config> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        S3Config::resolve_with(options, &|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_are_aws() {
        let c = resolve(&[], &S3Options::default()).expect("resolve");
        assert_eq!(c.region, "us-east-1");
        assert_eq!(c.endpoint.as_str(), "https://s3.us-east-1.amazonaws.com/");
        assert!(c.credentials.is_none());
        assert!(matches!(c.url_style(), UrlStyle::VirtualHost));
        assert_eq!(c.part_size, DEFAULT_PART_SIZE);
    }

    #[test]
    fn environment_and_options() {
        let vars = [
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_REGION", "eu-west-3"),
            ("AWS_ACCESS_KEY_ID", "AK"),
            ("AWS_SECRET_ACCESS_KEY", "SK"),
        ];
        let c = resolve(&vars, &S3Options::default()).expect("resolve");
        assert_eq!(c.endpoint.as_str(), "http://127.0.0.1:9000/");
        assert_eq!(c.region, "eu-west-3");
        assert!(matches!(c.url_style(), UrlStyle::Path));
        let options = S3Options {
            endpoint: Some("https://rgw.site:8443".into()),
            addressing_style: AddressingStyle::Virtual,
            ..S3Options::default()
        };
        let c = resolve(&vars, &options).expect("resolve");
        assert_eq!(c.endpoint.as_str(), "https://rgw.site:8443/");
        assert!(matches!(c.url_style(), UrlStyle::VirtualHost));
        let bad = S3Options {
            endpoint: Some("ftp://x".into()),
            ..S3Options::default()
        };
        let err = resolve(&vars, &bad).expect_err("bad scheme");
        assert!(err.to_string().contains("ftp://x"), "{err}");
        let small = S3Options {
            part_size: Some(1 << 20),
            ..S3Options::default()
        };
        assert!(resolve(&vars, &small).is_err());
    }

    #[test]
    fn profiles_from_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let aws = dir.path().join(".aws");
        std::fs::create_dir(&aws).expect("mkdir");
        std::fs::write(
            aws.join("credentials"),
            "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\n\
             # comment\n[site]\nAWS_ACCESS_KEY_ID=SA\naws_secret_access_key = SS\naws_session_token = T\n\
             [broken]\naws_access_key_id = X\n",
        )
        .expect("write");
        std::fs::write(
            aws.join("config"),
            "[default]\nregion = us-west-2\n[profile site]\nregion = site-1\nendpoint_url = http://rgw:8080\n",
        )
        .expect("write");
        let home = dir.path().to_str().expect("utf8");
        let c = resolve(&[("HOME", home)], &S3Options::default()).expect("default");
        let creds = c.credentials.expect("creds");
        assert_eq!((creds.key(), creds.secret()), ("D", "DS"));
        assert_eq!(c.region, "us-west-2");
        let c = resolve(
            &[("HOME", home), ("AWS_PROFILE", "site")],
            &S3Options::default(),
        )
        .expect("site");
        let creds = c.credentials.expect("creds");
        assert_eq!((creds.key(), creds.token()), ("SA", Some("T")));
        assert_eq!(c.region, "site-1");
        assert_eq!(c.endpoint.as_str(), "http://rgw:8080/");
        // The environment wins over the file.
        let c = resolve(
            &[
                ("HOME", home),
                ("AWS_ACCESS_KEY_ID", "E"),
                ("AWS_SECRET_ACCESS_KEY", "ES"),
            ],
            &S3Options::default(),
        )
        .expect("env");
        assert_eq!(c.credentials.expect("creds").key(), "E");
        let err = resolve(
            &[("HOME", home), ("AWS_PROFILE", "broken")],
            &S3Options::default(),
        )
        .expect_err("half a key");
        assert!(err.to_string().contains("[broken]"), "{err}");
    }

    #[test]
    fn part_size_grows_for_huge_objects() {
        let c = S3Config::for_endpoint("http://127.0.0.1:1", "k", "s").expect("config");
        assert_eq!(c.part_size_for(1 << 30), DEFAULT_PART_SIZE);
        let huge = 400u64 << 30;
        let part = c.part_size_for(huge);
        assert!(part > DEFAULT_PART_SIZE && huge.div_ceil(part) <= MAX_PARTS);
        assert_eq!(part % (1 << 20), 0);
    }
}
