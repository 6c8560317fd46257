#!/usr/bin/env bash
# Deploy fedsim on localhost with Flower's deployment runtime: a SuperLink (Fleet API over gRPC),
# N SuperNodes (one per partition), then `flwr run` of the default experiment; stop them all.
#
#   scripts/deploy_local.sh N [--insecure] [key=value ...]
#
# Secure by default: TLS with a private CA (scripts/make_certs.sh) and SuperNode authentication
# (only the N registered node keys may join); the Control API (registrations, runs) and the Fleet
# API listen on 127.0.0.1 only; the SuperLink keeps its state (registrations, runs) in
# DEPLOY_DIR/superlink.db, so a restart keeps it. --insecure turns TLS and authentication off
# (plain gRPC), for debugging only. Hydra overrides are passed through to the apps, as for `fedsim run`
# (num_clients and clients_per_round default to N).
#
# Environment (defaults): DEPLOY_DIR (.deploy), FLEET_PORT (9092), CONTROL_PORT (8000),
# NODE_PORT (9094: SuperNode K uses NODE_PORT+K), DATA_ROOT (unset: each node reads
# dataset.root; set: --node-config data-root=DATA_ROOT).
# Outputs: DEPLOY_DIR/runs/<time>/ (metrics.jsonl, checkpoints, ...), logs in DEPLOY_DIR/logs/,
# keys in DEPLOY_DIR/certs/ (owner-only; .deploy/ is git-ignored).
# Exit status: 0 only if the run finished with status finished:completed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

usage() { echo "usage: $0 N [--insecure] [key=value ...]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
n=$1; shift
[[ $n =~ ^[1-9][0-9]*$ ]] || { echo "deploy_local: N='$n' is not a positive integer" >&2; exit 2; }
insecure=0
overrides=()
for arg in "$@"; do
  case $arg in
    --insecure) insecure=1 ;;
    -*) echo "deploy_local: unknown option '$arg': allowed --insecure" >&2; exit 2 ;;
    *) overrides+=("$arg") ;;
  esac
done

[[ -x .venv/bin/flwr ]] && export PATH="$root/.venv/bin:$PATH"
command -v flower-superlink >/dev/null || { echo "deploy_local: flower-superlink not found (make test installs .venv)" >&2; exit 2; }
dir=$(mkdir -p "${DEPLOY_DIR:-.deploy}" && cd "${DEPLOY_DIR:-.deploy}" && pwd)
fleet=${FLEET_PORT:-9092}; control=${CONTROL_PORT:-8000}; node_port=${NODE_PORT:-9094}
mkdir -p "$dir/logs" "$dir/runs"
chmod 700 "$dir"
export FLWR_HOME="$dir/flwr_home"   # our own CLI config: never a stale local SuperLink of yours
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
mkdir -p "$FLWR_HOME"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  sleep 1
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {  # wait until 127.0.0.1:$1 accepts connections
  for _ in $(seq 100); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.2
  done
  echo "deploy_local: nothing listens on port $1; see $dir/logs" >&2; exit 1
}

if ((insecure)); then
  echo "deploy_local: WARNING: --insecure: no TLS, no SuperNode authentication" >&2
  link_sec=(--insecure); node_sec=(--insecure)
  conn_sec='insecure = true'
else
  scripts/make_certs.sh "$dir/certs" "$n" >/dev/null
  node_sec=()
  link_sec=(--ssl-certfile "$dir/certs/server.crt" --ssl-keyfile "$dir/certs/server.key"
            --ssl-ca-certfile "$dir/certs/ca.crt" --enable-supernode-auth)
  conn_sec="root-certificates = \"$dir/certs/ca.crt\""
fi
cat >"$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "fedsim-local"

[superlink.fedsim-local]
address = "127.0.0.1:$control"
$conn_sec
TOML

setsid flower-superlink "${link_sec[@]}" --disable-runtime-dependency-installation \
  --database "$dir/superlink.db" --fleet-api-address "127.0.0.1:$fleet" --host 127.0.0.1 --port "$control" \
  >"$dir/logs/superlink.log" 2>&1 &
pids+=($!)
wait_port "$control"; wait_port "$fleet"
echo "deploy_local: SuperLink up (Fleet 127.0.0.1:$fleet, Control 127.0.0.1:$control)"

for ((k = 0; k < n; k++)); do
  node_cfg="partition-id=$k num-partitions=$n"
  [[ -n ${DATA_ROOT:-} ]] && node_cfg+=" data-root=\"$DATA_ROOT\""
  if ((insecure)); then
    auth=()
  else
    # A key registered by an earlier run of this script is kept in superlink.db: already in use.
    reg=$(flwr supernode register "$dir/certs/node_$k.pub" fedsim-local --format json 2>&1) || true
    [[ $reg == *'"success": true'* || $reg == *"Public key already in use"* ]] ||
      { echo "deploy_local: registering node_$k failed: $reg" >&2; exit 1; }
    auth=(--root-certificates "$dir/certs/ca.crt" --auth-supernode-private-key "$dir/certs/node_$k")
  fi
  setsid flower-supernode "${node_sec[@]}" "${auth[@]}" --superlink "127.0.0.1:$fleet" \
    --node-config "$node_cfg" --port $((node_port + k)) --max-retries 10 --max-wait-time 120 \
    >"$dir/logs/supernode_$k.log" 2>&1 &
  pids+=($!)
done
echo "deploy_local: $n SuperNodes started"

run_dir="$dir/runs/$(date +%Y-%m-%d_%H-%M-%S)"
status=0
fedsim submit fedsim-local num_clients="$n" clients_per_round="$n" output_dir="$run_dir" \
  "${overrides[@]}" || status=$?
echo "deploy_local: run dir $run_dir (exit status $status)"
exit "$status"
