#!/usr/bin/env bash
# A pax-sparse member of a large apparent size (default 1 TiB, a few bytes of data), converted
# by imsctl and by tar2sqfs side by side: time, peak RSS and image size of each.
#
#   scripts/bench-sparse.sh [SIZE]      (truncate(1) sizes: 1T, 64G, ...; default 1T)
#
# tar2sqfs reads and checks every hole block; imsctl takes the holes from the sparse map and
# never reads them, so its time does not grow with the apparent size. Expect minutes for
# tar2sqfs at 1T; use 64G for a quicker comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1T}
cargo build --release -q
bin=$PWD/target/release/imsctl
work=$(mktemp -d "${TMPDIR:-/var/tmp}/imsctl-sparse.XXXXXX")
trap 'rm -rf "$work"' EXIT
export SOURCE_DATE_EPOCH=1700000000

mkdir "$work/tree"
truncate -s "$size" "$work/tree/disk.img"
printf start | dd of="$work/tree/disk.img" conv=notrunc status=none
bytes=$(stat -c %s "$work/tree/disk.img")
printf end | dd of="$work/tree/disk.img" bs=1 seek=$((bytes - 3)) conv=notrunc status=none
tar --sparse --format=pax -C "$work/tree" -cf "$work/sparse.tar" disk.img

measure() { # measure LABEL CMD...: prints LABEL seconds peak-RSS
    local label=$1; shift
    /usr/bin/time -f '%e %M' -o "$work/time" "$@" >/dev/null 2>"$work/err" || { echo "$label failed:"; cat "$work/err"; exit 1; }
    read -r t m < "$work/time"
    printf '%-9s %9.2fs  rss %6d KiB' "$label" "$t" "$m"
}

echo "apparent size $bytes bytes, archive $(stat -c %s "$work/sparse.tar") bytes"
measure imsctl "$bin" convert "$work/sparse.tar" "$work/imsctl.sqsh"
echo "  image $(stat -c %s "$work/imsctl.sqsh") bytes"
measure tar2sqfs sh -c "tar2sqfs -q -f '$work/tar2sqfs.sqsh' < '$work/sparse.tar'"
echo "  image $(stat -c %s "$work/tar2sqfs.sqsh") bytes"
unsquashfs -lln "$work/imsctl.sqsh" | grep disk.img
