#!/usr/bin/env bash
# Start one hospital site: validates the dataset, then runs its Flower SuperNode until stopped (Ctrl-C/SIGTERM).
#   deploy/start-site.sh site.env
set -euo pipefail
env_file=${1:?usage: start-site.sh site.env}
# shellcheck disable=SC1090
source "$env_file"
args=(--site "$PEDSEG_SITE" --joint "$PEDSEG_JOINT" --data "$PEDSEG_DATA" --superlink "$PEDSEG_SUPERLINK"
      --root-certificates "$PEDSEG_CA" --state-dir "$PEDSEG_STATE" --threads "${PEDSEG_THREADS:-0}")
[ -n "${PEDSEG_AUTH_KEY:-}" ] && args+=(--auth-key "$PEDSEG_AUTH_KEY")
exec pedseg-client run "${args[@]}"
