//! Fuzz target `records`: see `imsctl_fuzz::exercise::records`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = imsctl_fuzz::exercise::records(data);
});
