//! What imsctl tells the user when something is refused or fails.

use std::fs;
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn an_absurd_thread_count_is_refused_at_once() {
    let work = tempfile::tempdir().expect("tempdir");
    let tree = work.path().join("tree");
    fs::create_dir(&tree).expect("mkdir");
    let started = Instant::now();
    let out = run_failing(
        imsctl()
            .arg("pack")
            .arg(&tree)
            .arg(work.path().join("out.sqsh"))
            .args(["--threads", "100000"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("100000 threads is more than the 256 imsctl allows"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused before any work"
    );
    assert!(!work.path().join("out.sqsh").exists());
    // The most accepted still packs (no more than 4 threads per core are started).
    run(imsctl()
        .arg("pack")
        .arg(&tree)
        .arg(work.path().join("ok.sqsh"))
        .args(["--threads", "256"]));
}
