#!/usr/bin/env bash
# All of Quiver's tests: formatting and lints, the Rust suites (unit, integration, .slt), then the
# reference tests in Python (TensorFlow reads what we write, SeaweedFS serves S3). Every process a
# test starts is killed with its process group when the test ends; the run fails if one is left.
#   bash scripts/test.sh [PYTEST ARGS...]
source "$(dirname "$0")/env.sh"
cd "$QUIVER_ROOT"
started=$SECONDS
quiver_install_packages
# The metrics tests scrape with a real Prometheus server; the console's pages load in
# headless Chromium.
quiver_apt prometheus chromium
# The reference environment downloads while cargo compiles.
quiver_start_refenv
quiver_log "cargo fmt --check"
cargo fmt --all -- --check
quiver_log "no file imports a file that imports it back"
python3 scripts/circles.py
if command -v cargo-machete >/dev/null; then
  quiver_log "no unused dependencies (cargo machete)"
  cargo machete
else
  quiver_log "cargo machete is not installed (cargo install cargo-machete): unused dependencies not checked"
fi
quiver_log "cargo clippy"
quiver_cargo clippy --locked --all-targets -- -D warnings
# The CUDA build (no GPU or toolkit needed to compile: cudarc loads the driver at run time).
quiver_log "cargo clippy --features cuda"
CUDARC_CUDA_VERSION=13000 quiver_cargo clippy --locked --all-targets --features quiver-operators/cuda -- -D warnings
quiver_log "cargo build + test (dev profile, shared with the main job)"
quiver_cargo build --locked --workspace --all-targets
quiver_cargo test --locked --workspace
quiver_log "reference tests (pytest)"
quiver_pytest -v --durations=10 "$@"
quiver_log "all tests passed in $(((SECONDS - started) / 60))m$(((SECONDS - started) % 60))s"
