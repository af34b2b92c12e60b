#!/usr/bin/env bash
# The inner loop: formatting, the import-circle check, then clippy and the unit tests of the
# crates changed since the branch left main (committed or not), then only the reference tests
# whose names match PYTEST-FILTER (none without one). `bash scripts/test.sh` runs everything.
#   bash scripts/check.sh [PYTEST-FILTER]
source "$(dirname "$0")/env.sh"
cd "$QUIVER_ROOT"
started=$SECONDS
base=$(git merge-base HEAD "${QUIVER_BASE:-main}")
changed=$({ git diff --name-only "$base"; git ls-files --others --exclude-standard; } | sort -u)
crates=()
for dir in engine operators sql driver executor examples; do
    if grep -q "^$dir/" <<<"$changed"; then
        crates+=("$(sed -n 's/^name = "\(.*\)"/\1/p' "$dir/Cargo.toml" | head -1)")
    fi
done
quiver_log "cargo fmt --check"
cargo fmt --all -- --check
quiver_log "no file imports a file that imports it back"
python3 scripts/circles.py
if [ ${#crates[@]} -gt 0 ]; then
    # The whole workspace's features, as the test command builds them (a build of some
    # packages alone resolves other features and rebuilds their dependencies); clippy checks
    # only what changed and what depends on it.
    quiver_log "clippy, then the unit tests of ${crates[*]}"
    quiver_cargo clippy --locked --workspace --all-targets -- -D warnings
    quiver_test_executables --workspace --lib --bins |
        awk -F'\t' -v wanted=" ${crates[*]} " '$3 == "True" && index(wanted, " " $1 " ") { print $4 }' |
        while read -r tests; do "$tests" -q; done
else
    quiver_log "no crate changed since main"
fi
if [ $# -gt 0 ]; then
    quiver_start_refenv
    quiver_log "build, then the reference tests matching '$1'"
    quiver_cargo build --locked --workspace --all-targets
    quiver_pytest -v -k "$1"
fi
quiver_log "checked in $(((SECONDS - started) / 60))m$(((SECONDS - started) % 60))s"
