#!/usr/bin/env bash
# Set up everything regl needs on this machine, then run the given command inside that environment:
#   bash scripts/env.sh dvc repro     # the main job
#   bash scripts/env.sh pytest        # the test suite
#
# 1. Debian's dataset-fashion-mnist (the embedded default's data), when running as root with apt-get.
# 2. The regl package with its dependencies (pip install -e '.[dev]'), into the active virtual environment,
#    or the interpreter's own site-packages, or - where the system Python is externally managed (PEP 668,
#    Debian's python3) - into ./.venv. Skipped when this checkout is already installed with this pyproject.toml.
# PYTHON=/path/to/python picks the interpreter (default: python3).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
PY="${PYTHON:-python3}"
FMNIST=/usr/share/datasets/fashion-mnist

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
apt_install() {
  command -v apt-get >/dev/null || return 1
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 \
    || { as_root apt-get update -qq >/dev/null 2>&1 && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
}

if [ ! -e "$FMNIST/train-images-idx3-ubyte.gz" ] && [ ! -e "$FMNIST/train-images-idx3-ubyte" ]; then
  echo "setup: installing Debian's dataset-fashion-mnist" >&2
  apt_install dataset-fashion-mnist || echo "setup: could not apt-get install dataset-fashion-mnist (no root or no apt);" \
    "put the four Fashion-MNIST IDX files in a folder and set prepare.fashion_mnist_dir in params.yaml" >&2
fi

managed=$("$PY" -c 'import os, sys, sysconfig; print(int(sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))))')
if [ "$managed" = 1 ]; then
  if [ ! -x .venv/bin/python ]; then
    echo "setup: system Python is externally managed; creating .venv" >&2
    "$PY" -m venv .venv 2>/dev/null || { apt_install python3-venv && "$PY" -m venv .venv; }
  fi
  PY="$repo/.venv/bin/python"
fi

stamp="$("$PY" -c 'import sys; print(sys.prefix)')/.regl-setup"
want="$repo $(sha256sum pyproject.toml | cut -c1-64)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: pip install -e '.[dev]' (torch==2.14.1 and torchvision==0.29.1 come from local disk where available)" >&2
  "$PY" -m pip install --disable-pip-version-check --root-user-action=ignore -q -e ".[dev]"
  echo "$want" > "$stamp"
fi

export PATH="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PYTHONUNBUFFERED=1
[ "$#" -gt 0 ] || exit 0
exec "$@"
