#!/usr/bin/env bash
# The whole test suite: unit tests and the integration tests that cross-check imsctl with
# mksquashfs, unsquashfs, sqfsdiff, the kernel's squashfs, backhand and tar. Run as root for the
# device, ownership and mount checks (CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo test --release --workspace "$@"
