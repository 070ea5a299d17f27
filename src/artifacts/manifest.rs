//! manifest.json, version 1.0 (reference/ims-formats.md): the artifacts of one image with their
//! md5 and link. Written like IMS writes it: sorted keys, 4-space indent, no trailing newline.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::output::python_json;
use crate::store::records::ExtraFields;
use crate::store::{Error, Link, Result, Timestamp};

pub const MANIFEST_VERSION: &str = "1.0";
pub const MANIFEST_FILE: &str = "manifest.json";
/// The manifest's own type, in ims_python_helper's result list.
pub const MANIFEST_MIME: &str = "application/json";

/// The artifacts an image is made of, with their IMS types and their file names in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArtifactKind {
    Rootfs,
    Kernel,
    Initrd,
}

impl ArtifactKind {
    pub const ALL: [ArtifactKind; 3] = [
        ArtifactKind::Rootfs,
        ArtifactKind::Kernel,
        ArtifactKind::Initrd,
    ];

    pub fn mime_type(self) -> &'static str {
        match self {
            ArtifactKind::Rootfs => "application/vnd.cray.image.rootfs.squashfs",
            ArtifactKind::Kernel => "application/vnd.cray.image.kernel",
            ArtifactKind::Initrd => "application/vnd.cray.image.initrd",
        }
    }

    /// File (object) name under `<image-id>/`.
    pub fn file_name(self) -> &'static str {
        match self {
            ArtifactKind::Rootfs => "rootfs",
            ArtifactKind::Kernel => "kernel",
            ArtifactKind::Initrd => "initrd",
        }
    }

    pub fn from_mime_type(mime: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.mime_type() == mime)
    }
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file_name())
    }
}

/// One entry of a manifest (and of ims_python_helper's `ims_image_artifacts`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestArtifact {
    pub link: Link,
    pub md5: String,
    #[serde(rename = "type")]
    pub artifact_type: String,
    #[serde(flatten)]
    pub extra: ExtraFields,
}

/// manifest.json.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub artifacts: Vec<ManifestArtifact>,
    /// `YYYY-MM-DD HH:MM:SS.ffffff`, UTC.
    pub created: String,
    pub version: String,
    #[serde(flatten)]
    pub extra: ExtraFields,
}

impl Manifest {
    pub fn new(created: Timestamp, artifacts: Vec<ManifestArtifact>) -> Self {
        Manifest {
            artifacts,
            created: created.manifest_format(),
            version: MANIFEST_VERSION.to_string(),
            extra: ExtraFields::new(),
        }
    }

    /// The exact bytes IMS would write for this manifest.
    pub fn to_json(&self) -> Result<String> {
        python_json(self).map_err(|e| Error::Invalid(format!("cannot serialize manifest: {e}")))
    }

    pub fn parse(bytes: &[u8], path: &Path) -> Result<Manifest> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
            path: path.to_path_buf(),
            what: format!("manifest: {e}"),
        })?;
        manifest.check(path)?;
        Ok(manifest)
    }

    pub fn read(path: &Path) -> Result<Manifest> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
        Self::parse(&bytes, path)
    }

    /// IMS's validity rules we rely on: version 1.0, exactly one rootfs.
    fn check(&self, path: &Path) -> Result<()> {
        if self.version != MANIFEST_VERSION {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                what: format!(
                    "manifest: version {:?} (only {MANIFEST_VERSION} is known)",
                    self.version
                ),
            });
        }
        let rootfs = self
            .artifacts
            .iter()
            .filter(|a| a.artifact_type == ArtifactKind::Rootfs.mime_type())
            .count();
        if rootfs != 1 {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                what: format!("manifest: {rootfs} rootfs artifacts (exactly one expected)"),
            });
        }
        Ok(())
    }

    /// The entry of one kind, if present.
    pub fn artifact(&self, kind: ArtifactKind) -> Option<&ManifestArtifact> {
        self.artifacts
            .iter()
            .find(|a| a.artifact_type == kind.mime_type())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(path: &str, etag: &str) -> Link {
        Link {
            link_type: "s3".into(),
            path: path.into(),
            etag: etag.into(),
        }
    }

    fn artifact(kind: ArtifactKind, path: &str, etag: &str, md5: &str) -> ManifestArtifact {
        ManifestArtifact {
            link: link(path, etag),
            md5: md5.into(),
            artifact_type: kind.mime_type().into(),
            extra: ExtraFields::new(),
        }
    }

    fn example() -> Manifest {
        let created = Timestamp::parse("2018-12-17T22:59:43.264129+00:00").expect("time");
        Manifest::new(
            created,
            vec![
                artifact(
                    ArtifactKind::Rootfs,
                    "s3://boot-images/d88521c3-b339-43bc-afda-afdfda126388/rootfs",
                    "4add976679c7e955c4b16d7e2cfa114e-32",
                    "94165af4373e5ace3e817eb4baba2284",
                ),
                artifact(
                    ArtifactKind::Kernel,
                    "s3://boot-images/d88521c3-b339-43bc-afda-afdfda126388/kernel",
                    "f836412241aae79d160556ed6a4eb4d4",
                    "f836412241aae79d160556ed6a4eb4d4",
                ),
                artifact(
                    ArtifactKind::Initrd,
                    "s3://boot-images/d88521c3-b339-43bc-afda-afdfda126388/initrd",
                    "ec8793c07f94e59a2a30abdb1bd3d35a-4",
                    "86832ee3977ca0515592e5d00271d2fe",
                ),
            ],
        )
    }

    /// The IMS example manifest, as Python's json.dumps(sort_keys=True, indent=4) prints it.
    const EXAMPLE_JSON: &str = r#"{
    "artifacts": [
        {
            "link": {
                "etag": "4add976679c7e955c4b16d7e2cfa114e-32",
                "path": "s3://boot-images/d88521c3-b339-43bc-afda-afdfda126388/rootfs",
                "type": "s3"
            },
            "md5": "94165af4373e5ace3e817eb4baba2284",
            "type": "application/vnd.cray.image.rootfs.squashfs"
        },
        {
            "link": {
                "etag": "f836412241aae79d160556ed6a4eb4d4",
                "path": "s3://boot-images/d88521c3-b339-43bc-afda-afdfda126388/kernel",
                "type": "s3"
            },
            "md5": "f836412241aae79d160556ed6a4eb4d4",
            "type": "application/vnd.cray.image.kernel"
        },
        {
            "link": {
                "etag": "ec8793c07f94e59a2a30abdb1bd3d35a-4",
                "path": "s3://boot-images/d88521c3-b339-43bc-afda-afdfda126388/initrd",
                "type": "s3"
            },
            "md5": "86832ee3977ca0515592e5d00271d2fe",
            "type": "application/vnd.cray.image.initrd"
        }
    ],
    "created": "2018-12-17 22:59:43.264129",
    "version": "1.0"
}"#;

    #[test]
    fn manifest_is_byte_exact() {
        assert_eq!(example().to_json().expect("json"), EXAMPLE_JSON);
    }

    #[test]
    fn manifest_round_trips_and_is_checked() {
        let path = Path::new("/s/manifest.json");
        let parsed = Manifest::parse(EXAMPLE_JSON.as_bytes(), path).expect("parse");
        assert_eq!(parsed, example());
        assert_eq!(
            parsed
                .artifact(ArtifactKind::Initrd)
                .map(|a| a.md5.as_str()),
            Some("86832ee3977ca0515592e5d00271d2fe")
        );
        let mut two_roots = example();
        two_roots.artifacts.push(two_roots.artifacts[0].clone());
        let err = Manifest::parse(two_roots.to_json().expect("json").as_bytes(), path)
            .expect_err("invalid");
        assert!(
            err.to_string().contains("/s/manifest.json") && err.to_string().contains("2 rootfs"),
            "{err}"
        );
        let mut v2 = example();
        v2.version = "2.0".into();
        assert!(Manifest::parse(v2.to_json().expect("json").as_bytes(), path).is_err());
    }
}
