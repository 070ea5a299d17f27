#!/usr/bin/env bash
# Regenerate testdata/fixtures/: SquashFS images and tar archives of one small deterministic tree,
# made by other tools (mksquashfs, tar2sqfs, gensquashfs, backhand, GNU tar), and tree.txt, the
# tree's listing as Python's os.lstat and os.getxattr see it on disk, independent of our code.
# crates/squashfs/tests/fixtures.rs reads every fixture with our reader and compares it with
# tree.txt. The fixtures are committed; run this only to change them (testdata/README.md says
# which tool versions made the committed ones).
#
# Needs root (a character device, foreign owners, security.capability), squashfs-tools,
# squashfs-tools-ng, GNU tar, xz, python3, attr (setfattr) and cargo (the backhand image is
# written by a test of the engine crate).
#
#   scripts/make-testdata.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=$repo/testdata/fixtures
[ "$(id -u)" = 0 ] || { echo "run as root (character device, owners, security.capability)" >&2; exit 1; }
for tool in mksquashfs tar2sqfs gensquashfs tar xz python3 setfattr; do
    command -v "$tool" >/dev/null || { echo "$tool is needed (scripts/deps.sh installs it)" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tree=$work/tree
mkdir -p "$tree"
cd "$tree"

# Deterministic bytes: random (incompressible) or text (compressible), from a seed.
random_bytes() { python3 -c "import random,sys; r=random.Random($2); sys.stdout.buffer.write(r.randbytes($1))"; }
text_bytes() {
    python3 -c "
import random, sys
r = random.Random($2)
words = ['image', 'squashfs', 'block', 'fragment', 'inode', 'xattr', 'kernel', 'root']
out = bytearray()
while len(out) < $1:
    out += (' '.join(r.choice(words) for _ in range(9)) + '\\n').encode()
sys.stdout.buffer.write(bytes(out[:$1]))"
}
# Compressible even in small blocks and small windows: a 256-byte text chunk repeated.
repeated_text() { text_bytes 256 "$2" > "$work/chunk"; python3 -c "import sys; c=open(sys.argv[1],'rb').read(); sys.stdout.buffer.write((c * ($1 // 256 + 1))[:$1])" "$work/chunk"; }

mkdir -p dir/sub/deeper empty-dir sticky many
: > empty
printf 'hello, fixtures\n' > hello.txt
printf 'one inode, two names\n' > hardlink-a
ln hardlink-a dir/sub/hardlink-b
random_bytes 10000 1 > spans-blocks.bin          # 4K blocks: 2 full blocks and a 1808-byte tail
text_bytes 9000 2 > fragment-tail.bin           # 4K blocks: 2 full blocks and an 808-byte tail
repeated_text 1200000 3 > big-text.txt          # 1M blocks: one full block and a tail
random_bytes 600 4 > dup-a; cp dup-a dir/dup-b  # same content: deduplicated by the packers
printf 'deep\n' > dir/sub/deeper/file.txt
# A sparse file: data at 0, at 1 MiB and at its end (3 MiB), holes between.
printf 'start' > sparse.bin
printf 'middle' | dd of=sparse.bin bs=1 seek=$((1024 * 1024)) conv=notrunc status=none
truncate -s $((3 * 1024 * 1024 - 3)) sparse.bin; printf 'end' >> sparse.bin
for i in $(seq 1 20); do text_bytes $((i * 97)) $((100 + i)) > "many/file-$i.txt"; done
# Names longer than ustar's 100-byte name field, and a path longer than its 255 bytes in all.
long_dir=$(printf 'd%.0s' $(seq 120))
long_file=$(printf 'f%.0s' $(seq 200))
mkdir "$long_dir"; printf 'long\n' > "$long_dir/$long_file"
ln -s hello.txt rel-link
ln -s ../../hello.txt dir/sub/up-link
ln -s /nonexistent/target abs-link
ln -s "$long_dir/$long_file" long-link
mkfifo fifo
mknod null c 1 3
mknod disk b 259 65536
cp hello.txt setuid-bin

chmod 644 empty hello.txt hardlink-a spans-blocks.bin fragment-tail.bin big-text.txt dup-a \
    dir/dup-b dir/sub/deeper/file.txt sparse.bin many/* "$long_dir/$long_file"
chmod 755 dir dir/sub dir/sub/deeper many "$long_dir"
chmod 700 empty-dir
chmod 1777 sticky
chmod 4755 setuid-bin
chmod 600 fifo; chmod 666 null; chmod 660 disk
chown 1234:5678 hello.txt
chown 0:6 disk
chown -h 42:42 rel-link
setfattr -n user.comment -v 'hello' hello.txt
setfattr -n user.binary -v 0x00ff10 hello.txt
setfattr -n user.dir-note -v 'a directory' dir/sub
setfattr -n user.on-a-link -v 'shared' hardlink-a
# cap_net_raw+ep, in the VFS_CAP_REVISION_2 layout the kernel stores.
setfattr -n security.capability -v 0sAQAAAgAgAAAAAAAAAAAAAAAAAAA= setuid-bin

chmod 755 "$tree"
find "$tree" -exec touch -h -d @1700000000 {} +
touch -h -d @1600000000 hello.txt dir/sub/deeper
cd "$repo"

rm -rf "$out"
mkdir -p "$out"

# The expected listing, one line per entry (see testdata/README.md for the columns).
python3 - "$tree" > "$out/tree.txt" <<'PY'
import hashlib, os, stat, sys
root = sys.argv[1]
paths = []
for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
        paths.append(os.path.relpath(os.path.join(dirpath, name), root).encode())
paths.sort()
first_name = {}
def kind(st):
    for test, letter in ((stat.S_ISDIR, 'd'), (stat.S_ISREG, 'f'), (stat.S_ISLNK, 'l'),
                         (stat.S_ISCHR, 'c'), (stat.S_ISBLK, 'b'), (stat.S_ISFIFO, 'p'),
                         (stat.S_ISSOCK, 's')):
        if test(st.st_mode):
            return letter
def line(rel):
    full = os.path.join(root.encode(), rel) if rel else root.encode()
    st = os.lstat(full)
    k = kind(st)
    size, target, link, digest = '-', '-', '-', '-'
    if k == 'f':
        size = str(st.st_size)
        with open(full, 'rb') as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        key = (st.st_dev, st.st_ino)
        if key in first_name:
            link = first_name[key].decode()
        else:
            first_name[key] = rel
    elif k in 'cb':
        size = '%d,%d' % (os.major(st.st_rdev), os.minor(st.st_rdev))
    elif k == 'l':
        target = os.readlink(full).decode()
    names = sorted(os.listxattr(full, follow_symlinks=False))
    xattrs = ','.join('%s=%s' % (n, os.getxattr(full, n, follow_symlinks=False).hex())
                      for n in names) or '-'
    fields = [rel.decode() or '.', k, '%04o' % stat.S_IMODE(st.st_mode), str(st.st_uid),
              str(st.st_gid), str(int(st.st_mtime)), size, target, link, xattrs, digest]
    return '\t'.join(fields)
print('# path\ttype\tmode\tuid\tgid\tmtime\tsize|major,minor\tsymlink-target\thardlink-of\txattrs(name=hex)\tsha256')
print(line(b''))
for p in paths:
    print(line(p))
PY

# mksquashfs: every compressor, 4 KiB blocks (tail ends packed into fragments) and 1 MiB blocks
# (the default: a tail end stays a short last block). lzo is there to be refused with a clear
# error: the engine has no LZO codec.
for comp in gzip xz zstd lz4; do
    mksquashfs "$work/tree" "$out/mksquashfs-$comp-4k.sqsh" -comp "$comp" -b 4096 -tailends \
        -mkfs-time 1700000000 -processors 1 -no-progress -quiet
    mksquashfs "$work/tree" "$out/mksquashfs-$comp-1m.sqsh" -comp "$comp" -b 1048576 \
        -mkfs-time 1700000000 -processors 1 -no-progress -quiet
done
mksquashfs "$work/tree" "$out/mksquashfs-lzo-4k.sqsh" -comp lzo -b 4096 \
    -mkfs-time 1700000000 -processors 1 -no-progress -quiet

# GNU tar: the GNU format (././@LongLink names, old GNU sparse, no xattrs) and pax (path records,
# SCHILY.xattr.*, sparse 1.0), both with a hardlink; xz-compressed to keep them small.
tar_common=(--sort=name --numeric-owner --sparse -C "$work/tree")
tar --format=gnu "${tar_common[@]}" -cf "$work/gnu.tar" .
tar --format=pax --sparse-version=1.0 --xattrs --xattrs-include='*' \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime "${tar_common[@]}" -cf "$work/pax.tar" .
xz -9e -T1 -c "$work/gnu.tar" > "$out/gnu.tar.xz"
xz -9e -T1 -c "$work/pax.tar" > "$out/pax.tar.xz"

# squashfs-tools-ng: tar2sqfs from the pax archive, gensquashfs from the directory.
SOURCE_DATE_EPOCH=1700000000 tar2sqfs --quiet --compressor zstd --block-size 65536 "$out/tar2sqfs-zstd.sqsh" < "$work/pax.tar"
SOURCE_DATE_EPOCH=1700000000 gensquashfs --quiet --pack-dir "$work/tree" --keep-time --keep-xattr --compressor lz4 \
    --block-size 8192 --num-jobs 1 "$out/gensquashfs-lz4.sqsh"

# backhand: written by an ignored test of the engine crate (backhand is a dev-dependency).
IMSCTL_FIXTURE_TREE=$work/tree IMSCTL_FIXTURE_OUT=$out/backhand-xz.sqsh \
    cargo test --release -q -p imsctl-squashfs --test fixtures -- --ignored --exact write_backhand_fixture

{
    echo "mksquashfs: $(mksquashfs -version 2>&1 | head -1)"
    echo "tar2sqfs: $(tar2sqfs --version 2>&1 | head -1)"
    echo "gensquashfs: $(gensquashfs --version 2>&1 | head -1)"
    echo "tar: $(tar --version | head -1)"
    echo "xz: $(xz --version | head -1)"
    echo "backhand: $(grep -A1 '^name = "backhand"' Cargo.lock | sed -n 's/version = "\(.*\)"/\1/p')"
} > "$out/VERSIONS"
du -ab "$out" | sort -n | tail -20
