#!/usr/bin/env bash
# Start one hospital site: validates the dataset, then runs its Flower SuperNode until stopped (Ctrl-C/SIGTERM).
#   deploy/start-site.sh site.env
# The site's privacy policy (PEDSEG_POLICY) is required: without one it refuses to start, unless PEDSEG_NO_POLICY=1.
set -euo pipefail
env_file=${1:?usage: start-site.sh site.env}
# shellcheck disable=SC1090
source "$env_file"
args=(--site "$PEDSEG_SITE" --joint "$PEDSEG_JOINT" --data "$PEDSEG_DATA" --superlink "$PEDSEG_SUPERLINK"
      --root-certificates "$PEDSEG_CA" --state-dir "$PEDSEG_STATE" --threads "${PEDSEG_THREADS:-0}")
[ -n "${PEDSEG_AUTH_KEY:-}" ] && args+=(--auth-key "$PEDSEG_AUTH_KEY")
if [ -n "${PEDSEG_POLICY:-}" ]; then
  args+=(--policy "$PEDSEG_POLICY")
elif [ "${PEDSEG_NO_POLICY:-}" != 1 ]; then
  echo "start-site.sh: $env_file sets no PEDSEG_POLICY (this site's privacy policy, deploy/README.md): set it," \
       "or PEDSEG_NO_POLICY=1 to run the default policy" >&2
  exit 2
fi
exec pedseg-client run "${args[@]}"
