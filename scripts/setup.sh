#!/usr/bin/env bash
# Idempotent set-up of a development/CI machine for asvit-zoo.
#
# Installs what is missing, nothing more:
#   - Debian's dataset-fashion-mnist (the real data the pipeline trains on);
#   - .venv with torch==2.14.1 / torchvision==0.29.1 (pinned: newer ones pull multi-GB CUDA builds);
#   - mmcv 2.1.0 with compiled ops, built from its sdist (PyPI has no wheel for this torch) and cached
#     outside the repo, per torch version, in $ASVIT_WHEEL_CACHE/torch-<version> so that the next set-up
#     reuses it (a cached wheel whose ops do not load is built again);
#   - this package (editable) with its pinned dependencies (constraints.txt).
# A stamp in .venv records what was installed; a second run with nothing changed returns in seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
WHEEL_CACHE="${ASVIT_WHEEL_CACHE:-$HOME/.cache/asvit-zoo/wheels}"
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0
# mmcv's compiled ops link against one torch: its wheels are cached per torch version
MMCV_CACHE="$WHEEL_CACHE/torch-$TORCH_VERSION"
FMNIST_DIR=/usr/share/datasets/fashion-mnist

log() { printf '[setup] %s\n' "$*" >&2; }

install_dataset() {
  local name missing=0
  for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -f "$FMNIST_DIR/$name.gz" ] || missing=1
  done
  if [ "$missing" -eq 0 ]; then return; fi
  log "installing Debian package dataset-fashion-mnist (files missing under $FMNIST_DIR)"
  if [ "$(id -u)" -ne 0 ]; then
    log "need root for apt-get; run as root or install dataset-fashion-mnist yourself"; exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # --reinstall: the package may be installed with some of its files gone
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall dataset-fashion-mnist >/dev/null
}

make_venv() {
  if [ ! -x "$PY" ]; then
    # Debian's own python3 has venv and ensurepip in a separate package
    if ! python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      log "need python3 >= 3.10 with venv and ensurepip (Debian: apt-get install python3-venv); found:" \
          "$(python3 --version 2>&1 || echo 'no python3')"
      exit 1
    fi
    log "creating $VENV"
    python3 -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
  fi
}

install_torch() {
  if "$PY" -c 'import torch, torchvision, sys; sys.exit(not (torch.__version__.startswith("'"$TORCH_VERSION"'") and torchvision.__version__.startswith("'"$TORCHVISION_VERSION"'")))' 2>/dev/null; then
    return
  fi
  log "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
  "$PY" -m pip install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
}

build_mmcv_wheel() {
  # torch 2.14's headers need C++20; mmcv 2.1.0's setup.py asks for C++17. setuptools<81 still has
  # pkg_resources, which mmcv's setup.py imports.
  local work
  work="$(mktemp -d)"
  log "building mmcv $MMCV_VERSION with ops from source (15-25 minutes on 2 cores); cache: $MMCV_CACHE"
  "$PY" -m pip install -q 'setuptools>=77,<81' wheel ninja
  "$PY" -m pip download -q --no-deps --no-build-isolation --no-binary :all: "mmcv==$MMCV_VERSION" -d "$work"
  tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
  sed -i 's/-std=c++17/-std=c++20/g' "$work/mmcv-$MMCV_VERSION/setup.py"
  mkdir -p "$MMCV_CACHE"
  (cd "$work/mmcv-$MMCV_VERSION" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="$(nproc)" \
    "$PY" -m pip wheel -q --no-build-isolation --no-deps . -w "$work/dist")
  # Rename into the cache only when the wheel is complete, so an interrupted build leaves nothing.
  for whl in "$work"/dist/*.whl; do mv "$whl" "$MMCV_CACHE/.$(basename "$whl").part"; mv "$MMCV_CACHE/.$(basename "$whl").part" "$MMCV_CACHE/$(basename "$whl")"; done
  rm -rf "$work"
}

mmcv_works() {
  "$PY" -c 'import mmcv, sys; from mmcv.ops import nms; sys.exit(mmcv.__version__ != "'"$MMCV_VERSION"'")' 2>/dev/null
}

install_cached_mmcv() {
  log "installing cached mmcv wheel"
  "$PY" -m pip install -q --no-deps --force-reinstall "$MMCV_CACHE"/mmcv-"$MMCV_VERSION"-*.whl
}

install_mmcv() {
  # before the project: mmdet's requirement on mmcv is then met by this build, not by PyPI's sdist
  if mmcv_works; then return; fi
  if ! ls "$MMCV_CACHE"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
    build_mmcv_wheel
    MMCV_BUILT=1
  fi
  install_cached_mmcv
  MMCV_INSTALLED=1
}

check_mmcv() {
  # after the project, which brings mmcv's own dependencies: a failure here is the compiled ops. A wheel from
  # the cache whose ops do not load (a broken or foreign build) is built again, once; a fresh build is not.
  if [ -z "${MMCV_INSTALLED:-}" ] || mmcv_works; then return; fi
  if [ -z "${MMCV_BUILT:-}" ]; then
    log "the cached mmcv wheel in $MMCV_CACHE does not load its ops (from mmcv.ops import nms); rebuilding it"
    rm -f "$MMCV_CACHE"/mmcv-"$MMCV_VERSION"-*.whl
    build_mmcv_wheel
    install_cached_mmcv
  fi
  if ! mmcv_works; then
    rm -f "$MMCV_CACHE"/mmcv-"$MMCV_VERSION"-*.whl  # not kept for the next set-up
    log "mmcv $MMCV_VERSION built from source does not load its ops with torch $TORCH_VERSION: run" \
        "$PY -c 'from mmcv.ops import nms' to see why"
    exit 1
  fi
}

install_project() {
  local stamp="$VENV/.asvit-setup-stamp" want
  want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$PY" -c 'import asvit_zoo' 2>/dev/null; then
    return
  fi
  log "installing asvit-zoo (editable) and its pinned dependencies"
  "$PY" -m pip install -q -c constraints.txt 'setuptools>=77,<81' -e ".[test]"
  echo "$want" > "$stamp"
}

main() {
  install_dataset
  make_venv
  install_torch
  install_mmcv
  install_project
  check_mmcv
  log "ready: $VENV"
}

# sourced (the tests): the functions only
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main
fi
