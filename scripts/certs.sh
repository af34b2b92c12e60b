#!/usr/bin/env bash
# Creates a CA and certificates for a Quiver test deployment (`quiver serve`, or a cluster's
# driver and executors) with openssl:
#   bash scripts/certs.sh OUT_DIR [HOST ...]
# OUT_DIR/ca.pem, ca.key          the CA (keep ca.key private)
# OUT_DIR/server.pem, server.key  the certificate of a server or cluster node for HOSTs (default:
#                                 localhost and 127.0.0.1), signed by the CA; it is valid as a
#                                 client certificate too, since executors are clients of the
#                                 driver and of each other
# OUT_DIR/client.pem, client.key  a client certificate signed by the CA
# Serve with mutual TLS:
#   quiver serve --model ... --tls-cert OUT/server.pem --tls-key OUT/server.key --client-ca OUT/ca.pem
# A cluster with mutual TLS (each node, then each client):
#   quiver driver|executor ... --tls-cert OUT/server.pem --tls-key OUT/server.key \
#     --tls-ca OUT/ca.pem --mutual-tls
#   quiver sql --cluster HOST:PORT --tls-ca OUT/ca.pem --tls-cert OUT/client.pem \
#     --tls-key OUT/client.key "SELECT ..."
set -euo pipefail
out=${1:?usage: certs.sh OUT_DIR [HOST ...]}
shift
hosts=("$@")
[ ${#hosts[@]} -gt 0 ] || hosts=(localhost 127.0.0.1)
mkdir -p "$out"
cd "$out"

san=""
for h in "${hosts[@]}"; do
  if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then san+="IP:$h,"; else san+="DNS:$h,"; fi
done
san=${san%,}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
  -keyout ca.key -out ca.pem -subj "/CN=Quiver test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  2>/dev/null

issue() { # name, subject, extensions
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
    -out "$1.pem" -extfile <(printf '%s\n' "$3") 2>/dev/null
  rm -f "$1.csr"
}
issue server "/CN=${hosts[0]}" "subjectAltName=$san
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth"
issue client "/CN=quiver-client" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
# rustls wants PKCS#8 keys.
for k in ca server client; do
  openssl pkcs8 -topk8 -nocrypt -in "$k.key" -out "$k.key.p8" && mv "$k.key.p8" "$k.key"
done
rm -f ca.srl
echo "certificates for ${hosts[*]} in $(pwd)"
