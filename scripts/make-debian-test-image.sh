#!/usr/bin/env bash
# Make the Debian test image: a real Debian bookworm root (debootstrap minbase, ~30 s with a
# reachable mirror) with a stand-in kernel and initrd under /boot, and a local package,
# /opt/debs/imsctl-svc_1.0_all.deb, whose postinst does what real packages do: create a system
# user and a 0700 directory owned by it. Packed as a tar. Needs root and debootstrap.
#
#   scripts/make-debian-test-image.sh [OUT.tar]     (default: testdata/generated/debian-mini.tar)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-testdata/generated/debian-mini.tar}
[ -f "$out" ] && exit 0
mirror=${MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || echo http://deb.debian.org/debian)}
command -v debootstrap >/dev/null || { echo "debootstrap is needed: apt-get install debootstrap" >&2; exit 1; }
command -v dpkg-deb >/dev/null || { echo "dpkg-deb is needed" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
rm -f "$root"/var/cache/apt/archives/*.deb
head -c 1000000 /dev/urandom > "$root/boot/vmlinuz-6.1.0-mini"
head -c 1000000 /dev/urandom > "$root/boot/initrd.img-6.1.0-mini"
ln -s boot/vmlinuz-6.1.0-mini "$root/vmlinuz"
ln -s boot/initrd.img-6.1.0-mini "$root/initrd.img"

pkg=$work/pkg
mkdir -p "$pkg/DEBIAN" "$pkg/usr/share/doc/imsctl-svc"
cat > "$pkg/DEBIAN/control" <<'C'
Package: imsctl-svc
Version: 1.0
Architecture: all
Maintainer: imsctl tests <tests@imsctl.invalid>
Description: a service package as real ones are: a system user and a private directory
C
cat > "$pkg/DEBIAN/postinst" <<'P'
#!/bin/sh
set -e
if ! getent passwd imsctl-svc >/dev/null; then
    useradd --system --home-dir /var/lib/imsctl-svc --no-create-home --shell /usr/sbin/nologin imsctl-svc
fi
install -d -m 0700 -o imsctl-svc -g imsctl-svc /var/lib/imsctl-svc
echo private > /var/lib/imsctl-svc/state
chown imsctl-svc:imsctl-svc /var/lib/imsctl-svc/state
chmod 0600 /var/lib/imsctl-svc/state
P
chmod 0755 "$pkg/DEBIAN/postinst"
echo "imsctl test package" > "$pkg/usr/share/doc/imsctl-svc/README"
mkdir -p "$root/opt/debs"
dpkg-deb --root-owner-group --build "$pkg" "$root/opt/debs/imsctl-svc_1.0_all.deb" >/dev/null
mkdir -p "$(dirname "$out")"
tar --xattrs --xattrs-include='*' --numeric-owner -C "$root" -cf "$out.tmp" .
mv "$out.tmp" "$out"
echo "made $out ($(du -h "$out" | cut -f1))"
