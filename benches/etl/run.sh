#!/usr/bin/env bash
# Benchmark: folder → decode → centre-crop → resize 200x200 → JPEG → TFRecord, Quiver against
# the Pillow + TensorFlow reference on the same images and the same number of cores.
#   bash benches/etl/run.sh [--copies N] [--dev]
# N copies of the sample photos (default 3); --dev measures the dev build (the `quiver` that the
# set-up puts on PATH) instead of the release build.
source "$(dirname "$0")/../../scripts/env.sh"
cd "$QUIVER_ROOT"
copies=3 dev=0
while [ $# -gt 0 ]; do
    case $1 in
        --copies) copies=$2; shift 2 ;;
        --dev) dev=1; shift ;;
        *) echo "usage: benches/etl/run.sh [--copies N] [--dev]" >&2; exit 2 ;;
    esac
done
cores=$(nproc)
quiver_install_packages
quiver_sample_data "$QUIVER_CACHE/samples"
quiver_build_binary $dev
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for i in $(seq 1 "$copies"); do cp -r "$QUIVER_CACHE/samples/photos" "$work/images-$i"; done
images="$work/images"; mkdir -p "$images"; mv "$work"/images-* "$images/"
n=$(find "$images" -type f -iname '*.jpg' | wc -l)
bytes=$(du -sb "$images" | cut -f1)

calc() { python3 -c "print($1)"; }
timeit() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }; e=$(date +%s.%N); calc "round($e - $s, 3)"; }
best() { local b="" t; for _ in 1 2 3; do t=$("$@"); if [ -z "$b" ] || [ "$(calc "$t < $b")" = True ]; then b=$t; fi; done; echo "$b"; }
q() { rm -rf "$work/q-out"; "$QUIVER" --partitions "$cores" sql "$1"; }

pipeline="image_resize(image_center_crop(image_decode(content)), 200, 200)"
src="read_images('$images/')"
t_read=$(best timeit q "SELECT count(content) FROM $src")
t_decode_full=$(best timeit q "SELECT sum(image_width(image_decode(content))) FROM $src")
t_resize=$(best timeit q "SELECT sum(image_width($pipeline)) FROM $src")
t_encode=$(best timeit q "SELECT count(image_encode($pipeline, 'jpeg')) FROM $src")
t_quiver=$(best timeit q "COPY (SELECT path, label, $pipeline AS image FROM $src) TO '$work/q-out/' STORED AS TFRECORD OPTIONS (image_format 'jpeg')")

# reference [--draft]: the best of 3 runs of the Pillow reference, as "seconds json".
reference() {
  local best="" json="" out s
  for _ in 1 2 3; do
    rm -rf "$work/r-out"
    out=$("$REFENV/bin/python" benches/etl/reference.py "$images" "$work/r-out" --workers "$cores" "$@" 2>/dev/null | tail -1)
    s=$(echo "$out" | "$REFENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')
    if [ -z "$best" ] || [ "$(calc "$s < $best")" = True ]; then best=$s; json=$out; fi
  done
  echo "$best $json"
}
read -r ref_best ref_json < <(reference)
read -r draft_best draft_json < <(reference --draft)

rate() { calc "round($n / $1, 1)"; }
echo
echo "ETL benchmark ($([ $dev = 1 ] && echo dev || echo release) build): $n JPEG photos ($((bytes / 1048576)) MiB), $cores cores, $(lscpu | sed -n 's/^Model name: *//p')"
printf '%-58s %8s %10s\n' "pipeline" "seconds" "images/s"
printf '%-58s %8.2f %10s\n' "quiver: COPY ... STORED AS TFRECORD (whole CLI run)" "$t_quiver" "$(rate "$t_quiver")"
printf '%-58s %8.2f %10s\n' "reference: Pillow + tf.io.TFRecordWriter, $cores processes" "$ref_best" "$(rate "$ref_best")"
printf '%-58s %8.2f %10s\n' "reference with Image.draft() (DCT-scaled decode)" "$draft_best" "$(rate "$draft_best")"
printf 'ratio (quiver / reference throughput): %.2fx; against the draft() reference: %.2fx\n' \
  "$(calc "$ref_best / $t_quiver")" "$(calc "$draft_best / $t_quiver")"
echo
echo "where Quiver's time goes (cumulative queries, whole CLI runs, best of 3):"
printf '  %-52s %8.2f\n' "list + read files" "$t_read" \
  "  + full-size decode (no DCT scaling, for comparison)" "$t_decode_full" \
  "+ fused decode (DCT-scaled) + square crop + resize" "$t_resize" \
  "+ JPEG encode" "$t_encode" \
  "+ tf.train.Example + TFRecord write + commit" "$t_quiver"
echo "draft() reference per-stage worker seconds: $(echo "$draft_json" | "$REFENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["stages"])')"
echo "reference per-stage worker seconds: $(echo "$ref_json" | "$REFENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["stages"])')"
