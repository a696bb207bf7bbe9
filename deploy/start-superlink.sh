#!/usr/bin/env bash
# Start the federation's SuperLink (the server side; the ServerApp runs inside it for each run).
#   deploy/start-superlink.sh CERT_DIR [PORT]     # TLS + SuperNode authentication + operator-only control plane
#   deploy/start-superlink.sh --insecure [PORT]   # loopback trials only: no TLS, no authentication, and so
#                                                 # bound to 127.0.0.1 whatever PEDSEG_SUPERLINK_HOST says
# With CERT_DIR (ca.crt, server.crt, server.key from make-certificates.sh) two processes run until stopped:
#   flower-superlink      on 127.0.0.1:CONTROL_PORT only (default PORT+1): the operator's `flwr` commands
#                         (register keys, run, ls, stop, log) go there, from this host or through an SSH tunnel;
#   pedseg-fleet-gateway  on $PEDSEG_SUPERLINK_HOST:PORT (default 0.0.0.0:9092): what the sites dial; it passes
#                         on Flower's Fleet API and answers 404 to everything else.
# Only registered SuperNode keys may join (`flwr supernode register SITE.key.pub pedseg`, on this host).
# State (runs, registered nodes) is kept in $PEDSEG_SUPERLINK_HOME/superlink.db across restarts.
set -euo pipefail
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 RAY_USAGE_STATS_ENABLED=0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
usage="usage: start-superlink.sh CERT_DIR [PORT] | --insecure [PORT]"
home=${PEDSEG_SUPERLINK_HOME:-$HOME/.pedseg-superlink}
export FLWR_HOME=$home/flwr-home
mkdir -p "$FLWR_HOME"
bin=$(dirname "$(command -v pedseg)")      # Flower starts its helpers by name: the venv must be on PATH
export PATH=$bin:$PATH
state=(--disable-runtime-dependency-installation --database "$home/superlink.db" --log-file "$home/superlink.log")
if [ "${1:-}" = "--insecure" ]; then
  [ $# -le 2 ] || { echo "$usage" >&2; exit 2; }
  if [ "${PEDSEG_SUPERLINK_HOST:-127.0.0.1}" != 127.0.0.1 ]; then
    echo "start-superlink.sh: --insecure listens on 127.0.0.1 only (PEDSEG_SUPERLINK_HOST=$PEDSEG_SUPERLINK_HOST):" \
      "without TLS and SuperNode authentication anyone who reaches the port controls the federation;" \
      "give CERT_DIR instead" >&2
    exit 2
  fi
  exec flower-superlink --insecure --host 127.0.0.1 --port "${2:-9092}" "${state[@]}"
fi
certs=${1:?$usage}; port=${2:-9092}
[ $# -le 2 ] || { echo "$usage" >&2; exit 2; }
control_port=${PEDSEG_CONTROL_PORT:-$((port + 1))}
for f in ca.crt server.crt server.key; do
  [ -f "$certs/$f" ] || { echo "$certs/$f: not found (make it with deploy/make-certificates.sh)" >&2; exit 2; }
done
flower-superlink --ssl-ca-certfile "$certs/ca.crt" --ssl-certfile "$certs/server.crt" \
  --ssl-keyfile "$certs/server.key" --enable-supernode-auth --host 127.0.0.1 --port "$control_port" "${state[@]}" &
superlink=$!
pedseg-fleet-gateway --listen "${PEDSEG_SUPERLINK_HOST:-0.0.0.0}:$port" --superlink "127.0.0.1:$control_port" \
  --certfile "$certs/server.crt" --keyfile "$certs/server.key" --ca-certfile "$certs/ca.crt" &
gateway=$!
trap 'kill "$gateway" "$superlink" 2>/dev/null || true; wait "$gateway" "$superlink" 2>/dev/null || true' EXIT
trap 'exit 0' TERM INT
wait -n "$superlink" "$gateway"   # either one ending stops the other
