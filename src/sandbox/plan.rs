//! The sandbox's mount plan: pure data computed from the configuration, executed step by step
//! by [`super::exec`] inside the new mount namespace. Keeping it pure makes the layout testable
//! without root and printable with `-v`.

use std::fmt;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use super::{Network, SandboxConfig};
use crate::root::{ImageSource, LowerVia};

/// Device nodes bind-mounted from the host into the sandbox's minimal /dev.
pub const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// Files under /proc that would reach the host kernel: made read-only.
const PROC_READONLY: [&str; 4] = ["sys", "sysrq-trigger", "irq", "bus"];
/// Where the non-jailed view shows the signal dir and the image (the IMS layout).
pub const IMS_SIGNAL_DIR: &str = "/mnt/image";
pub const IMS_IMAGE_ROOT: &str = "/mnt/image/image-root";
pub const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// One step of the plan. Paths are as seen before the pivot, in the new mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountStep {
    /// Stop mount events propagating back to the host (`mount --make-rprivate /`).
    MakePrivate,
    /// Ensure a directory exists (mode 0755 when created).
    Mkdir {
        path: PathBuf,
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
    /// Bind `source` on `target`; `readonly` applies to the whole tree when `recursive`.
    /// `optional` steps are skipped when the source does not exist.
    Bind {
        source: PathBuf,
        target: PathBuf,
        recursive: bool,
        readonly: bool,
        optional: bool,
    },
    /// Mount the base SquashFS read-only.
    Lower {
        image: PathBuf,
        target: PathBuf,
        via: LowerVia,
    },
    Overlay {
        lower: PathBuf,
        upper: PathBuf,
        work: PathBuf,
        target: PathBuf,
        userxattr: bool,
    },
    /// Move the image's resolv.conf aside (see [`crate::root::ResolvConfGuard`]) and bind the
    /// host's over the placeholder; skipped when the host has none. `inside_etc` is where the
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

impl fmt::Display for MountStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use MountStep::*;
        match self {
            MakePrivate => write!(f, "make / rprivate"),
            Mkdir { path } => write!(f, "mkdir {}", path.display()),
            Touch { path } => write!(f, "touch {}", path.display()),
            Symlink { target, link } => {
                write!(f, "symlink {} -> {}", link.display(), target.display())
            }
            Mount {
                fstype,
                target,
                data,
                ..
            } => {
                write!(
                    f,
                    "mount {fstype} on {} ({})",
                    target.display(),
                    data.as_deref().unwrap_or("")
                )
            }
            Bind {
                source,
                target,
                recursive,
                readonly,
                ..
            } => write!(
                f,
                "{}bind {} on {}{}",
                if *recursive { "r" } else { "" },
                source.display(),
                target.display(),
                if *readonly { " (ro)" } else { "" }
            ),
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
            } => {
                write!(
                    f,
                    "mount overlay on {} (lower {}, upper {})",
                    target.display(),
                    lower.display(),
                    upper.display()
                )
            }
            SwapResolvConf { etc, host, .. } => write!(
                f,
                "swap {}/resolv.conf for {}",
                etc.display(),
                host.display()
            ),
            PivotRoot { new_root } => write!(f, "pivot_root {}", new_root.display()),
        }
    }
}

/// The whole plan for `cfg`: image root, resolv.conf, kernel filesystems, then (not jailed) the
/// host's tree read-only with the image at /mnt/image/image-root, then the pivot.
pub fn plan(cfg: &SandboxConfig) -> Vec<MountStep> {
    let layout = &cfg.layout;
    let root = layout.root();
    let mut steps = vec![MountStep::MakePrivate];
    if !cfg.jailed {
        // Copy the host's tree first, before the image mounts exist, so they are not duplicated in it.
        steps.push(bind("/", layout.host_view(), true, true));
    }
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
        steps.extend(host_view_steps(cfg));
        layout.host_view()
    };
    steps.push(MountStep::PivotRoot { new_root });
    steps
}

/// Only the image root, pivoted into: what [`super::hold_root`] shows the host through
/// `/proc/<pid>/root` (no /proc, /dev, resolv.conf on top, so a walk sees the image alone).
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
        userxattr: cfg.ids.uses_user_namespace(),
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
        ImageSource::Extracted => vec![bind(layout.root(), layout.root(), false, false)],
    }
}

/// Fresh /proc, minimal /dev, read-only /sys and a /run tmpfs under `root`.
fn system_mounts(root: &Path, cfg: &SandboxConfig) -> Vec<MountStep> {
    let mut steps = proc_steps(root);
    steps.extend(dev_steps(root, cfg));
    steps.push(MountStep::Mkdir {
        path: root.join("sys"),
    });
    steps.push(sys_step(root, cfg));
    steps.push(MountStep::Mkdir {
        path: root.join("run"),
    });
    steps.push(tmpfs(
        root.join("run"),
        "mode=755",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    ));
    steps
}

fn proc_steps(root: &Path) -> Vec<MountStep> {
    let proc_dir = root.join("proc");
    let mut steps = vec![
        MountStep::Mkdir {
            path: proc_dir.clone(),
        },
        MountStep::Mount {
            fstype: "proc",
            target: proc_dir.clone(),
            flags: nosuid_nodev_noexec(),
            data: None,
        },
    ];
    for name in PROC_READONLY {
        let path = proc_dir.join(name);
        steps.push(MountStep::Bind {
            source: path.clone(),
            target: path,
            recursive: true,
            readonly: true,
            optional: true,
        });
    }
    steps
}

fn dev_steps(root: &Path, cfg: &SandboxConfig) -> Vec<MountStep> {
    let dev = root.join("dev");
    let mut steps = vec![
        MountStep::Mkdir { path: dev.clone() },
        tmpfs(
            dev.clone(),
            "mode=755",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        ),
    ];
    for name in DEVICES {
        steps.push(MountStep::Touch {
            path: dev.join(name),
        });
        steps.push(bind(
            Path::new("/dev").join(name),
            dev.join(name),
            false,
            false,
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
        Network::Host => bind("/sys", target, true, true),
    }
}

/// The non-jailed view (IMS default): the host's tree read-only, a writable /mnt/image (the
/// job's signal dir) holding the image at /mnt/image/image-root, and the same kernel
/// filesystems as inside the image.
fn host_view_steps(cfg: &SandboxConfig) -> Vec<MountStep> {
    let layout = &cfg.layout;
    let view = layout.host_view();
    let under = |p: &str| view.join(p.trim_start_matches('/'));
    let mut steps = vec![
        tmpfs(
            under("/mnt"),
            "mode=755",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        ),
        MountStep::Mkdir {
            path: under(IMS_SIGNAL_DIR),
        },
        bind(layout.signal_dir(), under(IMS_SIGNAL_DIR), false, false),
        MountStep::Mkdir {
            path: under(IMS_IMAGE_ROOT),
        },
        bind(layout.root(), under(IMS_IMAGE_ROOT), true, false),
    ];
    steps.extend(
        proc_steps(&view)
            .into_iter()
            .filter(|s| !matches!(s, MountStep::Mkdir { .. })),
    );
    steps.push(bind(layout.root().join("dev"), under("/dev"), true, false));
    if cfg.network == Network::None {
        steps.push(sys_step(&view, cfg));
    }
    steps.push(tmpfs(
        under("/run"),
        "mode=755",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    ));
    steps.push(tmpfs(
        under("/tmp"),
        "mode=1777",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    ));
    // root's home is writable, as in the IMS pod: Ansible keeps its remote temp files there.
    steps.push(tmpfs(
        under("/root"),
        "mode=700",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    ));
    steps
}

fn bind(
    source: impl Into<PathBuf>,
    target: impl Into<PathBuf>,
    recursive: bool,
    readonly: bool,
) -> MountStep {
    MountStep::Bind {
        source: source.into(),
        target: target.into(),
        recursive,
        readonly,
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
    use crate::root::WorkLayout;
    use crate::sandbox::IdMapping;

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
        // Host network: the host's /sys, read-only; never a host-view bind of / when jailed.
        assert!(steps.contains(&bind("/sys", "/w/root/sys", true, true)));
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
                false
            )));
        }
        assert!(steps.contains(&MountStep::Symlink {
            target: "pts/ptmx".into(),
            link: "/w/root/dev/ptmx".into()
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
        assert!(steps.contains(&bind("/w/root", "/w/root", false, false)));
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
    fn non_jailed_view_is_the_host_read_only_with_the_image_under_mnt_image() {
        let source = ImageSource::Mount {
            base: "/s/b.sqsh".into(),
            via: LowerVia::Squashfuse,
        };
        let steps = plan(&cfg(source, false, Network::Host, IdMapping::Host));
        assert_eq!(steps.get(1), Some(&bind("/", "/w/hostview", true, true)));
        let signal = position(&steps, |s| {
            *s == bind("/w/signal", "/w/hostview/mnt/image", false, false)
        });
        let image = position(&steps, |s| {
            *s == bind("/w/root", "/w/hostview/mnt/image/image-root", true, false)
        });
        let mnt_tmpfs = position(
            &steps,
            |s| matches!(s, MountStep::Mount { fstype: "tmpfs", target, .. } if target == Path::new("/w/hostview/mnt")),
        );
        assert!(
            mnt_tmpfs < signal && signal < image,
            "the image mount point lives in the signal dir"
        );
        let resolv = steps.iter().find_map(|s| match s {
            MountStep::SwapResolvConf { inside_etc, .. } => Some(inside_etc.clone()),
            _ => None,
        });
        assert_eq!(resolv, Some(PathBuf::from("/mnt/image/image-root/etc")));
        assert!(steps.iter().any(|s| matches!(s, MountStep::Mount { fstype: "proc", target, .. } if target == Path::new("/w/hostview/proc"))));
        assert!(steps.iter().any(|s| matches!(s, MountStep::Mount { fstype: "tmpfs", target, .. } if target == Path::new("/w/hostview/tmp"))));
        assert_eq!(
            steps.last(),
            Some(&MountStep::PivotRoot {
                new_root: "/w/hostview".into()
            })
        );
        let shown: Vec<String> = steps.iter().map(ToString::to_string).collect();
        assert!(
            shown.iter().any(|s| s == "rbind / on /w/hostview (ro)"),
            "{shown:?}"
        );
    }
}
