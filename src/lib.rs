//! imsctl: customize boot images locally, the IMS way, with no cluster.
//!
//! The pipeline (see DESIGN.md): source --import--> base image --open--> image root
//! --customize--> changed root --pack--> artifacts --publish--> store.

pub mod root;
pub mod sandbox;
pub mod squashfs;
