# Shared set-up for Quiver's scripts: sourced, not run. Installs what is missing, idempotently:
# Debian packages (build tools, clients, the Fashion-MNIST package), the reference Python
# environment (TensorFlow, Pillow, scikit-image, SeaweedFS, ...) and the sample image folders.
# Long phases say what they are doing: cargo shows its progress on a terminal, and in a log (no
# terminal) a line every 50 s says that it is still working.
set -euo pipefail
QUIVER_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QUIVER_CACHE=${QUIVER_CACHE:-$HOME/.cache/quiver}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$QUIVER_CACHE/target}
REFENV=${QUIVER_REFENV:-$QUIVER_CACHE/refenv}
SHARED=${QUIVER_SHARED:-$QUIVER_ROOT/../shared}
mkdir -p "$QUIVER_CACHE"

# quiver_log MESSAGE: a line on stderr with the time since the script started.
quiver_log() { printf '\033[1m[quiver %dm%02ds]\033[0m %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*" >&2; }

# quiver_apt PACKAGE...: installs the Debian packages that are missing.
quiver_apt() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    quiver_log "installing ${missing[*]} (Debian)"
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The Debian packages the scripts need, in one apt run: cmake and nasm compile the bundled
# libjpeg-turbo (with SIMD) into the binary; curl and openssl are clients of `quiver serve` and
# make test certificates (scripts/certs.sh); dataset-fashion-mnist is real data.
quiver_install_packages() { quiver_apt cmake nasm curl openssl dataset-fashion-mnist; }

# quiver_cargo ARGS...: cargo, with a line every 50 s when stderr is not a terminal (cargo
# shows its progress bar only on one).
quiver_cargo() {
    if [ -t 2 ]; then
        cargo "$@"
        return
    fi
    local started=$SECONDS what="cargo $*"
    (
        while sleep 50; do
            local t=$((SECONDS - started))
            quiver_log "still running ${what:0:60} ($((t / 60))m$((t % 60))s)"
        done
    ) &
    local beat=$! rc=0
    cargo "$@" || rc=$?
    # Ending the heartbeat's sleep ends its loop (SIGPIPE, which bash does not report); killed
    # itself, the heartbeat would leave the sleep holding our output pipe open for up to 50 s.
    while kill -0 "$beat" 2>/dev/null; do
        pkill -PIPE -P "$beat" sleep 2>/dev/null || true
        sleep 0.1
    done
    return $rc
}

# The reference environment of ../shared/tools/refenv.sh plus the test runner and its time
# limits (pytest-timeout).
quiver_refenv_ready() {
    [ -f "$REFENV/.refenv-v2" ] && "$REFENV/bin/python" -c 'import pytest, pytest_timeout' 2>/dev/null
}

quiver_install_refenv() {
    quiver_refenv_ready && return 0
    [ -f "$REFENV/.refenv-v2" ] || bash "$SHARED/tools/refenv.sh" "$REFENV"
    "$REFENV/bin/python" -m pip install -q --disable-pip-version-check pytest pytest-timeout
}

# Starts building the reference environment in the background (it downloads while cargo
# compiles); quiver_wait_refenv waits for it.
REFENV_PID=
quiver_start_refenv() {
    quiver_refenv_ready && return 0
    quiver_log "building the reference environment in $REFENV in the background (TensorFlow, Pillow, SeaweedFS; a few minutes once; log: $QUIVER_CACHE/refenv.log)"
    quiver_install_refenv >"$QUIVER_CACHE/refenv.log" 2>&1 &
    REFENV_PID=$!
}

quiver_wait_refenv() {
    if [ -n "$REFENV_PID" ]; then
        quiver_log "waiting for the reference environment"
        if ! wait "$REFENV_PID"; then
            cat "$QUIVER_CACHE/refenv.log" >&2
            quiver_log "building the reference environment failed (log above)"
            return 1
        fi
        REFENV_PID=
    fi
    quiver_install_refenv
}

# quiver_sample_data DIR: real photos and Fashion-MNIST rendered into DIR.
quiver_sample_data() {
    quiver_wait_refenv
    "$REFENV/bin/python" "$QUIVER_ROOT/scripts/sample_data.py" "$1"
}

# quiver_install_binary: puts the dev build's `quiver` on PATH as a link beside cargo (in
# ~/.cargo/bin with rustup), so that it follows every later build.
quiver_install_binary() {
    local dir
    dir=$(dirname "$(command -v cargo)")
    ln -sfn "$CARGO_TARGET_DIR/debug/quiver" "$dir/quiver"
    if [ "$(command -v quiver)" != "$dir/quiver" ]; then
        quiver_log "warning: another quiver comes first on PATH: $(command -v quiver)"
    fi
    quiver_log "quiver is on PATH: $dir/quiver -> $CARGO_TARGET_DIR/debug/quiver"
}

# Builds the binaries the main job runs (`quiver` and the serving client example) and sets
# QUIVER to the first: the dev profile when $1 is 1 (the test command's profile, whose build it
# shares), else release.
quiver_build_binary() {
    if [ "${1:-0}" = 1 ]; then
        quiver_cargo build --locked --bin quiver --example serving_client
        QUIVER="$CARGO_TARGET_DIR/debug/quiver"
    else
        quiver_cargo build --release --locked --bin quiver --example hotdog_etl --example serving_client
        QUIVER="$CARGO_TARGET_DIR/release/quiver"
    fi
}

# quiver_test_executables CARGO-TEST-ARGS...: builds the test executables (`cargo test
# --no-run`) and prints a tab-separated line for each: package, target, whether it is a test
# harness (True/False), path. Every message is read, so cargo never writes to a closed pipe.
quiver_test_executables() {
    cargo test --locked -q --no-run --message-format=json "$@" | python3 -c 'import json, sys
for m in map(json.loads, sys.stdin):
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        spec = m["package_id"].split("#")[-1]
        package = spec.split("@")[0] if "@" in spec else m["package_id"].split("#")[0].rsplit("/", 1)[-1]
        print(package, m["target"]["name"], m["profile"]["test"], m["executable"], sep="\t")'
}

# quiver_python_package: the Python package `quiver` of the dev build (python/quiver/ and the
# extension module cargo built) in a folder of its own; prints the folder, for PYTHONPATH.
quiver_python_package() {
    local dir="$CARGO_TARGET_DIR/python-package"
    rm -rf "$dir" && mkdir -p "$dir/quiver"
    ln -s "$QUIVER_ROOT"/python/quiver/* "$dir/quiver/"
    ln -s "$CARGO_TARGET_DIR/debug/lib_quiver.so" "$dir/quiver/_quiver.abi3.so"
    echo "$dir"
}

# quiver_pytest ARGS...: the reference tests (tests/python) with the dev build's binaries and
# Python package, the sample data and SeaweedFS; the binaries must be built (quiver_cargo build --workspace
# --all-targets). Sets QUIVER_SLT_BIN for the cluster-mode run of the .slt suite.
quiver_pytest() {
    quiver_sample_data "$QUIVER_CACHE/samples"
    QUIVER_SLT_BIN=$(quiver_test_executables --workspace | awk -F'\t' '$2 == "sqllogictests" { print $4 }')
    QUIVER_SLT_BIN=$QUIVER_SLT_BIN \
    QUIVER_BIN="$CARGO_TARGET_DIR/debug/quiver" \
    QUIVER_EXAMPLE_BIN="$CARGO_TARGET_DIR/debug/examples/hotdog_etl" \
    QUIVER_SAMPLES="$QUIVER_CACHE/samples" \
    PYTHONPATH="$(quiver_python_package)" \
    WEED_BIN="$REFENV/bin/weed" \
        "$REFENV/bin/python" -m pytest -p no:cacheprovider "$QUIVER_ROOT/tests/python" "$@"
}
