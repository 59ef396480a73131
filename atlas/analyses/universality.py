"""Universality, per pair of SAEs: match A's features to B's by the correlation of their
activations on the same tokens, and score the matched decoder spaces with SVCCA and RSA against
shuffled pairings. One pass of the model serves every pair. Tables: `universality_scores`,
`matched_pairs`; view `universality`."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from itertools import combinations
from typing import Literal

import duckdb
import numpy as np
import pyarrow as pa
import torch

from atlas import store
from atlas.analyses.runner import Inputs, Output, Subject
from atlas.errors import AtlasError
from atlas.geometry import universality as un
from atlas.harvest import sink_free
from atlas.models import capture_residuals
from atlas.saes import check_width, hook_of, sae_input

NAME = "universality"
DEFINITION = "atlas"
TABLES = ("universality_scores", "matched_pairs")
NEEDS_MODEL = True
ORDER = 40

log = logging.getLogger(__name__)
WORDLIKE = re.compile(r"[A-Za-z]{2,}")


@dataclass(frozen=True)
class Settings:
    """Parameters of the universality analysis, recorded with every run."""

    pairs: Literal["adjacent", "all"] = "adjacent"
    """Which pairs of the chosen SAEs to compare: neighbours in layer order, or every pair."""

    blocks: int = 64
    """Blocks of the atlas's corpus (spread evenly) whose tokens are correlated."""

    one_to_one: bool = False
    """Hungarian matching (each feature used once) instead of each A feature's best B feature."""

    permutations: int = 100
    """Shuffled pairings behind the null distributions of SVCCA and RSA."""

    rsa_max: int = 600
    """Matched pairs (a random subset) the RSA similarity matrices are built from."""

    seed: int = 0
    """Seed of the shuffles and the RSA subset."""

    def __post_init__(self) -> None:
        if self.blocks < 1 or self.permutations < 1 or self.rsa_max < 10:
            raise AtlasError("--blocks and --permutations must be positive, --rsa-max >= 10")


def subjects(inputs: Inputs, settings: Settings) -> list[Subject]:
    """The pairs of chosen SAEs (ordered by layer) that `settings.pairs` names."""
    ids = list(inputs.sae_ids)
    if len(ids) < 2:
        raise AtlasError(f"universality compares two SAEs, and {len(ids)} were chosen; give two "
                         "or more with --sae, or leave --sae out for all of them")
    pairs = zip(ids, ids[1:]) if settings.pairs == "adjacent" else combinations(ids, 2)
    return [Subject(f"{a} ~ {b}", (a, b)) for a, b in pairs]


def concept_features(con: duckdb.DuckDBPyConnection, sae_id: str) -> np.ndarray:
    """Mask of features whose most frequent firing tokens include a word (not only
    punctuation, whitespace or digits)."""
    rows = con.execute("SELECT top_tokens FROM features WHERE sae_id = ? ORDER BY feature",
                       [sae_id]).fetchall()
    return np.array([any(WORDLIKE.search(t) for t in (r[0] or [])[:3]) for r in rows])


@dataclass(frozen=True)
class Correlations:
    """Per pair of SAEs: the correlation of every feature of A with every feature of B, and
    the tokens it was measured on."""

    corr: dict[tuple[str, str], np.ndarray]
    n_tokens: dict[tuple[str, str], int]


@torch.no_grad()
def activation_correlations(con: duckdb.DuckDBPyConnection, lm, saes: dict,
                            pairs: list[tuple[str, str]], *, n_blocks: int,
                            batch_blocks: int = 8) -> Correlations:
    """Correlations of each pair's activations over `n_blocks` blocks of the first SAE's corpus
    (spread evenly), from one forward pass per batch for every hook of every pair: each SAE
    encodes a batch once, each pair correlates the tokens both hooks keep."""
    first = pairs[0][0]
    ids = con.execute("SELECT b.token_ids FROM blocks b JOIN harvests h ON b.corpus_id = h.corpus "
                      "WHERE h.sae_id = ? ORDER BY b.block_id", [first]).fetchall()
    if not ids:
        raise AtlasError(f"SAE {first} has no harvested blocks; build the atlas first")
    pick = np.unique(np.linspace(0, len(ids) - 1, min(n_blocks, len(ids))).astype(int))
    tokens = torch.tensor([ids[i][0] for i in pick])
    used = sorted({s for pair in pairs for s in pair})
    hooks = sorted({hook_of(saes[s]) for s in used}, key=lambda h: (h.layer, h.where))
    special = torch.tensor(sorted(set(lm.tokenizer.all_special_ids)))
    accs = {p: un.CorrelationAccumulator(saes[p[0]].cfg.d_sae, saes[p[1]].cfg.d_sae)
            for p in pairs}
    n_tok = dict.fromkeys(pairs, 0)
    for start in range(0, len(tokens), batch_blocks):
        batch = tokens[start:start + batch_blocks]
        base = ~torch.isin(batch, special)
        base[:, 0] = False
        base = base.to(lm.device)
        acts = capture_residuals(lm, batch, hooks)
        keep = {h.name: sink_free(acts[h.name], base) for h in hooks}
        codes = {s: saes[s].encode(sae_input(saes[s], acts[hook_of(saes[s]).name][base]))
                 for s in used}
        for a, b in pairs:
            both = (keep[hook_of(saes[a]).name] & keep[hook_of(saes[b]).name])[base]
            accs[a, b].update(codes[a][both].float().cpu().numpy(),
                              codes[b][both].float().cpu().numpy())
            n_tok[a, b] += int(both.sum())
    return Correlations({p: acc.result() for p, acc in accs.items()}, n_tok)


def prepare(inputs: Inputs, subjects: list[Subject], settings: Settings) -> Correlations:
    """Every pair's activation correlations, from one pass of the model."""
    lm = inputs.lm
    saes = inputs.saes(sorted({s for subject in subjects for s in subject.sae_ids}))
    for sid, sae in saes.items():
        check_width(sae, lm.d_model, sid)
    return activation_correlations(inputs.con, lm, saes, [s.sae_ids for s in subjects],
                                   n_blocks=settings.blocks)


def compute(inputs: Inputs, subject: Subject, settings: Settings,
            shared: Correlations) -> Output:
    """Match A's features to B's by the prepared correlations and score the matched decoder
    spaces."""
    con = inputs.con
    sae_id_a, sae_id_b = subject.sae_ids
    corr, n_tok = shared.corr[subject.sae_ids], shared.n_tokens[subject.sae_ids]
    a, b, c = un.match_features(corr, one_to_one=settings.one_to_one)
    kept = concept_features(con, sae_id_a)[a] & concept_features(con, sae_id_b)[b] & (c > 0)
    dec_a, dec_b = store.load_decoders(con, sae_id_a), store.load_decoders(con, sae_id_b)
    x, y = dec_a[a[kept]].astype(np.float64), dec_b[b[kept]].astype(np.float64)
    row = {"sae_a": sae_id_a, "sae_b": sae_id_b, "n_tokens": n_tok,
           "one_to_one": settings.one_to_one, "n_pairs": int(kept.sum()),
           "mean_corr": float(c[kept].mean()) if kept.any() else None,
           "n_permutations": settings.permutations}
    if len(x) >= MIN_PAIRS:
        row.update(_scores(x, y, settings))
    else:  # stored with empty scores, so the pair shows why it has none
        log.warning("only %d matched concept pairs between %s and %s, too few to score (%d "
                    "needed); use more --blocks", len(x), sae_id_a, sae_id_b, MIN_PAIRS)
        row.update(dict.fromkeys(SCORES))
    pairs = pa.table({"sae_a": [sae_id_a] * len(a), "feature_a": a.astype(np.int32),
                      "sae_b": [sae_id_b] * len(a), "feature_b": b.astype(np.int32),
                      "corr": c.astype(np.float64), "kept": kept})
    return Output({"universality_scores": pa.Table.from_pylist([row]), "matched_pairs": pairs},
                  row)


MIN_PAIRS = 10
"""Matched concept pairs needed to score a pair of SAEs."""
SCORES = ("svcca", "svcca_null", "svcca_null_std", "svcca_p", "svcca_dims", "rsa", "rsa_null",
          "rsa_null_std", "rsa_p")


def _scores(x: np.ndarray, y: np.ndarray, settings: Settings) -> dict:
    """SVCCA and RSA of matched decoder rows against shuffled pairings."""
    # Canonical correlations need many more pairs than directions, or any pairing scores ~1.
    dims = max(2, min(50, len(x) // 10))
    sv = un.svcca_against_shuffles(x, y, max_dims=dims, n_permutations=settings.permutations,
                                   seed=settings.seed)
    rng = np.random.default_rng(settings.seed)
    sub = rng.choice(len(x), min(settings.rsa_max, len(x)), replace=False)
    rs = un.rsa_against_shuffles(x[sub], y[sub], n_permutations=settings.permutations,
                                 seed=settings.seed)
    return {"svcca": sv.score, "svcca_null": sv.null_mean, "svcca_null_std": sv.null_std,
            "svcca_p": sv.p, "svcca_dims": dims, "rsa": rs.score, "rsa_null": rs.null_mean,
            "rsa_null_std": rs.null_std, "rsa_p": rs.p}


def describe(s: dict) -> str:
    if s["svcca"] is None:
        return f"{s['n_pairs']} matched concept pairs, too few to score (use more --blocks)"
    return (f"{s['n_pairs']} pairs, corr {s['mean_corr']:.3f}, SVCCA {s['svcca']:.3f} (null "
            f"{s['svcca_null']:.3f}±{s['svcca_null_std']:.3f}), RSA {s['rsa']:.3f} (null "
            f"{s['rsa_null']:.3f}±{s['rsa_null_std']:.3f})")
