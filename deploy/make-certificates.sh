#!/usr/bin/env bash
# A private CA and a TLS certificate (EC P-384) for the SuperLink, with the address(es) the sites will dial as SANs.
#   deploy/make-certificates.sh OUT_DIR IP:10.0.0.5 [DNS:fl.hospital.example ...]
# IP:127.0.0.1 is always added: the SuperLink itself listens there, behind pedseg-fleet-gateway.
# Writes OUT_DIR/ca.crt (give it to every site), OUT_DIR/server.{crt,key} (keep on the SuperLink host).
set -euo pipefail
out=${1:?usage: make-certificates.sh OUT_DIR IP:x.x.x.x|DNS:name ...}; shift
[ $# -ge 1 ] || { echo "give at least one SAN, e.g. IP:127.0.0.1 or DNS:fl.example.org" >&2; exit 2; }
mkdir -p "$out"
[ -e "$out/ca.key" ] && { echo "$out/ca.key exists; refusing to overwrite" >&2; exit 2; }
sans=("$@"); [[ " $* " == *" IP:127.0.0.1 "* ]] || sans+=(IP:127.0.0.1)
san=$(IFS=,; echo "${sans[*]}")
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes)
openssl req -x509 "${ec[@]}" -sha384 -days 3650 -subj "/CN=pedseg federation CA" \
  -keyout "$out/ca.key" -out "$out/ca.crt" 2>/dev/null
openssl req "${ec[@]}" -subj "/CN=pedseg superlink" -keyout "$out/server.key" \
  -out "$out/server.csr" 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' \
  "$san" > "$out/server.ext"
openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
  -days 825 -sha384 -extfile "$out/server.ext" -out "$out/server.crt" 2>/dev/null
rm -f "$out/server.csr" "$out/server.ext"
chmod 600 "$out"/*.key
echo "CA: $out/ca.crt   SuperLink certificate: $out/server.crt ($san)"
