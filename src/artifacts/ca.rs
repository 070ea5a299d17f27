//! The CA certificate IMS copies into every customized image, at
//! `/etc/cray/ca/certificate_authority.crt`.
//!
//! The image decides what its /etc is: `etc -> /etc` or `etc/cray -> /somewhere` are followed as
//! inside a chroot (`rootpath::resolve_in_root`), so the certificate always lands inside the image
//! root and never on the host. Directories we create are 0755 and the file 0644, owned by root.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{PermissionsExt, fchown, lchown};
use std::path::{Path, PathBuf};

use super::rootpath::resolve_in_root;
use crate::store::{Error, Result, StoreConfig};

/// Where the certificate goes, inside the image.
pub const CA_CERT_PATH_IN_IMAGE: &str = "/etc/cray/ca/certificate_authority.crt";
/// Environment variable naming the CA certificate when `--ca-cert` is not given.
pub const CA_CERT_ENV: &str = "IMSCTL_CA_CERT";

/// Which certificate to inject: `--ca-cert`, else `IMSCTL_CA_CERT` (pass
/// `std::env::var_os(CA_CERT_ENV)`), else the store's `ca_cert`; None when no source names one.
pub fn ca_cert_source(
    cli: Option<&Path>,
    env: Option<OsString>,
    config: &StoreConfig,
) -> Option<PathBuf> {
    cli.map(Path::to_path_buf)
        .or_else(|| env.filter(|v| !v.is_empty()).map(PathBuf::from))
        .or_else(|| config.ca_cert.clone())
}

/// Read a CA certificate file and check it is PEM (one or more `CERTIFICATE` blocks).
pub fn read_ca_cert(path: &Path) -> Result<Vec<u8>> {
    let bytes = fs::read(path).map_err(|e| Error::io("read the CA certificate", path, e))?;
    let text = String::from_utf8_lossy(&bytes);
    let begin = text.find("-----BEGIN CERTIFICATE-----");
    let end = text.rfind("-----END CERTIFICATE-----");
    match (begin, end) {
        (Some(b), Some(e)) if b < e => Ok(bytes),
        _ => Err(Error::Invalid(format!(
            "{}: not a PEM CA certificate (no -----BEGIN CERTIFICATE----- ... -----END CERTIFICATE----- block)",
            path.display()
        ))),
    }
}

/// Copy `ca_file` to `/etc/cray/ca/certificate_authority.crt` inside the image at `root`.
/// Returns the host path written. The file is replaced atomically (a temp file renamed over it),
/// so an existing certificate that shares its inode with another file is not modified in place.
pub fn inject_ca_cert(root: &Path, ca_file: &Path) -> Result<PathBuf> {
    let pem = read_ca_cert(ca_file)?;
    let target = resolve_in_root(root, Path::new(CA_CERT_PATH_IN_IMAGE))?;
    let dir = target
        .parent()
        .ok_or_else(|| Error::Invalid(format!("{}: no parent directory", target.display())))?;
    create_dirs_inside(root, dir)?;
    write_replacing(dir, &target, &pem)?;
    Ok(target)
}

/// Create the missing directories from `root` down to `dir` (a path resolve_in_root returned,
/// so its existing part has no symlinks), each 0755 and owned by root.
fn create_dirs_inside(root: &Path, dir: &Path) -> Result<()> {
    let relative = dir.strip_prefix(root).map_err(|_| {
        Error::Invalid(format!(
            "{} is not inside the image root {}",
            dir.display(),
            root.display()
        ))
    })?;
    let mut current = root.to_path_buf();
    for part in relative.components() {
        current.push(part);
        // mkdir never follows a symlink in its last component: if one appeared there since
        // the resolution, this fails (EEXIST + not a dir below) instead of writing through it.
        match fs::create_dir(&current) {
            Ok(()) => {
                fs::set_permissions(&current, fs::Permissions::from_mode(0o755))
                    .map_err(|e| Error::io("set permissions of", &current, e))?;
                chown_root(lchown(&current, Some(0), Some(0)), &current)?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let meta = fs::symlink_metadata(&current)
                    .map_err(|e| Error::io("look up", &current, e))?;
                if !meta.is_dir() {
                    return Err(Error::Invalid(format!(
                        "cannot install the CA certificate: {} exists and is not a directory",
                        current.display()
                    )));
                }
            }
            Err(e) => return Err(Error::io("create directory", &current, e)),
        }
    }
    Ok(())
}

fn write_replacing(dir: &Path, target: &Path, pem: &[u8]) -> Result<()> {
    // Not synced: the image root is packed from this process's view, not after a reboot.
    let (mut tmp, guard) = crate::fsutil::temp_beside(target, 0o644)
        .map_err(|e| Error::io("create a temporary file in", dir, e))?;
    tmp.write_all(pem)
        .map_err(|e| Error::io("write", tmp.path(), e))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(|e| Error::io("set permissions of", tmp.path(), e))?;
    chown_root(fchown(tmp.as_file(), Some(0), Some(0)), tmp.path())?;
    crate::fsutil::commit(tmp, guard, target, true)
        .map_err(|e| Error::io("install the CA certificate as", target, e))
}

/// Ownership root:root. Without the privilege (not root, no user namespace) the file keeps the
/// caller's owner: the rootless packer records owners itself.
fn chown_root(result: io::Result<()>, path: &Path) -> Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && !nix::unistd::geteuid().is_root() => {
            Ok(())
        }
        Err(e) => Err(Error::io("chown to root", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, symlink};

    const PEM: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        fs::create_dir(&root).expect("mkdir");
        let ca = dir.path().join("ca.crt");
        fs::write(&ca, PEM).expect("write");
        (dir, root, ca)
    }

    #[test]
    fn installs_with_modes_and_dirs() {
        let (_dir, root, ca) = setup();
        let written = inject_ca_cert(&root, &ca).expect("inject");
        assert_eq!(written, root.join("etc/cray/ca/certificate_authority.crt"));
        assert_eq!(fs::read_to_string(&written).expect("read"), PEM);
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(&written), 0o644);
        assert_eq!(mode(&root.join("etc")), 0o755);
        assert_eq!(mode(&root.join("etc/cray/ca")), 0o755);
        if nix::unistd::geteuid().is_root() {
            assert_eq!(fs::metadata(&written).expect("stat").uid(), 0);
        }
        // Again: replaced, no temp file left.
        inject_ca_cert(&root, &ca).expect("inject again");
        let names: Vec<_> = fs::read_dir(root.join("etc/cray/ca"))
            .expect("readdir")
            .map(|e| e.expect("e").file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("certificate_authority.crt")]);
    }

    #[test]
    fn absolute_etc_symlink_does_not_write_on_the_host() {
        let (dir, root, ca) = setup();
        let host_etc = dir.path().join("host-etc");
        fs::create_dir(&host_etc).expect("mkdir");
        // The image's /etc points at an absolute path that exists on the host.
        symlink(&host_etc, root.join("etc")).expect("symlink");
        let written = inject_ca_cert(&root, &ca).expect("inject");
        assert!(written.starts_with(&root), "{}", written.display());
        assert_eq!(
            fs::read_dir(&host_etc).expect("readdir").count(),
            0,
            "wrote through to the host"
        );
        assert_eq!(fs::read_to_string(&written).expect("read"), PEM);
    }

    #[test]
    fn relative_climbing_symlink_stays_inside() {
        let (dir, root, ca) = setup();
        fs::create_dir(root.join("etc")).expect("mkdir");
        symlink("../../../../../../../..", root.join("etc/cray")).expect("symlink");
        let written = inject_ca_cert(&root, &ca).expect("inject");
        assert_eq!(written, root.join("ca/certificate_authority.crt"));
        assert!(!dir.path().join("ca").exists());
    }

    #[test]
    fn existing_target_symlink_is_resolved_inside_and_a_hardlink_is_not_modified() {
        let (dir, root, ca) = setup();
        fs::create_dir_all(root.join("etc/cray/ca")).expect("mkdir");
        let host_file = dir.path().join("host-secret");
        fs::write(&host_file, b"keep").expect("write");
        symlink(
            &host_file,
            root.join("etc/cray/ca/certificate_authority.crt"),
        )
        .expect("symlink");
        let written = inject_ca_cert(&root, &ca).expect("inject");
        assert!(written.starts_with(&root));
        assert_eq!(fs::read(&host_file).expect("read"), b"keep");

        // A hardlinked certificate: the other name keeps its content.
        let (_dir2, root2, ca2) = setup();
        fs::create_dir_all(root2.join("etc/cray/ca")).expect("mkdir");
        fs::write(root2.join("shared"), b"other").expect("write");
        fs::hard_link(
            root2.join("shared"),
            root2.join("etc/cray/ca/certificate_authority.crt"),
        )
        .expect("link");
        inject_ca_cert(&root2, &ca2).expect("inject");
        assert_eq!(fs::read(root2.join("shared")).expect("read"), b"other");
    }

    #[test]
    fn not_pem_is_an_error_naming_the_file() {
        let (dir, root, _) = setup();
        let bad = dir.path().join("not-a-cert.txt");
        fs::write(&bad, b"hello").expect("write");
        let err = inject_ca_cert(&root, &bad)
            .expect_err("not pem")
            .to_string();
        assert!(
            err.contains("not-a-cert.txt") && err.contains("PEM"),
            "{err}"
        );
        assert!(!root.join("etc").exists());
        let err = inject_ca_cert(&root, &dir.path().join("missing.crt"))
            .expect_err("missing")
            .to_string();
        assert!(err.contains("missing.crt"), "{err}");
    }

    #[test]
    fn a_file_where_a_directory_should_be_is_an_error() {
        let (_dir, root, ca) = setup();
        fs::create_dir(root.join("etc")).expect("mkdir");
        fs::write(root.join("etc/cray"), b"file").expect("write");
        let err = inject_ca_cert(&root, &ca)
            .expect_err("file in the way")
            .to_string();
        assert!(err.contains("etc/cray"), "{err}");
    }

    #[test]
    fn source_precedence() {
        let config = StoreConfig {
            ca_cert: Some(PathBuf::from("/store/ca.crt")),
        };
        let cli = Path::new("/cli.crt");
        assert_eq!(
            ca_cert_source(Some(cli), Some("/env.crt".into()), &config),
            Some(cli.to_path_buf())
        );
        assert_eq!(
            ca_cert_source(None, Some("/env.crt".into()), &config),
            Some(PathBuf::from("/env.crt"))
        );
        assert_eq!(
            ca_cert_source(None, Some("".into()), &config),
            Some(PathBuf::from("/store/ca.crt"))
        );
        assert_eq!(ca_cert_source(None, None, &StoreConfig::default()), None);
    }
}
