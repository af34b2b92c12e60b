#!/usr/bin/env bash
# All of Quiver's tests: formatting and lints, the Rust suites (unit, integration, .slt), then the
# reference tests in Python (TensorFlow reads what we write, SeaweedFS serves S3).
source "$(dirname "$0")/env.sh"
cd "$QUIVER_ROOT"
quiver_install_datasets
quiver_install_refenv
quiver_log "cargo fmt --check"
cargo fmt --all -- --check
quiver_log "cargo clippy"
cargo clippy --locked --all-targets -q -- -D warnings
quiver_log "cargo test"
cargo test --locked -q 2>&1 | grep -v "^running 0 tests$"
quiver_log "building quiver (release) for the reference tests"
cargo build --release --locked -q --bin quiver --example hotdog_etl
quiver_sample_data "$QUIVER_CACHE/samples"
quiver_log "reference tests (pytest)"
QUIVER_BIN="$CARGO_TARGET_DIR/release/quiver" \
QUIVER_EXAMPLE_BIN="$CARGO_TARGET_DIR/release/examples/hotdog_etl" \
QUIVER_SAMPLES="$QUIVER_CACHE/samples" \
WEED_BIN="$REFENV/bin/weed" \
    "$REFENV/bin/python" -m pytest -q -p no:cacheprovider tests/python "$@"
