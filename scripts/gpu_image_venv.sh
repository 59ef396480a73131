#!/usr/bin/env bash
# A Python 3.12 venv holding what the lent GPU machine's image holds that the atlas touches
# (torch 2.11.0, transformers 5.17.0, numpy, pandas, pyarrow, scikit-learn, scipy, ...), and
# nothing else, for `scripts/gpu_check.sh --rehearse`: the carried wheels in .whl/ must supply
# the rest there as here. torch 2.11.0 from PyPI is the CUDA build the image has; without a GPU
# it runs on the CPU. Prints the venv's python. Made once in ./.gpu-venv (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.gpu-venv
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
  py=""
  for c in ${PYTHON312:-} "$HOME"/.pyenv/versions/3.12*/bin/python3.12 python3.12; do
    if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      py=$c
      break
    fi
  done
  [ -n "$py" ] || { echo "no Python 3.12 found: set PYTHON312 to one" >&2; exit 2; }
  rm -rf "$venv"
  "$py" -m venv "$venv"
  # The image's versions where the device tool's notes name them; the rest as PyPI has them.
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q torch==2.11.0 transformers==5.17.0 \
      tokenizers==0.23.2 huggingface_hub==1.33.0 safetensors==0.8.0 jaxtyping==0.3.11 \
      accelerate==1.15.0 sentencepiece==0.2.2 numpy pandas pyarrow scikit-learn scipy tqdm \
      pyyaml regex requests packaging psutil einops rich aiohttp xxhash fsspec filelock \
      pytest hypothesis setuptools wheel typing-extensions click protobuf pillow >&2
  touch "$venv/.complete"
fi
echo "$PWD/$venv/bin/python"
