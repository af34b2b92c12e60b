#!/usr/bin/env bash
# Benchmark: feature statistics of a wide real table, Fashion-MNIST's 60,000 training images as
# a CSV of 785 columns (label + 784 pixels), read and summarised per column (count, missing,
# mean, std, quartiles, zeros, 10-bucket histogram; distinct and top values for the label).
# Quiver's `SELECT * FROM feature_stats('fm')` against pandas read_csv + describe + numpy
# histograms + value_counts, same file, same cores, best of 3 runs each.
#   bash benches/stats/run.sh
source "$(dirname "$0")/../../scripts/env.sh"
cd "$QUIVER_ROOT"
quiver_install_packages
quiver_install_refenv
quiver_build_binary 0
data="$QUIVER_CACHE/bench-stats/fashion_train.csv"
mkdir -p "$(dirname "$data")"
[ -f "$data" ] || "$REFENV/bin/python" benches/stats/reference.py make "$data"
best() { sort -g | head -1; }
quiver_times=(); pandas_times=()
for _ in 1 2 3; do
  start=$(date +%s.%N)
  rows=$("$QUIVER" --store memory://bench/ sql --format csv "CREATE EXTERNAL TABLE fm STORED AS CSV LOCATION '$data' OPTIONS ('format.has_header' 'true'); SELECT count(*) FROM feature_stats('fm')" 2>/dev/null | tail -1)
  end=$(date +%s.%N)
  [ "$rows" = "785" ] || { echo "feature_stats returned '$rows' rows, expected 785" >&2; exit 1; }
  quiver_times+=("$("$REFENV/bin/python" -c "print($end - $start)")")
  pandas_times+=("$("$REFENV/bin/python" benches/stats/reference.py measure "$data" | "$REFENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')")
done
q=$(printf '%s\n' "${quiver_times[@]}" | best)
p=$(printf '%s\n' "${pandas_times[@]}" | best)
printf '| data | Quiver feature_stats (s) | pandas + numpy (s) | speed-up |\n|---|---|---|---|\n'
printf '| Fashion-MNIST train CSV, 60,000 x 785, %s MB | %.2f | %.2f | %.2fx |\n' \
  "$(( $(stat -c %s "$data") / 1000000 ))" "$q" "$p" "$("$REFENV/bin/python" -c "print($p / $q)")"
