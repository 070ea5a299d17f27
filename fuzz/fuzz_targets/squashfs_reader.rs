//! Fuzz target `squashfs_reader`: see `imsctl_fuzz::exercise::squashfs_image`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = imsctl_fuzz::exercise::squashfs_image(data);
});
