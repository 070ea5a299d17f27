#!/usr/bin/env bash
# Make a directory tree holding every item of DESIGN.md's fidelity list, for the engine's tests
# and for comparing imsctl with mksquashfs/unsquashfs by hand.
#
#   scripts/make-fixture-tree.sh DIR [--huge]
#
# Needs root (devices, foreign owners, trusted.* and security.* xattrs). --huge adds a sparse
# 5 GiB file (a file larger than 4 GiB forces 64-bit inode fields).
set -euo pipefail
dir=${1:?usage: make-fixture-tree.sh DIR [--huge]}
huge=${2:-}
rm -rf "$dir"
mkdir -p "$dir"
cd "$dir"

# Deterministic pseudo-random bytes (incompressible enough to exercise real blocks).
bytes() { python3 -c "import random,sys; r=random.Random($2); sys.stdout.buffer.write(bytes(r.getrandbits(8) for _ in range($1)))"; }

mkdir -p files dirs/empty links devs owners modes xattrs
: > files/empty
printf 'x' > files/one-byte
printf 'hello, image\n' > files/small
bytes 100000 1 > files/fragment-sized
bytes 131072 2 > files/exactly-one-block
bytes 1000000 3 > files/multi-block
python3 -c "import sys; sys.stdout.write('compressible line of text for the packer\\n' * 48000)" > files/compressible
# Two files that share their first 128 KiB and differ after it: never the same file.
bytes 131072 4 > files/prefix-a; cp files/prefix-a files/prefix-b
printf 'tail of a' >> files/prefix-a; printf 'tail of b' >> files/prefix-b
# Whole-file duplicates, in blocks and in a fragment.
cp files/multi-block files/multi-block-copy
cp files/small files/small-copy
# A sparse file: data, a 1 MiB hole, data.
printf 'start' > files/sparse; truncate -s 1048576 files/sparse; printf 'end' >> files/sparse
truncate -s 3145728 files/sparse
if [ "$huge" = --huge ]; then
    printf 'head' > files/huge; truncate -s 5G files/huge; printf 'tail' >> files/huge
fi

# Hardlinks: a group of three, one in another directory.
bytes 5000 5 > files/linked; ln files/linked files/linked-2; ln files/linked dirs/linked-3

# Directories: 10k entries, a 255-byte name, a deep path.
mkdir dirs/many
( cd dirs/many && seq -f 'entry-%05g' 0 9999 | xargs touch )
long=$(printf 'n%.0s' $(seq 255)); echo long > "dirs/$long"
deep=dirs/deep; for i in $(seq 40); do deep="$deep/level-$i"; done; mkdir -p "$deep"; echo bottom > "$deep/file"

# Symlinks: relative, absolute, dangling, to a directory.
ln -s ../files/small links/relative
ln -s /etc/hostname links/absolute
ln -s /no/such/target links/dangling
ln -s ../dirs links/to-dir

# Device nodes, fifo, socket.
mknod devs/null c 1 3; mknod devs/sda b 8 0; mknod devs/big-minor c 254 70000
mkfifo devs/fifo
python3 -c "import socket; s=socket.socket(socket.AF_UNIX); s.bind('devs/socket')"

# Owners, including ones no ordinary user can map.
echo o > owners/user; chown 1234:5678 owners/user
echo o > owners/nobody; chown 65534:65534 owners/nobody
echo o > owners/high; chown 3000000000:3000000001 owners/high
chown -h 4321:8765 links/relative

# Modes: setuid, setgid, sticky, odd permissions.
echo m > modes/setuid; chmod 4755 modes/setuid
echo m > modes/setgid; chmod 2711 modes/setgid
mkdir modes/sticky; chmod 1777 modes/sticky
echo m > modes/none; chmod 000 modes/none

# Xattrs in every namespace SquashFS stores.
echo x > xattrs/ping
setfattr -n security.capability -v 0sAQAAAgAgAAAAAAAAAAAAAAAAAAA= xattrs/ping
setfattr -n user.comment -v "a user attribute" xattrs/ping
setfattr -n trusted.overlay.opaque -v y xattrs/ping
echo x > xattrs/labelled
setfattr -n security.selinux -v "system_u:object_r:bin_t:s0" xattrs/labelled
setfattr -n user.comment -v "a user attribute" xattrs/labelled
setfattr -n user.dir-attr -v "on a directory" xattrs

# Fixed times, so listings compare across runs.
find . -exec touch -h -d '2024-02-29 12:34:56 UTC' {} +
touch -h -d '1999-12-31 23:59:59 UTC' files/small
