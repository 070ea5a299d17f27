#!/usr/bin/env bash
# The main job on the bundled test image, against a throw-away local store: build imsctl, make
# testdata/tiny-rootfs.txz if missing, then one `imsctl customize` that imports it, changes it
# in the sandbox, injects a CA certificate, repacks and publishes rootfs + kernel + initrd +
# manifest.json, printing the result as ims_python_helper does. Then it verifies the artifacts.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release -q
scripts/make-test-image.sh
store=$(mktemp -d "${TMPDIR:-/tmp}/imsctl-demo.XXXXXX")
ca=$store/site-ca.pem
printf -- '-----BEGIN CERTIFICATE-----\nMIIBdemoCertificateForTheDemoOnly\n-----END CERTIFICATE-----\n' > "$ca"
imsctl() { ./target/release/imsctl --store "$store" "$@"; }
set -x
imsctl customize testdata/tiny-rootfs.txz --name demo \
    --run 'echo "customized by imsctl on $(date -u)" > /etc/motd' \
    --run 'rm -f /etc/hostname' \
    --ca-cert "$ca" | tee "$store/result.json"
id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ims_image_record"]["id"])' "$store/result.json")
imsctl images verify "$id"
imsctl ls "$store/artifacts/$id/rootfs" | grep -E 'etc/(motd|cray|resolv)'
