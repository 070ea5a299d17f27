#!/usr/bin/env bash
# Make the bundled test image: a tiny but real root filesystem (busybox-static, /etc, a kernel and
# an initrd under /boot, a file with a capability, a dangling resolv.conf symlink), packed as
# testdata/tiny-rootfs.txz. Made on first use; needs busybox-static (apt-get install busybox-static).
#
#   scripts/make-test-image.sh [OUT.txz]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-testdata/tiny-rootfs.txz}
[ -f "$out" ] && exit 0
busybox=$(command -v busybox || true)
if [ -z "$busybox" ] || ! file -L "$busybox" 2>/dev/null | grep -q static; then
    busybox=/bin/busybox
fi
[ -x "$busybox" ] || { echo "busybox-static is needed: apt-get install busybox-static" >&2; exit 1; }
root=$(mktemp -d)
chmod 755 "$root"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,proc,sys,dev,run,var/log,boot,lib/modules/6.1.0-tiny,mnt}
chmod 1777 "$root/tmp"; chmod 700 "$root/root"
cp "$busybox" "$root/bin/busybox"
for app in sh ash ls cat cp mv rm mkdir touch echo id ps mount umount chmod chown ln grep sed head tail wc sleep uname hostname find stat env true false test printf md5sum date; do
    ln -s busybox "$root/bin/$app"
done
cat > "$root/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
P
cat > "$root/etc/group" <<'G'
root:x:0:
daemon:x:1:
nogroup:x:65534:
G
echo tiny > "$root/etc/hostname"
printf 'NAME="tiny"\nID=tiny\nVERSION_ID=1\n' > "$root/etc/os-release"
ln -s ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
head -c 2000000 /dev/urandom > "$root/boot/vmlinuz-6.1.0-tiny"
head -c 3000000 /dev/urandom > "$root/boot/initrd.img-6.1.0-tiny"
ln -s vmlinuz-6.1.0-tiny "$root/boot/vmlinuz"
ln -s initrd.img-6.1.0-tiny "$root/boot/initrd"
echo 'modules' > "$root/lib/modules/6.1.0-tiny/modules.dep"
cp "$busybox" "$root/usr/bin/ping"
setfattr -n security.capability -v 0sAQAAAgAgAAAAAAAAAAAAAAAAAAA= "$root/usr/bin/ping" 2>/dev/null || true
chown 1:1 "$root/var/log"
mkdir -p "$(dirname "$out")"
tar --xattrs --xattrs-include='*' --numeric-owner -C "$root" -cJf "$out.tmp" .
mv "$out.tmp" "$out"
echo "made $out ($(du -h "$out" | cut -f1))"
