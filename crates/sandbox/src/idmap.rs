//! User-namespace id maps for a rootless sandbox.
//!
//! The caller becomes root (0) inside. With a subordinate range in /etc/subuid and /etc/subgid
//! and the setuid helpers newuidmap/newgidmap installed, ids 1..=count inside map to that range,
//! so packages can chown files to system users; without them only 0 exists inside, every other
//! owner shows as the overflow id (65534) and `chown` to another id fails with EINVAL.

use std::fs;
use std::path::Path;
use std::process::Command;

use nix::unistd::Pid;

use super::error::{Error, Result, SysContext};

/// Inside ids 1..=MAX_RANGE are mapped at most: enough for any distribution's system users.
const MAX_RANGE: u32 = 65535;

/// A subordinate id range from /etc/subuid or /etc/subgid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubIdRange {
    pub start: u32,
    pub count: u32,
}

/// How ids inside the sandbox relate to this process's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdMapping {
    /// This process is root (real root, or root of the user namespace imsctl entered, see
    /// [`super::userns`]): the sandbox makes no user namespace; ids inside are this process's.
    Host,
    /// The caller alone, mapped to 0 (maps written by the parent; setgroups denied).
    Single { uid: u32, gid: u32 },
    /// The caller mapped to 0 and a subordinate range to 1..=count (via newuidmap/newgidmap).
    Ranges {
        uid: u32,
        gid: u32,
        subuid: SubIdRange,
        subgid: SubIdRange,
    },
}

impl IdMapping {
    /// The mapping this process would get: `Host` as root, else ranges when the system grants
    /// them (and the helpers exist), else the caller alone.
    pub fn detect() -> IdMapping {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        if uid == 0 {
            return IdMapping::Host;
        }
        let name = nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map(|u| u.name);
        let helpers = ["newuidmap", "newgidmap"]
            .iter()
            .all(|p| crate::root::find_program(p).is_some());
        let sub = |file: &str, id: u32| {
            let text = fs::read_to_string(file).ok()?;
            parse_subid(&text, name.as_deref(), id)
        };
        match (helpers, sub("/etc/subuid", uid), sub("/etc/subgid", gid)) {
            (true, Some(subuid), Some(subgid)) => IdMapping::Ranges {
                uid,
                gid,
                subuid,
                subgid,
            },
            _ => IdMapping::Single { uid, gid },
        }
    }

    /// Whether each sandbox session makes a user namespace of its own.
    pub fn creates_user_namespace(&self) -> bool {
        !matches!(self, IdMapping::Host)
    }

    /// Whether the sandbox's mounts are made in a user namespace other than the initial one
    /// (overlayfs then keeps its metadata in user.* xattrs; loop devices are out of reach).
    pub fn unprivileged_mounts(&self) -> bool {
        self.creates_user_namespace() || !super::userns::in_initial_user_namespace()
    }

    /// Whether root is the only id inside (a rootless caller without a subordinate range): then
    /// nothing inside can switch to another user.
    pub fn single_id_inside(&self) -> bool {
        match self {
            IdMapping::Host => {
                !super::userns::is_real_root() && !super::userns::maps_id("uid_map", 1)
            }
            IdMapping::Single { .. } => true,
            IdMapping::Ranges { .. } => false,
        }
    }

    /// Whether ids other than 0 exist inside (so `chown` and groups such as tty work).
    pub fn maps_many_ids(&self) -> bool {
        match self {
            IdMapping::Host => super::userns::maps_id("gid_map", 5),
            IdMapping::Single { .. } => false,
            IdMapping::Ranges { .. } => true,
        }
    }

    /// The inside uid of a file owned by `host` uid on disk (e.g. in the overlay's upper dir):
    /// how a packer recovers the owner the process inside set.
    pub fn uid_inside(&self, host: u32) -> Option<u32> {
        match *self {
            IdMapping::Host => Some(host),
            IdMapping::Single { uid, .. } => (host == uid).then_some(0),
            IdMapping::Ranges { uid, subuid, .. } => inside_of(host, uid, subuid),
        }
    }

    /// The inside gid of a file owned by `host` gid on disk.
    pub fn gid_inside(&self, host: u32) -> Option<u32> {
        match *self {
            IdMapping::Host => Some(host),
            IdMapping::Single { gid, .. } => (host == gid).then_some(0),
            IdMapping::Ranges { gid, subgid, .. } => inside_of(host, gid, subgid),
        }
    }

    /// Write the maps of the process `pid`, which has just unshared its user namespace.
    pub fn apply(&self, pid: Pid) -> Result<()> {
        match *self {
            IdMapping::Host => Ok(()),
            IdMapping::Single { uid, gid } => {
                // An unprivileged writer must deny setgroups before writing gid_map.
                write_proc(pid, "setgroups", "deny")?;
                write_proc(pid, "uid_map", &format!("0 {uid} 1\n"))?;
                write_proc(pid, "gid_map", &format!("0 {gid} 1\n"))
            }
            IdMapping::Ranges {
                uid,
                gid,
                subuid,
                subgid,
            } => {
                run_map_helper("newuidmap", pid, uid, subuid)?;
                run_map_helper("newgidmap", pid, gid, subgid)
            }
        }
    }
}

fn inside_of(host: u32, own: u32, range: SubIdRange) -> Option<u32> {
    if host == own {
        return Some(0);
    }
    let offset = host.checked_sub(range.start)?;
    (offset < range.count.min(MAX_RANGE)).then(|| offset + 1)
}

/// Find the first range of `/etc/subuid`-style text for the user `name` or numeric `id`.
pub fn parse_subid(text: &str, name: Option<&str>, id: u32) -> Option<SubIdRange> {
    let id_text = id.to_string();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .find_map(|line| {
            let mut fields = line.split(':');
            let (owner, start, count) = (fields.next()?, fields.next()?, fields.next()?);
            if owner != id_text && Some(owner) != name {
                return None;
            }
            let start = start.trim().parse().ok()?;
            let count: u32 = count.trim().parse().ok()?;
            (count > 0).then_some(SubIdRange {
                start,
                count: count.min(MAX_RANGE),
            })
        })
}

fn write_proc(pid: Pid, file: &str, content: &str) -> Result<()> {
    let path = Path::new("/proc").join(pid.as_raw().to_string()).join(file);
    fs::write(&path, content).ctx("write", &path)
}

fn run_map_helper(helper: &str, pid: Pid, own: u32, range: SubIdRange) -> Result<()> {
    let args = [
        pid.as_raw().to_string(),
        "0".into(),
        own.to_string(),
        "1".into(),
        "1".into(),
        range.start.to_string(),
        range.count.to_string(),
    ];
    let out = Command::new(helper)
        .args(&args)
        .output()
        .ctx("run", helper)?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Setup(format!(
        "{helper} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subid_lines_match_by_name_or_id() {
        let text = "# comment\nalice:100000:65536\n1001:200000:1000\nbob:300000:0\n";
        assert_eq!(
            parse_subid(text, Some("alice"), 1000),
            Some(SubIdRange {
                start: 100000,
                count: 65535
            })
        );
        assert_eq!(
            parse_subid(text, Some("carol"), 1001),
            Some(SubIdRange {
                start: 200000,
                count: 1000
            })
        );
        assert_eq!(
            parse_subid(text, Some("bob"), 1002),
            None,
            "an empty range is no range"
        );
        assert_eq!(parse_subid("garbage\nalice:x:1\n", Some("alice"), 5), None);
    }

    #[test]
    fn disk_owners_translate_back_to_inside_ids() {
        let single = IdMapping::Single {
            uid: 1000,
            gid: 1000,
        };
        assert_eq!(single.uid_inside(1000), Some(0));
        assert_eq!(single.uid_inside(0), None);
        let r = SubIdRange {
            start: 100000,
            count: 65535,
        };
        let ranges = IdMapping::Ranges {
            uid: 1000,
            gid: 1000,
            subuid: r,
            subgid: r,
        };
        assert_eq!(ranges.uid_inside(1000), Some(0));
        assert_eq!(ranges.uid_inside(100000), Some(1));
        assert_eq!(ranges.gid_inside(100000 + 99), Some(100));
        assert_eq!(ranges.uid_inside(100000 + 65535), None);
        assert_eq!(IdMapping::Host.uid_inside(42), Some(42));
    }
}
