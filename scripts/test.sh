#!/usr/bin/env bash
# The whole test suite: unit tests and the integration tests that cross-check imsctl with
# mksquashfs, unsquashfs, sqfsdiff, the kernel's squashfs and backhand. Run as root for the
# device, ownership and mount checks (CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release "$@"
