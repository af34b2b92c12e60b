#!/usr/bin/env bash
# Ring all-reduce throughput over the trainers' gRPC services on 127.0.0.1, for 2-4 workers and
# 1-100 MB buffers, against the loopback link's single-stream limit measured in the same run
# (examples/allreduce_bench.rs). Pass CERTS=DIR (from scripts/certs.sh) for the ring under TLS.
#
#   bash benches/cluster/allreduce.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
TLS=()
if [ -n "${CERTS:-}" ]; then
  TLS=(--tls-cert "$CERTS/server.pem" --tls-key "$CERTS/server.key" --tls-ca "$CERTS/ca.pem")
fi
cargo run -q --example allreduce_bench -- --workers 2,3,4 --sizes-mb 1,10,100 --repeats 5 "${TLS[@]}"
