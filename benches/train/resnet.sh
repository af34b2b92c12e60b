#!/usr/bin/env bash
# Benchmark: ResNet-18 training and inference throughput (images/s) on the CPU, Quiver's kernels
# (the train_step example: Burn flex backend, Quiver's convolution, batch norm and Adam) against
# the same network in Keras (tensorflow-cpu, benches/train/resnet_keras.py), on random 3-channel
# images of the same sizes, same batch, same cores, in the same run. Input reading is not
# measured here (see run.sh for training from an image folder).
#   bash benches/train/resnet.sh [--sides "64 224"] [--batch 32] [--steps 5] [--dev]
source "$(dirname "$0")/../../scripts/env.sh"
cd "$QUIVER_ROOT"
sides="64 224"; batch=32; steps=5; dev=0
while [ $# -gt 0 ]; do
  case $1 in --sides) sides=$2; shift 2;; --batch) batch=$2; shift 2;;
    --steps) steps=$2; shift 2;; --dev) dev=1; shift;; *) echo "unknown $1" >&2; exit 2;; esac
done
quiver_install_packages
quiver_install_refenv
if [ $dev = 1 ]; then
  quiver_cargo build --locked --example train_step
  step="$CARGO_TARGET_DIR/debug/examples/train_step"
else
  quiver_cargo build --release --locked --example train_step
  step="$CARGO_TARGET_DIR/release/examples/train_step"
fi
cores=$(nproc)
echo
echo "ResNet-18 benchmark ($([ $dev = 1 ] && echo dev || echo release) build): random 3-channel images, batch $batch, Adam, $steps timed steps after 3 warm-up steps, $cores cores, $(lscpu | sed -n 's/^Model name: *//p')"
printf '%-22s %12s %12s %8s\n' "images/s" quiver keras ratio
for side in $sides; do
  quiver_log "ResNet-18 at ${side}px: Quiver"
  out=$("$step" resnet18 "$batch" "$steps" "$side" 3)
  q_train=$(echo "$out" | sed -n 's/.* ms\/step, \([0-9.]*\) images\/s.*/\1/p')
  q_infer=$(echo "$out" | sed -n 's/.*inference batch [0-9]*: \([0-9.]*\) images\/s/\1/p')
  quiver_log "ResNet-18 at ${side}px: Keras"
  read -r k_train k_infer < <("$REFENV/bin/python" benches/train/resnet_keras.py --side "$side" \
      --batch "$batch" --steps "$steps" --threads "$cores" 2>/dev/null | tail -1 |
    "$REFENV/bin/python" -c 'import json,sys; r=json.load(sys.stdin); print(round(r["train_images_per_second"],1), round(r["inference_images_per_second"],1))')
  for kind in train infer; do
    q=q_$kind; k=k_$kind
    printf '%-22s %12s %12s %7.2fx\n' "${side}px $kind" "${!q}" "${!k}" "$(python3 -c "print(${!q} / ${!k})")"
  done
done
