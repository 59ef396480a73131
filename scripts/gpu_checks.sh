#!/usr/bin/env bash
# On a machine with one CUDA GPU (after scripts/install.sh): the CUDA tests, the embedded
# default built on the GPU against the CPU build, and the Gemma-scale benchmark at full size.
# Figures go to ./gpu-checks/.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1
out=gpu-checks
mkdir -p "$out"
py=.venv/bin/python
$py -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'"
$py -m pytest -q tests/test_harvest.py tests/test_blockgram.py -k "gpu or cuda" | tee "$out/tests.txt"
.venv/bin/atlas build --device cuda --quick --db "$out/cuda.duckdb"
.venv/bin/atlas build --device cpu --quick --db "$out/cpu.duckdb"
$py - "$out" <<'PY' | tee "$out/cuda-vs-cpu.txt"
import sys, duckdb
con = duckdb.connect()
con.execute(f"ATTACH '{sys.argv[1]}/cuda.duckdb' AS g (READ_ONLY)")
con.execute(f"ATTACH '{sys.argv[1]}/cpu.duckdb' AS c (READ_ONLY)")
print(con.execute("""
SELECT count(*) AS features, avg((g.firing_count = c.firing_count)::INT) AS same_firing_count,
       max(abs(g.firing_count - c.firing_count) / greatest(c.firing_count, 1)) AS max_rel_diff,
       max(abs(g.max_act - c.max_act) / greatest(c.max_act, 1e-6)) AS max_act_rel_diff
FROM g.features g JOIN c.features c USING (sae_id, feature)""").fetchall())
PY
$py benchmarks/gemma_scale.py --layers 26 --blocks 2048 --compare-d-sae 0 \
    --json "$out/gemma-26x16k.json" | tee "$out/gemma-26x16k.txt"
$py benchmarks/gemma_scale.py --layers 1 --d-sae 65536 --blocks 2048 --compare-d-sae 0 \
    --json "$out/gemma-65k.json" | tee "$out/gemma-65k.txt"
