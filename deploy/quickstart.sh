#!/usr/bin/env bash
# Brings up a working, secured execmesh on this machine: NATS with JetStream and one NATS user per
# identity (gateway, audit-sink, each agent; no anonymous access), the audit-sink (SQLite in
# .execmesh/audit.db), the gateway on 127.0.0.1:8420 (its gRPC admin API for execmeshctl on
# 127.0.0.1:8421) and N node-agents. Every service connects with its own seed and signs what it
# writes; the gateway and the sink check every record against the identities file. As root,
# jobs run as the unprivileged account `execmesh-run` (created if missing), which cannot read
# the state directory; as anyone else, jobs run as you (the script says what that means).
# On the first run it creates the policy (.execmesh/policy.toml) with you as its first user and
# prints your password once (only its argon2 hash is kept); prints the MCP URL, a bearer token
# and ready client lines; writes .execmesh/quickstart.json; stays in the foreground and stops
# everything on Ctrl-C/SIGTERM.
#
# With --ssh-demo it also starts an unprivileged sshd on a free loopback port (its own host key,
# an authorized key made for the demo) and your SSH relay for it: an agentless target `ssh-demo`
# next to the agent host (docs/relay.md).
#
#   deploy/quickstart.sh [--agents N] [--port PORT] [--admin-port PORT] [--nats-port PORT]
#                        [--state-dir DIR] [--bin-dir DIR] [--ssh-demo]
set -euo pipefail

agents=1
port=8420
admin_port=8421
nats_port=4222
state=""
bin="${EXECMESH_BIN_DIR:-}"
ssh_demo=0
# The account jobs run as when this script runs as root.
run_account="execmesh-run"
usage() {
  cat <<USAGE
usage: deploy/quickstart.sh [--agents N] [--port PORT] [--admin-port PORT] [--nats-port PORT]
                            [--state-dir DIR] [--bin-dir DIR] [--ssh-demo]

Starts NATS (JetStream, one NATS user per identity, state under the state directory), the
execmesh gateway (MCP on 127.0.0.1:PORT, default 8420; the admin API for execmeshctl on
127.0.0.1:ADMIN-PORT, default 8421), the audit-sink and N node-agents (default 1) for this
machine, then prints how to connect an MCP client. Ctrl-C stops everything it started.

  --state-dir DIR  keys, seeds, policy, NATS and audit data (default: .execmesh in the checkout);
                   made private (0700), kept across runs
  --bin-dir DIR    use the execmesh binaries in DIR (also EXECMESH_BIN_DIR) instead of building
                   release binaries
  --ssh-demo       also start an unprivileged sshd on a free loopback port and your SSH relay
                   for it: the agentless target `ssh-demo` (needs openssh-server; docs/relay.md)
USAGE
}
while [ $# -gt 0 ]; do
  case "$1" in
    --agents) agents="${2:?--agents needs a number}"; shift 2 ;;
    --port) port="${2:?--port needs a number}"; shift 2 ;;
    --admin-port) admin_port="${2:?--admin-port needs a number}"; shift 2 ;;
    --nats-port) nats_port="${2:?--nats-port needs a number}"; shift 2 ;;
    --state-dir) state="${2:?--state-dir needs a directory}"; shift 2 ;;
    --bin-dir) bin="${2:?--bin-dir needs a directory}"; shift 2 ;;
    --ssh-demo) ssh_demo=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 64 ;;
  esac
done
case "$agents" in ''|*[!0-9]*) echo "--agents must be a number" >&2; exit 64 ;; esac
[ "$agents" -ge 1 ] || { echo "--agents must be at least 1" >&2; exit 64; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
[ -n "$state" ] || state="$root/.execmesh"
# Everything in it is secret to you (seeds, keys, tokens, password hashes): private from the
# first byte, and kept so.
umask 077
mkdir -p "$state"
state="$(cd "$state" && pwd)"
chmod 700 "$state"
mkdir -p "$state/logs" "$state/nats"

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$port" "$admin_port" "$nats_port"; do
  if port_busy "$p"; then
    echo "port $p on 127.0.0.1 is already in use (another quickstart running?); pick another with --port / --admin-port / --nats-port" >&2
    exit 1
  fi
done

nats_server="$(bash deploy/install-nats.sh)"

if [ -z "$bin" ]; then
  echo "building release binaries (first build takes a few minutes)..." >&2
  cargo build --release --quiet -p execmesh-gateway -p execmesh-node-agent -p execmesh-audit-sink \
    -p execmeshctl
  bin="${CARGO_TARGET_DIR:-$root/target}/release"
fi
bin="$(cd "$bin" && pwd)"
for b in execmesh-gateway execmesh-node-agent execmesh-audit-sink execmeshctl; do
  [ -x "$bin/$b" ] || { echo "no $b in $bin (--bin-dir)" >&2; exit 64; }
done

# Who jobs run as. Only root can switch accounts; anyone else's jobs run as themselves.
run_as=()
if [ "$(id -u)" -eq 0 ]; then
  if ! id -u "$run_account" >/dev/null 2>&1; then
    if ! command -v useradd >/dev/null; then
      echo "cannot create the account $run_account that jobs run as: no useradd on this machine" >&2
      exit 1
    fi
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
      --comment "execmesh jobs (quickstart)" "$run_account"
    echo "created the unprivileged account $run_account: every job runs as it" >&2
  fi
  # Every MCP user's jobs run as that account; warm shells would start as root, so none.
  run_as=(--run-as "*=$run_account" --warm-shells 0)
  jobs_as="$run_account (unprivileged; it cannot read $state)"
else
  jobs_as="$(id -un) (you)"
  cat >&2 <<WARN

WARNING: this quickstart is not running as root, so it cannot run jobs as another account.
Every command an MCP client runs here runs as $(id -un), with your files and rights, and can
read $state: the NATS seeds, the gateway's token and command keys, and the tokens in
quickstart.json. Whoever can call the MCP endpoint can therefore become any execmesh identity.
For the safe setup, run it as root (sudo deploy/quickstart.sh): jobs then run as the
unprivileged account $run_account, which cannot read $state.

WARN
fi

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo >&2
  echo "stopping execmesh..." >&2
  # Agents first (they clean up their presence), then the gateway, the sink, then NATS.
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "stopped." >&2
}
trap 'cleanup; exit 0' INT TERM
trap cleanup EXIT

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what="$2"; shift 2
  until "$@"; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out waiting for $what" >&2; exit 1; fi
    sleep 0.1
  done
}

base_host="$(hostname | tr 'A-Z' 'a-z' | sed -e 's/[^a-z0-9-]/-/g' -e 's/--*/-/g' -e 's/^-//' -e 's/-$//' | cut -c1-50)"
[ -n "$base_host" ] || base_host="localhost"
[ "$base_host" != "gateway" ] || base_host="gateway-host"
hosts=()
for ((i=1; i<=agents; i++)); do
  if [ "$agents" -eq 1 ]; then hosts+=("$base_host"); else hosts+=("$base_host-$i"); fi
done

user="$(id -un | tr 'A-Z' 'a-z' | sed -e 's/[^a-z0-9-]/-/g' | cut -c1-40)"
[ -n "$user" ] || user="operator"

# NATS with one user per identity: the inventory of this run's hosts, turned into the server
# configuration, the public identities file and one seed per identity (kept across runs, so
# keys stay the same). No anonymous access.
nats_dir="$state/nats"
hosts_toml=$(printf '"%s", ' "${hosts[@]}"); hosts_toml="[${hosts_toml%, }]"
cat >"$nats_dir/inventory.toml" <<INVENTORY
# Written by deploy/quickstart.sh for this run's hosts.
tenant = "default"
hosts = $hosts_toml

[server]
listen = "127.0.0.1:$nats_port"
server_name = "execmesh-quickstart"
store_dir = "$nats_dir/jetstream"
max_file_store = "2GB"
http = ""
INVENTORY
if [ "$ssh_demo" -eq 1 ]; then
  cat >>"$nats_dir/inventory.toml" <<INVENTORY

[[relays]]
user = "$user"
targets = ["ssh-demo"]
INVENTORY
fi
"$bin/execmeshctl" nats-config --inventory "$nats_dir/inventory.toml" --out "$nats_dir" \
  >"$state/logs/nats-config.log" 2>&1 || {
  echo "nats-config failed:" >&2; cat "$state/logs/nats-config.log" >&2; exit 1; }
seeds="$nats_dir/seeds"
identities="$nats_dir/identities.toml"

nats_url="nats://127.0.0.1:$nats_port"
"$nats_server" -c "$nats_dir/nats.conf" >"$state/logs/nats.log" 2>&1 &
pids+=($!)
wait_for 20 "nats-server (see $state/logs/nats.log)" port_busy "$nats_port"

# The audit trail: every call, dispatch, job and file change, stored once in a hash chain, with
# who signed each event. Started right after NATS, so it is stopped right before it and stores
# the last events first.
"$bin/execmesh-audit-sink" --nats-url "$nats_url" --sqlite-path "$state/audit.db" \
  --nats-nkey-seed "$seeds/audit-sink.nk" --identities-file "$identities" \
  >"$state/logs/audit-sink.log" 2>&1 &
pids+=($!)

# The key that signs every request to the agents: made once, its public half trusted by each agent.
gateway_key="$("$bin/execmesh-gateway" --key-file "$state/gateway.key" \
  --exec-signing-key "$state/exec-signing.key" exec-key 2>/dev/null)"

mcp_url="http://127.0.0.1:$port/mcp"
console_url="http://127.0.0.1:$port/console"
# The gRPC admin API (execmeshctl): plaintext, so loopback only.
admin_addr="127.0.0.1:$admin_port"
# Who may do what: on the first run, one group that may do everything everywhere and you in it,
# with a generated password shown once. Later runs keep the file (and your password).
policy=(--policy-file "$state/policy.toml" --public-url "$mcp_url")
password=""
if [ ! -f "$state/policy.toml" ]; then
  cat >"$state/policy.toml" <<'POLICY'
# execmesh policy: who may do what (docs/configuration.md, "Policy"). The gateway reloads it on change.

[groups.admins]
tier = "dangerous"
hosts = ["*"]
POLICY
  chmod 600 "$state/policy.toml"
  password="$("$bin/execmesh-gateway" "${policy[@]}" user add "$user" --group admins)"
fi

# The gateway before the agents: it creates the stream and buckets they may only open.
"$bin/execmesh-gateway" --nats-url "$nats_url" --listen "127.0.0.1:$port" "${policy[@]}" \
  --admin-addr "$admin_addr" \
  --nats-nkey-seed "$seeds/gateway.nk" --identities-file "$identities" \
  --key-file "$state/gateway.key" --exec-signing-key "$state/exec-signing.key" \
  >"$state/logs/gateway.log" 2>&1 &
pids+=($!)
wait_for 30 "the gateway (see $state/logs/gateway.log)" port_busy "$port"
wait_for 30 "the gateway's admin API (see $state/logs/gateway.log)" port_busy "$admin_port"

for host in "${hosts[@]}"; do
  "$bin/execmesh-node-agent" --nats-url "$nats_url" --host-id "$host" --label "quickstart=true" \
    --gateway-key "$gateway_key" --nats-nkey-seed "$seeds/agent-$host.nk" ${run_as[@]+"${run_as[@]}"} \
    >"$state/logs/agent-$host.log" 2>&1 &
  pids+=($!)
done

# The SSH demo: an unprivileged sshd on a free loopback port with its own host key and a key
# made for the demo, your ssh config and known_hosts for it (strict checking), and your relay.
ssh_line=""
if [ "$ssh_demo" -eq 1 ]; then
  sshd_bin="$(command -v sshd || echo /usr/sbin/sshd)"
  [ -x "$sshd_bin" ] || { echo "--ssh-demo needs sshd (apt-get install openssh-server)" >&2; exit 1; }
  demo="$state/ssh-demo"
  mkdir -p "$demo"
  [ -f "$demo/host_key" ] || ssh-keygen -q -t ed25519 -N "" -C execmesh-demo-host -f "$demo/host_key"
  [ -f "$demo/user_key" ] || ssh-keygen -q -t ed25519 -N "" -C execmesh-demo-user -f "$demo/user_key"
  cp "$demo/user_key.pub" "$demo/authorized_keys"
  # A port the kernel picks now, released for sshd.
  ssh_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  [ "$(id -u)" -ne 0 ] || mkdir -p /run/sshd
  cat >"$demo/sshd_config" <<SSHD
Port $ssh_port
ListenAddress 127.0.0.1
HostKey $demo/host_key
PidFile $demo/sshd.pid
AuthorizedKeysFile $demo/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PrintMotd no
# The file tool and grep reach the target over SFTP.
Subsystem sftp internal-sftp
# Keeps your interactive shell's startup (a version manager's init, a prompt) out of the demo
# target's commands: bash skips ~/.bashrc for a nested shell.
SetEnv SHLVL=1
SSHD
  echo "[127.0.0.1]:$ssh_port $(cat "$demo/host_key.pub")" >"$demo/known_hosts"
  cat >"$demo/ssh_config" <<SSHCONFIG
Host ssh-demo
  HostName 127.0.0.1
  Port $ssh_port
  User $(id -un)
  IdentityFile $demo/user_key
  IdentitiesOnly yes
  UserKnownHostsFile $demo/known_hosts
  StrictHostKeyChecking yes
SSHCONFIG
  "$sshd_bin" -D -e -f "$demo/sshd_config" >"$state/logs/sshd-demo.log" 2>&1 &
  pids+=($!)
  wait_for 20 "the demo sshd (see $state/logs/sshd-demo.log)" port_busy "$ssh_port"
  cat >"$demo/relay.toml" <<RELAY
# Your SSH relay for the demo target (docs/relay.md).
user = "$user"
nats_url = "$nats_url"
nats_nkey_seed = "$seeds/relay-$user.nk"
gateway_keys = ["$gateway_key"]

[[targets]]
id = "ssh-demo"
destination = "ssh-demo"
ssh_config = "$demo/ssh_config"
labels = { quickstart = "true", kind = "ssh" }
RELAY
  "$bin/execmesh-node-agent" relay --config "$demo/relay.toml" >"$state/logs/relay-$user.log" 2>&1 &
  pids+=($!)
  ssh_line="  ssh demo: target ssh-demo via your relay (sshd on 127.0.0.1:$ssh_port; $demo/relay.toml)"
fi

token="$("$bin/execmesh-gateway" --key-file "$state/gateway.key" "${policy[@]}" \
  token mint --user "$user" --ttl 30d)"
# execmeshctl finds this one in .execmesh/quickstart.json when run from this checkout.
admin_token="$("$bin/execmesh-gateway" --key-file "$state/gateway.key" "${policy[@]}" \
  token mint --user "$user" --ttl 30d --scope admin)"
if [ -n "$password" ]; then
  sign_in="user $user, password $password   (shown once: note it now; only its hash is stored)"
else
  sign_in="user $user, password as set before (new one: execmesh-gateway ${policy[*]} user add $user --replace)"
fi

hosts_json=$(printf '"%s",' "${hosts[@]}"); hosts_json="[${hosts_json%,}]"
# It holds tokens: readable by you only, from its first byte (umask 077).
cat >"$state/quickstart.json" <<JSON
{
  "mcp_url": "$mcp_url",
  "console_url": "$console_url",
  "token": "$token",
  "user": "$user",
  "nats_url": "$nats_url",
  "admin_addr": "$admin_addr",
  "admin_token": "$admin_token",
  "hosts": $hosts_json,
  "jobs_run_as": "$jobs_as",
  "audit_db": "$state/audit.db",
  "logs": "$state/logs"
}
JSON
chmod 600 "$state/quickstart.json"

cat <<TEXT

execmesh is up.
  MCP URL:  $mcp_url
  console:  $console_url   (approvals, jobs with live output; sign in as below)
  sign in:  $sign_in
  policy:   $state/policy.toml
  token:    $token   (user $user, valid 30 days)
  hosts:    ${hosts[*]}   (jobs run as $jobs_as)
${ssh_line:+$ssh_line
}  NATS:     $nats_url (one NATS user per identity, no anonymous access; seeds in $seeds)
  admin:    http://$admin_addr   (gRPC; from this checkout: $bin/execmeshctl hosts)
  audit:    $state/audit.db   (check: $bin/execmesh-audit-sink --sqlite-path $state/audit.db verify)
  logs:     $state/logs/

Connect Claude Code (it opens the login page in your browser: OAuth 2.1):
  claude mcp add --transport http execmesh $mcp_url
or headless (CI, scripts), with the token:
  claude mcp add --transport http execmesh $mcp_url --header "Authorization: Bearer $token"

Details are in $state/quickstart.json. Ctrl-C stops everything.
TEXT

# Stay in the foreground until a signal arrives or a component dies.
while true; do
  for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "a component (pid $pid) stopped unexpectedly; see $state/logs/" >&2
      exit 1
    fi
  done
  sleep 1 &
  wait $! || true
done
