#!/usr/bin/env bash
# Benchmark: time to a target test accuracy on the full Fashion-MNIST set (60,000 train images,
# all 10,000 test images), the CNN of benches/train/run.sh, Quiver (CPU) against Keras on the
# same cores. Accuracy is measured on the test set after every epoch, outside the timed part.
#   bash benches/train/accuracy.sh [--target 0.85] [--epochs 3] [--dev]
source "$(dirname "$0")/../../scripts/env.sh"
cd "$QUIVER_ROOT"
target=0.85; epochs=3; dev=0
while [ $# -gt 0 ]; do
  case $1 in --target) target=$2; shift 2;; --epochs) epochs=$2; shift 2;; --dev) dev=1; shift;; *) echo "unknown $1" >&2; exit 2;; esac
done
quiver_install_build_tools
quiver_install_datasets
quiver_install_refenv
data="$QUIVER_CACHE/bench-train-full"
"$REFENV/bin/python" scripts/sample_data.py "$data" --photos-per-label 1 --fashion-per-class 6000
train="$data/fashion/train"; test="$data/fashion/test"
quiver_build_binary $dev
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

quiver_log "Quiver: CNN, $epochs epochs on $(find "$train" -type f | wc -l) images"
"$QUIVER" --store "$work/store" sql "CREATE MODEL cnn OPTIONS (model_type = 'cnn_classifier',
  conv_filters = [32, 64], dense_units = [128], epochs = $epochs, batch_size = 64,
  learning_rate = 0.001, dropout = 0.2, seed = 42,
  validation_query = 'SELECT image_decode(content) AS image, label FROM read_images(''$test/'')')
  AS SELECT image_decode(content) AS image, label FROM read_images('$train/')" >/dev/null
quiver_log "Keras: the same CNN"
"$REFENV/bin/python" benches/train/reference.py "$train" --model cnn --epochs "$epochs" \
  --threads "$(nproc)" --test "$test" 2>/dev/null | tail -1 > "$work/keras.json"

"$REFENV/bin/python" - "$work/store/training/cnn/v1/metrics.jsonl" "$work/keras.json" "$target" <<'PY'
import json, sys
quiver = [json.loads(l) for l in open(sys.argv[1])]
keras = json.load(open(sys.argv[2]))
target = float(sys.argv[3])

def reach(seconds, accuracy):
    total = 0.0
    for epoch, (s, a) in enumerate(zip(seconds, accuracy), 1):
        total += s
        if a >= target:
            return epoch, total
    return None, total

q = reach([r["seconds"] for r in quiver], [r["val_accuracy"] for r in quiver])
k = reach(keras["seconds"], keras["test_accuracy"])
print(f"\nTime to {target:.0%} test accuracy, Fashion-MNIST 60,000 train / 10,000 test, CNN, batch 64")
print(f"{'':8} {'epoch':>6} {'train s':>9} {'test acc per epoch'}")
for name, (epoch, seconds), accs in (("quiver", q, [r["val_accuracy"] for r in quiver]),
                                     ("keras", k, keras["test_accuracy"])):
    print(f"{name:8} {epoch or '-':>6} {seconds:9.1f} {' '.join(f'{a:.4f}' for a in accs)}")
if q[0] and k[0]:
    print(f"ratio (keras seconds / quiver seconds): {k[1] / q[1]:.2f}x")
PY
