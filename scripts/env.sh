# Shared set-up for Quiver's scripts: sourced, not run. Installs what is missing, idempotently:
# build tools and the Fashion-MNIST Debian package, the reference Python environment
# (TensorFlow, Pillow, scikit-image, SeaweedFS, ...) and the sample image folders.
set -euo pipefail
QUIVER_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QUIVER_CACHE=${QUIVER_CACHE:-$HOME/.cache/quiver}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$QUIVER_CACHE/target}
REFENV=${QUIVER_REFENV:-$QUIVER_CACHE/refenv}
SHARED=${QUIVER_SHARED:-$QUIVER_ROOT/../shared}
mkdir -p "$QUIVER_CACHE"

quiver_log() { printf '\033[1m[quiver]\033[0m %s\n' "$*" >&2; }

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

# Build tools: cmake and nasm compile the bundled libjpeg-turbo (with SIMD) into the binary.
quiver_install_build_tools() { quiver_apt cmake nasm; }

quiver_install_datasets() { quiver_apt dataset-fashion-mnist; }

# Clients of `quiver serve` in the tests and the main job: curl, and openssl for scripts/certs.sh.
quiver_install_clients() { quiver_apt curl openssl; }

quiver_install_refenv() {
    if [ ! -f "$REFENV/.refenv-v1" ]; then
        quiver_log "building the reference environment in $REFENV (TensorFlow, Pillow, SeaweedFS; a few minutes once)"
    fi
    bash "$SHARED/tools/refenv.sh" "$REFENV"
    # The test runner, on top of the shared reference environment.
    "$REFENV/bin/python" -c 'import pytest' 2>/dev/null ||
        "$REFENV/bin/python" -m pip install -q --disable-pip-version-check pytest
}

# quiver_sample_data DIR: real photos and Fashion-MNIST rendered into DIR.
quiver_sample_data() {
    quiver_install_datasets
    quiver_install_refenv
    "$REFENV/bin/python" "$QUIVER_ROOT/scripts/sample_data.py" "$1"
}

# Builds Quiver and sets QUIVER to its binary: the dev profile when $1 is 1, else release. Each
# profile always builds the same target selection, so that Cargo never rebuilds DataFusion for
# a different feature set.
quiver_build_binary() {
    if [ "${1:-0}" = 1 ]; then
        cargo build --locked -q --workspace --all-targets
        QUIVER="$CARGO_TARGET_DIR/debug/quiver"
    else
        cargo build --release --locked -q --bin quiver --example hotdog_etl
        QUIVER="$CARGO_TARGET_DIR/release/quiver"
    fi
}
