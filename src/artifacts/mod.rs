//! What a customization produces and where it goes: kernel/initrd detection, the CA certificate,
//! manifest.json with md5s computed by us. Where they go is `crate::publish`.
//!
//! Errors are the store's (`crate::store::Error`): both name the operation and the path.

pub mod boot;
pub mod ca;
pub mod manifest;
/// MD5 of artifacts: the transport's (S3 needs it for Content-MD5 and `md5sum` metadata).
pub use imsctl_s3::md5;
pub mod rootpath;

use serde::{Deserialize, Serialize};

pub use boot::{BootFiles, Choice, find_boot_files};
pub use ca::{CA_CERT_ENV, CA_CERT_PATH_IN_IMAGE, ca_cert_source, inject_ca_cert, read_ca_cert};
pub use manifest::{ArtifactKind, Manifest, ManifestArtifact};
pub use rootpath::resolve_in_root;

use crate::store::{Error, ImageRecord, JobRecord, Result};

/// `result` of a successful run, as ims_python_helper prints it.
pub const RESULT_SUCCESS: &str = "success";

/// What `imsctl customize` prints: the shape of ims_python_helper's `image upload_artifacts`
/// result (artifacts including the manifest itself, the new image record, the job record).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CustomizeResult {
    pub ims_image_artifacts: Vec<ManifestArtifact>,
    pub ims_image_record: ImageRecord,
    pub ims_job_record: JobRecord,
    pub result: String,
}

impl CustomizeResult {
    pub fn success(
        ims_image_artifacts: Vec<ManifestArtifact>,
        image: ImageRecord,
        job: JobRecord,
    ) -> Self {
        CustomizeResult {
            ims_image_artifacts,
            ims_image_record: image,
            ims_job_record: job,
            result: RESULT_SUCCESS.to_string(),
        }
    }

    /// Sorted keys, 4-space indent, like the helper prints it.
    pub fn to_json(&self) -> Result<String> {
        crate::output::python_json(self)
            .map_err(|e| Error::Invalid(format!("cannot serialize the result: {e}")))
    }
}
