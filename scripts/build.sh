#!/usr/bin/env bash
# Installs the atlas and builds it on the embedded default (SmolLM2-135M, Wikipedia + stdlib).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1
.venv/bin/atlas build --db "${ATLAS_DB:-atlas.duckdb}" "$@"
.venv/bin/atlas info --db "${ATLAS_DB:-atlas.duckdb}"
