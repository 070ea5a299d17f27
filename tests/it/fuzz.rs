//! The fuzz targets' inputs, replayed in the normal test suite (the fuzzing itself is
//! scripts/fuzz.sh): every seed under testdata/fuzz/<target>/ is valid and must go through its
//! target cleanly, and every input the fuzzer found (testdata/fuzz/regressions/) must now be
//! refused with a clear error naming the problem — no panic, no abort, no runaway memory.
//! The targets' code is fuzz/src/exercise.rs, compiled here as it is in the fuzz crate.

#[path = "../../fuzz/src/exercise.rs"]
mod exercise;

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

type Target = fn(&[u8]) -> Result<(), String>;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/fuzz")
}

fn target(name: &str) -> Target {
    match name {
        "squashfs_reader" => exercise::squashfs_image,
        "tar_source" => exercise::tar_to_squashfs,
        "records" => exercise::records,
        other => panic!("no fuzz target '{other}'"),
    }
}

/// Run one input through its target; a panic becomes this test's failure naming the file.
fn replay(target_name: &str, file: &Path) -> Result<(), String> {
    let bytes = fs::read(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    let run = target(target_name);
    catch_unwind(AssertUnwindSafe(|| run(&bytes)))
        .unwrap_or_else(|_| panic!("{target_name} panicked on {}", file.display()))
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        // Hidden files (.keep) are not inputs.
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn fuzz_seeds_are_valid_inputs_of_their_targets() {
    for name in ["squashfs_reader", "tar_source", "records"] {
        let seeds = files_in(&testdata().join(name));
        assert!(!seeds.is_empty(), "no seeds for {name}");
        for seed in seeds {
            if let Err(e) = replay(name, &seed) {
                panic!("seed {} of {name} is refused: {e}", seed.display());
            }
        }
    }
}

/// Every input the fuzzer found, by file name (`<target>-<what>`), with what it must now give:
/// an error holding the text, or `None` where the input was valid and wrongly refused.
const REGRESSIONS: &[(&str, Option<&str>)] = &[
    // A `created` time whose UTC form is year 10000 (`9999-12-31T23:59:59-01:00`): a panic in
    // the time crate's conversion to UTC; whose UTC form is year -1: read, then written as
    // `-0001-...`, which no longer reads back (the record is lost to the next update).
    (
        "records-image-created-utc-year-10000",
        Some("outside the years 0000 to 9999"),
    ),
    (
        "records-timestamp-utc-year-10000",
        Some("outside the years 0000 to 9999"),
    ),
    (
        "records-timestamp-utc-year-minus-1",
        Some("outside the years 0000 to 9999"),
    ),
    // A pax sparse member (3 KiB of tar) declaring 10^15 bytes of holes: the writer queued a
    // size word per 4 KiB block of holes, taking gigabytes and minutes without end.
    (
        "tar_source-sparse-petabyte-of-holes",
        Some("sparse file of 1000000000000000 bytes: its holes would take the image past"),
    ),
    // block_log 4108: `1 << block_log` overflowed (a panic with overflow checks; without
    // them the shift wrapped to 12 and the damaged superblock passed).
    (
        "squashfs_reader-block-log-overflow",
        Some("bad block size 4096 (log 4108)"),
    ),
];

#[test]
fn fuzz_findings_are_refused_cleanly() {
    let dir = testdata().join("regressions");
    let mut listed: Vec<&str> = REGRESSIONS.iter().map(|r| r.0).collect();
    listed.sort();
    let present: Vec<String> = files_in(&dir)
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        listed,
        present,
        "every file in {} needs its expectation in REGRESSIONS",
        dir.display()
    );
    for &(name, expected) in REGRESSIONS {
        let target_name = ["squashfs_reader", "tar_source", "records"]
            .into_iter()
            .find(|t| name.starts_with(&format!("{t}-")))
            .unwrap_or_else(|| panic!("{name}: no target prefix"));
        let result = replay(target_name, &dir.join(name));
        match (expected, result) {
            (None, Ok(())) => {}
            (None, Err(e)) => panic!("{name}: a valid input is refused: {e}"),
            (Some(text), Err(e)) => assert!(e.contains(text), "{name}: error {e:?} lacks {text:?}"),
            (Some(text), Ok(())) => panic!("{name}: accepted; expected an error with {text:?}"),
        }
    }
}
