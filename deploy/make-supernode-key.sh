#!/usr/bin/env bash
# An EC key pair (NIST P-384) that identifies one site's SuperNode to the SuperLink.
#   deploy/make-supernode-key.sh OUT_DIR SITE
# Keep OUT_DIR/SITE.key at the site; send OUT_DIR/SITE.key.pub to the federation operator, who registers it:
#   flwr supernode register SITE.key.pub pedseg
set -euo pipefail
out=${1:?usage: make-supernode-key.sh OUT_DIR SITE}; site=${2:?usage: make-supernode-key.sh OUT_DIR SITE}
mkdir -p "$out"
[ -e "$out/$site.key" ] && { echo "$out/$site.key exists; refusing to overwrite" >&2; exit 2; }
ssh-keygen -q -t ecdsa -b 384 -N "" -C "pedseg-$site" -f "$out/$site.key"
echo "private key: $out/$site.key (stays at the site)   public key: $out/$site.key.pub"
