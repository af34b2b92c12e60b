#!/usr/bin/env bash
# Benchmark: time to a target test accuracy on the full Fashion-MNIST set (60,000 train images,
# all 10,000 test images), the CNN of benches/train/run.sh, Quiver (CPU) against Keras on the
# same cores. Accuracy is measured on the test set after every epoch, outside the timed part.
# Two clocks: training alone (Quiver's epochs less their wait for input; Keras's model.fit
# epochs) and from the PNG folder (Quiver's whole epochs, which read and decode the images;
# Keras's Pillow load of the training folder plus its epochs).
#   bash benches/train/accuracy.sh [--target 0.85] [--epochs 3] [--dev]
source "$(dirname "$0")/../../scripts/env.sh"
cd "$QUIVER_ROOT"
target=0.85; epochs=3; dev=0
while [ $# -gt 0 ]; do
  case $1 in --target) target=$2; shift 2;; --epochs) epochs=$2; shift 2;; --dev) dev=1; shift;; *) echo "unknown $1" >&2; exit 2;; esac
done
quiver_install_packages
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

q_acc = [r["val_accuracy"] for r in quiver]
q_train = reach([r["seconds"] - r["input_seconds"] for r in quiver], q_acc)
q_all = reach([r["seconds"] for r in quiver], q_acc)
k_train = reach(keras["seconds"], keras["test_accuracy"])
k_all = (k_train[0], k_train[1] + keras["load_seconds"])
print(f"\nTime to {target:.0%} test accuracy, Fashion-MNIST 60,000 train / 10,000 test, CNN, batch 64")
print(f"{'':8} {'epoch':>6} {'training s':>11} {'from PNGs s':>12} {'test acc per epoch'}")
for name, (epoch, train_s), (_, all_s), accs in (
        ("quiver", q_train, q_all, q_acc), ("keras", k_train, k_all, keras["test_accuracy"])):
    print(f"{name:8} {epoch or '-':>6} {train_s:11.1f} {all_s:12.1f} {' '.join(f'{a:.4f}' for a in accs)}")
print(f"reading and decoding the training images: quiver {quiver[0]['input_seconds']:.1f} s "
      f"(in epoch 1), keras {keras['load_seconds']:.1f} s (Pillow, before model.fit)")
if q_train[0] and k_train[0]:
    print(f"ratio (keras seconds / quiver seconds): training {k_train[1] / q_train[1]:.2f}x, "
          f"from PNGs {k_all[1] / q_all[1]:.2f}x")
PY
