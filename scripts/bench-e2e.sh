#!/usr/bin/env bash
# The whole path, side by side with an IMS-style script, on the real corpus: .txz → customized
# (rewrite every 25th file under /usr/share, ~1% of the files) → published to a local S3 server
# (moto_server on loopback).
#
#   ours: imsctl customize rootfs.txz --run CHANGE --publish s3://bench
#   IMS:  tar -xJf, chroot CHANGE, mksquashfs (gzip), aws s3 cp of rootfs, kernel, initrd
#
#   scripts/bench-e2e.sh [CORPUS_DIR]      (default: target/corpus); one run of each
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${1:-target/corpus}
[ -f "$corpus/rootfs.txz" ] || scripts/make-corpus.sh "$corpus"
cargo build --release -q
bin=$PWD/target/release/imsctl
work=$(mktemp -d "${TMPDIR:-/var/tmp}/imsctl-bench-e2e.XXXXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
moto=$!
trap 'kill $moto 2>/dev/null; rm -rf "$work"' EXIT
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=us-east-1 AWS_ENDPOINT_URL=http://127.0.0.1:$port
for _ in $(seq 50); do aws s3 mb s3://bench >/dev/null 2>&1 && break; sleep 0.2; done
change='find /usr/share -type f | sort | awk "NR % 25 == 0" | while read -r f; do echo "# changed" >> "$f"; done'
now() { date +%s.%N; }

sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
t0=$(now)
/usr/bin/time -f %M -o "$work/rss" "$bin" --store "$work/store" -q customize "$corpus/rootfs.txz" --name e2e --run "$change" --publish s3://bench >/dev/null
t1=$(now)

sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
t2=$(now)
mkdir "$work/root"
tar --xattrs --xattrs-include='*' --numeric-owner -xJf "$corpus/rootfs.txz" -C "$work/root"
chroot "$work/root" /bin/bash -c "$change"
mksquashfs "$work/root" "$work/rootfs" -noappend -no-progress -quiet >/dev/null
id=$(python3 -c 'import uuid; print(uuid.uuid4())')
aws s3 cp --quiet "$work/rootfs" "s3://bench/$id/rootfs"
aws s3 cp --quiet "$work/root/boot/$(readlink "$work/root/vmlinuz" 2>/dev/null | xargs basename 2>/dev/null || ls "$work/root/boot" | grep vmlinuz | head -1)" "s3://bench/$id/kernel"
aws s3 cp --quiet "$work/root/boot/$(ls "$work/root/boot" | grep initrd | head -1)" "s3://bench/$id/initrd"
t3=$(now)
awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v rss="$(cat "$work/rss")" 'BEGIN {
    printf "imsctl customize .txz → S3   %7.2fs\n", b-a
    printf "IMS-style script            %7.2fs\n", d-c
    printf "ratio                       %7.3fx\n", (b-a)/(d-c)
    printf "imsctl peak RSS             %7.0f MiB\n", rss/1024 }'
