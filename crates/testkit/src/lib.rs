//! Test support shared by the imsctl crates (a dev-dependency only).

/// A test that cannot run here (not root, a tool missing) says so and why; where every test
/// must run (`IMSCTL_REQUIRE_ALL_TESTS=1`, as CI sets it), that is a failure instead.
#[macro_export]
macro_rules! not_run {
    ($($arg:tt)*) => {{
        let reason = format!($($arg)*);
        if std::env::var_os("IMSCTL_REQUIRE_ALL_TESTS").is_some_and(|v| v == "1") {
            panic!("this test must run here (IMSCTL_REQUIRE_ALL_TESTS=1) but cannot: {reason}");
        }
        eprintln!("TEST NOT RUN (ignored): {reason}");
    }};
}
