//! imsctl: customize boot images locally, the IMS way, with no cluster.
//!
//! The pipeline (see docs/ARCHITECTURE.md): source --import--> base image --open--> image root
//! --customize--> changed root --pack--> artifacts --publish--> store.

pub mod artifacts;
pub mod context;
pub mod fsutil;
pub mod interrupt;
pub mod job;
pub mod output;
pub mod publish;
pub mod repack;
pub mod ssh;
pub mod store;

/// The SquashFS engine and its tar/directory sources live in their own crate
/// (`crates/squashfs`); these names keep the paths the rest of the application uses.
pub use imsctl_squashfs as squashfs;
pub use imsctl_squashfs::archive;

/// The sandbox and the job's image root (`crates/sandbox`).
pub use imsctl_sandbox as sandbox;
pub use imsctl_sandbox::root;

/// The S3 transport (`crates/s3`).
pub use imsctl_s3 as s3;
