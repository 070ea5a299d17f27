#!/usr/bin/env bash
# The main job on the bundled test image, against a throw-away local store: build imsctl, make
# testdata/tiny-rootfs.txz if missing, import it (.txz -> SquashFS in one pass), show the record,
# list the image and verify its artifacts.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release -q
scripts/make-test-image.sh
store=$(mktemp -d "${TMPDIR:-/tmp}/imsctl-demo.XXXXXX")
imsctl() { ./target/release/imsctl --store "$store" "$@"; }
set -x
imsctl images import testdata/tiny-rootfs.txz --name demo --format json
id=$(imsctl images list --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
imsctl ls "$store/artifacts/$id/rootfs" | head -12
imsctl images verify "$id"
