//! Fuzz target `tar_source`: see `imsctl_fuzz::exercise::tar_to_squashfs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = imsctl_fuzz::exercise::tar_to_squashfs(data);
});
