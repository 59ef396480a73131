"""Universality, per pair of SAEs — two layers, two seeds, or two models that share a tokenizer
(Lan et al. 2024, the default definition `lan2024`): match the smaller SAE's features to the
other's by the Pearson correlation of their activations on the same token ids, drop the pairs
whose top-5 tokens hold punctuation, whitespace or special tokens or share no token, or whose
correlation is <= 0.1, and score the kept pairs' decoder rows with SVCCA and RSA against
shuffled pairings. One pass of each model serves every pair. Tables: `universality_scores`,
`matched_pairs`; view `universality`.

SVCCA's component rule: the reference notebook keeps the components whose cumulative explained
variance ratio reaches 0.99 x the total variance — for decoder rows (total variance >> 1) that is
always one component, so the published SVCCA is the canonical correlation of the two spaces'
first principal components. The atlas keeps that rule by default, so numbers compare with the
paper's, and offers `--svcca-rule variance` (the components explaining 99% of the variance,
capped at pairs/10 so canonical correlations cannot fit noise), labeled `atlas`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

import duckdb
import numpy as np
import pyarrow as pa
import torch

from atlas import store
from atlas.analyses.runner import Inputs, Output, Subject
from atlas.errors import AtlasError
from atlas.analyses.universality import geometry as un
from atlas.harvest import sink_free
from atlas.models import capture_residuals
from atlas.saes import check_width, hook_of, pre_topk_codes, sae_input

NAME = "universality"
DEFINITION = "lan2024"
TABLES = ("universality_scores", "matched_pairs")
NEEDS_MODEL = True

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """Parameters of the universality analysis, recorded with every run."""

    pairs: Literal["adjacent", "all"] = "adjacent"
    """Which pairs of the chosen SAEs to compare: neighbours in layer order, or every pair."""

    blocks: int = 64
    """Blocks of the atlas's corpus (spread evenly) whose tokens are correlated."""

    min_corr: float = 0.1
    """Matched pairs need a correlation above this (Lan et al.: 0.1)."""

    top_tokens: int = 5
    """Top-activating tokens per feature the concept filter reads (Lan et al.: 5)."""

    svcca_rule: Literal["lan2024", "variance"] = "lan2024"
    """SVCCA's components: the reference notebook's rule, or 99% of the variance (atlas)."""

    one_to_one: bool = False
    """Hungarian matching (each feature used once) instead of Lan et al.'s best partner (atlas)."""

    permutations: int = 100
    """Shuffled pairings behind the null distributions of SVCCA and RSA."""

    codes: Literal["pre", "post"] = "pre"
    """What is correlated for a TopK SAE: its activations before the top-k selection, as Lan et
    al. correlate EleutherAI's `pre_acts` ('pre'), or its TopK codes ('post', atlas). Other
    architectures' codes either way."""

    junk: Literal["lan2024", "atlas"] = "lan2024"
    """The concept filter's junk tokens: the reference's exact list of strings, or every
    whitespace-only, punctuation-only or special token (atlas)."""

    p_rule: Literal["lan2024", "atlas"] = "lan2024"
    """p-values against the shuffles: mean(null >= score) as the reference takes it, or
    (1 + count) / (1 + shuffles) (atlas)."""

    rsa_max: int = 0
    """Kept pairs (a random subset) the RSA matrices are built from (0: all, as Lan et al.)."""

    seed: int = 0
    """Seed of the shuffles and the RSA subset."""

    def __post_init__(self) -> None:
        if self.blocks < 1 or self.permutations < 1 or self.top_tokens < 1 or \
                (self.rsa_max and self.rsa_max < 10):
            raise AtlasError("--blocks, --permutations and --top-tokens must be positive, "
                             "--rsa-max 0 (all) or >= 10")


def definition(settings: Settings) -> str:
    """`lan2024` with the paper's choices; `atlas` when a setting departs from them."""
    published = (settings.svcca_rule == "lan2024" and not settings.one_to_one
                 and settings.rsa_max == 0 and settings.min_corr == 0.1
                 and settings.top_tokens == 5 and settings.codes == "pre"
                 and settings.junk == "lan2024" and settings.p_rule == "lan2024")
    return "lan2024" if published else "atlas"


def subjects(inputs: Inputs, settings: Settings) -> list[Subject]:
    """The pairs of chosen SAEs (ordered by layer) that `settings.pairs` names."""
    ids = list(inputs.sae_ids)
    if len(ids) < 2:
        raise AtlasError(f"universality compares two SAEs, and {len(ids)} were chosen; give two "
                         "or more with --sae, or leave --sae out for all of them")
    # Decoder rows are compared within one space: SAEs' (the residual stream) apart from
    # transcoders' (the MLP output, saes.hook_out).
    writes = dict(inputs.con.execute("SELECT sae_id, hook_out IS NOT NULL FROM saes WHERE "
                                     "sae_id IN (SELECT unnest(?))", [ids]).fetchall())
    out = []
    for kind in (False, True):
        group = [s for s in ids if writes.get(s, False) == kind]
        pairs = zip(group, group[1:]) if settings.pairs == "adjacent" else combinations(group, 2)
        out += [Subject(f"{a} ~ {b}", (a, b)) for a, b in pairs]
    return out


@dataclass(frozen=True)
class Correlations:
    """Per pair of SAEs: the correlation of every feature of A with every feature of B, and
    the tokens it was measured on; per SAE its features' top tokens and the model it reads."""

    corr: dict[tuple[str, ...], np.ndarray]
    n_tokens: dict[tuple[str, ...], int]
    top: dict[str, list[list[int]]]
    junk: set[int]
    model: dict[str, str]


def same_tokenizer(models: dict[str, Any]) -> None:
    """One clear error unless every model has the same vocabulary (token id -> text)."""
    vocabs = {m: lm.tokenizer.get_vocab() for m, lm in models.items()}
    first, *rest = vocabs
    for other in rest:
        if vocabs[other] != vocabs[first]:
            raise AtlasError(f"{first} and {other} have different tokenizers; universality "
                             "correlates features on the same token ids, so compare SAEs of "
                             "models that share a tokenizer (e.g. Pythia-70m and -160m, "
                             "Gemma-1 and Gemma-2)")


def junk_ids(tokenizer, rule: str = "lan2024") -> set[int]:
    """Token ids Lan et al.'s filter drops, by `un.junk_token`'s rule."""
    special = set(tokenizer.all_special_ids)
    return {t for t in range(len(tokenizer))
            if un.junk_token(tokenizer.decode([t]), t in special, rule)}


@torch.no_grad()
def activation_correlations(con: duckdb.DuckDBPyConnection, models: dict[str, tuple],
                            pairs: list[tuple[str, ...]], *, n_blocks: int, top_k: int = 5,
                            batch_blocks: int = 8, codes: str = "pre",
                            junk: str = "lan2024") -> Correlations:
    """Correlations of each pair's activations over `n_blocks` blocks of the first SAE's corpus
    (spread evenly), from one forward pass of each model per batch for every hook it serves:
    each SAE encodes a batch once, each pair correlates the tokens both hooks keep, and each SAE
    keeps its features' top activating tokens. `models` maps a model id to (model, SAEs).
    `codes` 'pre' reads TopK SAEs before their top-k selection (`pre_topk_codes`)."""
    lms = {m: lm for m, (lm, _) in models.items()}
    same_tokenizer(lms)
    saes = {sid: sae for _, found in models.values() for sid, sae in found.items()}
    owner = {sid: m for m, (_, found) in models.items() for sid in found}
    first = pairs[0][0]
    ids = con.execute("SELECT b.token_ids FROM blocks b JOIN harvests h ON b.corpus_id = h.corpus "
                      "WHERE h.sae_id = ? ORDER BY b.block_id", [first]).fetchall()
    if not ids:
        raise AtlasError(f"SAE {first} has no harvested blocks; build the atlas first")
    pick = np.unique(np.linspace(0, len(ids) - 1, min(n_blocks, len(ids))).astype(int))
    tokens = torch.tensor([ids[i][0] for i in pick])
    used = sorted({s for pair in pairs for s in pair})
    tok = next(iter(lms.values())).tokenizer
    special = torch.tensor(sorted(set(tok.all_special_ids)))
    accs = {p: un.CorrelationAccumulator(saes[p[0]].cfg.d_sae, saes[p[1]].cfg.d_sae)
            for p in pairs}
    tops = {s: un.TopActivations(saes[s].cfg.d_sae, top_k) for s in used}
    n_tok = dict.fromkeys(pairs, 0)
    for start in range(0, len(tokens), batch_blocks):
        batch = tokens[start:start + batch_blocks]
        base = ~torch.isin(batch, special)
        base[:, 0] = False
        keep, acts_of = {}, {}
        for m, lm in lms.items():
            mine = [s for s in used if owner[s] == m]
            if not mine:
                continue
            hooks = sorted({hook_of(saes[s]) for s in mine}, key=lambda h: (h.layer, h.where))
            on_dev = base.to(lm.device)
            acts = capture_residuals(lm, batch.to(lm.device), hooks)
            for s in mine:
                name = hook_of(saes[s]).name
                keep[s] = sink_free(acts[name], on_dev).cpu()[base]
                x = sae_input(saes[s], acts[name][on_dev])
                out = pre_topk_codes(saes[s], x) if codes == "pre" else saes[s].encode(x)
                acts_of[s] = out.float().cpu()
        flat = batch[base].numpy()
        for s in used:
            tops[s].update(acts_of[s][keep[s]].numpy(), flat[keep[s].numpy()])
        for a, b in pairs:
            both = keep[a] & keep[b]
            accs[a, b].update(acts_of[a][both].numpy(), acts_of[b][both].numpy())
            n_tok[a, b] += int(both.sum())
    return Correlations({p: acc.result() for p, acc in accs.items()}, n_tok,
                        {s: t.top_tokens() for s, t in tops.items()}, junk_ids(tok, junk), owner)


def prepare(inputs: Inputs, subjects: list[Subject], settings: Settings) -> Correlations:
    """Every pair's activation correlations, from one pass of each model."""
    ids = sorted({s for subject in subjects for s in subject.sae_ids})
    models = inputs.models(ids)
    for lm, found in models.values():
        for sid, sae in found.items():
            check_width(sae, lm.d_model, sid)
    return activation_correlations(inputs.con, models, [s.sae_ids for s in subjects],
                                   n_blocks=settings.blocks, top_k=settings.top_tokens,
                                   codes=settings.codes, junk=settings.junk)


def compute(inputs: Inputs, subject: Subject, settings: Settings,
            shared: Correlations) -> Output:
    """Match the pair's features by the prepared correlations, filter them as Lan et al. do,
    and score the kept decoder rows."""
    con = inputs.con
    sae_id_a, sae_id_b = subject.sae_ids
    corr, n_tok = shared.corr[subject.sae_ids], shared.n_tokens[subject.sae_ids]
    if settings.one_to_one:
        a, b, c = un.match_features(corr, one_to_one=True)
    else:
        a, b, c = un.match_smaller(corr)
    kept = un.lan2024_keep(a, b, c, shared.top[sae_id_a], shared.top[sae_id_b], shared.junk,
                           min_corr=settings.min_corr)
    dec_a, dec_b = store.load_decoders(con, sae_id_a), store.load_decoders(con, sae_id_b)
    x, y = dec_a[a[kept]].astype(np.float64), dec_b[b[kept]].astype(np.float64)
    row = {"sae_a": sae_id_a, "sae_b": sae_id_b, "n_tokens": n_tok,
           "one_to_one": settings.one_to_one, "n_pairs": int(kept.sum()),
           "mean_corr": float(c[kept].mean()) if kept.any() else None,
           "n_matched": len(a), "mean_corr_matched": float(c.mean()) if len(c) else None,
           "matched_from": ("both" if settings.one_to_one else
                            "b" if corr.shape[1] <= corr.shape[0] else "a"),
           "svcca_rule": settings.svcca_rule, "rsa_inner": "correlation",
           "model_a": shared.model[sae_id_a], "model_b": shared.model[sae_id_b],
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
    if settings.svcca_rule == "lan2024":
        dims = None
    else:  # canonical correlations need many more pairs than directions, or any pairing ~1
        dims = max(2, min(50, len(x) // 10))
    sv = un.svcca_against_shuffles(x, y, max_dims=dims, n_permutations=settings.permutations,
                                   seed=settings.seed, rule=settings.svcca_rule,
                                   p_rule=settings.p_rule)
    used = min(un.svcca_directions(x, settings.svcca_rule, max_dims=dims).shape[1],
               un.svcca_directions(y, settings.svcca_rule, max_dims=dims).shape[1])
    if settings.rsa_max and len(x) > settings.rsa_max:
        sub = np.random.default_rng(settings.seed).choice(len(x), settings.rsa_max,
                                                          replace=False)
        x, y = x[sub], y[sub]
    rs = un.rsa_against_shuffles(x, y, n_permutations=settings.permutations,
                                 seed=settings.seed, p_rule=settings.p_rule)
    return {"svcca": sv.score, "svcca_null": sv.null_mean, "svcca_null_std": sv.null_std,
            "svcca_p": sv.p, "svcca_dims": used, "rsa": rs.score, "rsa_null": rs.null_mean,
            "rsa_null_std": rs.null_std, "rsa_p": rs.p}


def describe(s: dict) -> str:
    if s["svcca"] is None:
        return f"{s['n_pairs']} matched concept pairs, too few to score (use more --blocks)"
    return (f"{s['n_pairs']} pairs, corr {s['mean_corr']:.3f}, SVCCA {s['svcca']:.3f} (null "
            f"{s['svcca_null']:.3f}±{s['svcca_null_std']:.3f}), RSA {s['rsa']:.3f} (null "
            f"{s['rsa_null']:.3f}±{s['rsa_null_std']:.3f})")
