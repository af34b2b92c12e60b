#!/usr/bin/env bash
# Benchmark: CUDA training throughput and accuracy on the full Fashion-MNIST set (60,000 train,
# 10,000 test), Quiver (Burn's cuda backend) against PyTorch on the same GPU, same data, same
# architectures, batch size and optimizer.
#   bash benches/train/gpu.sh prepare   # here: builds with --features cuda, packs .gpu/
#   bash benches/train/gpu.sh run       # on the GPU machine, from the repository root
# `prepare` writes the stripped binary and Debian's Fashion-MNIST IDX files into .gpu/ (ignored
# by git), which travels to the GPU machine; `run` needs python3 with torch, numpy and Pillow.
set -euo pipefail
cd "$(dirname "$0")/../.."
epochs=${EPOCHS:-3}; batch=${BATCH:-256}; models=${MODELS:-dnn cnn}; torch=${TORCH:-1}
case ${1:-} in
prepare)
  source scripts/env.sh
  CUDARC_CUDA_VERSION=13000 cargo build --locked -q --workspace --all-targets --features quiver-operators/cuda
  rm -rf .gpu && mkdir -p .gpu
  # xz keeps binary + data under the 64 MiB a device call may carry.
  strip -o .gpu/quiver "$CARGO_TARGET_DIR/debug/quiver"
  xz -6 -T2 .gpu/quiver
  for f in /usr/share/datasets/fashion-mnist/*.gz; do
    zcat "$f" | xz -9e -T2 > ".gpu/$(basename "$f" .gz).xz"
  done
  du -sh .gpu
  ;;
run)
  out=${OUT:-/tmp/gpu-out}; mkdir -p "$out"
  work=$(mktemp -d)
  xz -d -c .gpu/quiver.xz > "$work/quiver" && chmod +x "$work/quiver"
  mkdir -p "$work/idx"
  for f in .gpu/*idx*.xz; do xz -d -c "$f" | gzip -1 > "$work/idx/$(basename "$f" .xz).gz"; done
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
  QUIVER_FASHION_DIR="$work/idx" python3 -c "import sys; sys.path.insert(0, 'scripts')
import sample_data; sample_data.fashion(sys.argv[1], 6000)" "$work/data"
  # cubecl compiles kernels with NVRTC at run time.
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
  done
  train="$work/data/fashion/train"; test="$work/data/fashion/test"
  echo "train $(find "$train" -type f | wc -l) test $(find "$test" -type f | wc -l) images"
  declare -A opts=(
    [dnn]="model_type = 'dnn_classifier', hidden_units = [512, 256, 128]"
    [cnn]="model_type = 'cnn_classifier', conv_filters = [32, 64], dense_units = [128]")
  for m in $models; do
    [ "$torch" = 1 ] || break
    echo "== pytorch $m"
    python3 benches/train/reference_torch.py "$train" --model $m --epochs "$epochs" --batch-size "$batch" \
      --test "$test" | tail -1 | tee "$out/torch-$m.json"
  done
  for m in $models; do
    echo "== quiver $m (cuda)"
    "$work/quiver" --store "$work/store" sql "CREATE MODEL $m OPTIONS (${opts[$m]}, device = 'cuda',
      epochs = $epochs, batch_size = $batch, learning_rate = 0.001, dropout = 0.2, seed = 42)
      AS SELECT image_decode(content) AS image, label FROM read_images('$train/')" 2>&1 | tail -4
    cp "$work/store/training/$m/v1/metrics.jsonl" "$out/quiver-$m.jsonl"
    "$work/quiver" --store "$work/store" sql --format csv "SELECT accuracy FROM ml_evaluate('$m',
      'SELECT image_decode(content) AS image, label FROM read_images(''$test/'')')" | tail -1 | tee "$work/$m.test"
  done
  python3 - "$work" "$out" "$epochs" "$batch" "$models" <<'PY'
import json, sys
work, out, epochs, batch = sys.argv[1:5]
gpu = open(f"{out}/gpu.txt").read().split(",")[0]
print(f"\nFashion-MNIST 60,000 train / 10,000 test, batch {batch}, Adam, {epochs} epochs, {gpu}")
print("images/s of the epochs after the first; accuracy on the 10,000 test images")
print(f"{'model':6} {'quiver img/s':>13} {'torch img/s':>12} {'ratio':>7} {'quiver acc':>11} {'torch acc':>10}")
for m in sys.argv[5].split():
    rows = [json.loads(l) for l in open(f"{out}/quiver-{m}.jsonl")]
    q = [r["examples_per_second"] for r in rows]
    q = sum(q[1:] or q) / len(q[1:] or q)
    t = json.load(open(f"{out}/torch-{m}.json"))
    tr = t["images_per_second"]
    tr = sum(tr[1:] or tr) / len(tr[1:] or tr)
    qa = float(open(f"{work}/{m}.test").read())
    print(f"{m:6} {q:13.0f} {tr:12.0f} {q / tr:6.2f}x {qa:11.4f} {t['test_accuracy']:10.4f}")
PY
  ;;
*) echo "usage: gpu.sh prepare|run" >&2; exit 2;;
esac
