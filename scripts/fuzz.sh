#!/usr/bin/env bash
# Run every fuzz target (fuzz/, cargo-fuzz + libFuzzer) for SECONDS each, starting from the seed
# corpus in testdata/fuzz/<target>/, and report what each found. Not part of the default test
# suite: it needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain (or stable
# with RUSTC_BOOTSTRAP=1: set FUZZ_TOOLCHAIN=stable).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]       (default: 60 seconds, every target)
#
# New interesting inputs accumulate in fuzz/corpus/<target>/ (not committed; the seeds are).
# Crashes, panics, OOMs and timeouts land in fuzz/artifacts/<target>/: minimise one with
#   cargo +nightly fuzz tmin -O -a <target> fuzz/artifacts/<target>/<file>
# fix the library, and keep the input under testdata/fuzz/regressions/ (tests/it/fuzz.rs replays
# every file there in the normal test suite).
# FUZZ_FORK=N runs N libFuzzer workers in fork mode that keep going after a finding (for long
# runs: every crash, OOM and timeout is kept, not only the first).
# Exit status: 0 when nothing was found, 1 when a target left an artifact, 2 on a setup error.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(squashfs_reader tar_source records)
case $seconds in '' | *[!0-9]*) echo "SECONDS must be a whole number, got '$seconds'" >&2; exit 2 ;; esac

toolchain=${FUZZ_TOOLCHAIN:-nightly}
if [ "$toolchain" = stable ]; then export RUSTC_BOOTSTRAP=1; fi
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 2; }
rustup run "$toolchain" rustc --version >/dev/null 2>&1 || {
    echo "toolchain '$toolchain' is missing: rustup toolchain install nightly (or FUZZ_TOOLCHAIN=stable)" >&2
    exit 2
}
# -O: optimised; -a: debug assertions, so integer overflows panic instead of wrapping.
fuzz=(cargo "+$toolchain" fuzz)
flags=(-O -a)
# libFuzzer options: a slow input (>10 s) or one taking more than 2 GiB is a finding too.
libfuzzer=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
if [ -n "${FUZZ_FORK:-}" ]; then
    libfuzzer+=(-fork="$FUZZ_FORK" -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1)
fi

(cd fuzz && nice "${fuzz[@]}" build "${flags[@]}") || { echo "fuzz build failed" >&2; exit 2; }

mkdir -p fuzz/logs
found=0
for target in "${targets[@]}"; do
    seeds=testdata/fuzz/$target
    [ -d "$seeds" ] || { echo "no seed corpus $seeds for target '$target'" >&2; exit 2; }
    corpus=fuzz/corpus/$target
    artifacts=fuzz/artifacts/$target
    mkdir -p "$corpus" "$artifacts"
    before=$(find "$artifacts" -type f | wc -l)
    # A target's dictionary (tokens a mutation rarely builds byte by byte), when it has one.
    dict=()
    [ -f "testdata/fuzz/dict/$target.dict" ] && dict=(-dict="../testdata/fuzz/dict/$target.dict")
    # tar_source builds an image per input, and the writer's rayon ThreadPool does not join its
    # workers when dropped: LeakSanitizer reports their thread records (4 allocations, 128
    # bytes, all under std::thread::Thread::new / __cxa_thread_atexit) after the input that
    # happens to end first. Not a leak of ours: leak detection is off for that target.
    options=()
    [ "$target" = tar_source ] && options=(-detect_leaks=0)
    log=fuzz/logs/$target.log
    echo "== $target: ${seconds}s from $(find "$seeds" -type f | wc -l) seeds (log: $log)"
    # The first corpus directory receives new inputs; the seeds are only read. cargo-fuzz puts
    # artifacts in fuzz/artifacts/<target>/.
    status=0
    (cd fuzz && nice "${fuzz[@]}" run "${flags[@]}" "$target" "../$corpus" "../$seeds" -- \
        "${libfuzzer[@]}" "${options[@]}" "${dict[@]}") >"$log" 2>&1 || status=$?
    # The last status line holds the coverage; the final stats the executions.
    grep -E '^#[0-9]+' "$log" | tail -1 | sed 's/^/   last: /' || true
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log" \
        | sed 's/^/   /' || true
    after=$(find "$artifacts" -type f | wc -l)
    if [ "$after" -gt "$before" ] || [ "$status" -ne 0 ]; then
        found=1
        echo "   FOUND (exit $status): $((after - before)) new artifact(s) in $artifacts"
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|out-of-memory|timeout' "$log" | head -5 | sed 's/^/   /' || true
        find "$artifacts" -type f -newer "$seeds" -printf '   %p (%s bytes)\n' | tail -5
    else
        echo "   nothing found"
    fi
done
exit "$found"
