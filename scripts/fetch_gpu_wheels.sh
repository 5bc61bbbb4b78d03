#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels scripts/gpu_check.sh installs on the device tool's GPU
# machine, which has no network: python3 3.12 there already holds torch, timm, transformers, numpy, pyyaml,
# pillow, tqdm, regex, safetensors, huggingface-hub, matplotlib and pytest, but not these four. Versions =
# the ones scripts/setup.sh resolves here (override with WHEELS="name==version ..."). About 21 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-"open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 faiss-cpu==1.15.1"}
rm -rf .whl
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $WHEELS \
  2> >(grep -v "is ignored: it is neither" >&2)
du -sh .whl && ls .whl
