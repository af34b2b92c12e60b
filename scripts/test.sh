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
cargo test --locked -q
# The dev profile (dependencies optimised, see Cargo.toml) shares the build of `cargo test`.
quiver_log "building quiver for the reference tests"
cargo build --locked -q --bin quiver --example hotdog_etl
quiver_sample_data "$QUIVER_CACHE/samples"
quiver_log "reference tests (pytest)"
QUIVER_BIN="$CARGO_TARGET_DIR/debug/quiver" \
QUIVER_EXAMPLE_BIN="$CARGO_TARGET_DIR/debug/examples/hotdog_etl" \
QUIVER_SAMPLES="$QUIVER_CACHE/samples" \
WEED_BIN="$REFENV/bin/weed" \
    "$REFENV/bin/python" -m pytest -q -p no:cacheprovider tests/python "$@"
