#!/usr/bin/env bash
# Benchmark the SquashFS engine against the reference tools on the real corpus of
# scripts/make-corpus.sh, side by side in the same run. Prints per step: our median time, the
# reference's median time, the ratio, output sizes and peak RSS.
#
#   scripts/bench-engine.sh [CORPUS_DIR] [RUNS]      (defaults: target/corpus, 3)
#   STEPS="pack-gzip pack-xz pack-zstd convert extract" to choose steps.
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${1:-target/corpus}
runs=${2:-3}
steps=${STEPS:-pack-gzip pack-xz pack-zstd convert extract}
[ -d "$corpus/rootfs" ] && [ -f "$corpus/rootfs.txz" ] || scripts/make-corpus.sh "$corpus"
cargo build --release -q
bin=$PWD/target/release/imsctl
work=$(mktemp -d "${TMPDIR:-/var/tmp}/imsctl-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
export SOURCE_DATE_EPOCH=1700000000

# time_cmd LABEL CMD...: runs CMD `runs` times, prints "median_seconds peak_rss_kib".
time_cmd() {
    local label=$1; shift
    local times=() rss=0
    for _ in $(seq "$runs"); do
        sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
        /usr/bin/time -f '%e %M' -o "$work/time" "$@" >/dev/null 2>"$work/err" || { echo "$label failed:"; cat "$work/err"; exit 1; }
        read -r t m < "$work/time"
        times+=("$t"); [ "$m" -gt "$rss" ] && rss=$m
    done
    printf '%s\n' "${times[@]}" | sort -n | awk -v rss="$rss" '{a[NR]=$1} END {printf "%s %d\n", a[int((NR+1)/2)], rss}'
}

row() { # row STEP OURS_TIME OURS_RSS REF_TIME REF_RSS OURS_SIZE REF_SIZE
    awk -v s="$1" -v ot="$2" -v om="$3" -v rt="$4" -v rm="$5" -v os="$6" -v rs="$7" 'BEGIN {
        size = (rs > 0) ? sprintf("%8.1f MB %8.1f MB %5.3fx", os/1e6, rs/1e6, os/rs) : sprintf("%8s    %8s    %6s", "-", "-", "-");
        printf "%-11s %7.2fs %7.2fs %6.3fx   %s   rss %5d MiB / %5d MiB\n", s, ot, rt, ot/rt, size, om/1024, rm/1024 }'
}

size() { stat -c %s "$1"; }

echo "corpus: $(du -sh "$corpus/rootfs" | cut -f1), $(find "$corpus/rootfs" | wc -l) entries; $(nproc) cores; runs=$runs (medians)"
echo "step           ours     ref    ratio      our size     ref size  ratio"
for step in $steps; do
    case $step in
        pack-gzip|pack-xz|pack-zstd)
            comp=${step#pack-}
            read -r ot om < <(time_cmd ours "$bin" pack "$corpus/rootfs" "$work/ours.sqsh" --comp "$comp")
            read -r rt rm < <(time_cmd ref mksquashfs "$corpus/rootfs" "$work/ref.sqsh" -noappend -no-progress -comp "$comp")
            row "$step" "$ot" "$om" "$rt" "$rm" "$(size "$work/ours.sqsh")" "$(size "$work/ref.sqsh")"
            ;;
        convert)
            read -r ot om < <(time_cmd ours "$bin" convert "$corpus/rootfs.txz" "$work/ours.sqsh" --comp xz)
            read -r rt rm < <(time_cmd ref sh -c "xz -dc '$corpus/rootfs.txz' | tar2sqfs -j2 -c xz -f -q '$work/ref.sqsh'")
            row "$step" "$ot" "$om" "$rt" "$rm" "$(size "$work/ours.sqsh")" "$(size "$work/ref.sqsh")"
            ;;
        extract)
            for comp in gzip xz; do
                mksquashfs "$corpus/rootfs" "$work/x.sqsh" -noappend -no-progress -quiet -comp "$comp" >/dev/null
                read -r ot om < <(time_cmd ours sh -c "rm -rf '$work/xo'; '$bin' extract '$work/x.sqsh' '$work/xo'")
                read -r rt rm < <(time_cmd ref sh -c "rm -rf '$work/xr'; unsquashfs -q -n -d '$work/xr' '$work/x.sqsh'")
                row "extract-$comp" "$ot" "$om" "$rt" "$rm" 0 0
                rm -rf "$work/xo" "$work/xr"
            done
            ;;
        *) echo "unknown step $step"; exit 2 ;;
    esac
done
