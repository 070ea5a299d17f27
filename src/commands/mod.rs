//! One thin file per verb group, calling the core.

pub mod images;
pub mod public_keys;
