//! Which kernel and initrd to publish from an image root.
//!
//! IMS takes the names under /boot from the job (`vmlinuz`/`initrd`, `Image` on aarch64). imsctl
//! does the same when they are given or when the default names exist; otherwise it looks for the
//! kernels the distribution installed (`vmlinuz-*`, `Image*`) and the initrd built for the same
//! version (`initrd.img-<v>`, `initramfs-<v>.img`, `initrd-<v>`), and says which it chose.
//! Rescue kernels (`*-rescue-*`, RHEL's) and `.hmac`/`.old` files are never candidates.
//! Every name is resolved inside the image root (symlinks are the image's, see `rootpath`).

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::rootpath::resolve_in_root;
use crate::store::{Arch, Error, Result};

/// IMS's default initrd file name.
pub const DEFAULT_INITRD_FILE_NAME: &str = "initrd";

/// How a boot file was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Named by the user (`--kernel-file-name`, `--initrd-file-name`).
    Given,
    /// IMS's default name exists in the image.
    Default,
    /// Found among the image's kernels / the initrds for the chosen kernel's version.
    Detected,
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Choice::Given => "given",
            Choice::Default => "default name",
            Choice::Detected => "detected",
        })
    }
}

/// The kernel and initrd of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootFiles {
    /// Host path of the kernel, resolved inside the root (no symlink left to follow).
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The names under /boot as chosen (what goes in the job record's `kernel_file_name`).
    pub kernel_file_name: String,
    pub initrd_file_name: String,
    pub kernel_choice: Choice,
    pub initrd_choice: Choice,
    /// The kernel's version (`6.1.0-18-amd64`), from its (resolved) file name, else from the
    /// image's only /lib/modules directory; what `--regenerate-initrd` needs.
    pub kernel_version: Option<String>,
}

impl fmt::Display for BootFiles {
    /// One line for the step log, e.g. `kernel /boot/vmlinuz-6.1.0 (detected), initrd
    /// /boot/initrd.img-6.1.0 (detected), version 6.1.0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kernel /boot/{} ({}), initrd /boot/{} ({})",
            self.kernel_file_name, self.kernel_choice, self.initrd_file_name, self.initrd_choice
        )?;
        if let Some(version) = &self.kernel_version {
            write!(f, ", version {version}")?;
        }
        Ok(())
    }
}

/// A file found under /boot: its name there and where it really is.
#[derive(Clone, Debug)]
struct Found {
    name: String,
    path: PathBuf,
}

/// Choose the kernel and initrd of the image at `root` (see the module comment for the rules).
pub fn find_boot_files(
    root: &Path,
    arch: Arch,
    kernel_file_name: Option<&str>,
    initrd_file_name: Option<&str>,
) -> Result<BootFiles> {
    let (kernel, kernel_choice) = match kernel_file_name {
        Some(name) => (require(root, name, "kernel")?, Choice::Given),
        None => match existing(root, arch.default_kernel_file_name())? {
            Some(found) => (found, Choice::Default),
            None => (detect_kernel(root)?, Choice::Detected),
        },
    };
    let kernel_version = match version_from_name(&file_name_of(&kernel.path)) {
        Some(version) => Some(version),
        None => only_module_version(root)?,
    };
    let (initrd, initrd_choice) = match initrd_file_name {
        Some(name) => (require(root, name, "initrd")?, Choice::Given),
        None => match existing(root, DEFAULT_INITRD_FILE_NAME)? {
            Some(found) => (found, Choice::Default),
            None => (
                detect_initrd(root, kernel_version.as_deref(), &kernel.name)?,
                Choice::Detected,
            ),
        },
    };
    Ok(BootFiles {
        kernel: kernel.path,
        initrd: initrd.path,
        kernel_file_name: kernel.name,
        initrd_file_name: initrd.name,
        kernel_choice,
        initrd_choice,
        kernel_version,
    })
}

/// Check a boot file name a user gave: a path below /boot (`vmlinuz`, `efi/Image`), never one
/// that leaves it (`..`) or starts elsewhere (`/etc/passwd`).
pub fn check_boot_file_name(name: &str, what: &str) -> Result<()> {
    let path = Path::new(name);
    let below_boot = !name.is_empty()
        && !name.contains('\0')
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if below_boot {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "{what} file name {name:?} must name a file below /boot (no '..', not absolute, not empty)"
    )))
}

/// A name the user gave: it must exist (as a regular file, after the image's symlinks).
fn require(root: &Path, name: &str, what: &str) -> Result<Found> {
    check_boot_file_name(name, what)?;
    existing(root, name)?.ok_or_else(|| {
        Error::Invalid(format!(
            "{what} /boot/{name} not found in the image at {} (missing, dangling or not a regular file)",
            root.display()
        ))
    })
}

/// `/boot/<name>` resolved inside the root, when it is a regular file.
fn existing(root: &Path, name: &str) -> Result<Option<Found>> {
    let inside = Path::new("/boot").join(name);
    let path = match resolve_in_root(root, &inside) {
        Ok(path) => path,
        Err(Error::Io { cause, .. }) if is_missing(&cause) => return Ok(None),
        Err(e) => return Err(e),
    };
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_file() => Ok(Some(Found {
            name: name.to_string(),
            path,
        })),
        Ok(_) => Ok(None),
        Err(e) if is_missing(&e) => Ok(None),
        Err(e) => Err(Error::io("look up", path, e)),
    }
}

fn is_missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

/// Names under /boot (as in the image); none when /boot is missing.
fn boot_names(root: &Path) -> Result<Vec<String>> {
    let boot = resolve_in_root(root, Path::new("/boot"))?;
    let entries = match fs::read_dir(&boot) {
        Ok(entries) => entries,
        Err(e) if is_missing(&e) => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read directory", boot, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read directory", &boot, e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

fn is_excluded(name: &str) -> bool {
    name.contains("-rescue-")
        || name.ends_with(".hmac")
        || name.ends_with(".old")
        || name.starts_with('.')
}

fn is_kernel_name(name: &str) -> bool {
    !is_excluded(name) && (name.starts_with("vmlinuz-") || name.starts_with("Image"))
}

fn is_initrd_name(name: &str) -> bool {
    !is_excluded(name)
        && !name.contains("kdump")
        && (name.starts_with("initrd.img-")
            || (name.starts_with("initramfs-") && name.ends_with(".img"))
            || name.starts_with("initrd-"))
}

/// Candidates among `names` that exist as regular files, one per real file: a symlink and its
/// target count once, under the target's own name.
fn candidates(root: &Path, names: impl Iterator<Item = String>) -> Result<Vec<Found>> {
    let mut found: Vec<Found> = Vec::new();
    for name in names {
        let Some(candidate) = existing(root, &name)? else {
            continue;
        };
        match found.iter_mut().find(|f| f.path == candidate.path) {
            Some(seen) => {
                if file_name_of(&candidate.path) == candidate.name {
                    *seen = candidate;
                }
            }
            None => found.push(candidate),
        }
    }
    Ok(found)
}

fn detect_kernel(root: &Path) -> Result<Found> {
    let names = boot_names(root)?;
    let mut kernels = candidates(root, names.into_iter().filter(|n| is_kernel_name(n)))?;
    match kernels.len() {
        0 => Err(Error::Invalid(format!(
            "no kernel found in {}/boot (looked for vmlinuz, Image, vmlinuz-*, Image*); \
             name it with --kernel-file-name",
            root.display()
        ))),
        1 => Ok(kernels.remove(0)),
        _ => Err(Error::Invalid(format!(
            "several kernels in {}/boot: {}; choose one with --kernel-file-name",
            root.display(),
            list(&kernels)
        ))),
    }
}

fn detect_initrd(root: &Path, version: Option<&str>, kernel_name: &str) -> Result<Found> {
    let names = boot_names(root)?;
    let all = candidates(root, names.into_iter().filter(|n| is_initrd_name(n)))?;
    let mut matching: Vec<Found> = match version {
        Some(v) => all
            .iter()
            .filter(|f| version_from_name(&f.name).as_deref() == Some(v))
            .cloned()
            .collect(),
        None => all.clone(),
    };
    let for_kernel = match version {
        Some(v) => format!("kernel version {v}"),
        None => format!("kernel {kernel_name}"),
    };
    if matching.len() == 1
        && let Some(found) = matching.pop()
    {
        return Ok(found);
    }
    match matching.len() {
        0 if all.is_empty() => Err(Error::Invalid(format!(
            "no initrd found in {}/boot for {for_kernel} (looked for initrd, initrd.img-*, \
             initramfs-*.img, initrd-*); name it with --initrd-file-name",
            root.display()
        ))),
        0 => Err(Error::Invalid(format!(
            "no initrd in {}/boot matches {for_kernel}; found {}; name it with --initrd-file-name",
            root.display(),
            list(&all)
        ))),
        _ => Err(Error::Invalid(format!(
            "several initrds in {}/boot for {for_kernel}: {}; choose one with --initrd-file-name",
            root.display(),
            list(&matching)
        ))),
    }
}

fn list(found: &[Found]) -> String {
    found
        .iter()
        .map(|f| format!("/boot/{}", f.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn file_name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The version in a kernel or initrd file name: `vmlinuz-6.1.0-18-amd64` → `6.1.0-18-amd64`,
/// `initramfs-5.14.0-362.el9.x86_64.img` → `5.14.0-362.el9.x86_64`.
pub fn version_from_name(name: &str) -> Option<String> {
    let version = if let Some(rest) = name.strip_prefix("initramfs-") {
        rest.strip_suffix(".img").unwrap_or(rest)
    } else {
        ["vmlinuz-", "Image-", "initrd.img-", "initrd-"]
            .iter()
            .find_map(|p| name.strip_prefix(p))?
    };
    // SUSE and others: initrd-<v>.img is not a thing, but be lenient about a .img suffix.
    let version = version.strip_suffix(".img").unwrap_or(version);
    (!version.is_empty()).then(|| version.to_string())
}

/// The version of the image's only kernel module tree, when there is exactly one.
fn only_module_version(root: &Path) -> Result<Option<String>> {
    let mut versions = Vec::new();
    for dir in ["/lib/modules", "/usr/lib/modules"] {
        let path = resolve_in_root(root, Path::new(dir))?;
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if is_missing(&e) => continue,
            Err(e) => return Err(Error::io("read directory", path, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read directory", &path, e))?;
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if let (true, Some(name)) = (is_dir, entry.file_name().to_str()) {
                versions.push(name.to_string());
            }
        }
    }
    versions.sort();
    versions.dedup();
    Ok(if versions.len() == 1 {
        versions.pop()
    } else {
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn image() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("boot")).expect("mkdir");
        (dir, root)
    }

    fn file(root: &Path, rel: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, rel.as_bytes()).expect("write");
    }

    #[test]
    fn boot_file_names_stay_below_boot() {
        for good in ["vmlinuz", "efi/Image", "vmlinuz-6.1.0-13-amd64"] {
            assert!(check_boot_file_name(good, "kernel").is_ok(), "{good}");
        }
        for bad in ["../../../etc/passwd", "/etc/passwd", "", "a/../../x", "."] {
            let err = check_boot_file_name(bad, "kernel")
                .expect_err(bad)
                .to_string();
            assert!(err.contains("below /boot"), "{bad}: {err}");
        }
        // And find_boot_files refuses such a name even when the image has the file.
        let (_dir, root) = image();
        file(&root, "etc/passwd");
        file(&root, "boot/initrd");
        let err = find_boot_files(&root, Arch::X86_64, Some("../etc/passwd"), None)
            .expect_err("outside /boot");
        assert!(err.to_string().contains("below /boot"), "{err}");
    }

    #[test]
    fn defaults_are_used_when_present_and_symlinks_resolve_inside() {
        let (dir, root) = image();
        file(&root, "boot/vmlinuz-6.1.0-18-amd64");
        file(&root, "boot/initrd.img-6.1.0-18-amd64");
        // Absolute targets: inside the image, /boot/... means <root>/boot/...
        symlink("/boot/vmlinuz-6.1.0-18-amd64", root.join("boot/vmlinuz")).expect("symlink");
        symlink("initrd.img-6.1.0-18-amd64", root.join("boot/initrd")).expect("symlink");
        // A decoy on the "host" at the same absolute path must not be what we get.
        let boot = find_boot_files(&root, Arch::X86_64, None, None).expect("find");
        assert_eq!(boot.kernel, root.join("boot/vmlinuz-6.1.0-18-amd64"));
        assert_eq!(boot.initrd, root.join("boot/initrd.img-6.1.0-18-amd64"));
        assert_eq!(boot.kernel_file_name, "vmlinuz");
        assert_eq!(boot.kernel_choice, Choice::Default);
        assert_eq!(boot.kernel_version.as_deref(), Some("6.1.0-18-amd64"));
        assert!(boot.kernel.starts_with(dir.path()));
    }

    #[test]
    fn detects_a_single_kernel_and_its_initrd_by_version() {
        let (_dir, root) = image();
        file(&root, "boot/vmlinuz-5.14.0-362.el9.x86_64");
        file(&root, "boot/initramfs-5.14.0-362.el9.x86_64.img");
        file(&root, "boot/initramfs-5.14.0-362.el9.x86_64kdump.img");
        file(&root, "boot/vmlinuz-0-rescue-abcdef");
        file(&root, "boot/initramfs-0-rescue-abcdef.img");
        file(&root, "boot/.vmlinuz-5.14.0-362.el9.x86_64.hmac");
        let boot = find_boot_files(&root, Arch::X86_64, None, None).expect("find");
        assert_eq!(boot.kernel_file_name, "vmlinuz-5.14.0-362.el9.x86_64");
        assert_eq!(boot.initrd_file_name, "initramfs-5.14.0-362.el9.x86_64.img");
        assert_eq!(
            (boot.kernel_choice, boot.initrd_choice),
            (Choice::Detected, Choice::Detected)
        );
        assert_eq!(
            boot.kernel_version.as_deref(),
            Some("5.14.0-362.el9.x86_64")
        );
        let said = boot.to_string();
        assert!(
            said.contains("kernel /boot/vmlinuz-5.14.0-362.el9.x86_64 (detected)"),
            "{said}"
        );
    }

    #[test]
    fn two_kernels_are_ambiguous_and_listed() {
        let (_dir, root) = image();
        file(&root, "boot/vmlinuz-6.1.0-17-amd64");
        file(&root, "boot/vmlinuz-6.1.0-18-amd64");
        file(&root, "boot/initrd.img-6.1.0-17-amd64");
        file(&root, "boot/initrd.img-6.1.0-18-amd64");
        let err = find_boot_files(&root, Arch::X86_64, None, None)
            .expect_err("ambiguous")
            .to_string();
        assert!(
            err.contains("/boot/vmlinuz-6.1.0-17-amd64")
                && err.contains("/boot/vmlinuz-6.1.0-18-amd64"),
            "{err}"
        );
        // Naming one settles it, and its initrd follows by version.
        let boot = find_boot_files(&root, Arch::X86_64, Some("vmlinuz-6.1.0-17-amd64"), None)
            .expect("given");
        assert_eq!(boot.initrd_file_name, "initrd.img-6.1.0-17-amd64");
        assert_eq!(
            (boot.kernel_choice, boot.initrd_choice),
            (Choice::Given, Choice::Detected)
        );
    }

    #[test]
    fn a_link_and_its_target_are_one_candidate() {
        let (_dir, root) = image();
        file(&root, "boot/vmlinuz-6.1.0-18-amd64");
        symlink("vmlinuz-6.1.0-18-amd64", root.join("boot/vmlinuz-current")).expect("symlink");
        file(&root, "boot/initrd.img-6.1.0-18-amd64");
        let boot = find_boot_files(&root, Arch::X86_64, None, None).expect("find");
        assert_eq!(boot.kernel_file_name, "vmlinuz-6.1.0-18-amd64");
    }

    #[test]
    fn aarch64_defaults_to_image() {
        let (_dir, root) = image();
        file(&root, "boot/Image-5.14.21-150500.55.19-default");
        symlink(
            "Image-5.14.21-150500.55.19-default",
            root.join("boot/Image"),
        )
        .expect("symlink");
        file(&root, "boot/initrd-5.14.21-150500.55.19-default");
        symlink(
            "initrd-5.14.21-150500.55.19-default",
            root.join("boot/initrd"),
        )
        .expect("symlink");
        let boot = find_boot_files(&root, Arch::Aarch64, None, None).expect("find");
        assert_eq!(boot.kernel_file_name, "Image");
        assert_eq!(
            boot.kernel_version.as_deref(),
            Some("5.14.21-150500.55.19-default")
        );
        assert_eq!(
            boot.initrd,
            root.join("boot/initrd-5.14.21-150500.55.19-default")
        );
    }

    #[test]
    fn given_names_must_exist_and_the_error_names_them() {
        let (_dir, root) = image();
        file(&root, "boot/vmlinuz");
        file(&root, "boot/initrd");
        let err = find_boot_files(&root, Arch::X86_64, Some("bzImage"), None)
            .expect_err("missing")
            .to_string();
        assert!(err.contains("/boot/bzImage"), "{err}");
        let err = find_boot_files(&root, Arch::X86_64, None, Some("initrd.gz"))
            .expect_err("missing")
            .to_string();
        assert!(err.contains("/boot/initrd.gz"), "{err}");
    }

    #[test]
    fn no_kernel_is_a_clear_error() {
        let (_dir, root) = image();
        file(&root, "boot/config-6.1.0");
        let err = find_boot_files(&root, Arch::X86_64, None, None)
            .expect_err("none")
            .to_string();
        assert!(
            err.starts_with("no kernel found in") && err.contains("--kernel-file-name"),
            "{err}"
        );
        // No /boot at all: the same error, not an I/O failure.
        fs::remove_dir_all(root.join("boot")).expect("rm");
        let err = find_boot_files(&root, Arch::X86_64, None, None)
            .expect_err("none")
            .to_string();
        assert!(err.starts_with("no kernel found in"), "{err}");
    }

    #[test]
    fn plain_default_kernel_takes_its_version_from_lib_modules() {
        let (_dir, root) = image();
        file(&root, "boot/vmlinuz");
        file(&root, "boot/initrd");
        fs::create_dir_all(root.join("lib/modules/6.6.7-custom")).expect("mkdir");
        let boot = find_boot_files(&root, Arch::X86_64, None, None).expect("find");
        assert_eq!(boot.kernel_version.as_deref(), Some("6.6.7-custom"));
    }

    #[test]
    fn dangling_or_escaping_default_link_is_not_followed_to_the_host() {
        let (dir, root) = image();
        // A host file at the path the link names; inside the image that path does not exist.
        let host_kernel = dir.path().join("hostkernel");
        fs::write(&host_kernel, b"host").expect("write");
        symlink(&host_kernel, root.join("boot/vmlinuz")).expect("symlink");
        symlink(
            "../../../../../../../../../../../..".to_string() + &host_kernel.display().to_string(),
            root.join("boot/initrd"),
        )
        .expect("symlink");
        file(&root, "boot/vmlinuz-6.1.0");
        file(&root, "boot/initrd.img-6.1.0");
        let boot = find_boot_files(&root, Arch::X86_64, None, None).expect("find");
        assert_eq!(boot.kernel, root.join("boot/vmlinuz-6.1.0"));
        assert_eq!(boot.initrd, root.join("boot/initrd.img-6.1.0"));
        assert_eq!(boot.kernel_choice, Choice::Detected);
    }

    #[test]
    fn initrd_for_another_version_only_is_an_error_listing_it() {
        let (_dir, root) = image();
        file(&root, "boot/vmlinuz-6.1.0-18-amd64");
        file(&root, "boot/initrd.img-6.1.0-17-amd64");
        let err = find_boot_files(&root, Arch::X86_64, None, None)
            .expect_err("mismatch")
            .to_string();
        assert!(
            err.contains("6.1.0-18-amd64") && err.contains("/boot/initrd.img-6.1.0-17-amd64"),
            "{err}"
        );
    }

    #[test]
    fn versions_from_names() {
        assert_eq!(
            version_from_name("vmlinuz-6.1.0-18-amd64").as_deref(),
            Some("6.1.0-18-amd64")
        );
        assert_eq!(
            version_from_name("initrd.img-6.1.0").as_deref(),
            Some("6.1.0")
        );
        assert_eq!(
            version_from_name("initramfs-5.14.0.el9.img").as_deref(),
            Some("5.14.0.el9")
        );
        assert_eq!(
            version_from_name("initrd-5.14.21-default").as_deref(),
            Some("5.14.21-default")
        );
        assert_eq!(version_from_name("Image-5.14").as_deref(), Some("5.14"));
        assert_eq!(version_from_name("vmlinuz"), None);
        assert_eq!(version_from_name("Image"), None);
    }
}
