#!/usr/bin/env bash
# Publish and import a 1 GiB artifact through a local moto_server, with imsctl and with
# `aws s3 cp` in the same run, and print both times and their ratio (medians of 3).
#
#   scripts/bench-s3.sh            # 1 GiB, 3 runs each
#   SIZE_MIB=256 RUNS=5 scripts/bench-s3.sh
#
# imsctl publish = `images publish ID s3://…` (multipart, parallel parts, md5sum metadata, HEAD
# checks, manifest); aws = `aws s3 cp FILE s3://…` (its defaults: 8 MiB parts, 10 requests).
# imsctl import = `images import s3://…/ID` (parallel ranged GETs, md5 check, local register);
# aws = `aws s3 cp s3://… FILE`. The two alternate which goes first, run by run.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-3}
IMSCTL=${IMSCTL:-target/release/imsctl}
for tool in moto_server aws mksquashfs python3; do
    command -v "$tool" >/dev/null || { echo "bench-s3: $tool is required" >&2; exit 1; }
done
if [ ! -x "$IMSCTL" ]; then
    cargo build --release --quiet
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/bench-s3.XXXXXX")
moto_pid=
cleanup() {
    [ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null && wait "$moto_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),1)" 2>/dev/null && break
    sleep 0.1
done

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1 AWS_ENDPOINT_URL="http://127.0.0.1:$port"
unset AWS_PROFILE AWS_CA_BUNDLE
aws s3 mb s3://bench >/dev/null

echo "bench-s3: building a ${SIZE_MIB} MiB SquashFS artifact (uncompressed random data)"
mkdir -p "$work/tree"
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$work/tree/blob"
mksquashfs "$work/tree" "$work/rootfs.sqsh" -noI -noD -noF -noX -no-progress -quiet >/dev/null
rm -rf "$work/tree"
store="$work/store"
id=$("$IMSCTL" --quiet --store "$store" images import "$work/rootfs.sqsh" --name bench --format json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
rootfs="$store/artifacts/$id/rootfs"
bytes=$(stat -c %s "$rootfs")

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.3f}')"; }
median() { python3 -c 'import statistics,sys; print(f"{statistics.median(map(float, sys.argv[1:])):.3f}")' "$@"; }

publish_ims() { "$IMSCTL" --quiet --store "$store" images publish "$id" "s3://bench/ims-$1" >/dev/null; }
publish_aws() { aws s3 cp --only-show-errors "$rootfs" "s3://bench/aws-$1/$id/rootfs"; }
import_ims() { "$IMSCTL" --quiet --store "$work/import-$1" images import "s3://bench/ims-$1/$id" >/dev/null; }
import_aws() { aws s3 cp --only-show-errors "s3://bench/aws-$1/$id/rootfs" "$work/aws-rootfs-$1"; }
# Time `$1 $run` and `$2 $run`, in this order on odd runs and the other way round on even ones,
# so that neither always runs in the same position (first right after the previous run's
# deletes, or second on a moto that has just taken 1 GiB more). Sets time_1 and time_2 (of $1
# and $2).
timed_pair() {
    local first=$1 second=$2 t0 t1 t2
    if [ $((run % 2)) -eq 0 ]; then first=$2 second=$1; fi
    t0=$(now); "$first" "$run"; t1=$(now); "$second" "$run"; t2=$(now)
    time_1=$(elapsed "$t0" "$t1") time_2=$(elapsed "$t1" "$t2")
    if [ "$first" != "$1" ]; then time_1=$(elapsed "$t1" "$t2") time_2=$(elapsed "$t0" "$t1"); fi
}

pub_ims=() pub_aws=() get_ims=() get_aws=()
for run in $(seq "$RUNS"); do
    timed_pair publish_ims publish_aws
    pub_ims+=("$time_1") pub_aws+=("$time_2")
    timed_pair import_ims import_aws
    get_ims+=("$time_1") get_aws+=("$time_2")
    cmp -s "$rootfs" "$work/import-$run/artifacts/"*/rootfs || { echo "bench-s3: imported rootfs differs" >&2; exit 1; }
    rm -rf "$work/import-$run" "$work/aws-rootfs-$run"
    aws s3 rm --recursive --only-show-errors "s3://bench/ims-$run"
    aws s3 rm --recursive --only-show-errors "s3://bench/aws-$run"
    echo "run $run: publish imsctl ${pub_ims[-1]} s, aws ${pub_aws[-1]} s; import imsctl ${get_ims[-1]} s, aws ${get_aws[-1]} s"
done

report() {
    local what=$1 ims=$2 aws=$3
    python3 - "$what" "$ims" "$aws" "$bytes" <<'EOF'
import sys
what, ims, aws, size = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
mib = size / (1 << 20)
print(f"{what:8} imsctl {ims:7.2f} s ({mib / ims:6.1f} MiB/s)   aws s3 cp {aws:7.2f} s ({mib / aws:6.1f} MiB/s)"
      f"   ratio imsctl/aws {ims / aws:.2f}")
EOF
}
echo "bench-s3: ${bytes} bytes, median of $RUNS runs, moto_server on loopback"
report publish "$(median "${pub_ims[@]}")" "$(median "${pub_aws[@]}")"
report import "$(median "${get_ims[@]}")" "$(median "${get_aws[@]}")"
