#!/usr/bin/env bash
# Rebuild the fuzz seed corpus under testdata/fuzz/<target>/: small valid inputs that reach deep
# into each parser (the fuzzer mutates from there). The corpus is committed; run this only to
# change it. Needs root (devices, trusted.*/security.* xattrs, foreign owners), mksquashfs,
# GNU tar, gzip, xz, zstd, and a built imsctl (target/release/imsctl).
#
#   scripts/make-fuzz-corpus.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
imsctl=${IMSCTL:-$root/target/release/imsctl}
out=$root/testdata/fuzz
[ -x "$imsctl" ] || { echo "build imsctl first: cargo build --release" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (devices, xattrs, owners)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export SOURCE_DATE_EPOCH=1700000000

# A tiny tree with one of every kind of entry the readers must handle; content kept small so
# that each seed stays a few KiB (4 KiB blocks make the 10 KiB file span blocks and a fragment).
tree=$work/tree
mkdir -p "$tree/dir/sub" "$tree/empty-dir"
printf 'hello\n' > "$tree/small"
python3 -c "import random,sys; r=random.Random(7); sys.stdout.buffer.write(bytes(r.getrandbits(8) for _ in range(10000)))" > "$tree/dir/blocks"
truncate -s 40000 "$tree/dir/sparse"; printf 'end' >> "$tree/dir/sparse"
ln "$tree/small" "$tree/dir/sub/hardlink"
ln -s ../small "$tree/dir/rel-link"
ln -s /nowhere/dangling "$tree/abs-link"
mkfifo "$tree/fifo"
mknod "$tree/null" c 1 3
mknod "$tree/disk" b 259 65536
long=$(printf 'n%.0s' $(seq 255))
printf 'long\n' > "$tree/dir/$long"
setfattr -n user.comment -v hello "$tree/small"
setfattr -n security.capability -v 0sAQAAAgAgAAAAAAAAAAAAAAAAAAA= "$tree/dir/blocks"
setfattr -n trusted.overlay.opaque -v y "$tree/dir/sub"
chown 1234:5678 "$tree/small"
chmod 4755 "$tree/dir/blocks"
chmod 1777 "$tree/empty-dir"
find "$tree" -exec touch -h -d @1700000000 {} +

# --- squashfs_reader: the tree through mksquashfs (every compressor, layouts) and our writer.
rd=$out/squashfs_reader
rm -rf "$rd"; mkdir -p "$rd"
for comp in gzip xz zstd lz4; do
    mksquashfs "$tree" "$rd/mksquashfs-$comp.sqsh" -comp "$comp" -b 4096 -nopad -quiet -no-progress >/dev/null
done
mksquashfs "$tree" "$rd/mksquashfs-uncompressed.sqsh" -noI -noD -noF -noX -b 4096 -nopad -quiet -no-progress >/dev/null
mksquashfs "$tree" "$rd/mksquashfs-no-fragments-no-exports.sqsh" -no-fragments -no-exports -b 4096 -nopad -quiet -no-progress >/dev/null
mksquashfs "$tree" "$rd/mksquashfs-tail-ends-no-xattrs.sqsh" -always-use-fragments -no-xattrs -b 4096 -nopad -quiet -no-progress >/dev/null
# A directory of many names: extended directory inodes with an index.
many=$work/many
mkdir -p "$many/d"
for i in $(seq 1 300); do : > "$many/d/entry-with-a-longish-name-$i"; done
find "$many" -exec touch -h -d @1700000000 {} +
mksquashfs "$many" "$rd/mksquashfs-dir-index.sqsh" -b 4096 -nopad -quiet -no-progress >/dev/null
"$imsctl" pack "$tree" "$rd/imsctl-pack-gzip.sqsh" --block-size 4K -q >/dev/null
"$imsctl" pack "$tree" "$rd/imsctl-pack-zstd.sqsh" --comp zstd --block-size 4K -q >/dev/null

# --- tar_source: the tree as GNU tar writes it in each format, and compressed.
td=$out/tar_source
rm -rf "$td"; mkdir -p "$td"
(cd "$tree" && tar -b 1 --format=pax --xattrs --xattrs-include='*' --sparse --numeric-owner -cf "$td/pax-xattrs-sparse.tar" .)
(cd "$tree" && tar -b 1 --format=gnu --sparse --numeric-owner -cf "$td/gnu-longname-sparse.tar" .)
(cd "$tree" && tar -b 1 --format=ustar --numeric-owner -cf "$td/ustar.tar" small dir/rel-link dir/sub fifo null)
(cd "$tree" && tar -b 1 --format=pax --sparse --sparse-version=0.1 -cf "$td/pax-sparse-0.1.tar" dir/sparse)
(cd "$tree" && tar -b 1 --format=pax --sparse --sparse-version=0.0 -cf "$td/pax-sparse-0.0.tar" dir/sparse)
(cd "$tree" && tar -b 1 --format=v7 -cf "$td/v7.tar" small dir/rel-link)
(cd "$tree" && tar -b 1 --format=pax --pax-option='globexthdr.name=g,uid=42' -cf "$td/pax-global-header.tar" small)
(cd "$tree" && tar -b 1 --format=pax -cf - small dir/sub) | gzip -n -1 > "$td/pax.tar.gz"
(cd "$tree" && tar -b 1 --format=pax -cf - small dir/sub) | xz -0 -C crc32 > "$td/pax.tar.xz"
(cd "$tree" && tar -b 1 --format=pax -cf - small dir/sub) | zstd -q -1 > "$td/pax.tar.zst"
# Members that meet earlier ones: a later file replacing an earlier one, a directory again.
(cd "$tree" && tar -b 1 --format=pax -cf "$td/replaced-member.tar" small small dir/sub dir/sub)

# --- records: one tag byte (the kind; see fuzz/src/exercise.rs) and the text.
rcd=$out/records
rm -rf "$rcd"; mkdir -p "$rcd"
seed() { printf "\\x$(printf %02x "$1")" > "$rcd/$2"; cat >> "$rcd/$2"; }
seed 0 image.json <<'EOF'
{
    "created": "2018-12-04T17:25:52.482514+00:00",
    "id": "4e78488d-4d92-4675-9d83-97adfc17cb19",
    "link": {"etag": "", "path": "s3://boot-images/4e78488d-4d92-4675-9d83-97adfc17cb19/manifest.json", "type": "s3"},
    "name": "sles_15_image.squashfs",
    "arch": "x86_64",
    "metadata": {"x": [1, 2.5, null, true]}
}
EOF
seed 1 job.json <<'EOF'
{
    "status": "waiting_on_user",
    "enable_debug": false,
    "kernel_file_name": "vmlinuz",
    "artifact_id": "4e78488d-4d92-4675-9d83-97adfc17cb19",
    "build_env_size": 15,
    "job_type": "customize",
    "id": "ad5163d2-398d-4e93-94f0-2f439f114fe7",
    "image_root_archive_name": "cray-sles15-barebones",
    "initrd_file_name": "initrd",
    "kernel_parameters_file_name": "kernel-parameters",
    "resultant_image_id": "d88521c3-b339-43bc-afda-afdfda126388",
    "created": "2018-11-21T18:22:53.409405+00:00",
    "public_key_id": "b06d6153-1b7c-4e2b-a91b-d4c8d3c0c0c5",
    "arch": "aarch64",
    "ssh_containers": [{"status": "ready", "jail": false, "name": "customize", "connection_info": {"customer_access": {"host": "x", "port": 22}}}],
    "work_dir": "/var/lib/imsctl/work/ad5163d2-398d-4e93-94f0-2f439f114fe7",
    "mode": "mount",
    "error_message": "failed to pack",
    "change_report": {"added": ["/etc/a"], "changed": [], "removed": ["/b"]}
}
EOF
seed 2 public-key.json <<'EOF'
{"public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKf2 user@host", "id": "b06d6153-1b7c-4e2b-a91b-d4c8d3c0c0c5", "name": "admin", "created": "2018-12-04T17:25:52+00:00"}
EOF
seed 3 manifest.json <<'EOF'
{
    "artifacts": [
        {"link": {"etag": "f04af5f34635ae7c507322985e60c00c-131", "path": "s3://boot-images/1/rootfs", "type": "s3"}, "md5": "e7d60fdcc8a2617b872a12fcf76f9d53", "type": "application/vnd.cray.image.rootfs.squashfs"},
        {"link": {"etag": "dcaa006fdd460da2d0b6a1f6bd0b2a5e", "path": "s3://boot-images/1/kernel", "type": "s3"}, "md5": "dcaa006fdd460da2d0b6a1f6bd0b2a5e", "type": "application/vnd.cray.image.kernel"},
        {"link": {"etag": "", "path": "/var/lib/imsctl/artifacts/1/initrd", "type": "file"}, "md5": "23b3a0ff8a3c6d8c4e9f3bd9c6a0c0d1", "type": "application/vnd.cray.image.initrd"}
    ],
    "created": "2018-12-17 22:59:43.264129",
    "version": "1.0"
}
EOF
printf '2018-12-04T17:25:52.482514+00:00' | seed 4 timestamp-ims
printf '2024-02-29T16:29:59.5-07:30' | seed 4 timestamp-offset
printf '2016-12-31T23:59:60Z' | seed 4 timestamp-leap-second
printf '9999-12-31T23:59:59.999999+01:00' | seed 4 timestamp-last
printf '0000-01-01T00:00:00-01:00' | seed 4 timestamp-first
printf 'ca_cert = "certs/ca.crt"\n' | seed 5 config.toml

du -sh "$out"
