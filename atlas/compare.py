"""`atlas compare`: match two SAEs' features on the same tokens and score their decoder spaces
(universality). Reads blocks and decoders from DuckDB, runs the model once per batch for both
hooks, writes `universality_runs` and `matched_pairs`."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time

import duckdb
import numpy as np
import pyarrow as pa
import torch

from atlas import store
from atlas.errors import AtlasError
from atlas.geometry import universality as un
from atlas.harvest import sink_free
from atlas.models import capture_residuals
from atlas.saes import check_width, hook_of, sae_input

log = logging.getLogger(__name__)
WORDLIKE = re.compile(r"[A-Za-z]{2,}")


def concept_features(con: duckdb.DuckDBPyConnection, sae_id: str) -> np.ndarray:
    """Mask of features whose most frequent firing tokens include a word (not only
    punctuation, whitespace or digits)."""
    rows = con.execute("SELECT top_tokens FROM features WHERE sae_id = ? ORDER BY feature",
                       [sae_id]).fetchall()
    return np.array([any(WORDLIKE.search(t) for t in (r[0] or [])[:3]) for r in rows])


@torch.no_grad()
def activation_correlation(con, lm, sae_a, sae_b, sae_id_a: str, *, n_blocks: int,
                           batch_blocks: int = 8) -> tuple[np.ndarray, int]:
    """Correlations of A's and B's activations over `n_blocks` blocks of A's corpus (spread
    evenly), one forward pass per batch for both hooks. Returns (correlations, tokens)."""
    ids = con.execute("SELECT b.token_ids FROM blocks b JOIN harvests h ON b.corpus_id = h.corpus "
                      "WHERE h.sae_id = ? ORDER BY b.block_id", [sae_id_a]).fetchall()
    if not ids:
        raise AtlasError(f"SAE {sae_id_a} has no harvested blocks; build the atlas first")
    pick = np.unique(np.linspace(0, len(ids) - 1, min(n_blocks, len(ids))).astype(int))
    tokens = torch.tensor([ids[i][0] for i in pick])
    hooks = [hook_of(sae_a), hook_of(sae_b)]
    special = torch.tensor(sorted(set(lm.tokenizer.all_special_ids)))
    acc = un.CorrelationAccumulator(sae_a.cfg.d_sae, sae_b.cfg.d_sae)
    n_tok = 0
    for start in range(0, len(tokens), batch_blocks):
        batch = tokens[start:start + batch_blocks]
        base = ~torch.isin(batch, special)
        base[:, 0] = False
        acts = capture_residuals(lm, batch, hooks)
        mask = (sink_free(acts[hooks[0].name], base.to(lm.device))
                & sink_free(acts[hooks[1].name], base.to(lm.device)))
        fa = sae_a.encode(sae_input(sae_a, acts[hooks[0].name][mask]))
        fb = sae_b.encode(sae_input(sae_b, acts[hooks[1].name][mask]))
        acc.update(fa.float().cpu().numpy(), fb.float().cpu().numpy())
        n_tok += int(mask.sum())
    return acc.result(), n_tok


def compare(con, lm, saes: dict, sae_id_a: str, sae_id_b: str, *, n_blocks: int = 64,
            one_to_one: bool = False, n_permutations: int = 100, rsa_max: int = 600,
            seed: int = 0) -> dict:
    """Match A's features to B's and score the matched decoder spaces; store the run."""
    if sae_id_a not in saes or sae_id_b not in saes:
        raise AtlasError("both SAEs must be on disk (trained by atlas build or given with "
                         "--sae-path) to be run on the tokens again")
    for sid in (sae_id_a, sae_id_b):
        check_width(saes[sid], lm.d_model, sid)
    t0 = time.perf_counter()
    corr, n_tok = activation_correlation(con, lm, saes[sae_id_a], saes[sae_id_b], sae_id_a,
                                         n_blocks=n_blocks)
    a, b, c = un.match_features(corr, one_to_one=one_to_one)
    kept = concept_features(con, sae_id_a)[a] & concept_features(con, sae_id_b)[b] & (c > 0)
    dec_a, dec_b = store.load_decoders(con, sae_id_a), store.load_decoders(con, sae_id_b)
    x, y = dec_a[a[kept]].astype(np.float64), dec_b[b[kept]].astype(np.float64)
    if len(x) < 10:
        raise AtlasError(f"only {len(x)} matched concept pairs between {sae_id_a} and "
                         f"{sae_id_b}; use more --blocks")
    # Canonical correlations need many more pairs than directions, or any pairing scores ~1.
    dims = max(2, min(50, len(x) // 10))
    sv = un.against_shuffles(x, y, lambda p, q: un.svcca(p, q, max_dims=dims),
                             n_permutations=n_permutations, seed=seed)
    rng = np.random.default_rng(seed)
    sub = rng.choice(len(x), min(rsa_max, len(x)), replace=False)
    rs = un.against_shuffles(x[sub], y[sub], un.rsa, n_permutations=n_permutations, seed=seed)
    run = hashlib.sha1(f"{sae_id_a}|{sae_id_b}|{time.time_ns()}".encode()).hexdigest()[:16]
    row = {"run_id": run, "sae_a": sae_id_a, "sae_b": sae_id_b, "n_tokens": n_tok,
           "one_to_one": one_to_one, "n_pairs": int(kept.sum()),
           "mean_corr": float(c[kept].mean()), "svcca": sv.score, "svcca_null": sv.null_mean,
           "svcca_null_std": sv.null_std, "svcca_p": sv.p, "rsa": rs.score,
           "rsa_null": rs.null_mean, "rsa_null_std": rs.null_std, "rsa_p": rs.p,
           "n_permutations": n_permutations,
           "params": json.dumps({"n_blocks": n_blocks, "rsa_max": rsa_max, "seed": seed,
                                 "svcca_max_dims": dims}),
           "created_at": store.utc_now()}
    pairs = pa.table({"run_id": [run] * len(a), "sae_a": [sae_id_a] * len(a),
                      "feature_a": a.astype(np.int32), "sae_b": [sae_id_b] * len(a),
                      "feature_b": b.astype(np.int32), "corr": c.astype(np.float64),
                      "kept": kept})
    with store.transaction(con):
        old = [r[0] for r in con.execute("SELECT run_id FROM universality_runs WHERE sae_a = ? "
                                         "AND sae_b = ?", [sae_id_a, sae_id_b]).fetchall()]
        for r in old:
            con.execute("DELETE FROM matched_pairs WHERE run_id = ?", [r])
            con.execute("DELETE FROM universality_runs WHERE run_id = ?", [r])
        store.insert_table(con, "universality_runs", pa.Table.from_pylist([row]))
        store.insert_table(con, "matched_pairs", pairs)
    log.info("%s vs %s: %d pairs, corr %.3f, SVCCA %.3f (null %.3f±%.3f), RSA %.3f (null "
             "%.3f±%.3f) in %.0fs", sae_id_a, sae_id_b, row["n_pairs"], row["mean_corr"],
             sv.score, sv.null_mean, sv.null_std, rs.score, rs.null_mean, rs.null_std,
             time.perf_counter() - t0)
    return row
