//! Execute a mount plan inside the sandbox's new mount namespace (the seam between the pure plan
//! and the system calls). Runs in the forked init process; never in the host's namespace.

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, chdir, pivot_root};

use super::error::{Error, Result, SysContext};
use super::plan::{ETC_NESTED_SHOWN, MountStep, Restrict, etc_entry_shown};
use crate::root::{LowerVia, ResolvConfGuard, loopdev};

/// How long squashfuse may take to show its mount.
const FUSE_TIMEOUT: Duration = Duration::from_secs(20);

/// What executing a plan leaves behind for the rest of the session.
#[derive(Debug, Default)]
pub struct Executed {
    /// The image's resolv.conf, swapped out; restored at the end of the session.
    pub resolv: Option<ResolvConfGuard>,
}

/// Run the holder's part of a plan (see [`MountStep::runs_in_holder`]); returns the squashfuse
/// process serving the base, if one was started (a child of the caller).
pub fn execute_in_holder(steps: &[MountStep]) -> Result<Option<Pid>> {
    let mut fuse = None;
    for step in steps {
        match step {
            MountStep::Lower { image, target, via } => {
                fuse = mount_lower(image, target, *via)?;
            }
            other => execute(std::slice::from_ref(other), &mut Executed::default())?,
        }
    }
    Ok(fuse)
}

/// Run every step in order. Stops at the first failure; what was mounted goes with the namespace.
pub fn execute(steps: &[MountStep], out: &mut Executed) -> Result<()> {
    let mut inside_etc = None;
    for step in steps {
        match step {
            MountStep::MakePrivate => {
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .ctx("make rprivate", "/")?;
            }
            MountStep::Mkdir { path } => ensure_dir(path)?,
            MountStep::ImageMountPoint { path, name, record } => {
                ensure_image_mount_point(path, name, record)?
            }
            MountStep::Touch { path } => ensure_file(path)?,
            MountStep::Symlink { target, link } => {
                std::os::unix::fs::symlink(target, link)
                    .ctx(&format!("create symlink to {} at", target.display()), link)?;
            }
            MountStep::Mount {
                fstype,
                target,
                flags,
                data,
            } => {
                mount(
                    Some(*fstype),
                    target,
                    Some(*fstype),
                    *flags,
                    data.as_deref(),
                )
                .ctx(&format!("mount {fstype} on"), target)?;
            }
            MountStep::Bind {
                source,
                target,
                recursive,
                restrict,
                optional,
            } => {
                if *optional && fs::symlink_metadata(source).is_err() {
                    continue;
                }
                bind(source, target, *recursive, *restrict)?;
            }
            MountStep::Restrict {
                target,
                recursive,
                restrict,
            } => set_restrictions(target, *recursive, *restrict)?,
            MountStep::HostEntry { source, target } => show_host_entry(source, target, false)?,
            MountStep::FilteredEtc { source, target } => show_filtered_etc(source, target)?,
            MountStep::Mask { path } => mask(path)?,
            MountStep::Lower { .. } => {
                return Err(Error::Config(format!(
                    "{step}: the base is mounted by the sandbox's holder"
                )));
            }
            MountStep::Overlay {
                lower,
                upper,
                work,
                target,
                userxattr,
            } => {
                mount_overlay(lower, upper, work, target, *userxattr)?;
            }
            MountStep::SwapResolvConf {
                etc,
                host,
                state,
                inside_etc: inside,
            } => {
                let Ok(content) = fs::read(host) else {
                    continue; // no (or a dangling) host resolv.conf: nothing to offer
                };
                if let Some(guard) = ResolvConfGuard::swap(etc, state, &content)? {
                    out.resolv = Some(guard);
                    inside_etc = Some(inside.clone());
                }
            }
            MountStep::PivotRoot { new_root } => {
                enter_root(new_root)?;
                if let (Some(guard), Some(etc)) = (out.resolv.as_mut(), inside_etc.take()) {
                    guard.relocate(etc);
                }
            }
        }
    }
    Ok(())
}

/// A mount target must be a real directory: a symlink planted in an image (`/proc -> /etc`)
/// would otherwise send the mount outside the image.
fn ensure_dir(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::sys(
            "use as a mount point (not a directory)",
            path,
            Errno::ENOTDIR,
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => fs::DirBuilder::new()
            .mode(0o755)
            .create(path)
            .ctx("create directory", path),
        Err(e) => Err(Error::io("inspect", path, e)),
    }
}

/// A mount point in the image: an existing directory is used as it is; a missing one is noted
/// in `record` first (so a crash cannot leave it unnoted) and then made.
fn ensure_image_mount_point(path: &Path, name: &str, record: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            use std::io::Write;
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o644)
                .open(record)
                .and_then(|mut f| f.write_all(format!("{name}\n").as_bytes()))
                .ctx("note a mount point made for the session in", record)?;
            ensure_dir(path)
        }
        _ => ensure_dir(path),
    }
}

fn ensure_file(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(Error::sys("use as a file mount point", path, Errno::EINVAL)),
        Err(_) => OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map(drop)
            .ctx("create mount point", path),
    }
}

fn bind(source: &Path, target: &Path, recursive: bool, restrict: Restrict) -> Result<()> {
    let flags = if recursive {
        MsFlags::MS_BIND | MsFlags::MS_REC
    } else {
        MsFlags::MS_BIND
    };
    mount(Some(source), target, None::<&str>, flags, None::<&str>)
        .ctx(&format!("bind-mount {} on", source.display()), target)?;
    if !restrict.is_empty() {
        set_restrictions(target, recursive, restrict)?;
    }
    Ok(())
}

/// Show the host's `source` at `target` read-only, nosuid, nodev. A symlink is copied as a
/// symlink unless `follow` (then what it points to is shown); absent entries are skipped.
fn show_host_entry(source: &Path, target: &Path, follow: bool) -> Result<()> {
    let meta = if follow {
        fs::metadata(source)
    } else {
        fs::symlink_metadata(source)
    };
    let Ok(meta) = meta else {
        return Ok(());
    };
    let restrict = Restrict::RDONLY.and(Restrict::NOSUID).and(Restrict::NODEV);
    if meta.file_type().is_symlink() {
        let link = fs::read_link(source).ctx("read symlink", source)?;
        return std::os::unix::fs::symlink(&link, target)
            .ctx(&format!("create symlink to {} at", link.display()), target);
    }
    if meta.is_dir() {
        ensure_dir(target)?;
        return bind(source, target, true, restrict);
    }
    ensure_file(target)?;
    bind(source, target, false, restrict)
}

/// The host's /etc entries the non-jailed view may show (see [`etc_entry_shown`]), and the
/// public parts of the TLS trust stores.
fn show_filtered_etc(source: &Path, target: &Path) -> Result<()> {
    let entries = fs::read_dir(source).ctx("list", source)?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| etc_entry_shown(n))
        .collect();
    names.sort();
    for name in names {
        // resolv.conf is often a symlink into /run, which the view has its own of: show the file.
        let follow = name == "resolv.conf";
        show_host_entry(&source.join(&name), &target.join(&name), follow)?;
    }
    for nested in ETC_NESTED_SHOWN {
        let from = source.join(nested);
        if fs::symlink_metadata(&from).is_err() {
            continue;
        }
        let to = target.join(nested);
        if let Some(parent) = to.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .ctx("create directory", parent)?;
        }
        show_host_entry(&from, &to, false)?;
    }
    Ok(())
}

/// Hide `path`: an empty read-only tmpfs over a directory, /dev/null over a file.
fn mask(path: &Path) -> Result<()> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    if meta.is_dir() {
        return mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0555,size=4k"),
        )
        .ctx("mask", path);
    }
    bind(Path::new("/dev/null"), path, false, Restrict::RDONLY)
}

const AT_RECURSIVE: libc::c_uint = 0x8000;

/// `struct mount_attr` from <linux/mount.h>.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// mount_setattr(2) only adds the given restrictions, keeping every other (possibly locked)
/// flag, and reaches every mount of a tree at once; a plain remount would have to restate locked
/// flags.
fn set_restrictions(target: &Path, recursive: bool, restrict: Restrict) -> Result<()> {
    let op = format!("make {restrict}");
    let c_target = CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::sys(&op, target, Errno::EINVAL))?;
    let attr = MountAttr {
        attr_set: restrict.bits(),
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = libc::AT_NO_AUTOMOUNT as libc::c_uint | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: mount_setattr reads `size` bytes of `attr`, a #[repr(C)] struct mount_attr.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c_target.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let errno = Errno::last();
    if errno != Errno::ENOSYS {
        return Err(Error::sys(&op, target, errno));
    }
    // Kernels before 5.12: remount the top mount, restating the flags it already has.
    let current = nix::sys::statvfs::statvfs(target).ctx("statvfs", target)?;
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | restrict.ms_flags();
    use nix::sys::statvfs::FsFlags;
    for (have, keep) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if current.flags().contains(have) {
            flags |= keep;
        }
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
        .ctx(&format!("remount {restrict}"), target)
}

fn mount_lower(image: &Path, target: &Path, via: LowerVia) -> Result<Option<Pid>> {
    ensure_dir(target)?;
    match via {
        LowerVia::KernelLoop => {
            // Dropping the device after mounting is deliberate: autoclear then ties its life to
            // the mount, i.e. to this namespace.
            let device = loopdev::attach_read_only(image)?;
            mount(
                Some(device.path()),
                target,
                Some("squashfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
                None::<&str>,
            )
            .ctx(
                &format!(
                    "mount {} (on {}) at",
                    image.display(),
                    device.path().display()
                ),
                target,
            )?;
            Ok(None)
        }
        LowerVia::Squashfuse => start_squashfuse(image, target).map(Some),
    }
}

/// Start `squashfuse -f` as a child of the sandbox's holder (outside the pid namespace the
/// sandbox's processes live in, dying with the holder) and wait until its mount shows up.
fn start_squashfuse(image: &Path, target: &Path) -> Result<Pid> {
    let program = crate::root::find_program("squashfuse")
        .ok_or_else(|| Error::sys("find squashfuse to mount", image, Errno::ENOENT))?;
    let cstr = |p: &Path| {
        CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::sys("mount", p, Errno::EINVAL))
    };
    let argv = [cstr(&program)?, c"-f".into(), cstr(image)?, cstr(target)?];
    let parent_dev = device_of(target.parent().unwrap_or(Path::new("/")))?;
    // SAFETY: the child only calls execve (async-signal-safe) and _exit.
    let pid = match unsafe { nix::unistd::fork() }.ctx("fork squashfuse for", image)? {
        ForkResult::Child => {
            // SAFETY: prctl with integer arguments; the signal survives the exec below.
            unsafe {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                )
            };
            // Nothing of the caller's environment: it would show in squashfuse's /proc environ.
            let _ = nix::unistd::execve(&argv[0], &argv, &[c"PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
            // SAFETY: leave the forked child without running the parent's destructors.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => child,
    };
    let started = Instant::now();
    loop {
        if device_of(target)? != parent_dev {
            return Ok(pid);
        }
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => {
                return Err(Error::Setup(format!(
                    "squashfuse {} {} exited: {status:?}",
                    image.display(),
                    target.display()
                )));
            }
            Err(e) => return Err(Error::sys("wait for squashfuse mounting", target, e)),
        }
        if started.elapsed() > FUSE_TIMEOUT {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            return Err(Error::sys(
                "wait for squashfuse to mount",
                target,
                Errno::ETIMEDOUT,
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn device_of(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).map(|m| m.dev()).ctx("stat", path)
}

fn mount_overlay(
    lower: &Path,
    upper: &Path,
    work: &Path,
    target: &Path,
    userxattr: bool,
) -> Result<()> {
    for p in [lower, upper, work] {
        let bytes = p.as_os_str().as_encoded_bytes();
        // The option string is split on ',' and lowerdir on ':'; such paths cannot be expressed.
        if bytes.iter().any(|b| matches!(b, b',' | b':' | b'\\')) {
            return Err(Error::Config(format!(
                "overlay path {} contains ',', ':' or '\\'",
                p.display()
            )));
        }
    }
    let mut data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    if userxattr {
        // Unprivileged overlay (Linux 5.11+) keeps its metadata in user.overlay.* xattrs.
        data.push_str(",userxattr");
    }
    // nodev: packages and tar images carry device nodes, and a customization may make them,
    // but none may be opened (a node of the host's disk would be the whole disk).
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .ctx(&format!("mount overlay ({data}) on"), target)
}

/// pivot_root(".", ".") stacks the old root on the new one, then a lazy unmount drops it: no
/// directory for the old root is needed in the image, and nothing of the host stays reachable.
fn enter_root(new_root: &Path) -> Result<()> {
    chdir(new_root).ctx("chdir to", new_root)?;
    pivot_root(".", ".").ctx("pivot_root into", new_root)?;
    umount2(".", MntFlags::MNT_DETACH).ctx("detach old root from", new_root)?;
    chdir("/").ctx("chdir to", "/")
}

/// A new network namespace starts with lo down; bring it up so localhost works.
pub fn bring_loopback_up() -> Result<()> {
    let lo = PathBuf::from("lo");
    // SAFETY: plain socket + SIOC[GS]IFFLAGS ioctls on a zeroed ifreq naming "lo".
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(Error::sys("open socket to configure", lo, Errno::last()));
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut rc = libc::ioctl(sock, libc::SIOCGIFFLAGS as _, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(sock, libc::SIOCSIFFLAGS as _, &req);
        }
        let errno = Errno::last();
        libc::close(sock);
        if rc != 0 {
            return Err(Error::sys("bring up interface", lo, errno));
        }
    }
    Ok(())
}
