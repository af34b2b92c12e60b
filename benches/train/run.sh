#!/usr/bin/env bash
# Benchmark: training throughput (images/s) of the same DNN and CNN on the same Fashion-MNIST
# images and cores, Quiver (Burn flex backend, CPU) against Keras (tensorflow-cpu).
#   bash benches/train/run.sh [--per-class N] [--epochs E] [--dev] [--augment]
# (defaults: 500 per class, 4 epochs, release build; --dev uses the dev-profile binary, whose
# dependencies (Burn, DataFusion) are optimised but Quiver's own crates are not; --augment adds
# the CNN with augmentation, Quiver's augment_* options against Keras's preprocessing layers,
# and what it costs each)
source "$(dirname "$0")/../../scripts/env.sh"
cd "$QUIVER_ROOT"
per_class=500; epochs=4; dev=0; augment=0
while [ $# -gt 0 ]; do
  case $1 in --per-class) per_class=$2; shift 2;; --epochs) epochs=$2; shift 2;; --dev) dev=1; shift;;
    --augment) augment=1; shift;; *) echo "unknown $1" >&2; exit 2;; esac
done
cores=$(nproc)
quiver_install_packages
quiver_install_refenv
data="$QUIVER_CACHE/bench-train-$per_class"
"$REFENV/bin/python" scripts/sample_data.py "$data" --photos-per-label 2 --fashion-per-class "$per_class"
images="$data/fashion/train"
quiver_build_binary $dev
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Rates are the mean of the epochs after the first and before the last: the first includes
# warm-up, and during the last Quiver has no next epoch to read ahead, so it would flatter.
quiver_rate() {  # from metrics.jsonl
  "$QUIVER" --store "$work/$1" sql "CREATE MODEL m OPTIONS ($2, epochs = $epochs, batch_size = 64,
    learning_rate = 0.001, dropout = 0.2) AS SELECT image_decode(content) AS image, label
    FROM read_images('$images/')" >/dev/null 2>"$work/$1.log" || { cat "$work/$1.log" >&2; exit 1; }
  "$REFENV/bin/python" - "$work/$1/training/m/v1/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rates = [r["examples_per_second"] for r in rows]
rates = rates[1:-1] or rates[1:] or rates
print(round(sum(rates) / len(rates), 1), round(rows[-1]["accuracy"], 4))
PY
}
keras_rate() {
  "$REFENV/bin/python" benches/train/reference.py "$images" --model "$@" --epochs "$epochs" --threads "$cores" 2>/dev/null | tail -1 |
    "$REFENV/bin/python" -c 'import json,sys; r=json.load(sys.stdin); x=r["images_per_second"]; x=x[1:-1] or x[1:] or x; print(round(sum(x)/len(x),1), round(r["accuracy"],4))'
}

read -r q_dnn q_dnn_acc < <(quiver_rate dnn "model_type = 'dnn_classifier', hidden_units = [512, 256, 128]")
read -r k_dnn k_dnn_acc < <(keras_rate dnn)
read -r q_cnn q_cnn_acc < <(quiver_rate cnn "model_type = 'cnn_classifier', conv_filters = [32, 64], dense_units = [128]")
read -r k_cnn k_cnn_acc < <(keras_rate cnn)
models="dnn cnn"
if [ $augment = 1 ]; then
  read -r q_aug q_aug_acc < <(quiver_rate aug "model_type = 'cnn_classifier', conv_filters = [32, 64], dense_units = [128],
    augment_flip = 'horizontal', augment_crop = [0.5, 1], augment_rotation = 10, augment_brightness = 0.2,
    augment_contrast = 0.2")
  read -r k_aug k_aug_acc < <(keras_rate cnn --augment)
  models="dnn cnn aug"
fi
n=$(find "$images" -type f | wc -l)
echo
echo "Training benchmark ($([ $dev = 1 ] && echo dev || echo release) build): $n Fashion-MNIST images (28x28), batch 64, Adam, $epochs epochs, $cores cores, $(lscpu | sed -n 's/^Model name: *//p')"
echo "images/s: mean of epochs 2 to $((epochs - 1)) (training accuracy of the last epoch in brackets)"
printf '%-44s %12s %12s %8s\n' model quiver keras ratio
for m in $models; do
  q=q_$m; k=k_$m; qa=q_${m}_acc; ka=k_${m}_acc
  printf '%-44s %12s %12s %7.2fx\n' "$m" "${!q} (${!qa})" "${!k} (${!ka})" "$(python3 -c "print(${!q} / ${!k})")"
done
if [ $augment = 1 ]; then
  echo "aug: the CNN with flips, crops, rotations, brightness and contrast jitter; it costs" \
    "Quiver $(python3 -c "print(round(100 * (1 - $q_aug / $q_cnn)))")% of its CNN rate and" \
    "Keras $(python3 -c "print(round(100 * (1 - $k_aug / $k_cnn)))")%"
fi
