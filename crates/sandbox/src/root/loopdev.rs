//! Attach a file to a free loop device, read-only and autoclear, with the loop ioctls.
//!
//! Autoclear makes the kernel release the device when its last user goes: the mount made on it
//! inside the sandbox's namespace. So a session that dies, however it dies, frees its loop
//! device; nothing needs cleaning on the next run.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::{Error, Result, SysContext};

const LOOP_CONTROL: &str = "/dev/loop-control";
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// Another process may grab the device we were told is free; try a few times.
const ATTEMPTS: usize = 16;

/// `struct loop_info64` from <linux/loop.h>.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` from <linux/loop.h> (LOOP_CONFIGURE, Linux 5.8).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// An attached loop device. Dropping it closes our descriptor; with autoclear the kernel frees
/// the device as soon as nothing (no mount) uses it any more.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    _fd: File,
}

impl LoopDevice {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Attach `image` read-only to a free loop device.
pub fn attach_read_only(image: &Path) -> Result<LoopDevice> {
    let backing = File::open(image).ctx("open image", image)?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open(LOOP_CONTROL)
        .ctx("open", LOOP_CONTROL)?;
    let mut last = Errno::EBUSY;
    for _ in 0..ATTEMPTS {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let number = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if number < 0 {
            return Err(Error::sys(
                "find a free loop device via",
                LOOP_CONTROL,
                Errno::last(),
            ));
        }
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let device = OpenOptions::new()
            .read(true)
            .open(&path)
            .ctx("open loop device", &path)?;
        match configure(&device, &backing, image) {
            Ok(()) => return Ok(LoopDevice { path, _fd: device }),
            Err(Errno::EBUSY) => last = Errno::EBUSY,
            Err(e) => {
                return Err(Error::sys(
                    format!("attach {} to", image.display()),
                    &path,
                    e,
                ));
            }
        }
    }
    Err(Error::sys("attach to a loop device", image, last))
}

fn configure(device: &File, backing: &File, image: &Path) -> std::result::Result<(), Errno> {
    let mut info = LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
        lo_file_name: [0; 64],
        lo_crypt_name: [0; 64],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    };
    // The name is informational (losetup -l shows it); truncate long paths.
    let name = image.as_os_str().as_encoded_bytes();
    let n = name.len().min(info.lo_file_name.len() - 1);
    info.lo_file_name[..n].copy_from_slice(&name[..n]);
    let fd = u32::try_from(backing.as_raw_fd()).map_err(|_| Errno::EBADF)?;
    let config = LoopConfig {
        fd,
        block_size: 0,
        info,
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `config` is, laid out as C.
    let rc = unsafe {
        libc::ioctl(
            device.as_raw_fd(),
            LOOP_CONFIGURE as _,
            &config as *const LoopConfig,
        )
    };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn attach_autoclears_when_dropped() {
        if !nix::unistd::geteuid().is_root() {
            imsctl_testkit::not_run!("note: loop device test needs root; skipped");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("img");
        std::fs::write(&image, vec![0u8; 8192]).expect("write image");
        let dev = attach_read_only(&image).expect("attach");
        let name = dev
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_string();
        let backing = format!("/sys/block/{name}/loop/backing_file");
        let shown = std::fs::read_to_string(&backing).expect("backing_file");
        assert_eq!(shown.trim(), image.to_str().expect("utf8"));
        let ro = std::fs::read_to_string(format!("/sys/block/{name}/ro")).expect("ro");
        assert_eq!(ro.trim(), "1");
        drop(dev);
        // Autoclear runs on last close; the sysfs loop dir disappears once it is detached.
        let mut detached = false;
        for _ in 0..50 {
            if !Path::new(&backing).exists() {
                detached = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(detached, "{name} still attached after drop");
    }
}
