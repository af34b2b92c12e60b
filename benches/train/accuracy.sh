#!/usr/bin/env bash
# Benchmarks of accuracy, Quiver (CPU) against Keras on the same cores and the same PNG folders.
#
#   bash benches/train/accuracy.sh --parity [--runs "500:5 1000:3 3000:2 10000:1"] [--seeds "1 2 3"] [--dev]
# Keras parity on small data, where initialisation and the optimizer's details matter most:
# Fashion-MNIST training sets of 500, 1,000, 3,000 and 10,000 images (the first of each class),
# 5, 3, 2 and 1 epochs, the DNN [256, 128] and the CNN of benches/train/run.sh, batch 64, Adam
# 1e-3, dropout 0.2, seeds 1-3 each; accuracy on 2,000 held-out test images after the last
# epoch. Prints each run and the means.
#
#   bash benches/train/accuracy.sh [--target 0.85] [--epochs 3] [--dev]
# Time to a target test accuracy on the full Fashion-MNIST set (60,000 train images, all
# 10,000 test images), the CNN. Accuracy is measured on the test set after every epoch,
# outside the timed part. Two clocks: training alone (Quiver's epochs less their wait for
# input; Keras's model.fit epochs) and from the PNG folder (Quiver's whole epochs, which read
# and decode the images; Keras's Pillow load of the training folder plus its epochs).
source "$(dirname "$0")/../../scripts/env.sh"
cd "$QUIVER_ROOT"
target=0.85; epochs=3; dev=0; parity=0; runs="500:5 1000:3 3000:2 10000:1"; seeds="1 2 3"
while [ $# -gt 0 ]; do
  case $1 in --target) target=$2; shift 2;; --epochs) epochs=$2; shift 2;; --dev) dev=1; shift;;
    --parity) parity=1; shift;; --runs) runs=$2; shift 2;; --seeds) seeds=$2; shift 2;; *) echo "unknown $1" >&2; exit 2;; esac
done
quiver_install_packages
quiver_install_refenv
if [ "$parity" = 1 ]; then
  data="$QUIVER_CACHE/bench-train-parity"
  "$REFENV/bin/python" scripts/sample_data.py "$data" --photos-per-label 1 --fashion-per-class 1000
  test="$data/fashion/test"
  quiver_build_binary $dev
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  results="$work/results.jsonl"
  for run in $runs; do
    size=${run%:*}; n_epochs=${run#*:}
    train="$work/train-$size"
    for class in "$data/fashion/train"/*/; do
      mkdir -p "$train/$(basename "$class")"
      find "$class" -type f | sort | sed -n "1,$((size / 10))p" | xargs cp -t "$train/$(basename "$class")"
    done
    for model in dnn cnn; do
      if [ $model = dnn ]; then layers="model_type = 'dnn_classifier', hidden_units = [256, 128]"
      else layers="model_type = 'cnn_classifier', conv_filters = [32, 64], dense_units = [128]"; fi
      for seed in $seeds; do
        quiver_log "Quiver: $model, $size images, $n_epochs epochs, seed $seed"
        name="m${size}_${model}_$seed"
        "$QUIVER" --store "$work/store" sql "CREATE MODEL $name OPTIONS ($layers, epochs = $n_epochs,
          batch_size = 64, learning_rate = 0.001, dropout = 0.2, seed = $seed,
          validation_query = 'SELECT image_decode(content) AS image, label FROM read_images(''$test/'')')
          AS SELECT image_decode(content) AS image, label FROM read_images('$train/')" >/dev/null 2>&1
        tail -1 "$work/store/training/$name/v1/metrics.jsonl" |
          "$REFENV/bin/python" -c "import json, sys; r = json.load(sys.stdin); print(json.dumps({'engine': 'quiver', 'size': $size, 'epochs': $n_epochs, 'model': '$model', 'seed': $seed, 'accuracy': r['val_accuracy']}))" >> "$results"
      done
      quiver_log "Keras: $model, $size images, $n_epochs epochs, seeds $seeds"
      "$REFENV/bin/python" benches/train/reference.py "$train" --model $model --epochs $n_epochs \
        --threads "$(nproc)" --test "$test" --hidden 256,128 --seeds "${seeds// /,}" 2>/dev/null |
        "$REFENV/bin/python" -c "import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print(json.dumps({'engine': 'keras', 'size': $size, 'epochs': $n_epochs, 'model': '$model', 'seed': r['seed'], 'accuracy': r['test_accuracy'][-1]}))" >> "$results"
    done
  done
  "$REFENV/bin/python" - "$results" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
print("\nKeras parity: test accuracy on 2,000 held-out Fashion-MNIST images, batch 64, Adam 1e-3, dropout 0.2")
print(f"{'model':6} {'images':>7} {'epochs':>6}  {'quiver, by seed':>20} {'mean':>7}  {'keras, by seed':>20} {'mean':>7} {'gap':>7}")
keys = sorted({(r["model"], r["size"], r["epochs"]) for r in runs}, key=lambda k: (k[0], k[1]))
for model, size, epochs in keys:
    acc = {e: [r["accuracy"] for r in sorted(runs, key=lambda r: r["seed"])
               if (r["engine"], r["model"], r["size"]) == (e, model, size)] for e in ("quiver", "keras")}
    q, k = statistics.mean(acc["quiver"]), statistics.mean(acc["keras"])
    print(f"{model:6} {size:7} {epochs:6}  {' '.join(f'{a:.3f}' for a in acc['quiver']):>20} {q:7.4f}  "
          f"{' '.join(f'{a:.3f}' for a in acc['keras']):>20} {k:7.4f} {q - k:+7.4f}")
PY
  exit 0
fi

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
