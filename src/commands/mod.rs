//! One thin file per verb group: turn parsed arguments into calls of the core, print results.

pub mod images;
pub mod jobs;
pub mod public_keys;
pub mod rootless;
pub mod squashfs;
pub mod ssh;
