# Shared set-up for Quiver's scripts: sourced, not run. Installs what is missing, idempotently:
# the Fashion-MNIST Debian package, the reference Python environment (TensorFlow, Pillow,
# scikit-image, SeaweedFS, ...) and the sample image folders.
set -euo pipefail
QUIVER_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QUIVER_CACHE=${QUIVER_CACHE:-$HOME/.cache/quiver}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$QUIVER_CACHE/target}
REFENV=${QUIVER_REFENV:-$QUIVER_CACHE/refenv}
SHARED=${QUIVER_SHARED:-$QUIVER_ROOT/../shared}
mkdir -p "$QUIVER_CACHE"

quiver_log() { printf '\033[1m[quiver]\033[0m %s\n' "$*" >&2; }

quiver_install_datasets() {
    if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
        quiver_log "installing dataset-fashion-mnist (Debian)"
        if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
    fi
}

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
