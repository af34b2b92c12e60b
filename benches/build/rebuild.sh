#!/usr/bin/env bash
# Benchmark: how long the dev build (`cargo build --workspace --all-targets`, what a developer
# runs after an edit) takes after a one-function edit in each room, and which of Quiver's units
# the time goes to (cargo --timings). Decides whether a room pays for being its own crate: it
# does when its own unit's time is a large part of the rebuild and other rooms' units could be
# skipped. Each edit appends one function to the file and is reverted afterwards.
#   bash benches/build/rebuild.sh [FILE...]
source "$(dirname "$0")/../../scripts/env.sh"
cd "$QUIVER_ROOT"
files=("$@")
[ ${#files[@]} = 0 ] && files=(operators/src/ml/train.rs operators/src/image/kernels.rs
  operators/src/tfrecord/sink.rs operators/src/experiment/runner.rs engine/src/session.rs
  sql/src/statements.rs)
if ! git diff --quiet -- "${files[@]}"; then
  echo "commit or stash the edits in ${files[*]} first: this script reverts them" >&2
  exit 2
fi
quiver_log "warm build"
quiver_cargo build --locked --workspace --all-targets
echo
echo "Rebuild after a one-function edit, dev profile, $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
printf '%-36s %8s   %s\n' "edited file" "seconds" "Quiver units (seconds)"
for file in "${files[@]}"; do
  quiver_log "edit $file"
  printf '\n#[allow(dead_code)]\nfn rebuild_probe() -> u64 {\n    %d\n}\n' $RANDOM >> "$file"
  seconds=$(quiver_cargo build --locked --workspace --all-targets --timings 2>&1 | tee /dev/stderr |
    sed -n 's/.*Finished .* in \([0-9.]*\)s$/\1/p; s/.*Finished .* in \([0-9]*\)m \([0-9.]*\)s$/\1 \2/p' |
    awk 'NF == 2 { print $1 * 60 + $2; next } { print }')
  git checkout -q -- "$file"
  # Built again untimed, so that the next edit's figure does not include this revert's.
  quiver_cargo build --locked --workspace --all-targets >/dev/null 2>&1
  report=$(ls -t "$CARGO_TARGET_DIR"/cargo-timings/cargo-timing-*.html | head -1)
  units=$(python3 - "$report" <<'EOF'
import json, re, sys
data = json.loads(re.search(r"const UNIT_DATA = (\[.*?\]);\n", open(sys.argv[1]).read(), re.S).group(1))
rows = {}
for u in data:
    if u["name"].startswith("quiver") and u["duration"] > 0:
        kind = "lib" if not u.get("target") else "tests" if "(test)" in u["target"] else "bins"
        key = u["name"].removeprefix("quiver-") + (f" {kind}" if kind != "lib" else "")
        rows[key] = rows.get(key, 0) + u["duration"]
print(", ".join(f"{k} {v:.0f}" for k, v in sorted(rows.items(), key=lambda kv: -kv[1])))
EOF
)
  printf '%-36s %8.0f   %s\n' "$file" "$seconds" "$units"
done
