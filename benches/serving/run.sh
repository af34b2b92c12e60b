#!/usr/bin/env bash
# Benchmark: model serving, batch-1 requests from a second process on 127.0.0.1 (the Rust
# load generator `examples/serving_client.rs load`, the same for every server), bounded in
# count and time. Quiver's `quiver serve` with and without dynamic batching against a Python
# reference server (grpcio + http.server around the same Keras model, tf.function forward),
# over gRPC and REST, on the same cores. Without batching, with 1 and 2 model replicas.
#   bash benches/serving/run.sh [--requests N] [--concurrency C]
# (release build)
source "$(dirname "$0")/../../scripts/env.sh"
cd "$QUIVER_ROOT"
requests=3000; concurrency=8
while [ $# -gt 0 ]; do
  case $1 in --requests) requests=$2; shift 2;; --concurrency) concurrency=$2; shift 2;; *) echo "unknown $1" >&2; exit 2;; esac
done
quiver_install_packages
quiver_install_refenv
data="$QUIVER_CACHE/bench-serving"
"$REFENV/bin/python" scripts/sample_data.py "$data" --photos-per-label 2 --fashion-per-class 100 >/dev/null
quiver_build_binary 0
client="$CARGO_TARGET_DIR/release/examples/serving_client"
work=$(mktemp -d)
pids=()
# The clean-up runs whatever happened: a server already gone must not stop it (set -e).
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT
train() { # name, options
  "$QUIVER" --store "$work/store" sql "CREATE MODEL $1 OPTIONS ($2, epochs = 1) AS SELECT
    image_decode(content) AS image, label FROM read_images('$data/fashion/train/')" >/dev/null 2>"$work/train.log" ||
    { cat "$work/train.log" >&2; exit 1; }
}
train dnn "model_type = 'dnn_classifier', hidden_units = [128]"
train cnn "model_type = 'cnn_classifier', conv_filters = [32, 64], dense_units = [128]"
image=$(find "$data/fashion/test" -name '*.png' | sort | head -1)

wait_ready() { # log file
  for _ in $(seq 600); do grep -q "ready" "$1" && return 0; sleep 0.1; done
  cat "$1" >&2; exit 1
}
port() { "$REFENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# The ports `quiver serve` bound (it was given port 0): "gRPC on 127.0.0.1:P, REST on http://127.0.0.1:Q".
bound() { # log file → "P Q"
  sed -n 's/.*gRPC on [^ ]*:\([0-9]*\), REST on [a-z]*:\/\/[^ ]*:\([0-9]*\) .*/\1 \2/p' "$1" | head -1
}
measure() { # name, model, grpc port, rest port
  for proto in grpc rest; do
    args=(--grpc "http://127.0.0.1:$3")
    [ $proto = rest ] && args+=(--rest "http://127.0.0.1:$4")
    "$client" load "${args[@]}" --model "$2" --image "$image" --requests 200 --concurrency "$concurrency" >/dev/null  # warm-up
    printf '%s %s %s ' "$2" "$1" "$proto"
    "$client" load "${args[@]}" --model "$2" --image "$image" --requests "$requests" --concurrency "$concurrency" --seconds 60
  done
}
results="$work/results"
for model in dnn cnn; do
  for mode in replicas-1 replicas-2 batch-0us batch-1000us; do
    extra=()
    case $mode in
      replicas-*) extra=(--replicas "${mode#replicas-}");;
      batch-0us) extra=(--batching --max-batch-size 32 --batch-timeout-micros 0);;
      batch-1000us) extra=(--batching --max-batch-size 32 --batch-timeout-micros 1000);;
    esac
    "$QUIVER" --store "$work/store" serve --model "$work/store/models/$model" --grpc-port 0 --rest-port 0 \
      --no-prediction-log "${extra[@]}" >"$work/serve.log" 2>&1 &
    pids+=($!)
    wait_ready "$work/serve.log"
    read -r g r < <(bound "$work/serve.log")
    measure "quiver-$mode" "$model" "$g" "$r" >>"$results"
    kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
  done
  g=$(port); r=$(port)
  shape=(--hidden 128); [ $model = cnn ] && shape=(--conv 32 64 --hidden 128)
  "$REFENV/bin/python" benches/serving/reference_server.py --grpc-port "$g" --rest-port "$r" "${shape[@]}" >"$work/ref.log" 2>&1 &
  pids+=($!)
  wait_ready "$work/ref.log"
  # The reference answers any model name.
  measure "python-keras" "$model" "$g" "$r" >>"$results"
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
done

echo
echo "Serving benchmark: batch-1 requests of one 28x28 PNG; DNN [128] and CNN (32, 64) + dense 128 classifiers; $concurrency concurrent connections, up to $requests requests per run, $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
"$REFENV/bin/python" - "$results" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    model, name, proto, js = line.split(" ", 3)
    rows[(model, name, proto)] = json.loads(js)
print(f"| model | server | protocol | req/s | p50 ms | p99 ms | errors | vs python |")
print(f"|---|---|---|---|---|---|---|---|")
for (model, name, proto), r in rows.items():
    ref = rows[(model, "python-keras", proto)]["rps"]
    print(f"| {model} | {name} | {proto} | {r['rps']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | {r['rps'] / ref:.2f}x |")
PY
