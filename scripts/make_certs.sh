#!/usr/bin/env bash
# Make a private CA, a SuperLink TLS certificate signed by it, and SuperNode authentication keys
# (all EC P-384: quick to make, and accepted by gRPC and by the Control API).
#
#   scripts/make_certs.sh OUT_DIR [NUM_NODES] [SERVER_NAME ...]
#
# OUT_DIR/ca.crt, ca.key          the CA (keep ca.key private; give ca.crt to every SuperNode)
# OUT_DIR/server.crt, server.key  the SuperLink's certificate, valid for localhost, 127.0.0.1, ::1
#                                 and every SERVER_NAME given (host names or IP addresses)
# OUT_DIR/node_K, node_K.pub      SuperNode K's EC P-384 key pair in OpenSSH format (K = 0..N-1);
#                                 register node_K.pub with `flwr supernode register`
#
# Existing files are kept (re-running adds missing nodes only), so nothing issued is lost.
# Private keys are made owner-only (umask 077; OUT_DIR is mode 700). OUT_DIR must lie outside any
# git checkout, or be git-ignored there, so that no private key can be committed.
set -euo pipefail

usage() { echo "usage: $0 OUT_DIR [NUM_NODES=2] [SERVER_NAME ...]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
out=$1; shift
nodes=${1:-2}; [[ $# -ge 1 ]] && shift
[[ $nodes =~ ^[0-9]+$ ]] || { echo "make_certs: NUM_NODES='$nodes' is not a non-negative integer" >&2; exit 2; }
command -v openssl >/dev/null || { echo "make_certs: openssl not found (install openssl)" >&2; exit 2; }
command -v ssh-keygen >/dev/null || { echo "make_certs: ssh-keygen not found (install openssh-client)" >&2; exit 2; }
umask 077
mkdir -p "$out"
chmod 700 "$out"
if top=$(git -C "$out" rev-parse --show-toplevel 2>/dev/null) && ! git -C "$out" check-ignore -q . ; then
  echo "make_certs: OUT_DIR '$out' is inside the git checkout $top and not git-ignored:" \
    "allowed a directory outside it (e.g. ~/.fedsim/certs) or an ignored one" >&2
  rmdir "$out" 2>/dev/null || true
  exit 2
fi

if [[ ! -f $out/ca.crt ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -sha384 -days 3650 -nodes \
    -keyout "$out/ca.key" -out "$out/ca.crt" -subj "/CN=fedsim-ca" 2>/dev/null
  echo "made $out/ca.crt"
fi

if [[ ! -f $out/server.crt ]]; then
  san="DNS:localhost,IP:127.0.0.1,IP:::1"
  for name in "$@"; do
    if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then san+=",IP:$name"; else san+=",DNS:$name"; fi
  done
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-384 -sha384 -nodes -keyout "$out/server.key" -out "$out/server.csr" \
    -subj "/CN=fedsim-superlink" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' \
    "$san" >"$out/server.ext"
  openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
    -out "$out/server.crt" -days 825 -sha384 -extfile "$out/server.ext" 2>/dev/null
  rm -f "$out/server.csr" "$out/server.ext"
  echo "made $out/server.crt for $san"
fi

for ((k = 0; k < nodes; k++)); do
  if [[ ! -f $out/node_$k ]]; then
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedsim-node-$k" -f "$out/node_$k"
    echo "made $out/node_$k(.pub)"
  fi
done
chmod 600 "$out"/*.key "$out"/node_[0-9]* 2>/dev/null || true
chmod 644 "$out"/*.crt "$out"/*.pub 2>/dev/null || true
