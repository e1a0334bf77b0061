#!/usr/bin/env bash
# Installs execmesh from its .deb packages on this machine (as root), then prints what the
# operator still has to do: NATS credentials, the gateway's first user, the agents' gateway_keys.
#
#   deploy/install.sh [--from DIR] [PACKAGE...]
#
#   --from DIR   where the packages are [default: $CARGO_TARGET_DIR/packages, else
#                target/packages, as deploy/packages/build.sh writes them]
#   PACKAGE      which to install: gateway, node-agent, audit-sink [default: all three]
#
# Upgrades work the same way: dpkg keeps every edited file of /etc/execmesh and restarts the
# services that run. Nothing is started on a first install: each service needs its NATS seed and
# configuration first (the steps printed at the end, and docs/deploy.md).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
from="${CARGO_TARGET_DIR:-$root/target}/packages"
wanted=()
while [ $# -gt 0 ]; do
    case "$1" in
        --from) from="$2"; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        gateway|node-agent|audit-sink) wanted+=("$1"); shift ;;
        *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
    esac
done
[ ${#wanted[@]} -gt 0 ] || wanted=(gateway node-agent audit-sink)

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (dpkg installs into the system)" >&2
    exit 77
fi

debs=()
for name in "${wanted[@]}"; do
    # The newest build of the package (versions sort as dpkg compares them).
    deb="$(ls "$from"/execmesh-"$name"_*.deb 2>/dev/null | sort -V | tail -n1 || true)"
    if [ -z "$deb" ]; then
        echo "install.sh: no execmesh-$name package in $from: build it with" \
            "deploy/packages/build.sh (after cargo build --release --workspace --bins)" >&2
        exit 66
    fi
    debs+=("$deb")
done

DEBIAN_FRONTEND=noninteractive dpkg --install "${debs[@]}"

has() { [[ " ${wanted[*]} " == *" $1 "* ]]; }
echo
echo "execmesh installed. Next steps (docs/deploy.md walks through a 3-node cluster):"
step=1
say() { printf '%2d. %s\n' "$step" "$1"; shift; for line in "$@"; do printf '    %s\n' "$line"; done; step=$((step + 1)); }
say "NATS accounts and seeds, once, on an admin machine with your hosts' inventory:" \
    "execmeshctl nats-config --inventory inventory.toml --out ./nats-out" \
    "(load nats-out/nats.conf into your nats-server; keep nats-out/seeds/ off the NATS nodes)"
if has gateway; then
    say "Gateway: its seed and the mesh's public identities, then its NATS address:" \
        "install -m 0600 nats-out/seeds/gateway.nk /etc/execmesh/nats/gateway.nk" \
        "install -m 0644 nats-out/identities.toml /etc/execmesh/identities.toml" \
        "edit /etc/execmesh/gateway.toml: nats_url (and nats_tls_ca, public_url, kv_replicas)" \
        "systemctl enable --now execmesh-gateway   # start it before the agents: it creates the streams"
    say "The first user (a random password is printed once), and a bearer token:" \
        "execmesh-gateway --config /etc/execmesh/gateway.toml user add alice --group admins" \
        "execmesh-gateway --config /etc/execmesh/gateway.toml token mint --user alice --scope mcp,admin"
    say "The agents' gateway_keys: the gateway's request-signing public key, written at its first start:" \
        "/var/lib/execmesh/gateway/exec-signing.key.pub -> /etc/execmesh/gateway.pub on every agent host"
fi
if has audit-sink; then
    say "Audit-sink: its seed and the identities, its NATS address:" \
        "install -m 0600 nats-out/seeds/audit-sink.nk /etc/execmesh/nats/audit-sink.nk" \
        "install -m 0644 nats-out/identities.toml /etc/execmesh/identities.toml" \
        "edit /etc/execmesh/audit-sink.toml: nats_url (and nats_tls_ca, replicas)" \
        "systemctl enable --now execmesh-audit-sink"
fi
if has node-agent; then
    say "Node-agent (on every host H of the inventory): its seed, the gateway's key, its settings:" \
        "install -m 0600 nats-out/seeds/agent-H.nk /etc/execmesh/nats/agent.nk" \
        "install -m 0644 exec-signing.key.pub /etc/execmesh/gateway.pub" \
        "edit /etc/execmesh/node-agent.toml: nats_url, host_id = \"H\", gateway_keys = [\"/etc/execmesh/gateway.pub\"]" \
        "systemctl enable --now execmesh-node-agent"
fi
say "Check, with the token minted above (admin scope):" \
    "EXECMESH_ADMIN_TOKEN=<token> execmeshctl hosts" \
    "journalctl -u 'execmesh-*'   # the services' logs"
