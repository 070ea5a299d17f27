#!/usr/bin/env bash
# Install the system tools the tests and the demo use (as root, on Debian), only those missing:
# the reference SquashFS tools to cross-check against, busybox for the test image, attr tools,
# gcc and a static libc for the containment probe, debootstrap for the Debian test image,
# uidmap (newuidmap/newgidmap) for the rootless tests with a subordinate id range,
# the OpenSSH client, Ansible and ssh-audit for the SSH tests (python3: the interpreter Ansible
# runs on the job's side, the host's in the non-jailed view), and the S3 servers of the S3 tests.
set -euo pipefail
pkgs=(squashfs-tools squashfs-tools-ng squashfuse fuse3 busybox-static attr tmux xz-utils zstd file
      openssh-client python3 gcc libc6-dev debootstrap uidmap util-linux)
need=()
for pkg in "${pkgs[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

# fuse3's udev rule makes /dev/fuse 0666 on a regular system; a container without udev leaves it
# 0600, and rootless squashfuse (the rootless mount mode and its tests) needs it open to users.
if [ "$(id -u)" -eq 0 ] && [ -c /dev/fuse ]; then
    chmod 0666 /dev/fuse
fi

# The two S3 servers the S3 tests run against, on loopback: moto_server (Python) and s3s-fs
# (Rust; it verifies signatures). `cargo install s3s-fs` compiles ~250 crates: measured 4 min of
# CPU (10 min wall on a busy 2-core machine), once per machine: cache ~/.cargo/bin in CI.
# Garage (a server that ignores If-None-Match) is not installed: `cargo install garage --locked`
# (2.5.0) took 113 min wall here (nice 19 on a busy 2-core machine), too long for CI; the tests
# strip If-None-Match with a proxy in front of moto instead, and scripts/s3-shared-publish-repro.sh
# runs the issue-14 repro against a Garage by hand.
if ! command -v moto_server >/dev/null 2>&1; then
    python3 -m pip install --quiet 'moto[server]'
fi
# Ansible from Debian (/usr/bin): the rootless tests run it as an unprivileged user, who cannot
# reach a pip install under root's home.
if [ ! -x /usr/bin/ansible-playbook ]; then
    if [ "$(id -u)" -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ansible-core >/dev/null
    elif ! command -v ansible-playbook >/dev/null 2>&1; then
        python3 -m pip install --quiet ansible-core
    fi
fi
# ssh-audit audits a job's SSH server in the SSH tests (0 failures, no warnings but post-quantum).
if ! command -v ssh-audit >/dev/null 2>&1; then
    python3 -m pip install --quiet ssh-audit
fi
if ! command -v s3s-fs >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
    cargo install --quiet s3s-fs@0.14.1 --features binary --locked
fi
