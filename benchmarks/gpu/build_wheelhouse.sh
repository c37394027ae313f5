#!/usr/bin/env bash
# Build the wheelhouse that benchmarks/gpu/run.sh installs from, on a machine with PyPI access.
#
#   benchmarks/gpu/build_wheelhouse.sh [DEST] [PYTHON_VERSION]     # default: .whl 3.12
#
# The GPU image has torch, transformers, pandas, pyarrow, psutil, sentencepiece, tiktoken,
# pytest, xxhash and aiohttp, but not torchtune and what it imports on top of those:
# torchtune, torchao (torchtune 0.6.1 imports with 0.14-0.17), torchdata, omegaconf (it
# vendors its parser runtime), and datasets (torchtune.datasets imports it) with dill and
# multiprocess. Wheels only, --no-deps: pip must never replace the image's CUDA torch.
# Pins are requirements.lock's. About 10 MB; it must stay far below the 64 MiB that can be
# carried to the GPU machine together with the repository.
set -euo pipefail
DEST=${1:-.whl}
PYVER=${2:-3.12}
PACKAGES=(
  torchtune==0.6.1
  torchao==0.15.0
  torchdata==0.11.0
  omegaconf==2.4.0
  datasets==5.2.0
  dill==0.4.1
  multiprocess==0.70.19
)
mkdir -p "$DEST"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${PACKAGES[@]}"
du -sh "$DEST"
