#!/usr/bin/env bash
# Install the system tools the tests and the demo use (as root, on Debian), only those missing:
# the reference SquashFS tools to cross-check against, busybox for the test image, attr tools.
set -euo pipefail
pkgs=(squashfs-tools squashfs-tools-ng squashfuse fuse3 busybox-static attr tmux xz-utils zstd file)
need=()
for pkg in "${pkgs[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
