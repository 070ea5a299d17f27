//! The records IMS keeps (images, jobs, public keys), with IMS's field names and shapes
//! (reference/ims-formats.md), plus a few imsctl-only job fields.
//!
//! Field order follows the IMS examples, because TOML output keeps the struct's order.
//! Every record keeps the fields it does not know in `extra`, so a record written by a newer
//! imsctl survives a read-modify-write by this one. Optional fields that are unset are left out
//! of the stored JSON (TOML cannot hold a null, and IMS's TOML output shows them absent too).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use uuid::Uuid;

/// Fields a newer imsctl (or IMS itself) wrote that this version does not know; kept verbatim.
pub type ExtraFields = BTreeMap<String, serde_json::Value>;

/// The kinds of record in the store; each has its own directory and its own word in messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Image,
    Job,
    PublicKey,
}

impl RecordKind {
    /// The directory under the store that holds this kind's records.
    pub fn dir_name(self) -> &'static str {
        match self {
            RecordKind::Image => "images",
            RecordKind::Job => "jobs",
            RecordKind::PublicKey => "public-keys",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordKind::Image => "image",
            RecordKind::Job => "job",
            RecordKind::PublicKey => "public key",
        })
    }
}

/// What the store needs to know about a record type.
pub trait Record: Serialize + for<'de> Deserialize<'de> {
    const KIND: RecordKind;
    fn id(&self) -> Uuid;
    fn created(&self) -> Timestamp;
    /// Bring a record read from disk to the current shape (records written by older releases
    /// keep working; the next write stores the new shape).
    fn upgrade(&mut self) {}
}

/// A record's creation time. IMS writes RFC 3339 with microseconds and `+00:00`
/// (`2018-12-04T17:25:52.482514+00:00`); we write exactly that and read any RFC 3339.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    pub fn now() -> Self {
        Self::from_datetime(OffsetDateTime::now_utc())
    }

    /// Stored in UTC and truncated to microseconds, so that what we print is what we compare.
    /// A time whose UTC form the time crate cannot hold keeps its own offset (it cannot come
    /// from `parse`, which refuses it).
    pub fn from_datetime(when: OffsetDateTime) -> Self {
        let utc = when.checked_to_offset(time::UtcOffset::UTC).unwrap_or(when);
        let micros = utc.microsecond();
        Timestamp(utc.replace_microsecond(micros).unwrap_or(utc))
    }

    pub fn datetime(&self) -> OffsetDateTime {
        self.0
    }

    /// Parse any RFC 3339 time (IMS's own records use several precisions) whose UTC form lies
    /// in the years 0000 to 9999: `9999-12-31T23:00:00-01:00` is year 10000 in UTC, which
    /// RFC 3339 cannot write, so a record holding it could be read but never written back.
    pub fn parse(text: &str) -> Result<Self, String> {
        let when = OffsetDateTime::parse(text, &Rfc3339).map_err(|e| e.to_string())?;
        let utc = when
            .checked_to_offset(time::UtcOffset::UTC)
            .filter(|utc| (0..=9999).contains(&utc.year()))
            .ok_or("in UTC it lies outside the years 0000 to 9999 that RFC 3339 can write")?;
        Ok(Self::from_datetime(utc))
    }

    /// The manifest.json style: `2018-12-17 22:59:43.264129` (UTC, no zone).
    pub fn manifest_format(&self) -> String {
        let fmt = format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]"
        );
        self.0.format(&fmt).unwrap_or_default()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fmt = format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]+00:00"
        );
        // A UTC time in a valid range always formats; fall back to RFC 3339 rather than panic.
        match self.0.format(&fmt) {
            Ok(text) => f.write_str(&text),
            Err(_) => write!(f, "{}", self.0.format(&Rfc3339).unwrap_or_default()),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Timestamp::parse(&text)
            .map_err(|e| serde::de::Error::custom(format!("invalid RFC 3339 time {text:?}: {e}")))
    }
}

/// Image architecture, as IMS spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Arch {
    #[default]
    #[serde(rename = "x86_64")]
    X86_64,
    #[serde(rename = "aarch64")]
    Aarch64,
}

impl Arch {
    /// The architecture imsctl itself runs on (the default for new images); other hosts map
    /// to x86_64, the IMS default.
    pub fn host() -> Self {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// IMS's default kernel file name under /boot for this architecture.
    pub fn default_kernel_file_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "vmlinuz",
            Arch::Aarch64 => "Image",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "x86_64" => Ok(Arch::X86_64),
            "aarch64" => Ok(Arch::Aarch64),
            other => Err(format!(
                "unknown architecture {other:?} (expected x86_64 or aarch64)"
            )),
        }
    }
}

/// Where an artifact (or an image's manifest) lives. `type` is `s3` in IMS; the local store
/// writes `file` with `path` the absolute path of the file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    #[serde(rename = "type")]
    pub link_type: String,
    pub path: String,
    #[serde(default)]
    pub etag: String,
}

/// Link type of artifacts kept in the local store.
pub const LINK_TYPE_FILE: &str = "file";

/// An image record (`cray ims images describe`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub created: Timestamp,
    pub id: Uuid,
    pub name: String,
    #[serde(default)]
    pub arch: Arch,
    /// The image's manifest.json; absent while an image has no artifacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<Link>,
    #[serde(flatten)]
    pub extra: ExtraFields,
}

impl ImageRecord {
    /// A new record with a fresh UUID v4 and the current time.
    pub fn new(name: impl Into<String>, arch: Arch, link: Option<Link>) -> Self {
        Self::with_id(Uuid::new_v4(), name, arch, link)
    }

    pub fn with_id(id: Uuid, name: impl Into<String>, arch: Arch, link: Option<Link>) -> Self {
        ImageRecord {
            created: Timestamp::now(),
            id,
            name: name.into(),
            arch,
            link,
            extra: ExtraFields::new(),
        }
    }
}

impl Record for ImageRecord {
    const KIND: RecordKind = RecordKind::Image;
    fn id(&self) -> Uuid {
        self.id
    }
    fn created(&self) -> Timestamp {
        self.created
    }
}

/// A public-key record (`cray ims public-keys describe`), fields in the order IMS prints them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublicKeyRecord {
    pub public_key: String,
    pub id: Uuid,
    pub name: String,
    pub created: Timestamp,
    #[serde(flatten)]
    pub extra: ExtraFields,
}

impl PublicKeyRecord {
    pub fn new(name: impl Into<String>, public_key: impl Into<String>) -> Self {
        PublicKeyRecord {
            public_key: public_key.into(),
            id: Uuid::new_v4(),
            name: name.into(),
            created: Timestamp::now(),
            extra: ExtraFields::new(),
        }
    }
}

impl Record for PublicKeyRecord {
    const KIND: RecordKind = RecordKind::PublicKey;
    fn id(&self) -> Uuid {
        self.id
    }
    fn created(&self) -> Timestamp {
        self.created
    }
}

/// IMS job types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobType {
    Create,
    Customize,
}

/// IMS job statuses. A customize job walks creating → fetching_image → waiting_on_user →
/// packaging_artifacts → success | error; the create-only statuses are here so that records
/// copied from a real IMS still read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Creating,
    FetchingImage,
    FetchingRecipe,
    WaitingForRepos,
    BuildingImage,
    WaitingOnUser,
    PackagingArtifacts,
    Success,
    Error,
}

impl JobStatus {
    /// A finished job: nothing of it runs and its environment is no longer in use.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Success | JobStatus::Error)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Creating => "creating",
            JobStatus::FetchingImage => "fetching_image",
            JobStatus::FetchingRecipe => "fetching_recipe",
            JobStatus::WaitingForRepos => "waiting_for_repos",
            JobStatus::BuildingImage => "building_image",
            JobStatus::WaitingOnUser => "waiting_on_user",
            JobStatus::PackagingArtifacts => "packaging_artifacts",
            JobStatus::Success => "success",
            JobStatus::Error => "error",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a job presents the image root (imsctl only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootMode {
    /// The base SquashFS mounted read-only under an overlay.
    Mount,
    /// The base extracted into the job's work directory.
    Extract,
}

/// One customization environment of a job (IMS: an SSH container). `connection_info` is free-form
/// in IMS (`{"cluster.local": {host, port}, ...}`); imsctl puts how to enter the shell there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SshContainer {
    pub status: String,
    pub jail: bool,
    pub name: String,
    #[serde(default)]
    pub connection_info: BTreeMap<String, serde_json::Value>,
    #[serde(flatten)]
    pub extra: ExtraFields,
}

/// Files the customization added, changed and removed (paths inside the image, imsctl only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeReport {
    #[serde(default)]
    pub added: Vec<String>,
    #[serde(default)]
    pub changed: Vec<String>,
    #[serde(default)]
    pub removed: Vec<String>,
}

/// IMS's default build environment size (GiB); kept for fidelity, imsctl does not enforce it.
pub const DEFAULT_BUILD_ENV_SIZE: u32 = 15;

/// A job record (`cray ims jobs describe`). Fields in the order of IMS's TOML examples; the
/// imsctl-only fields come last.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub status: JobStatus,
    pub enable_debug: bool,
    pub kernel_file_name: String,
    pub artifact_id: Uuid,
    pub build_env_size: u32,
    pub job_type: JobType,
    pub id: Uuid,
    pub image_root_archive_name: String,
    pub initrd_file_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_parameters_file_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resultant_image_id: Option<Uuid>,
    pub created: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_id: Option<Uuid>,
    #[serde(default)]
    pub arch: Arch,
    #[serde(default)]
    pub ssh_containers: Vec<SshContainer>,
    /// The job's environment, `<store>/work/<job-id>` (imsctl only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work_dir: Option<PathBuf>,
    /// How the image root is presented (imsctl only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<RootMode>,
    /// Why the job ended in `error` (imsctl only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// What the customization changed (imsctl only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_report: Option<ChangeReport>,
    /// imsctl's own settings of the job, typed; under `imsctl` in the record.
    #[serde(default, rename = "imsctl")]
    pub settings: JobSettings,
    #[serde(flatten)]
    pub extra: ExtraFields,
}

impl JobRecord {
    /// A new customize job in `creating`, with IMS's defaults for the file names.
    pub fn new_customize(
        artifact_id: Uuid,
        image_root_archive_name: impl Into<String>,
        arch: Arch,
    ) -> Self {
        JobRecord {
            status: JobStatus::Creating,
            enable_debug: false,
            kernel_file_name: arch.default_kernel_file_name().to_string(),
            artifact_id,
            build_env_size: DEFAULT_BUILD_ENV_SIZE,
            job_type: JobType::Customize,
            id: Uuid::new_v4(),
            image_root_archive_name: image_root_archive_name.into(),
            initrd_file_name: "initrd".to_string(),
            kernel_parameters_file_name: None,
            resultant_image_id: None,
            created: Timestamp::now(),
            public_key_id: None,
            arch,
            ssh_containers: Vec::new(),
            work_dir: None,
            mode: None,
            error_message: None,
            change_report: None,
            settings: JobSettings::default(),
            extra: ExtraFields::new(),
        }
    }
}

impl Record for JobRecord {
    const KIND: RecordKind = RecordKind::Job;
    fn id(&self) -> Uuid {
        self.id
    }
    fn created(&self) -> Timestamp {
        self.created
    }
    fn upgrade(&mut self) {
        self.upgrade_legacy_settings();
    }
}

/// imsctl's own settings of a job, fixed when it is created, so that whatever completes it later
/// (`jobs complete`, the SSH server's complete file) works as the job was asked to. IMS's job
/// record has no place for them: they are kept together under `imsctl`. Records written before
/// held the first four as top-level fields; [`Record::upgrade`] moves them here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSettings {
    /// The network the sandbox sees.
    #[serde(default)]
    pub network: JobNetwork,
    /// Capabilities added to the sandbox's default set, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Where the image is published; absent: the local store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishTarget>,
    /// The user named the boot files; otherwise the image's kernel is detected.
    #[serde(default)]
    pub boot_file_names_given: bool,
    /// How the image is packed; absent (an older record): the defaults of `imsctl pack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<PackSpec>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobNetwork {
    /// The host's network (the default, as in IMS).
    #[default]
    Host,
    /// A loopback only.
    None,
}

/// An S3 publish target: the destination and how to reach it. Never a secret: credentials come
/// from the environment or the named profile when the job completes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishTarget {
    /// `s3://BUCKET[/PREFIX]`.
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// `auto`, `path` or `virtual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addressing_style: Option<String>,
}

/// How a job's image is packed (the `imsctl pack` options it was created with).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackSpec {
    /// `gzip`, `xz`, `zstd` or `lz4`.
    pub compressor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<u32>,
    pub block_size: u32,
    /// Superblock time; absent: the time of packing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mkfs_time: Option<u32>,
    pub fragments: bool,
    pub tail_ends: bool,
    pub xattrs: bool,
    pub exportable: bool,
    /// Compression threads (0: one per core).
    pub threads: usize,
    /// Copy unchanged files' compressed blocks from the base image (`--full-repack` turns it off).
    pub reuse_base: bool,
}

/// `imsctl pack`'s defaults: gzip, 128 KiB blocks, fragments, xattrs, the export table, one
/// thread per core, unchanged blocks reused.
impl Default for PackSpec {
    fn default() -> Self {
        PackSpec {
            compressor: "gzip".to_string(),
            level: None,
            block_size: 128 * 1024,
            mkfs_time: None,
            fragments: true,
            tail_ends: false,
            xattrs: true,
            exportable: true,
            threads: 0,
            reuse_base: true,
        }
    }
}

impl JobRecord {
    /// Move settings an older release wrote as top-level fields under `imsctl`.
    fn upgrade_legacy_settings(&mut self) {
        let extra = &mut self.extra;
        if let Some(network) = extra.remove("network")
            && network.as_str() == Some("none")
        {
            self.settings.network = JobNetwork::None;
        }
        if let Some(names) = extra.remove("cap_add") {
            self.settings.cap_add = names
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
        }
        if let Some(url) = extra
            .remove("publish")
            .and_then(|v| v.as_str().map(String::from))
        {
            self.settings.publish = Some(PublishTarget {
                url,
                endpoint: None,
                region: None,
                profile: None,
                addressing_style: None,
            });
        }
        if let Some(given) = extra.remove("boot_file_names_given") {
            self.settings.boot_file_names_given = given.as_bool().unwrap_or(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_prints_like_ims() {
        let t = Timestamp::parse("2018-12-04T17:25:52.482514+00:00").expect("parse");
        assert_eq!(t.to_string(), "2018-12-04T17:25:52.482514+00:00");
        assert_eq!(t.manifest_format(), "2018-12-04 17:25:52.482514");
        // Other precisions and zones are read and normalised to UTC microseconds.
        let t = Timestamp::parse("2018-11-21T18:22:53.4+01:00").expect("parse");
        assert_eq!(t.to_string(), "2018-11-21T17:22:53.400000+00:00");
        let t = Timestamp::parse("2018-11-21T18:22:53.123456789Z").expect("parse");
        assert_eq!(t.to_string(), "2018-11-21T18:22:53.123456+00:00");
        assert!(Timestamp::parse("yesterday").is_err());
    }

    #[test]
    fn timestamps_beyond_rfc3339_years_in_utc_are_refused() {
        // The local years are fine, the UTC ones (10000, -1) are not: found by fuzzing the
        // records (a panic for the first, a record that no longer read back for the second).
        for text in ["9999-12-31T23:59:59-01:00", "0000-01-01T00:00:00+01:00"] {
            let err = Timestamp::parse(text).expect_err(text);
            assert!(
                err.contains("outside the years 0000 to 9999"),
                "{text}: {err}"
            );
        }
        for text in ["9999-12-31T23:59:59+00:00", "0000-01-01T00:00:00-00:00"] {
            let t = Timestamp::parse(text).expect(text);
            assert_eq!(Timestamp::parse(&t.to_string()), Ok(t), "{text}");
        }
    }

    #[test]
    fn timestamp_now_round_trips() {
        let now = Timestamp::now();
        let text = now.to_string();
        assert!(text.ends_with("+00:00"), "{text}");
        assert_eq!(text.len(), "2018-12-04T17:25:52.482514+00:00".len());
        assert_eq!(Timestamp::parse(&text).expect("parse"), now);
    }

    #[test]
    fn image_record_reads_ims_json_and_keeps_unknown_fields() {
        let ims = r#"{
            "created": "2018-12-17T22:59:43.264129+00:00",
            "id": "d88521c3-b339-43bc-afda-afdfda126388",
            "name": "sles15_barebones_image",
            "link": {"etag": "13af", "path": "s3://boot-images/x/manifest.json", "type": "s3"},
            "metadata": {"owner": "someone"},
            "future_field": [1, null, 3]
        }"#;
        let rec: ImageRecord = serde_json::from_str(ims).expect("parse");
        assert_eq!(rec.arch, Arch::X86_64);
        assert_eq!(rec.link.as_ref().map(|l| l.link_type.as_str()), Some("s3"));
        let back: serde_json::Value = serde_json::to_value(&rec).expect("serialize");
        assert_eq!(back["metadata"]["owner"], "someone");
        assert_eq!(back["future_field"], serde_json::json!([1, null, 3]));
        assert_eq!(back["created"], "2018-12-17T22:59:43.264129+00:00");
        assert_eq!(back["arch"], "x86_64");
    }

    #[test]
    fn job_status_is_snake_case() {
        let mut job = JobRecord::new_customize(Uuid::new_v4(), "out", Arch::Aarch64);
        assert_eq!(job.kernel_file_name, "Image");
        job.status = JobStatus::PackagingArtifacts;
        let v = serde_json::to_value(&job).expect("serialize");
        assert_eq!(v["status"], "packaging_artifacts");
        assert_eq!(v["job_type"], "customize");
        assert_eq!(v["arch"], "aarch64");
        assert!(v.get("resultant_image_id").is_none());
        let back: JobRecord = serde_json::from_value(v).expect("parse");
        assert_eq!(back, job);
        for (status, text) in [
            (JobStatus::Creating, "\"creating\""),
            (JobStatus::FetchingImage, "\"fetching_image\""),
            (JobStatus::WaitingOnUser, "\"waiting_on_user\""),
            (JobStatus::Success, "\"success\""),
            (JobStatus::Error, "\"error\""),
        ] {
            assert_eq!(serde_json::to_string(&status).expect("serialize"), text);
            assert_eq!(format!("\"{status}\""), text);
        }
    }

    #[test]
    fn job_record_reads_an_ims_job() {
        // The job record of the procedure's ims_python_helper output (with kubernetes fields
        // and ssh_port we do not model: they must survive).
        let ims = r#"{
            "artifact_id": "2233c82a-5081-4f67-bec4-4b59a60017a6",
            "build_env_size": 10,
            "created": "2018-11-21T18:22:53.409405+00:00",
            "enable_debug": false,
            "id": "ad5163d2-398d-4e93-94f0-2f439f114fe7",
            "image_root_archive_name": "sles15_barebones_image",
            "initrd_file_name": "initrd",
            "job_type": "create",
            "kernel_file_name": "vmlinuz",
            "kubernetes_job": "cray-ims-ad5163d2-398d-4e93-94f0-2f439f114fe7-create",
            "public_key_id": "a252ff6f-c087-4093-a305-122b41824a3e",
            "resultant_image_id": "d88521c3-b339-43bc-afda-afdfda126388",
            "ssh_port": 0,
            "status": "packaging_artifacts"
        }"#;
        let job: JobRecord = serde_json::from_str(ims).expect("parse");
        assert_eq!(job.job_type, JobType::Create);
        assert_eq!(job.build_env_size, 10);
        assert_eq!(job.extra.get("ssh_port"), Some(&serde_json::json!(0)));
        let v = serde_json::to_value(&job).expect("serialize");
        assert_eq!(
            v["kubernetes_job"],
            "cray-ims-ad5163d2-398d-4e93-94f0-2f439f114fe7-create"
        );
        assert_eq!(
            v["resultant_image_id"],
            "d88521c3-b339-43bc-afda-afdfda126388"
        );
    }

    #[test]
    fn arch_parses_and_rejects() {
        assert_eq!("aarch64".parse::<Arch>(), Ok(Arch::Aarch64));
        assert!("arm64".parse::<Arch>().is_err());
    }

    #[test]
    fn a_job_record_of_an_older_release_reads_into_typed_settings() {
        let id = Uuid::new_v4();
        let mut job = JobRecord::new_customize(Uuid::new_v4(), "out", Arch::X86_64);
        job.id = id;
        let mut old = serde_json::to_value(&job).expect("serialize");
        let fields = old.as_object_mut().expect("object");
        fields.remove("imsctl");
        fields.insert("network".into(), "none".into());
        fields.insert("cap_add".into(), serde_json::json!(["NET_RAW"]));
        fields.insert("publish".into(), "s3://b/site".into());
        fields.insert("boot_file_names_given".into(), true.into());
        let bytes = serde_json::to_vec(&old).expect("bytes");
        let read: JobRecord =
            crate::store::parse_record(std::path::Path::new("job.json"), &bytes, id).expect("read");
        assert_eq!(read.settings.network, JobNetwork::None);
        assert_eq!(read.settings.cap_add, ["NET_RAW"]);
        assert_eq!(
            read.settings.publish.as_ref().map(|p| p.url.as_str()),
            Some("s3://b/site")
        );
        assert!(read.settings.boot_file_names_given);
        // Written again, it has the new shape only.
        let new = serde_json::to_value(&read).expect("serialize");
        for legacy in ["network", "cap_add", "publish", "boot_file_names_given"] {
            assert!(new.get(legacy).is_none(), "{legacy} left at the top: {new}");
        }
        assert_eq!(new["imsctl"]["network"], "none");
        assert_eq!(new["imsctl"]["publish"]["url"], "s3://b/site");
    }
}
