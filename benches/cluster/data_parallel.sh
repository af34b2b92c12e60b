#!/usr/bin/env bash
# Data-parallel training step time and scaling: the same DNN on the same Fashion-MNIST sample,
# the same global batch, trained by 1 worker (the embedded engine, one process) and by gangs of
# 2 and 4 workers on a local cluster (a driver and 4 executors with one slot each, all on this
# machine). Prints one line per run: workers, seconds per epoch, ms per step, examples/s, and
# scaling efficiency (examples/s over N times the 1-worker examples/s).
#
#   QUIVER=target/debug/quiver SAMPLES=~/.cache/quiver/samples bash benches/cluster/data_parallel.sh
set -euo pipefail
QUIVER=${QUIVER:-target/debug/quiver}
SAMPLES=${SAMPLES:-$HOME/.cache/quiver/samples}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=$((20000 + RANDOM % 20000))
TRAIN="SELECT image_decode(content) AS image, label FROM read_images('$SAMPLES/fashion/train/')"
OPTIONS="model_type = 'dnn_classifier', hidden_units = [512, 256, 128], epochs = 3, batch_size = 128"
"$QUIVER" --store "$WORK/store" --partitions 2 driver --listen 127.0.0.1:$PORT >"$WORK/driver.log" 2>&1 &
for i in 0 1 2 3; do
  "$QUIVER" --store "$WORK/store" --partitions 2 executor --driver 127.0.0.1:$PORT --slots 1 \
    --work-dir "$WORK/w$i" >"$WORK/executor$i.log" 2>&1 &
done
until [ "$(curl -s http://127.0.0.1:$PORT/readyz | grep -c slots || true)" -ge 4 ]; do sleep 0.5; done
"$QUIVER" --store "$WORK/store" --partitions 2 sql "CREATE MODEL w1 OPTIONS ($OPTIONS) AS $TRAIN" >/dev/null 2>&1
for n in 2 4; do
  "$QUIVER" --store "$WORK/store" sql --cluster 127.0.0.1:$PORT \
    "CREATE MODEL w$n OPTIONS ($OPTIONS, workers = $n) AS $TRAIN" >/dev/null 2>&1
done
python3 - "$WORK/store" <<'PY'
import json, sys
store = sys.argv[1]
base = None
print(f"cores: {__import__('os').cpu_count()}")
for n in (1, 2, 4):
    epochs = [json.loads(l) for l in open(f"{store}/training/w{n}/v1/metrics.jsonl")]
    # Epoch 1 includes warm-up; the mean of the later epochs is reported.
    later = epochs[1:]
    seconds = sum(e["seconds"] for e in later) / len(later)
    rate = sum(e["examples_per_second"] for e in later) / len(later)
    steps = -(-later[0]["examples"] // 128)
    base = base or rate
    print(json.dumps({"workers": n, "epoch_s": round(seconds, 3), "step_ms": round(1000 * seconds / steps, 1),
                      "examples_per_s": round(rate), "loss": round(epochs[-1]["loss"], 4),
                      "scaling_efficiency": round(rate / (n * base), 3)}))
PY
