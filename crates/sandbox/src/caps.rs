//! Linux capabilities by name, and the set every process inside a sandbox keeps.
//!
//! The default set is the one Docker and Podman give a container (moby's
//! `oci/caps/defaults.go`, containers/common's `default_capabilities`) less NET_RAW: what package
//! managers and their maintainer scripts need (chown, chmod of others' files, setuid helpers,
//! setcap, mknod for the nodes tar images and packages carry), and nothing that reaches the kernel
//! or the host past the namespaces (SYS_ADMIN, SYS_MODULE, SYS_RAWIO, SYS_PTRACE, SYS_BOOT,
//! SYS_TIME, DAC_READ_SEARCH, NET_ADMIN, NET_RAW, AUDIT_CONTROL, MAC_*, SYSLOG, BPF, PERFMON...).
//! `--cap-add` widens it deliberately, as `docker run --cap-add` does.

use std::fmt;

/// One capability, by its number in `<linux/capability.h>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Capability(u8);

/// Every capability this code knows, by name (without the `CAP_` prefix) and number.
const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

impl Capability {
    pub const CHOWN: Capability = Capability(0);
    pub const DAC_OVERRIDE: Capability = Capability(1);
    pub const DAC_READ_SEARCH: Capability = Capability(2);
    pub const FOWNER: Capability = Capability(3);
    pub const FSETID: Capability = Capability(4);
    pub const KILL: Capability = Capability(5);
    pub const SETGID: Capability = Capability(6);
    pub const SETUID: Capability = Capability(7);
    pub const SETPCAP: Capability = Capability(8);
    pub const NET_BIND_SERVICE: Capability = Capability(10);
    pub const NET_ADMIN: Capability = Capability(12);
    pub const NET_RAW: Capability = Capability(13);
    pub const SYS_MODULE: Capability = Capability(16);
    pub const SYS_RAWIO: Capability = Capability(17);
    pub const SYS_CHROOT: Capability = Capability(18);
    pub const SYS_PTRACE: Capability = Capability(19);
    pub const SYS_PACCT: Capability = Capability(20);
    pub const SYS_ADMIN: Capability = Capability(21);
    pub const SYS_BOOT: Capability = Capability(22);
    pub const SYS_TIME: Capability = Capability(25);
    pub const MKNOD: Capability = Capability(27);
    pub const AUDIT_WRITE: Capability = Capability(29);
    pub const SETFCAP: Capability = Capability(31);
    pub const SYSLOG: Capability = Capability(34);
    pub const PERFMON: Capability = Capability(38);
    pub const BPF: Capability = Capability(39);

    /// The highest capability number this code knows (CAP_LAST_CAP of Linux 5.9+).
    pub const LAST: u8 = (NAMES.len() - 1) as u8;

    pub fn number(self) -> u8 {
        self.0
    }

    pub fn name(self) -> &'static str {
        NAMES[usize::from(self.0)]
    }

    /// `SYS_ADMIN`, `CAP_SYS_ADMIN`, `sys_admin` or `21`.
    pub fn parse(text: &str) -> Option<Capability> {
        let upper = text.trim().to_ascii_uppercase();
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        if let Ok(n) = bare.parse::<u8>() {
            return (n <= Self::LAST).then_some(Capability(n));
        }
        NAMES
            .iter()
            .position(|n| *n == bare)
            .map(|i| Capability(i as u8))
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CAP_{}", self.name())
    }
}

/// A set of capabilities as the kernel's 64-bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapSet(u64);

impl CapSet {
    /// What every process inside keeps unless widened: Docker's and Podman's default set without
    /// NET_RAW (raw sockets reach the host's network with `--network host`).
    pub fn sandbox_default() -> CapSet {
        CapSet::of(&[
            Capability::CHOWN,
            Capability::DAC_OVERRIDE,
            Capability::FOWNER,
            Capability::FSETID,
            Capability::KILL,
            Capability::SETGID,
            Capability::SETUID,
            Capability::SETPCAP,
            Capability::NET_BIND_SERVICE,
            Capability::SYS_CHROOT,
            Capability::MKNOD,
            Capability::AUDIT_WRITE,
            Capability::SETFCAP,
        ])
    }

    pub fn of(caps: &[Capability]) -> CapSet {
        CapSet(caps.iter().fold(0, |mask, c| mask | 1 << c.0))
    }

    pub fn from_mask(mask: u64) -> CapSet {
        CapSet(mask)
    }

    pub fn mask(self) -> u64 {
        self.0
    }

    pub fn with(self, cap: Capability) -> CapSet {
        CapSet(self.0 | 1 << cap.0)
    }

    pub fn contains(self, cap: Capability) -> bool {
        self.0 & (1 << cap.0) != 0
    }

    /// Every capability this code knows that the set lacks.
    pub fn missing(self) -> impl Iterator<Item = Capability> {
        (0..=Capability::LAST)
            .map(Capability)
            .filter(move |c| !self.contains(*c))
    }
}

impl fmt::Display for CapSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = (0..=Capability::LAST)
            .map(Capability)
            .filter(|c| self.contains(*c))
            .map(|c| c.name().to_string())
            .collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_agree_with_the_kernel_header() {
        assert_eq!(Capability::parse("sys_admin"), Some(Capability::SYS_ADMIN));
        assert_eq!(Capability::parse("CAP_NET_RAW"), Some(Capability::NET_RAW));
        assert_eq!(Capability::parse("19"), Some(Capability::SYS_PTRACE));
        assert_eq!(Capability::parse("CAP_NOPE"), None);
        assert_eq!(Capability::parse("41"), None);
        assert_eq!(Capability::SETFCAP.number(), 31);
        assert_eq!(Capability::BPF.name(), "BPF");
        assert_eq!(Capability::LAST, 40);
    }

    #[test]
    fn default_set_is_dockers_without_net_raw() {
        let set = CapSet::sandbox_default();
        // Docker's default set as a mask (moby: 0x00000000a80425fb) minus NET_RAW (bit 13).
        assert_eq!(set.mask(), 0xa804_25fb & !(1 << 13));
        for dropped in [
            Capability::SYS_ADMIN,
            Capability::SYS_PTRACE,
            Capability::SYS_MODULE,
            Capability::DAC_READ_SEARCH,
            Capability::NET_ADMIN,
            Capability::NET_RAW,
            Capability::BPF,
        ] {
            assert!(!set.contains(dropped), "{dropped}");
            assert!(set.missing().any(|c| c == dropped));
        }
        assert!(set.with(Capability::NET_RAW).contains(Capability::NET_RAW));
        assert_eq!(
            set.to_string(),
            "CHOWN,DAC_OVERRIDE,FOWNER,FSETID,KILL,SETGID,SETUID,SETPCAP,NET_BIND_SERVICE,SYS_CHROOT,MKNOD,AUDIT_WRITE,SETFCAP"
        );
    }
}
