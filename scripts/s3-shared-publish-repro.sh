#!/usr/bin/env bash
# The repro of issue 14 with the CLI, against any S3 server: import an image into store A,
# `cp -a A B`, publish the same id from both at once, then `images verify --deep` it from the
# bucket's catalogue. Prints one line per run and "N of RUNS runs left a registered, verifiable
# image". Credentials and region come from the environment (AWS_*), as for imsctl.
#
#   AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… AWS_REGION=garage \
#       scripts/s3-shared-publish-repro.sh http://127.0.0.1:3900 BUCKET [RUNS]
set -u
cd "$(dirname "$0")/.."
IMSCTL=${IMSCTL:-target/release/imsctl}
[ $# -ge 2 ] || { echo "usage: $0 ENDPOINT BUCKET [RUNS]" >&2; exit 2; }
B=$IMSCTL
ep=$1; bucket=$2; runs=${3:-20}
work=$(mktemp -d); good=0
head -c 6000000 /dev/urandom > $work/blob; mkdir $work/tree; mv $work/blob $work/tree/
mksquashfs $work/tree $work/r.sqsh -noI -noD -noF -noX -quiet -no-progress >/dev/null
for run in $(seq $runs); do
  rm -rf $work/A $work/B
  id=$($B --quiet --store $work/A images import $work/r.sqsh --name repro --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  cp -a $work/A $work/B
  $B --quiet --store $work/A --s3-endpoint $ep images publish $id s3://$bucket/r$run >$work/a.out 2>$work/a.err & pa=$!
  $B --quiet --store $work/B --s3-endpoint $ep images publish $id s3://$bucket/r$run >$work/b.out 2>$work/b.err & pb=$!
  wait $pa; ra=$?; wait $pb; rb=$?
  if $B --quiet --s3-endpoint $ep --store s3://$bucket/r$run images verify --deep $id >$work/v.out 2>&1; then v=ok; good=$((good+1)); else v=FAIL; fi
  echo "run $run: A rc=$ra B rc=$rb verify=$v $(cat $work/a.err $work/b.err | cut -c1-150 | head -2 | tr '\n' ' ')"
done
echo "$good of $runs runs left a registered, verifiable image"
rm -rf "$work"
[ "$good" -eq "$runs" ]
