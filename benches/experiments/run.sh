#!/usr/bin/env bash
# Benchmark: the classic 6-trial grid (learning_rate x dropout) of a DNN on the Fashion-MNIST
# sample, with one executor slot (trials one after another on every core) and with one slot
# per core (trials side by side, one core each). Reports wall time and the speed-up.
#   bash benches/experiments/run.sh [--epochs 3] [--dev]
source "$(dirname "$0")/../../scripts/env.sh"
cd "$QUIVER_ROOT"
epochs=3; dev=0
while [ $# -gt 0 ]; do
  case $1 in --epochs) epochs=$2; shift 2;; --dev) dev=1; shift;; *) echo "unknown $1" >&2; exit 2;; esac
done
quiver_install_packages
quiver_install_refenv
quiver_sample_data quiver-data/samples
train="$QUIVER_ROOT/quiver-data/samples/fashion/train"
test="$QUIVER_ROOT/quiver-data/samples/fashion/test"
quiver_build_binary $dev
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cores=$(nproc)
declare -A seconds
for slots in 1 "$cores"; do
  quiver_log "grid of 6 trials, $epochs epochs each, $slots slot(s)"
  start=$(date +%s.%N)
  "$QUIVER" --store "$work/$slots" sql "CREATE EXPERIMENT grid OPTIONS (
      model_type = 'dnn_classifier', hidden_units = [256, 128], epochs = $epochs, batch_size = 64,
      learning_rate = [0.001, 0.005], dropout = [0.45, 0.5, 0.55], max_parallel_trials = $slots,
      validation_query = 'SELECT image_decode(content) AS image, label FROM read_images(''$test/'')')
    AS SELECT image_decode(content) AS image, label FROM read_images('$train/')" >/dev/null 2>&1
  seconds[$slots]=$("$REFENV/bin/python" -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$start" "$(date +%s.%N)")
done
"$REFENV/bin/python" - "$work" "${seconds[1]}" "${seconds[$cores]}" "$cores" <<'PY'
import glob, json, sys
work, one, many, cores = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
def best(slots):
    spec = json.load(open(f"{work}/{slots}/experiments/grid/experiment.json"))
    return spec["best_trial"], spec["best_value"]
print(f"| slots | wall seconds | best trial | val_accuracy |")
print(f"|---|---|---|---|")
for slots, s in ((1, one), (cores, many)):
    trial, value = best(slots)
    print(f"| {slots} | {s:.1f} | {trial} | {value:.4f} |")
print(f"speed-up with {cores} slots: {one / many:.2f}x")
PY
