#!/usr/bin/env bash
# One-time set-up on a fresh Debian/Ubuntu machine: system recognizers, CPU PyTorch, and neko.
#   bash scripts/setup.sh          # runtime (recognizers + neko)
#   bash scripts/setup.sh --dev    # plus the test tools
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

extra="recognizers"
[ "${1:-}" = "--dev" ] && extra="dev"

# The last five Apertium pairs serve only the zero-shot MT rows (pivot languages no training row used).
APT_PKGS="flite espeak-ng sox libsox-fmt-all tesseract-ocr tesseract-ocr-eng fonts-dejavu-core apertium apertium-eng-spa apertium-eng-cat apertium-en-gl apertium-eo-en apertium-hbs-eng fortunes fortunes-min wordnet-base apertium-es-pt apertium-spa-ita apertium-fr-es apertium-oc-ca apertium-cat-ita"
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "[setup] apt-get install:$missing"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "[setup] WARNING: missing system packages:$missing"
    echo "[setup]          install them with: sudo apt-get install$missing"
  fi
fi

PY=${PYTHON:-python3}
# The CPU build of torch: an unpinned install would pull several GB of CUDA wheels.
if ! $PY -c "import torch" >/dev/null 2>&1; then
  echo "[setup] pip install torch==2.13.0 (CPU build)"
  $PY -m pip install -q torch==2.13.0
fi
echo "[setup] pip install -e .[$extra]"
$PY -m pip install -q -e ".[$extra]"
