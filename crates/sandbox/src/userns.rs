//! Rootless imsctl works inside a user namespace of its own, as podman does.
//!
//! A job's tree holds files of many owners: an unprivileged caller maps its own id to root and,
//! with a subordinate range (`/etc/subuid`, `/etc/subgid`, set up by `useradd`), the range to
//! the image's other ids. apt's `_apt` directories are 0700 and owned by such an id: from the
//! host's side the caller can neither read nor remove them. So the commands that open, pack,
//! report on or remove a job's tree first make imsctl root of a new user namespace with that
//! mapping ([`enter_own`], like `podman unshare`); everything they do after — the sandbox's own
//! mounts included — happens there, where every mapped owner is reachable and appears as the id
//! it has in the image.
//!
//! The sandbox then needs no user namespace of its own: this process *is* root for it (see
//! [`IdMapping::Host`]). Only code that runs the sandbox without entering (a library caller, the
//! unit tests) still gets a per-session user namespace from [`super::process`].

use std::fs;

use nix::errno::Errno;
use nix::sched::{CloneFlags, unshare};
use nix::unistd::{ForkResult, Pid, fork};

use super::error::{Error, Result};
use super::idmap::IdMapping;
use super::message::{Handshake, read_to_end};

/// Whether this process is in the initial user namespace (its uid map is the identity).
pub fn in_initial_user_namespace() -> bool {
    match fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => {
            let fields: Vec<&str> = map.split_whitespace().collect();
            fields == ["0", "0", "4294967295"]
        }
        Err(_) => true,
    }
}

/// Root of the initial user namespace: loop devices, the kernel's squashfs, trusted xattrs.
pub fn is_real_root() -> bool {
    nix::unistd::geteuid().is_root() && in_initial_user_namespace()
}

/// Whether `id` is mapped in this process's user namespace (`map` is "uid_map" or "gid_map").
pub fn maps_id(map: &str, id: u32) -> bool {
    let Ok(text) = fs::read_to_string(format!("/proc/self/{map}")) else {
        return false;
    };
    text.lines().any(|line| {
        let f: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        f.len() == 3 && f[0] <= u64::from(id) && u64::from(id) < f[0] + f[2]
    })
}

/// What entering gave: the mapping that is now in force (for messages and hints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entered {
    pub mapping: IdMapping,
    /// Why the subordinate range could not be used, when it could not.
    pub range_refused: Option<String>,
}

impl Entered {
    /// Whether only the caller's own id (as root) exists inside.
    pub fn single_id(&self) -> bool {
        matches!(self.mapping, IdMapping::Single { .. })
    }
}

/// Make this process root of a new user namespace mapping `mapping` (what
/// [`IdMapping::detect`] found for the caller). With a subordinate range the setuid helpers
/// newuidmap/newgidmap write the maps (from a child left outside); should they refuse, only the
/// caller's own id is mapped and [`Entered::range_refused`] says why.
///
/// Must be called while this process has a single thread (before any is started).
pub fn enter_own(mapping: &IdMapping) -> Result<Entered> {
    ensure_single_threaded()?;
    match mapping {
        IdMapping::Host => Err(Error::Config(
            "already root: no user namespace to enter".into(),
        )),
        IdMapping::Single { uid, gid } => {
            unshare_user()?;
            write_own_single_map(*uid, *gid)?;
            Ok(Entered {
                mapping: mapping.clone(),
                range_refused: None,
            })
        }
        IdMapping::Ranges { uid, gid, .. } => match enter_with_helpers(mapping) {
            Ok(()) => {
                // The host's supplementary groups show as nogroup here; drop them.
                let _ = nix::unistd::setgroups(&[]);
                Ok(Entered {
                    mapping: mapping.clone(),
                    range_refused: None,
                })
            }
            Err(HelperFailure::BeforeUnshare(e)) => Err(e),
            Err(HelperFailure::Mapping(why)) => {
                // Already in the new namespace, unmapped: the caller's own id can still be.
                write_own_single_map(*uid, *gid)?;
                Ok(Entered {
                    mapping: IdMapping::Single {
                        uid: *uid,
                        gid: *gid,
                    },
                    range_refused: Some(why),
                })
            }
        },
    }
}

fn ensure_single_threaded() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::io("read", "/proc/self/status", e))?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse::<u32>().ok())
        .unwrap_or(1);
    if threads != 1 {
        return Err(Error::Config(format!(
            "entering a user namespace needs a single-threaded process ({threads} threads run)"
        )));
    }
    Ok(())
}

fn unshare_user() -> Result<()> {
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| {
        Error::sys(
            "unshare a user namespace (are unprivileged user namespaces enabled? see /proc/sys/user/max_user_namespaces) for",
            "/proc/self",
            e,
        )
    })
}

fn write_own_single_map(uid: u32, gid: u32) -> Result<()> {
    let write = |file: &str, content: String| {
        let path = format!("/proc/self/{file}");
        fs::write(&path, content).map_err(|e| Error::io("write", path, e))
    };
    // An unprivileged writer must deny setgroups before it may write gid_map.
    write("setgroups", "deny".into())?;
    write("uid_map", format!("0 {uid} 1\n"))?;
    write("gid_map", format!("0 {gid} 1\n"))
}

enum HelperFailure {
    BeforeUnshare(Error),
    Mapping(String),
}

/// Fork a helper that stays in the parent namespace, unshare, let the helper run newuidmap and
/// newgidmap on us, and wait for its verdict.
fn enter_with_helpers(mapping: &IdMapping) -> std::result::Result<(), HelperFailure> {
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| HelperFailure::BeforeUnshare(Error::sys("create", "pipe", e)))
    };
    let (go_r, go_w) = pipe()?;
    let (verdict_r, verdict_w) = pipe()?;
    let me = nix::unistd::getpid();
    // SAFETY: this process is single-threaded (checked by the caller), so the child may do
    // anything, including running the helpers with std::process::Command.
    match unsafe { fork() } {
        Err(e) => Err(HelperFailure::BeforeUnshare(Error::sys(
            "fork the id-mapping helper of",
            "/proc/self",
            e,
        ))),
        Ok(ForkResult::Child) => {
            drop((go_w, verdict_r));
            let code = match Handshake::wait_for(&go_r) {
                Some(Handshake::Unshared) => match mapping.apply(me) {
                    Ok(()) => 0,
                    Err(e) => {
                        let _ = nix::unistd::write(&verdict_w, e.to_string().as_bytes());
                        1
                    }
                },
                _ => 2,
            };
            // SAFETY: leave the forked helper without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop((go_r, verdict_w));
            let unshared = unshare_user();
            let told = match unshared {
                Ok(()) => Handshake::Unshared,
                Err(_) => Handshake::Abort,
            };
            let _ = told.signal(&go_w);
            drop(go_w);
            let verdict = String::from_utf8_lossy(&read_to_end(&verdict_r))
                .trim()
                .to_string();
            let status = wait(child);
            unshared.map_err(HelperFailure::BeforeUnshare)?;
            match status {
                Some(0) => Ok(()),
                _ if !verdict.is_empty() => Err(HelperFailure::Mapping(verdict)),
                other => Err(HelperFailure::Mapping(format!(
                    "the id-mapping helper ended with {other:?}"
                ))),
            }
        }
    }
}

fn wait(child: Pid) -> Option<i32> {
    loop {
        match nix::sys::wait::waitpid(child, None) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => return Some(code),
            Err(Errno::EINTR) => continue,
            _ => return None,
        }
    }
}

/// The advice for a failure inside a sandbox that maps only the caller's own id.
pub const SINGLE_ID_HINT: &str = "only your own id is mapped inside (as root): package managers that switch to a system user (apt's _apt, dnf's setgroups) fail and files cannot be given to other users. Give your user a subordinate id range, e.g. `sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $USER`, and install newuidmap/newgidmap (Debian: uidmap; Fedora: shadow-utils)";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initial_namespace_is_recognised() {
        // The test suite itself runs in some namespace; what matters is agreement with the map.
        let map = fs::read_to_string("/proc/self/uid_map").expect("uid_map");
        assert_eq!(
            in_initial_user_namespace(),
            map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"]
        );
        assert!(maps_id("uid_map", nix::unistd::geteuid().as_raw()));
    }
}
