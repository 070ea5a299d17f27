//! The sandbox's mount plan: pure data computed from the configuration, executed step by step
//! by [`super::exec`] inside the new mount namespace. Keeping it pure makes the layout testable
//! without root and printable with `-v`.
//!
//! What a process inside sees:
//! - jailed: the image root as `/` (nodev: device nodes may be created but never opened), fresh
//!   /proc with the kernel's knobs read-only and Docker's masked paths hidden, a minimal /dev,
//!   /sys read-only, /run a tmpfs, the host's resolver configuration as /etc/resolv.conf;
//! - not jailed (the IMS default): a *tool view* — the host's /usr, /bin, /sbin, /lib* read-only
//!   and nosuid, an /etc with only what tools need ([`etc_entry_shown`]: no shadow, sudoers,
//!   SSH host keys or private keys), tmpfs /root, /home, /tmp, /var/tmp, /run, the same kernel
//!   filesystems, the job's signal dir at /mnt/image and the image at /mnt/image/image-root.
//!   Nothing else of the host: not its store, other jobs, home directories or credentials.

use std::fmt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use super::{Network, SandboxConfig};
use crate::root::{ImageSource, LowerVia};

/// Device nodes bind-mounted from the host into the sandbox's minimal /dev.
pub const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// Files under /proc that would reach the host kernel: made read-only.
const PROC_READONLY: [&str; 4] = ["sys", "sysrq-trigger", "irq", "bus"];
/// What Docker and Podman hide from a container (moby `oci/defaults.go` maskedPaths): kernel
/// memory, key lists, timers and hardware the image has no business with.
const MASKED: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// The host's directories the non-jailed view shows (read-only): the tools and their libraries.
pub const TOOL_DIRS: [&str; 7] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];
/// Where the non-jailed view shows the signal dir and the image (the IMS layout).
pub const IMS_SIGNAL_DIR: &str = "/mnt/image";
pub const IMS_IMAGE_ROOT: &str = "/mnt/image/image-root";
pub const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// Restrictions of a mount, as `mount_setattr(2)`'s MOUNT_ATTR_* bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Restrict(u64);

impl Restrict {
    pub const NONE: Restrict = Restrict(0);
    pub const RDONLY: Restrict = Restrict(0x1);
    pub const NOSUID: Restrict = Restrict(0x2);
    pub const NODEV: Restrict = Restrict(0x4);
    pub const NOEXEC: Restrict = Restrict(0x8);

    pub const fn and(self, other: Restrict) -> Restrict {
        Restrict(self.0 | other.0)
    }
    pub fn bits(self) -> u64 {
        self.0
    }
    pub fn contains(self, other: Restrict) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The same restrictions as `mount(2)` flags (for kernels without mount_setattr).
    pub fn ms_flags(self) -> MsFlags {
        [
            (Restrict::RDONLY, MsFlags::MS_RDONLY),
            (Restrict::NOSUID, MsFlags::MS_NOSUID),
            (Restrict::NODEV, MsFlags::MS_NODEV),
            (Restrict::NOEXEC, MsFlags::MS_NOEXEC),
        ]
        .into_iter()
        .filter(|(r, _)| self.contains(*r))
        .fold(MsFlags::empty(), |all, (_, f)| all | f)
    }
}

/// Read-only, nosuid, nodev: how host files are shown.
const HOST_RO: Restrict = Restrict::RDONLY.and(Restrict::NOSUID).and(Restrict::NODEV);

impl fmt::Display for Restrict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (Restrict::RDONLY, "ro"),
            (Restrict::NOSUID, "nosuid"),
            (Restrict::NODEV, "nodev"),
            (Restrict::NOEXEC, "noexec"),
        ]
        .into_iter()
        .filter(|(r, _)| self.contains(*r))
        .map(|(_, n)| n)
        .collect();
        f.write_str(&names.join(","))
    }
}

/// One step of the plan. Paths are as seen before the pivot, in the new mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountStep {
    /// Stop mount events propagating back to the host (`mount --make-rprivate /`).
    MakePrivate,
    /// Ensure a directory exists (mode 0755 when created) in a filesystem of the sandbox's own.
    Mkdir {
        path: PathBuf,
    },
    /// Ensure a mount point exists in the image. One the image lacks is made, after its
    /// image path `name` is appended to `record`: made for the session, it is removed again
    /// before packing ([`crate::root::remove_made_mount_points`]).
    ImageMountPoint {
        path: PathBuf,
        name: String,
        record: PathBuf,
    },
    /// Ensure a regular file exists, as a bind target.
    Touch {
        path: PathBuf,
    },
    Symlink {
        target: PathBuf,
        link: PathBuf,
    },
    /// Mount a filesystem by type (proc, tmpfs, devpts, sysfs).
    Mount {
        fstype: &'static str,
        target: PathBuf,
        flags: MsFlags,
        data: Option<String>,
    },
    /// Bind `source` on `target` with `restrict` (applied to the whole tree when `recursive`).
    /// `optional` steps are skipped when the source does not exist.
    Bind {
        source: PathBuf,
        target: PathBuf,
        recursive: bool,
        restrict: Restrict,
        optional: bool,
    },
    /// Add restrictions to the mount at `target` (e.g. read-only once it is populated).
    Restrict {
        target: PathBuf,
        recursive: bool,
        restrict: Restrict,
    },
    /// Show the host's `source` at `target`, read-only, nosuid and nodev: a symlink as the same
    /// symlink, a directory bound with what is mounted below it, a file bound; nothing when the
    /// host has none.
    HostEntry {
        source: PathBuf,
        target: PathBuf,
    },
    /// The host's /etc entries that [`etc_entry_shown`] lets through, as [`MountStep::HostEntry`]s
    /// in `target` (a directory of the sandbox's own).
    FilteredEtc {
        source: PathBuf,
        target: PathBuf,
    },
    /// Hide a file or directory (an empty read-only tmpfs on a directory, /dev/null on a file).
    Mask {
        path: PathBuf,
    },
    /// Mount the base SquashFS read-only.
    Lower {
        image: PathBuf,
        target: PathBuf,
        via: LowerVia,
    },
    /// The image root: an overlay, mounted nodev.
    Overlay {
        lower: PathBuf,
        upper: PathBuf,
        work: PathBuf,
        target: PathBuf,
        userxattr: bool,
    },
    /// Move the image's resolv.conf aside (see [`crate::root::ResolvConfGuard`]) and put a copy
    /// of the host's in its place; skipped when the host has none. `inside_etc` is where the
    /// image's etc is after the pivot, for the restore at the end.
    SwapResolvConf {
        etc: PathBuf,
        host: PathBuf,
        state: PathBuf,
        inside_etc: PathBuf,
    },
    /// pivot_root into `new_root` and detach the old root.
    PivotRoot {
        new_root: PathBuf,
    },
}

impl MountStep {
    /// Whether the sandbox's holder executes this step, before it makes the pid namespace: the
    /// plan's first steps up to the base image's mount (squashfuse then runs where nothing
    /// inside can see it).
    pub fn runs_in_holder(&self) -> bool {
        matches!(self, MountStep::MakePrivate | MountStep::Lower { .. })
    }
}

impl fmt::Display for MountStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use MountStep::*;
        match self {
            MakePrivate => write!(f, "make / rprivate"),
            Mkdir { path } => write!(f, "mkdir {}", path.display()),
            ImageMountPoint { path, .. } => write!(f, "mount point {}", path.display()),
            Touch { path } => write!(f, "touch {}", path.display()),
            Symlink { target, link } => {
                write!(f, "symlink {} -> {}", link.display(), target.display())
            }
            Mount {
                fstype,
                target,
                data,
                ..
            } => write!(
                f,
                "mount {fstype} on {} ({})",
                target.display(),
                data.as_deref().unwrap_or("")
            ),
            Bind {
                source,
                target,
                recursive,
                restrict,
                ..
            } => {
                write!(
                    f,
                    "{}bind {} on {}",
                    if *recursive { "r" } else { "" },
                    source.display(),
                    target.display(),
                )?;
                if !restrict.is_empty() {
                    write!(f, " ({restrict})")?;
                }
                Ok(())
            }
            Restrict {
                target, restrict, ..
            } => write!(f, "restrict {} ({restrict})", target.display()),
            HostEntry { source, target } => {
                write!(
                    f,
                    "show host {} at {} ({HOST_RO})",
                    source.display(),
                    target.display()
                )
            }
            FilteredEtc { source, target } => write!(
                f,
                "show host {} at {}, filtered ({HOST_RO})",
                source.display(),
                target.display()
            ),
            Mask { path } => write!(f, "mask {}", path.display()),
            Lower { image, target, via } => write!(
                f,
                "mount {} on {} via {via:?} (ro)",
                image.display(),
                target.display()
            ),
            Overlay {
                lower,
                upper,
                target,
                ..
            } => write!(
                f,
                "mount overlay on {} (lower {}, upper {}, nodev)",
                target.display(),
                lower.display(),
                upper.display()
            ),
            SwapResolvConf { etc, host, .. } => write!(
                f,
                "swap {}/resolv.conf for a copy of {}",
                etc.display(),
                host.display()
            ),
            PivotRoot { new_root } => write!(f, "pivot_root {}", new_root.display()),
        }
    }
}

/// The whole plan for `cfg`: image root, resolv.conf, kernel filesystems, then (not jailed) the
/// tool view with the image at /mnt/image/image-root, then the pivot.
pub fn plan(cfg: &SandboxConfig) -> Vec<MountStep> {
    let layout = &cfg.layout;
    let root = layout.root();
    let mut steps = vec![MountStep::MakePrivate];
    steps.extend(image_root_steps(cfg));
    let inside_etc = if cfg.jailed {
        PathBuf::from("/etc")
    } else {
        Path::new(IMS_IMAGE_ROOT).join("etc")
    };
    steps.push(MountStep::SwapResolvConf {
        etc: root.join("etc"),
        host: HOST_RESOLV_CONF.into(),
        state: layout.resolv_state(),
        inside_etc,
    });
    steps.extend(system_mounts(&root, cfg));
    let new_root = if cfg.jailed {
        root
    } else {
        steps.extend(tool_view_steps(cfg));
        layout.host_view()
    };
    steps.push(MountStep::PivotRoot { new_root });
    steps
}

/// Only the image root, pivoted into: what [`super::hold_root`] shows the host through
/// `/proc/<holder>/root` (no /proc, /dev, resolv.conf on top, so a walk sees the image alone).
pub fn plan_image_only(cfg: &SandboxConfig) -> Vec<MountStep> {
    let mut steps = vec![MountStep::MakePrivate];
    steps.extend(image_root_steps(cfg));
    steps.push(MountStep::PivotRoot {
        new_root: cfg.layout.root(),
    });
    steps
}

fn image_root_steps(cfg: &SandboxConfig) -> Vec<MountStep> {
    let layout = &cfg.layout;
    let overlay = |lower: PathBuf| MountStep::Overlay {
        lower,
        upper: layout.upper(),
        work: layout.overlay_work(),
        target: layout.root(),
        userxattr: cfg.ids.unprivileged_mounts(),
    };
    match &cfg.source {
        ImageSource::Mount { base, via } => vec![
            MountStep::Lower {
                image: base.clone(),
                target: layout.lower(),
                via: *via,
            },
            overlay(layout.lower()),
        ],
        ImageSource::OverlayDir { lower } => vec![overlay(lower.clone())],
        // pivot_root wants a mount point; a bind of the tree on itself makes one.
        ImageSource::Extracted => vec![bind(layout.root(), layout.root(), false, Restrict::NODEV)],
    }
}

/// Fresh /proc, minimal /dev, read-only /sys and a /run tmpfs under the image `root`.
fn system_mounts(root: &Path, cfg: &SandboxConfig) -> Vec<MountStep> {
    let mount_point = |name: &str| MountStep::ImageMountPoint {
        path: root.join(name),
        name: name.to_string(),
        record: cfg.layout.made_mount_points(),
    };
    let mut steps = vec![mount_point("proc")];
    steps.extend(proc_steps(root));
    steps.push(mount_point("dev"));
    steps.extend(dev_steps(root, cfg));
    steps.push(mount_point("sys"));
    steps.push(sys_step(root, cfg));
    steps.push(mount_point("run"));
    steps.push(tmpfs(
        root.join("run"),
        "mode=755",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    ));
    steps.extend(mask_steps(root));
    steps
}

/// Proc mounted on `<root>/proc` (the mount point must exist), its knobs read-only.
fn proc_steps(root: &Path) -> Vec<MountStep> {
    let proc_dir = root.join("proc");
    let mut steps = vec![MountStep::Mount {
        fstype: "proc",
        target: proc_dir.clone(),
        flags: nosuid_nodev_noexec(),
        data: None,
    }];
    for name in PROC_READONLY {
        let path = proc_dir.join(name);
        steps.push(MountStep::Bind {
            source: path.clone(),
            target: path,
            recursive: true,
            restrict: Restrict::RDONLY,
            optional: true,
        });
    }
    steps
}

fn mask_steps(root: &Path) -> Vec<MountStep> {
    MASKED
        .iter()
        .map(|p| MountStep::Mask {
            path: root.join(p.trim_start_matches('/')),
        })
        .collect()
}

/// A tmpfs /dev (nodev: nodes made there cannot be opened) with the host's harmless devices
/// bound in (a bind keeps its own mount's flags), a private devpts and /dev/shm.
fn dev_steps(root: &Path, cfg: &SandboxConfig) -> Vec<MountStep> {
    let dev = root.join("dev");
    let mut steps = vec![tmpfs(
        dev.clone(),
        "mode=755",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
    )];
    for name in DEVICES {
        steps.push(MountStep::Touch {
            path: dev.join(name),
        });
        steps.push(bind(
            Path::new("/dev").join(name),
            dev.join(name),
            false,
            Restrict::NONE,
        ));
    }
    // gid=5 (tty) only exists inside when more than the caller's own id is mapped.
    let pts_data = if cfg.ids.maps_many_ids() {
        "newinstance,ptmxmode=0666,mode=620,gid=5"
    } else {
        "newinstance,ptmxmode=0666,mode=620"
    };
    steps.extend([
        MountStep::Mkdir {
            path: dev.join("pts"),
        },
        MountStep::Mount {
            fstype: "devpts",
            target: dev.join("pts"),
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: Some(pts_data.into()),
        },
        MountStep::Symlink {
            target: "pts/ptmx".into(),
            link: dev.join("ptmx"),
        },
        MountStep::Mkdir {
            path: dev.join("shm"),
        },
        tmpfs(dev.join("shm"), "mode=1777", nosuid_nodev_noexec()),
    ]);
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        steps.push(MountStep::Symlink {
            target: target.into(),
            link: dev.join(link),
        });
    }
    steps
}

/// sysfs shows the network namespace of its mounter: with a private network a fresh (read-only)
/// sysfs shows only lo; with the host's network the host's /sys is bound read-only (a fresh
/// one is not permitted in a user namespace that does not own the network namespace).
fn sys_step(root: &Path, cfg: &SandboxConfig) -> MountStep {
    let target = root.join("sys");
    match cfg.network {
        Network::None => MountStep::Mount {
            fstype: "sysfs",
            target,
            flags: nosuid_nodev_noexec() | MsFlags::MS_RDONLY,
            data: None,
        },
        Network::Host => bind("/sys", target, true, HOST_RO.and(Restrict::NOEXEC)),
    }
}

/// The non-jailed view (IMS default), built in a tmpfs of its own on `<work>/hostview`: the
/// host's tools read-only, a filtered /etc, private writable dirs, the job's signal dir and the
/// image under /mnt/image, the kernel filesystems; then the tmpfs itself is made read-only.
fn tool_view_steps(cfg: &SandboxConfig) -> Vec<MountStep> {
    let layout = &cfg.layout;
    let view = layout.host_view();
    let under = |p: &str| view.join(p.trim_start_matches('/'));
    let mut steps = vec![tmpfs(
        view.clone(),
        "mode=755",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )];
    for dir in TOOL_DIRS {
        steps.push(MountStep::HostEntry {
            source: dir.into(),
            target: under(dir),
        });
    }
    steps.push(MountStep::Mkdir {
        path: under("/etc"),
    });
    steps.push(MountStep::FilteredEtc {
        source: "/etc".into(),
        target: under("/etc"),
    });
    steps.push(MountStep::Mkdir {
        path: under("/var"),
    });
    for (dir, mode) in [
        ("/root", "mode=700"),
        ("/home", "mode=755"),
        ("/tmp", "mode=1777"),
        ("/var/tmp", "mode=1777"),
        ("/run", "mode=755"),
        ("/mnt", "mode=755"),
    ] {
        steps.push(MountStep::Mkdir { path: under(dir) });
        steps.push(tmpfs(
            under(dir),
            mode,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        ));
    }
    let signal_dir_restrict = Restrict::NOSUID.and(Restrict::NODEV).and(Restrict::NOEXEC);
    steps.extend([
        MountStep::Mkdir {
            path: under(IMS_SIGNAL_DIR),
        },
        bind(
            layout.signal_dir(),
            under(IMS_SIGNAL_DIR),
            false,
            signal_dir_restrict,
        ),
        MountStep::Mkdir {
            path: under(IMS_IMAGE_ROOT),
        },
        // The image's own mount is nodev already (a bind keeps it); its /dev below must not be.
        bind(layout.root(), under(IMS_IMAGE_ROOT), true, Restrict::NONE),
        MountStep::Mkdir {
            path: under("/proc"),
        },
    ]);
    steps.extend(proc_steps(&view));
    steps.push(MountStep::Mkdir {
        path: under("/dev"),
    });
    steps.push(bind(
        layout.root().join("dev"),
        under("/dev"),
        true,
        Restrict::NONE,
    ));
    steps.push(MountStep::Mkdir {
        path: under("/sys"),
    });
    steps.push(sys_step(&view, cfg));
    steps.extend(mask_steps(&view));
    steps.push(MountStep::Restrict {
        target: view,
        recursive: false,
        restrict: Restrict::RDONLY,
    });
    steps
}

/// Whether the non-jailed view shows the host's `/etc/<name>`: what the tools run there need
/// (accounts without their passwords, name resolution, the dynamic linker's cache, time zone,
/// release files Ansible reads, the CA bundle, shells' and Python's own configuration) and
/// nothing that holds a secret (shadow, gshadow, sudoers, ssh with its host keys, ssl/private,
/// machine-id, keytabs, credentials of any service).
pub fn etc_entry_shown(name: &str) -> bool {
    const SHOWN: [&str; 44] = [
        "passwd",
        "group",
        "hosts",
        "hostname",
        "host.conf",
        "nsswitch.conf",
        "networks",
        "protocols",
        "services",
        "rpc",
        "gai.conf",
        "resolv.conf",
        "ld.so.cache",
        "ld.so.conf",
        "ld.so.conf.d",
        "localtime",
        "timezone",
        "os-release",
        "lsb-release",
        "debian_version",
        "alternatives",
        "ca-certificates",
        "ca-certificates.conf",
        "mime.types",
        "magic",
        "magic.mime",
        "profile",
        "profile.d",
        "bash.bashrc",
        "bashrc",
        "environment",
        "inputrc",
        "terminfo",
        "shells",
        "locale.alias",
        "locale.conf",
        "locale.gen",
        "login.defs",
        "mtab",
        "xattr.conf",
        "python3",
        "perl",
        "manpath.config",
        "mke2fs.conf",
    ];
    SHOWN.contains(&name)
        || name.ends_with("-release") && name != "-release"
        || name.ends_with("_version") && name != "_version"
        || name.strip_prefix("python3.").is_some_and(|v| !v.is_empty())
}

/// Entries below a directory of /etc that is not shown whole: the public half of the TLS trust
/// stores (certificates, not private keys).
pub const ETC_NESTED_SHOWN: [&str; 6] = [
    "ssl/certs",
    "ssl/openssl.cnf",
    "pki/tls/certs",
    "pki/tls/openssl.cnf",
    "pki/ca-trust",
    "pki/tls/cert.pem",
];

fn bind(
    source: impl Into<PathBuf>,
    target: impl Into<PathBuf>,
    recursive: bool,
    restrict: Restrict,
) -> MountStep {
    MountStep::Bind {
        source: source.into(),
        target: target.into(),
        recursive,
        restrict,
        optional: false,
    }
}

fn tmpfs(target: PathBuf, data: &str, flags: MsFlags) -> MountStep {
    MountStep::Mount {
        fstype: "tmpfs",
        target,
        flags,
        data: Some(data.into()),
    }
}

fn nosuid_nodev_noexec() -> MsFlags {
    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdMapping;
    use crate::root::WorkLayout;

    fn cfg(source: ImageSource, jailed: bool, network: Network, ids: IdMapping) -> SandboxConfig {
        let mut c = SandboxConfig::new(WorkLayout::new("/w"), source, "job1");
        c.jailed = jailed;
        c.network = network;
        c.ids = ids;
        c
    }

    fn position(steps: &[MountStep], pred: impl Fn(&MountStep) -> bool) -> usize {
        steps.iter().position(pred).expect("step present")
    }

    fn mount_point(name: &str) -> MountStep {
        MountStep::ImageMountPoint {
            path: Path::new("/w/root").join(name),
            name: name.into(),
            record: "/w/mount-points.made".into(),
        }
    }

    #[test]
    fn jailed_mount_mode_pivots_into_the_overlay() {
        let source = ImageSource::Mount {
            base: "/s/base.sqsh".into(),
            via: LowerVia::KernelLoop,
        };
        let steps = plan(&cfg(source, true, Network::Host, IdMapping::Host));
        assert_eq!(steps.first(), Some(&MountStep::MakePrivate));
        assert_eq!(
            steps.last(),
            Some(&MountStep::PivotRoot {
                new_root: "/w/root".into()
            })
        );
        let lower = position(&steps, |s| matches!(s, MountStep::Lower { .. }));
        let overlay = position(&steps, |s| matches!(s, MountStep::Overlay { .. }));
        let proc_mount = position(&steps, |s| {
            matches!(s, MountStep::Mount { fstype: "proc", .. })
        });
        assert!(
            lower < overlay && overlay < proc_mount,
            "base, then overlay, then what goes on top"
        );
        assert!(steps.contains(&MountStep::Overlay {
            lower: "/w/lower".into(),
            upper: "/w/upper".into(),
            work: "/w/ovlwork".into(),
            target: "/w/root".into(),
            userxattr: false,
        }));
        // Mount points the image may lack are made only through the recording step.
        for name in ["proc", "dev", "sys", "run"] {
            assert!(steps.contains(&mount_point(name)), "{name}");
        }
        assert!(!steps.iter().any(
            |s| matches!(s, MountStep::Mkdir { path } if path.parent() == Some(Path::new("/w/root")))
        ));
        // Host network: the host's /sys, read-only; never a host file outside the tool view.
        assert!(steps.contains(&bind(
            "/sys",
            "/w/root/sys",
            true,
            HOST_RO.and(Restrict::NOEXEC)
        )));
        assert!(
            !steps
                .iter()
                .any(|s| matches!(s, MountStep::Bind { source, .. } if source == Path::new("/")))
        );
        for d in DEVICES {
            assert!(steps.contains(&bind(
                Path::new("/dev").join(d),
                Path::new("/w/root/dev").join(d),
                false,
                Restrict::NONE
            )));
        }
        // /dev itself is nodev: a node made there cannot be opened.
        assert!(steps.iter().any(
            |s| matches!(s, MountStep::Mount { fstype: "tmpfs", target, flags, .. }
            if target == Path::new("/w/root/dev") && flags.contains(MsFlags::MS_NODEV))
        ));
        assert!(steps.contains(&MountStep::Mask {
            path: "/w/root/proc/kcore".into()
        }));
        let pts = steps.iter().find_map(|s| match s {
            MountStep::Mount {
                fstype: "devpts",
                data,
                ..
            } => data.clone(),
            _ => None,
        });
        assert_eq!(
            pts.as_deref(),
            Some("newinstance,ptmxmode=0666,mode=620,gid=5")
        );
    }

    #[test]
    fn rootless_overlay_uses_userxattr_and_no_tty_group() {
        let source = ImageSource::OverlayDir {
            lower: "/cache/base".into(),
        };
        let steps = plan(&cfg(
            source,
            true,
            Network::None,
            IdMapping::Single {
                uid: 1000,
                gid: 1000,
            },
        ));
        assert!(steps.iter().any(|s| matches!(s, MountStep::Overlay { userxattr: true, lower, .. } if lower == Path::new("/cache/base"))));
        assert!(!steps.iter().any(|s| matches!(s, MountStep::Lower { .. })));
        assert!(steps.iter().any(|s| matches!(s, MountStep::Mount { fstype: "devpts", data: Some(d), .. } if !d.contains("gid="))));
        // Private network: a fresh read-only sysfs instead of the host's.
        assert!(steps.iter().any(|s| matches!(s, MountStep::Mount { fstype: "sysfs", flags, .. } if flags.contains(MsFlags::MS_RDONLY))));
    }

    #[test]
    fn image_only_plan_has_nothing_on_top_of_the_image() {
        let source = ImageSource::Mount {
            base: "/s/b.sqsh".into(),
            via: LowerVia::KernelLoop,
        };
        let steps = plan_image_only(&cfg(source, false, Network::Host, IdMapping::Host));
        assert_eq!(steps.len(), 4, "{steps:?}");
        assert!(
            matches!(steps[1], MountStep::Lower { .. })
                && matches!(steps[2], MountStep::Overlay { .. })
        );
        assert_eq!(
            steps[3],
            MountStep::PivotRoot {
                new_root: "/w/root".into()
            }
        );
    }

    #[test]
    fn resolv_swap_comes_before_the_pivot_and_knows_the_inside_path() {
        let steps = plan(&cfg(
            ImageSource::Extracted,
            true,
            Network::Host,
            IdMapping::Host,
        ));
        assert!(steps.contains(&bind("/w/root", "/w/root", false, Restrict::NODEV)));
        let swap = steps.iter().find_map(|s| match s {
            MountStep::SwapResolvConf {
                etc,
                inside_etc,
                state,
                ..
            } => Some((etc.clone(), inside_etc.clone(), state.clone())),
            _ => None,
        });
        assert_eq!(
            swap,
            Some((
                "/w/root/etc".into(),
                "/etc".into(),
                "/w/resolv.conf.state".into()
            ))
        );
    }

    #[test]
    fn non_jailed_view_shows_tools_not_the_host() {
        let source = ImageSource::Mount {
            base: "/s/b.sqsh".into(),
            via: LowerVia::Squashfuse,
        };
        let steps = plan(&cfg(source, false, Network::Host, IdMapping::Host));
        // The view is a tmpfs of its own, never the host's whole tree.
        assert!(
            !steps
                .iter()
                .any(|s| matches!(s, MountStep::Bind { source, .. } if source == Path::new("/")))
        );
        let view_tmpfs = position(
            &steps,
            |s| matches!(s, MountStep::Mount { fstype: "tmpfs", target, .. } if target == Path::new("/w/hostview")),
        );
        for dir in TOOL_DIRS {
            let shown = position(&steps, |s| {
                *s == MountStep::HostEntry {
                    source: dir.into(),
                    target: Path::new("/w/hostview").join(&dir[1..]),
                }
            });
            assert!(view_tmpfs < shown);
        }
        assert!(steps.contains(&MountStep::FilteredEtc {
            source: "/etc".into(),
            target: "/w/hostview/etc".into()
        }));
        for private in ["root", "home", "tmp", "var/tmp", "run", "mnt"] {
            assert!(
                steps.iter().any(
                    |s| matches!(s, MountStep::Mount { fstype: "tmpfs", target, .. }
                    if *target == Path::new("/w/hostview").join(private))
                ),
                "{private}"
            );
        }
        let signal = position(&steps, |s| {
            matches!(s, MountStep::Bind { source, target, restrict, .. }
                if source == Path::new("/w/signal") && target == Path::new("/w/hostview/mnt/image")
                    && restrict.contains(Restrict::NOEXEC) && restrict.contains(Restrict::NODEV))
        });
        let image = position(&steps, |s| {
            *s == bind(
                "/w/root",
                "/w/hostview/mnt/image/image-root",
                true,
                Restrict::NONE,
            )
        });
        assert!(
            signal < image,
            "the image mount point lives in the signal dir"
        );
        let resolv = steps.iter().find_map(|s| match s {
            MountStep::SwapResolvConf { inside_etc, .. } => Some(inside_etc.clone()),
            _ => None,
        });
        assert_eq!(resolv, Some(PathBuf::from("/mnt/image/image-root/etc")));
        assert!(steps.iter().any(|s| matches!(s, MountStep::Mount { fstype: "proc", target, .. } if target == Path::new("/w/hostview/proc"))));
        let read_only = position(&steps, |s| {
            *s == MountStep::Restrict {
                target: "/w/hostview".into(),
                recursive: false,
                restrict: Restrict::RDONLY,
            }
        });
        assert_eq!(read_only, steps.len() - 2, "sealed last, before the pivot");
        assert_eq!(
            steps.last(),
            Some(&MountStep::PivotRoot {
                new_root: "/w/hostview".into()
            })
        );
        let shown: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert!(
            shown
                .iter()
                .any(|s| s == "show host /usr at /w/hostview/usr (ro,nosuid,nodev)"),
            "{shown:?}"
        );
    }

    #[test]
    fn etc_filter_lets_tools_config_through_and_keeps_secrets_out() {
        for shown in [
            "passwd",
            "group",
            "hosts",
            "nsswitch.conf",
            "ld.so.cache",
            "os-release",
            "redhat-release",
            "debian_version",
            "alternatives",
            "python3.11",
            "localtime",
        ] {
            assert!(etc_entry_shown(shown), "{shown}");
        }
        for hidden in [
            "shadow",
            "shadow-",
            "gshadow",
            "sudoers",
            "sudoers.d",
            "ssh",
            "ssl",
            "machine-id",
            "krb5.keytab",
            "security",
            "-release",
            "python3.",
            "imsctl",
            "docker",
        ] {
            assert!(!etc_entry_shown(hidden), "{hidden}");
        }
        assert!(ETC_NESTED_SHOWN.contains(&"ssl/certs"));
        assert!(!ETC_NESTED_SHOWN.iter().any(|p| p.contains("private")));
    }
}
