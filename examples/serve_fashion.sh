#!/usr/bin/env bash
# Serves the registered Fashion-MNIST CNN with `quiver serve` (TensorFlow Serving's gRPC API on
# :8500 and REST API on :8501, dynamic batching), measures its accuracy on the test images with
# the Rust client (examples/serving_client.rs) over gRPC, asks for one prediction over REST
# with curl, and stops the server (SIGTERM: in-flight requests finish, logs are written).
#   bash examples/serve_fashion.sh QUIVER_BIN CLIENT_BIN [MODEL]
set -euo pipefail
quiver=$1 client=$2 model=${3:-fashion_cnn}
test_images=quiver-data/samples/fashion/test
"$quiver" serve --model "quiver-data/models/$model" --batching >quiver-data/serve.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
# Wait for its "ready" line (a port already taken ends it at once, with the reason).
until grep -q "quiver serve: ready" quiver-data/serve.log; do
  if ! kill -0 $server 2>/dev/null; then cat quiver-data/serve.log >&2; exit 1; fi
  sleep 0.1
done
cat quiver-data/serve.log
"$client" accuracy --model "$model" --images "$test_images" --batch 50
image=$(find "$test_images/sneaker" -name '*.png' | sort | head -1)
echo "REST: curl -X POST localhost:8501/v1/models/$model:predict -d '{\"instances\": [{\"b64\": \"<$image>\"}]}'"
printf '{"instances": [{"b64": "%s"}]}' "$(base64 -w0 "$image")" |
  curl -sS -X POST -H 'Content-Type: application/json' --data-binary @- \
    "localhost:8501/v1/models/$model:predict" |
  python3 -c 'import json,sys; p=json.load(sys.stdin)["predictions"][0]; print("  ->", p["label"], round(p["probability"], 3))'
kill -TERM $server
wait $server
trap - EXIT
tail -2 quiver-data/serve.log
echo "prediction logs: quiver-data/serving/$model/logs/"
