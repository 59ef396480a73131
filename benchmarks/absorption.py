"""Wall time of the first-letter absorption analysis per SAE, in one run.

    python benchmarks/absorption.py --db atlas.duckdb           # SAEs of a built atlas
    python benchmarks/absorption.py --db atlas.duckdb --words 2000

Prints, for the atlas variant, the shared set-up (vocabulary + residuals of every hooked layer,
with the in-context examples kept in the key/value cache) against the baseline of running every
full prompt, and each SAE's own time (probes, k-sparse probing, absorption); then the same for
SAEBench's definition (the default: one prompt per word, a 26-way probe per layer, fresh prompts
for the absorbed words; an L1 probe over the latents per SAE), with its ratio to the variant.
Reference: SAEBench's absorption takes ~26 min per SAE plus ~33 min of set-up for Gemma-2-2B
16k on a 3090.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import duckdb
import numpy as np
import torch

from atlas.analyses.absorption.analysis import (Settings, first_letter_vocabulary, prompt_prefix,
                                       sae_codes, saebench_task, word_residuals)
from atlas.analyses.absorption import geometry as ab
from atlas.models import capture_residuals, load_model
from atlas.saes import hook_of, load_saved

log = logging.getLogger("benchmark")


@torch.no_grad()
def full_prompts(lm, token_ids, hooks, batch_size: int = 64) -> None:
    """Baseline: every word's whole prompt through the model."""
    prefix = lm.tokenizer(prompt_prefix(), add_special_tokens=False).input_ids
    for start in range(0, len(token_ids), batch_size):
        batch = torch.tensor([prefix + [int(t)] for t in token_ids[start:start + batch_size]])
        capture_residuals(lm, batch, hooks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--words", type=int, default=6000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    with duckdb.connect(str(args.db), read_only=True) as con:
        spec = con.execute("SELECT spec FROM models LIMIT 1").fetchone()[0]
        rows = con.execute("SELECT sae_id, path FROM saes WHERE path IS NOT NULL "
                           "ORDER BY layer, sae_id").fetchall()
    lm = load_model(spec, device="auto")
    saes = {sid: load_saved(Path(path), device=str(lm.device)) for sid, path in rows}
    hooks = sorted({hook_of(s) for s in saes.values()}, key=lambda h: h.layer)

    t0 = time.perf_counter()
    vocab = first_letter_vocabulary(lm.tokenizer, n_words=args.words)
    resid = word_residuals(lm, vocab.token_ids, hooks, progress=False)
    cached = time.perf_counter() - t0
    t0 = time.perf_counter()
    full_prompts(lm, vocab.token_ids, hooks)
    full = time.perf_counter() - t0
    n_prefix = len(lm.tokenizer(prompt_prefix(), add_special_tokens=False).input_ids)
    log.info("%d words, %d hooks, prompt = %d example tokens + the word", len(vocab.words),
             len(hooks), n_prefix)
    log.info("set-up with cached examples %.1fs; full prompts %.1fs; ratio %.1fx", cached, full,
             full / cached)

    train = ab.split_words(vocab.labels, 0.2)
    per = []
    for sid, sae in saes.items():
        t0 = time.perf_counter()
        x = resid[hook_of(sae).name]
        ab.absorption(x, vocab.labels, sae_codes(sae, x), sae.W_dec.detach().float().numpy(),
                      train, offset=sae.b_dec.detach().float().numpy())
        per.append(time.perf_counter() - t0)
        log.info("%-40s %.1fs", sid, per[-1])
    total = cached + sum(per)
    log.info("atlas variant: per SAE %.1fs (mean), whole run %.1fs for %d SAEs; SAEBench "
             "reference ~1560s per SAE + ~1980s set-up (Gemma-2-2B, 3090): per-SAE ratio %.0fx",
             np.mean(per), total, len(per), 1560 / np.mean(per))

    t0 = time.perf_counter()
    task = saebench_task(lm, hooks, Settings(words=args.words, batch_size=64))
    setup = time.perf_counter() - t0
    mine = []
    for sid, sae in saes.items():
        t0 = time.perf_counter()
        h = hook_of(sae).name
        ab.saebench_absorption(task.probes[h], task.resid[h], task.vocab.labels, task.train,
                               lambda r, sae=sae: sae_codes(sae, r),
                               sae.W_dec.detach().float().numpy(), task.absorbed[h],
                               task.absorbed_resid[h])
        mine.append(time.perf_counter() - t0)
        log.info("saebench %-40s %.1fs", sid, mine[-1])
    log.info("saebench definition: set-up %.1fs (%.1fx the atlas variant's), per SAE %.1fs "
             "(%.1fx), whole run %.1fs", setup, setup / cached, np.mean(mine),
             np.mean(mine) / np.mean(per), setup + sum(mine))


if __name__ == "__main__":
    main()
