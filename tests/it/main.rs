//! The one integration-test binary: imsctl driven as a user drives it, its output checked by
//! independent tools (mksquashfs, unsquashfs, sqfsdiff, the kernel's squashfs, backhand, tar).

mod common;
mod containment;
mod engine;
mod fuzz;
mod messages;
mod outputs;
mod repack;
mod rootless;
mod sftp;
mod ssh;
mod workflow;
