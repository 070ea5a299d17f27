#!/usr/bin/env bash
# Repack after a small change, side by side with the IMS way, on the real corpus of
# scripts/make-corpus.sh. The change rewrites ~1% of the files (every 25th file under /usr/share).
#
#   ours:  imsctl jobs create (mount mode) → jobs exec CHANGE → jobs complete (the repack, which
#          copies unchanged files' compressed blocks from the base) ; and the same with --full-repack
#   IMS:   unsquashfs base → chroot CHANGE → mksquashfs (gzip, as IMS)
# Prints the median of RUNS for each step and the ratios, and the peak RSS (max resident set,
# /usr/bin/time) of `jobs complete` (incremental: the largest of the runs).
#
#   scripts/bench-repack.sh [CORPUS_DIR] [RUNS]      (defaults: target/corpus, 3)
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${1:-target/corpus}
runs=${2:-3}
[ -d "$corpus/rootfs" ] || scripts/make-corpus.sh "$corpus"
cargo build --release -q
bin=$PWD/target/release/imsctl
work=$(mktemp -d "${TMPDIR:-/var/tmp}/imsctl-bench-repack.XXXXXX")
trap 'rm -rf "$work"' EXIT
store=$work/store
change='find /usr/share -type f | sort | awk "NR % 25 == 0" | while read -r f; do echo "# changed" >> "$f"; done'

secs() { local s=$(date +%s.%N); "$@" >/dev/null 2>"$work/err" || { cat "$work/err"; exit 1; }; echo "$(date +%s.%N) - $s" | bc; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

"$bin" --store "$store" -q images import "$corpus/rootfs" --name base --format json > "$work/base.json"
base=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$work/base.json")
changed=$(cd "$corpus/rootfs" && find usr/share -type f | sort | awk 'NR % 25 == 0' | wc -l)
echo "corpus: $(du -sh "$corpus/rootfs" | cut -f1), $(find "$corpus/rootfs" | wc -l) entries; change rewrites $changed files; runs=$runs (medians)"

ours() { # ours EXTRA_COMPLETE_FLAGS → prints the complete (repack+publish) time
    local job
    job=$("$bin" --store "$store" -q jobs create --artifact-id "$base" --image-root-archive-name bench --mode mount --ssh-containers-jail true --format json \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    "$bin" --store "$store" -q jobs exec "$job" -- /bin/bash -c "$change" >/dev/null
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    secs /usr/bin/time -f %M -a -o "$work/rss$*" "$bin" --store "$store" -q jobs complete "$job" "$@"
}

ims() { # prints the mksquashfs time (the IMS repack step)
    rm -rf "$work/root" "$work/out.sqsh"
    unsquashfs -q -n -d "$work/root" "$store/artifacts/$base/rootfs" >/dev/null
    chroot "$work/root" /bin/bash -c "$change"
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    secs mksquashfs "$work/root" "$work/out.sqsh" -noappend -no-progress -quiet
}

inc=(); full=(); ref=()
for _ in $(seq "$runs"); do
    inc+=("$(ours)"); full+=("$(ours --full-repack)"); ref+=("$(ims)")
done
i=$(printf '%s\n' "${inc[@]}" | median); f=$(printf '%s\n' "${full[@]}" | median); r=$(printf '%s\n' "${ref[@]}" | median)
rss=$(sort -n "$work/rss" | tail -1); rss_full=$(sort -n "$work/rss--full-repack" | tail -1)
awk -v i="$i" -v f="$f" -v r="$r" -v m="$rss" -v mf="$rss_full" 'BEGIN {
    printf "repack (incremental, imsctl jobs complete)   %7.2fs   %6.3fx of mksquashfs\n", i, i/r
    printf "repack (--full-repack, imsctl jobs complete)  %7.2fs   %6.3fx of mksquashfs\n", f, f/r
    printf "IMS repack (mksquashfs of the changed tree)   %7.2fs\n", r
    printf "peak RSS of jobs complete: incremental %.0f MiB, --full-repack %.0f MiB (max of the runs)\n", m/1024, mf/1024 }'
