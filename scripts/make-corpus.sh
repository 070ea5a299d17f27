#!/usr/bin/env bash
# Build the benchmark corpus: a real Debian bookworm root filesystem (debootstrap minbase plus a
# kernel, python3 and openssh, as DESIGN.md measures), packed as rootfs.txz, plus the unpacked
# tree. Needs root and a reachable Debian mirror (MIRROR, default the one apt uses).
#
#   scripts/make-corpus.sh [OUTDIR]      (default: target/corpus)
set -euo pipefail
out=${1:-target/corpus}
mirror=${MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || echo http://deb.debian.org/debian)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ -f "$out/rootfs.txz" ] && [ -d "$out/rootfs" ]; then
    echo "corpus already at $out"; exit 0
fi
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap; }
rm -rf "$out/rootfs"
debootstrap --variant=minbase --include=linux-image-amd64,python3,openssh-server,openssh-client,initramfs-tools,iputils-ping \
    bookworm "$out/rootfs" "$mirror" >"$out/debootstrap.log" 2>&1 || { tail -20 "$out/debootstrap.log"; exit 1; }
# Give the tree the attributes a real image carries and our fidelity rules care about.
setcap cap_net_raw+ep "$out/rootfs/usr/bin/ping" 2>/dev/null || setfattr -n security.capability -v 0sAQAAAgAgAAAAAAAAAAAAAAAAAAA= "$out/rootfs/usr/bin/ping" 2>/dev/null || true
rm -f "$out/rootfs/etc/resolv.conf"; ln -s ../run/systemd/resolve/stub-resolv.conf "$out/rootfs/etc/resolv.conf"
tar --xattrs --xattrs-include='*' --numeric-owner -C "$out/rootfs" -cf - . | xz -T0 -6 > "$out/rootfs.txz.tmp"
mv "$out/rootfs.txz.tmp" "$out/rootfs.txz"
du -sh "$out/rootfs" "$out/rootfs.txz"
find "$out/rootfs" | wc -l
