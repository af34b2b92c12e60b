#!/usr/bin/env bash
# All of Quiver's tests: formatting and lints, the Rust suites (unit, integration, .slt), then the
# reference tests in Python (TensorFlow reads what we write, SeaweedFS serves S3).
source "$(dirname "$0")/env.sh"
cd "$QUIVER_ROOT"
quiver_install_build_tools
quiver_install_clients
quiver_install_datasets
quiver_install_refenv
quiver_log "cargo fmt --check"
cargo fmt --all -- --check
quiver_log "cargo clippy"
cargo clippy --locked --all-targets -q -- -D warnings
# The CUDA build (no GPU or toolkit needed to compile: cudarc loads the driver at run time).
quiver_log "cargo clippy --features cuda"
CUDARC_CUDA_VERSION=13000 cargo clippy --locked --all-targets -q --features quiver-operators/cuda -- -D warnings
quiver_log "cargo build + test"
cargo build --locked -q --workspace --all-targets
cargo test --locked -q --workspace
# The reference tests use the dev-profile binaries built above (dependencies are optimised,
# see Cargo.toml). Every script builds the same target selection, so that Cargo unifies
# features the same way and never rebuilds DataFusion for a different subset.
quiver_sample_data "$QUIVER_CACHE/samples"
quiver_log "reference tests (pytest)"
# The .slt runner, for the cluster-mode run of the suite (tests/python/test_cluster.py).
QUIVER_SLT_BIN=$(cargo test --locked -q --workspace --no-run --message-format=json |
    "$REFENV/bin/python" -c 'import json, sys
print(next(m["executable"] for m in map(json.loads, sys.stdin)
           if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "sqllogictests"))')
export QUIVER_SLT_BIN
QUIVER_BIN="$CARGO_TARGET_DIR/debug/quiver" \
QUIVER_EXAMPLE_BIN="$CARGO_TARGET_DIR/debug/examples/hotdog_etl" \
QUIVER_SAMPLES="$QUIVER_CACHE/samples" \
WEED_BIN="$REFENV/bin/weed" \
    "$REFENV/bin/python" -m pytest -q -p no:cacheprovider tests/python "$@"
