#!/usr/bin/env bash
# Start the federation's SuperLink (the server side; the ServerApp runs inside it for each run).
#   deploy/start-superlink.sh CERT_DIR [PORT] [--auth]     # TLS with CERT_DIR/{ca.crt,server.crt,server.key}
#   deploy/start-superlink.sh --insecure [PORT]             # loopback tests only
# State (runs, registered nodes) is kept in $PEDSEG_SUPERLINK_HOME/superlink.db across restarts.
set -euo pipefail
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 RAY_USAGE_STATS_ENABLED=0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
home=${PEDSEG_SUPERLINK_HOME:-$HOME/.pedseg-superlink}
export FLWR_HOME=$home/flwr-home
mkdir -p "$FLWR_HOME"
bin=$(dirname "$(command -v pedseg)")      # Flower starts its helpers by name: the venv must be on PATH
export PATH=$bin:$PATH
host=${PEDSEG_SUPERLINK_HOST:-0.0.0.0}
if [ "${1:-}" = "--insecure" ]; then
  security=(--insecure); host=${PEDSEG_SUPERLINK_HOST:-127.0.0.1}; shift
else
  certs=${1:?usage: start-superlink.sh CERT_DIR [PORT] [--auth] | --insecure [PORT]}; shift
  security=(--ssl-ca-certfile "$certs/ca.crt" --ssl-certfile "$certs/server.crt" --ssl-keyfile "$certs/server.key")
fi
port=${1:-9092}; shift || true
[ "${1:-}" = "--auth" ] && security+=(--enable-supernode-auth)
exec flower-superlink "${security[@]}" --host "$host" --port "$port" \
  --disable-runtime-dependency-installation --database "$home/superlink.db" --log-file "$home/superlink.log"
