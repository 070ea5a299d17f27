//! What every process inside a sandbox holds at most, and how a process gives up the rest.
//!
//! Applied by the sandbox's pid 1 once its mounts are made (so the command and everything it
//! starts inherit it), and by each process that enters a running sandbox before it runs the
//! session's command. Modelled on bubblewrap (`--cap-drop ALL --cap-add …`, PR_SET_NO_NEW_PRIVS)
//! and Docker/Podman (their default capability set and seccomp profile, see [`super::caps`] and
//! [`super::seccomp`]).

use nix::errno::Errno;

use super::caps::{CapSet, Capability};
use super::error::{Error, Result};
use super::seccomp;

/// The limits of a sandbox's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confinement {
    /// The capabilities kept (bounding, permitted, effective and inheritable sets).
    pub caps: CapSet,
}

impl Default for Confinement {
    fn default() -> Self {
        Confinement {
            caps: CapSet::sandbox_default(),
        }
    }
}

impl Confinement {
    /// The default set widened by `added` (`--cap-add`).
    pub fn with_added(added: &[Capability]) -> Confinement {
        let caps = added
            .iter()
            .fold(CapSet::sandbox_default(), |set, c| set.with(*c));
        Confinement { caps }
    }

    /// The capabilities added to the default set, for records and messages.
    pub fn added(&self) -> Vec<Capability> {
        let default = CapSet::sandbox_default();
        (0..=Capability::LAST)
            .filter_map(|n| Capability::parse(&n.to_string()))
            .filter(|c| self.caps.contains(*c) && !default.contains(*c))
            .collect()
    }
}

const STATUS: &str = "/proc/self/status";

/// Narrow the calling process for good: every capability outside `c.caps` leaves the bounding
/// set (so no exec of a setuid or file-capability program can bring it back) and the permitted,
/// effective and inheritable sets; the ambient set is emptied; no_new_privs is set; the seccomp
/// filter is installed. Children and exec'd programs inherit all of it.
pub fn confine(c: &Confinement) -> Result<()> {
    drop_bounding(c.caps)?;
    clear_ambient()?;
    restrict_sets(c.caps)?;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(Error::sys("set no_new_privs on", STATUS, Errno::last()));
    }
    seccomp::install(&seccomp::program(c.caps))
        .map_err(|e| Error::sys("install the seccomp filter on", STATUS, e))
}

/// Make the calling process non-dumpable: its /proc files (fd, environ, root, cwd, mem) become
/// root's of the namespace it was created in, and ptrace of it needs CAP_SYS_PTRACE there. Reset
/// by the kernel at the next exec of an ordinary program.
pub fn make_undumpable() -> Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(Error::sys("make non-dumpable", STATUS, Errno::last()));
    }
    Ok(())
}

/// The kernel's highest capability number (it may know more than this code does).
fn last_cap() -> u8 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(Capability::LAST)
}

fn drop_bounding(keep: CapSet) -> Result<()> {
    for n in 0..=last_cap().max(Capability::LAST) {
        if n < 64 && keep.mask() & (1 << n) != 0 {
            continue;
        }
        // SAFETY: prctl with integer arguments; EINVAL for a number this kernel lacks.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(n), 0, 0, 0) };
        if rc != 0 && Errno::last() != Errno::EINVAL {
            return Err(Error::sys(
                format!("drop capability {} from the bounding set of", cap_name(n)),
                STATUS,
                Errno::last(),
            ));
        }
    }
    Ok(())
}

fn cap_name(n: u8) -> String {
    Capability::parse(&n.to_string()).map_or_else(|| format!("#{n}"), |c| c.to_string())
}

fn clear_ambient() -> Result<()> {
    // SAFETY: prctl with integer arguments; EINVAL on kernels without ambient capabilities.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc != 0 && Errno::last() != Errno::EINVAL {
        return Err(Error::sys(
            "clear the ambient capabilities of",
            STATUS,
            Errno::last(),
        ));
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// The calling thread's (effective, permitted, inheritable) sets.
pub fn current_sets() -> Result<(CapSet, CapSet, CapSet)> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget fills two CapData for version 3.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(Error::sys(
            "read the capabilities of",
            STATUS,
            Errno::last(),
        ));
    }
    let join = |low: u32, high: u32| CapSet::from_mask(u64::from(low) | u64::from(high) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

fn restrict_sets(keep: CapSet) -> Result<()> {
    let (effective, permitted, inheritable) = current_sets()?;
    let narrow = |set: CapSet| set.mask() & keep.mask();
    let split = |mask: u64| (mask as u32, (mask >> 32) as u32);
    let (e, p, i) = (
        split(narrow(effective)),
        split(narrow(permitted)),
        split(narrow(inheritable)),
    );
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: e.0,
            permitted: p.0,
            inheritable: i.0,
        },
        CapData {
            effective: e.1,
            permitted: p.1,
            inheritable: i.1,
        },
    ];
    // SAFETY: capset reads two CapData for version 3.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(Error::sys("set the capabilities of", STATUS, Errno::last()));
    }
    Ok(())
}

/// Whether this process may confine itself as [`confine`] does (it may always narrow; this only
/// tells a test whether the kernel has seccomp filters).
pub fn seccomp_available() -> bool {
    std::fs::read_to_string(STATUS)
        .map(|s| s.lines().any(|l| l.starts_with("Seccomp:")))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_capabilities_are_listed_back() {
        let c = Confinement::with_added(&[Capability::NET_RAW, Capability::SYS_PTRACE]);
        assert_eq!(c.added(), vec![Capability::NET_RAW, Capability::SYS_PTRACE]);
        assert!(Confinement::default().added().is_empty());
    }

    #[test]
    fn a_confined_child_keeps_only_its_set() {
        if !seccomp_available() {
            imsctl_testkit::not_run!("ignored: this kernel has no seccomp");
            return;
        }
        // SAFETY: the child confines itself, reads /proc and _exits.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                let ok = confine(&Confinement::default()).is_ok()
                    && std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
                        let field = |name: &str| {
                            s.lines()
                                .find(|l| l.starts_with(name))
                                .and_then(|l| l.split_whitespace().nth(1))
                                .map(str::to_string)
                        };
                        let bounding = field("CapBnd:")
                            .and_then(|v| u64::from_str_radix(&v, 16).ok())
                            .unwrap_or(u64::MAX);
                        bounding & !CapSet::sandbox_default().mask() == 0
                            && field("NoNewPrivs:").as_deref() == Some("1")
                            && field("Seccomp:").as_deref() == Some("2")
                    });
                // SAFETY: leave the forked test process.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).expect("wait");
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
