//! The sandbox's seccomp filter: a deny list compiled to classic BPF by hand.
//!
//! Which calls, and why, follows Docker's and Podman's default profile (moby
//! `profiles/seccomp/default.json`): the calls that only a capability we drop would permit are
//! refused outright, so that a kernel bug in a capability check is not an exit either, and a few
//! that need no capability but reach the host are refused always. Unlike Docker we allow
//! everything else (a deny list, not an allow list): package installs run arbitrary distribution
//! tools, and the capability set and namespaces are the first line.
//!
//! - mounting in any form (mount, umount2, pivot_root, the new mount API), joining or making
//!   namespaces (setns, unshare/clone with CLONE_NEWUSER — the others need SYS_ADMIN), and clone3
//!   (its flags sit behind a pointer a filter cannot read: ENOSYS makes the C library fall back
//!   to clone, which is checked);
//! - ptrace, process_vm_readv/writev, kcmp, pidfd_getfd (another process's memory or files);
//! - kernel modules, kexec, reboot, swapon/swapoff, BPF, perf_event_open, keyrings (not
//!   namespaced), syslog, acct, quotactl, the clock setters, iopl/ioperm, userfaultfd,
//!   open_by_handle_at / name_to_handle_at (the "shocker" exit), fanotify, lookup_dcookie;
//! - ioctl TIOCSTI and TIOCLINUX on any terminal: a session that inherits the caller's terminal
//!   could otherwise push keystrokes into the caller's shell.
//!
//! Refused calls fail with EPERM (clone3: ENOSYS). System calls of another ABI (x32, or i386 on
//! x86_64) are refused with ENOSYS: the numbers checked here are the native ones.
//! `--cap-add` of a capability lifts the rules that only that capability guards, as Docker does.

use super::caps::{CapSet, Capability};

const BPF_LD: u16 = 0x00;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_JMP: u16 = 0x05;
const BPF_JEQ: u16 = 0x10;
const BPF_JGE: u16 = 0x30;
const BPF_JSET: u16 = 0x40;
const BPF_K: u16 = 0x00;
const BPF_RET: u16 = 0x06;

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;

/// Offsets in `struct seccomp_data`.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
fn offset_arg_low(index: u32) -> u32 {
    // Little-endian: the low 32 bits of args[i] come first.
    16 + 8 * index
}

#[cfg(target_arch = "x86_64")]
const NATIVE_ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const NATIVE_ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64
/// x32 system calls share the x86_64 arch value and set this bit in the number.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const CLONE_NEWUSER: u32 = 0x1000_0000;
const TIOCSTI: u32 = 0x5412;
const TIOCLINUX: u32 = 0x541c;

/// One refused system call, and the capability whose `--cap-add` lifts the refusal (None: always).
struct Rule {
    nr: libc::c_long,
    lifted_by: Option<Capability>,
}

fn rule(nr: libc::c_long, lifted_by: Option<Capability>) -> Rule {
    Rule { nr, lifted_by }
}

/// The calls refused outright.
fn refused_calls() -> Vec<Rule> {
    use Capability as C;
    let admin = Some(C::SYS_ADMIN);
    let mut rules = vec![
        rule(libc::SYS_mount, admin),
        rule(libc::SYS_umount2, admin),
        rule(libc::SYS_pivot_root, admin),
        rule(libc::SYS_fsopen, admin),
        rule(libc::SYS_fsconfig, admin),
        rule(libc::SYS_fsmount, admin),
        rule(libc::SYS_fspick, admin),
        rule(libc::SYS_move_mount, admin),
        rule(libc::SYS_open_tree, admin),
        rule(libc::SYS_mount_setattr, admin),
        rule(libc::SYS_setns, admin),
        rule(libc::SYS_quotactl, admin),
        rule(libc::SYS_fanotify_init, admin),
        rule(libc::SYS_lookup_dcookie, admin),
        rule(libc::SYS_swapon, admin),
        rule(libc::SYS_swapoff, admin),
        rule(libc::SYS_ptrace, Some(C::SYS_PTRACE)),
        rule(libc::SYS_process_vm_readv, Some(C::SYS_PTRACE)),
        rule(libc::SYS_process_vm_writev, Some(C::SYS_PTRACE)),
        rule(libc::SYS_kcmp, Some(C::SYS_PTRACE)),
        rule(libc::SYS_pidfd_getfd, Some(C::SYS_PTRACE)),
        rule(libc::SYS_init_module, Some(C::SYS_MODULE)),
        rule(libc::SYS_finit_module, Some(C::SYS_MODULE)),
        rule(libc::SYS_delete_module, Some(C::SYS_MODULE)),
        rule(libc::SYS_kexec_load, Some(C::SYS_BOOT)),
        rule(libc::SYS_kexec_file_load, Some(C::SYS_BOOT)),
        rule(libc::SYS_reboot, Some(C::SYS_BOOT)),
        rule(libc::SYS_bpf, Some(C::BPF)),
        rule(libc::SYS_perf_event_open, Some(C::PERFMON)),
        rule(libc::SYS_syslog, Some(C::SYSLOG)),
        rule(libc::SYS_acct, Some(C::SYS_PACCT)),
        rule(libc::SYS_settimeofday, Some(C::SYS_TIME)),
        rule(libc::SYS_clock_settime, Some(C::SYS_TIME)),
        rule(libc::SYS_clock_adjtime, Some(C::SYS_TIME)),
        rule(libc::SYS_adjtimex, Some(C::SYS_TIME)),
        rule(libc::SYS_open_by_handle_at, Some(C::DAC_READ_SEARCH)),
        rule(libc::SYS_name_to_handle_at, Some(C::DAC_READ_SEARCH)),
        rule(libc::SYS_keyctl, None),
        rule(libc::SYS_add_key, None),
        rule(libc::SYS_request_key, None),
        rule(libc::SYS_userfaultfd, None),
    ];
    #[cfg(target_arch = "x86_64")]
    rules.extend([
        rule(libc::SYS_iopl, Some(C::SYS_RAWIO)),
        rule(libc::SYS_ioperm, Some(C::SYS_RAWIO)),
        rule(libc::SYS_uselib, None),
    ]);
    rules
}

/// A classic BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instruction {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

fn stmt(code: u16, k: u32) -> Instruction {
    Instruction {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Instruction {
    Instruction { code, jt, jf, k }
}

fn load(offset: u32) -> Instruction {
    stmt(BPF_LD | BPF_W | BPF_ABS, offset)
}

fn ret_errno(errno: i32) -> Instruction {
    stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (errno as u32 & 0xffff))
}

fn ret_allow() -> Instruction {
    stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
}

/// `if nr == <nr> { <body> }`: the body must end in a return; the accumulator holds nr again for
/// whatever follows (every body returns, so nothing follows a taken branch).
fn when_nr(nr: libc::c_long, body: Vec<Instruction>) -> Vec<Instruction> {
    let mut out = vec![jump(
        BPF_JMP | BPF_JEQ | BPF_K,
        nr as u32,
        0,
        body.len() as u8,
    )];
    out.extend(body);
    out
}

/// The filter program for a sandbox whose processes keep `caps`.
pub fn program(caps: CapSet) -> Vec<Instruction> {
    let mut prog = vec![
        load(OFFSET_ARCH),
        jump(BPF_JMP | BPF_JEQ | BPF_K, NATIVE_ARCH, 1, 0),
        ret_errno(libc::ENOSYS),
        load(OFFSET_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    prog.extend([
        jump(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 0, 1),
        ret_errno(libc::ENOSYS),
    ]);
    for r in refused_calls() {
        if r.lifted_by.is_some_and(|c| caps.contains(c)) {
            continue;
        }
        prog.extend(when_nr(r.nr, vec![ret_errno(libc::EPERM)]));
    }
    if !caps.contains(Capability::SYS_ADMIN) {
        // New user namespaces: the one kind of namespace an unprivileged process may make.
        for nr in [libc::SYS_unshare, libc::SYS_clone] {
            prog.extend(when_nr(
                nr,
                vec![
                    load(offset_arg_low(0)),
                    jump(BPF_JMP | BPF_JSET | BPF_K, CLONE_NEWUSER, 0, 1),
                    ret_errno(libc::EPERM),
                    ret_allow(),
                ],
            ));
        }
        prog.extend(when_nr(libc::SYS_clone3, vec![ret_errno(libc::ENOSYS)]));
    }
    // ioctl's request is an unsigned int: the low word is all the kernel looks at.
    prog.extend(when_nr(
        libc::SYS_ioctl,
        vec![
            load(offset_arg_low(1)),
            jump(BPF_JMP | BPF_JEQ | BPF_K, TIOCSTI, 1, 0),
            jump(BPF_JMP | BPF_JEQ | BPF_K, TIOCLINUX, 0, 1),
            ret_errno(libc::EPERM),
            ret_allow(),
        ],
    ));
    prog.push(ret_allow());
    prog
}

/// `struct sock_fprog`.
#[repr(C)]
struct Program {
    len: libc::c_ushort,
    filter: *const Instruction,
}

/// Install `program` on the calling thread (inherited by its children and kept across exec).
/// The caller must have set no_new_privs. Fails with the kernel's errno.
pub fn install(program: &[Instruction]) -> std::result::Result<(), nix::errno::Errno> {
    let prog = Program {
        len: program.len() as libc::c_ushort,
        filter: program.as_ptr(),
    };
    // SAFETY: SECCOMP_SET_MODE_FILTER reads `len` instructions from `filter`, which outlives the
    // call; the kernel copies the program.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const Program,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(nix::errno::Errno::last())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run `probe` in a forked child under the filter; returns the child's exit code.
    fn under_filter(caps: CapSet, probe: fn() -> i32) -> i32 {
        let prog = program(caps);
        // SAFETY: the child only makes system calls and _exits.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                // SAFETY: prctl with integer arguments; _exit leaves the forked test.
                unsafe {
                    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                        || install(&prog).is_err()
                    {
                        libc::_exit(200);
                    }
                    libc::_exit(probe())
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                match nix::sys::wait::waitpid(child, None).expect("wait") {
                    nix::sys::wait::WaitStatus::Exited(_, code) => code,
                    other => panic!("probe ended {other:?}"),
                }
            }
        }
    }

    fn errno_of(rc: libc::c_long) -> i32 {
        if rc == -1 {
            nix::errno::Errno::last_raw()
        } else {
            0
        }
    }

    #[test]
    fn refused_calls_fail_with_eperm_and_others_work() {
        let default = CapSet::sandbox_default();
        let mount = || {
            // SAFETY: mount with null pointers fails before touching memory, or is refused.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_mount,
                    0usize,
                    c"/".as_ptr(),
                    0usize,
                    0usize,
                    0usize,
                )
            };
            errno_of(rc)
        };
        assert_eq!(under_filter(default, mount), libc::EPERM);
        let unshare_user = || {
            // SAFETY: unshare with a flag word.
            errno_of(unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER) })
        };
        assert_eq!(under_filter(default, unshare_user), libc::EPERM);
        let ptrace_parent = || {
            // SAFETY: PTRACE_ATTACH to the parent; refused by the filter.
            errno_of(unsafe {
                libc::syscall(libc::SYS_ptrace, libc::PTRACE_ATTACH, libc::getppid(), 0, 0)
            })
        };
        assert_eq!(under_filter(default, ptrace_parent), libc::EPERM);
        let tiocsti = || {
            let c: u8 = b'x';
            // SAFETY: TIOCSTI on stdin with a pointer to one byte.
            errno_of(unsafe { libc::syscall(libc::SYS_ioctl, 0, TIOCSTI as u64, &c) })
        };
        assert_eq!(under_filter(default, tiocsti), libc::EPERM);
        let clone3 = || {
            // SAFETY: clone3 with a null argument; refused before it is read.
            errno_of(unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) })
        };
        assert_eq!(under_filter(default, clone3), libc::ENOSYS);
        let keyctl = || {
            // SAFETY: KEYCTL_GET_KEYRING_ID with integer arguments.
            errno_of(unsafe { libc::syscall(libc::SYS_keyctl, 0, -3i64, 0) })
        };
        assert_eq!(under_filter(default, keyctl), libc::EPERM);
        let plain = || {
            // SAFETY: getpid, and an unshare of a namespace kind the filter lets the kernel judge.
            let pid = errno_of(unsafe { libc::syscall(libc::SYS_getpid) });
            let fs = errno_of(unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_FS) });
            pid + fs
        };
        assert_eq!(under_filter(default, plain), 0);
    }

    #[test]
    fn cap_add_lifts_only_its_own_rules() {
        let with_ptrace = CapSet::sandbox_default().with(Capability::SYS_PTRACE);
        let prog = program(with_ptrace);
        let refuses = |nr: libc::c_long| {
            prog.windows(2).any(|w| {
                w[0] == jump(BPF_JMP | BPF_JEQ | BPF_K, nr as u32, 0, 1)
                    && w[1] == ret_errno(libc::EPERM)
            })
        };
        assert!(!refuses(libc::SYS_ptrace));
        assert!(refuses(libc::SYS_mount));
        assert!(refuses(libc::SYS_keyctl));
        assert!(program(CapSet::sandbox_default()).len() > prog.len());
    }
}
