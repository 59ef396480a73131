"""Universality: do two SAEs (two layers, two seeds, two models) learn the same features?

Features are matched by the correlation of their activations over the same tokens; the matched
decoder spaces are then compared with SVCCA and RSA against shuffled pairings.

The published definition (Lan et al. 2024, "Sparse Autoencoders Reveal Universal Feature Spaces
Across Large Language Models"; wlg1/univ_feat_geom, `getScores_*` notebooks): each feature of
the smaller SAE is matched to its most correlated feature of the other (Pearson over the same
tokens); a pair is dropped when either feature's top-5 activating tokens include punctuation,
whitespace or special tokens, when their top-5 tokens share none, or when the correlation is
<= 0.1; SVCCA of the kept decoder rows; RSA = Spearman correlation of the two Pearson
(row-centred) similarity matrices over all kept pairs; both against 100 shuffled pairings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import string

import numpy as np
from jaxtyping import Bool, Float, Int

from atlas.geometry.vectors import unit


class CorrelationAccumulator:
    """Pearson correlation between every feature of A and every feature of B, accumulated over
    batches of tokens (sums and one cross-product per batch: no loop over pairs)."""

    def __init__(self, d_a: int, d_b: int):
        self.n = 0
        self.sum_a, self.sum_b = np.zeros(d_a), np.zeros(d_b)
        self.sq_a, self.sq_b = np.zeros(d_a), np.zeros(d_b)
        self.cross = np.zeros((d_a, d_b))

    def update(self, a: Float[np.ndarray, "n d_a"], b: Float[np.ndarray, "n d_b"]) -> None:
        a, b = a.astype(np.float64), b.astype(np.float64)
        self.n += len(a)
        self.sum_a += a.sum(0)
        self.sum_b += b.sum(0)
        self.sq_a += (a * a).sum(0)
        self.sq_b += (b * b).sum(0)
        self.cross += a.T @ b

    def result(self) -> Float[np.ndarray, "d_a d_b"]:
        """The correlation matrix (0 where a feature never varies)."""
        n = max(self.n, 1)
        cov = self.cross / n - np.outer(self.sum_a / n, self.sum_b / n)
        std_a = np.sqrt(np.maximum(self.sq_a / n - (self.sum_a / n) ** 2, 0))
        std_b = np.sqrt(np.maximum(self.sq_b / n - (self.sum_b / n) ** 2, 0))
        denom = np.outer(std_a, std_b)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, cov / denom, 0.0)


def match_features(corr: Float[np.ndarray, "d_a d_b"], *, one_to_one: bool = False,
                   ) -> tuple[Int[np.ndarray, " m"], Int[np.ndarray, " m"],
                              Float[np.ndarray, " m"]]:
    """Each feature of A with its most correlated feature of B (many-to-one), or an optimal
    one-to-one assignment (Hungarian algorithm). Returns (a, b, correlation)."""
    if one_to_one:
        from scipy.optimize import linear_sum_assignment

        a, b = linear_sum_assignment(-corr)
    else:
        a = np.arange(corr.shape[0])
        b = corr.argmax(1)
    return a, b, corr[a, b]


def match_smaller(corr: Float[np.ndarray, "d_a d_b"]
                  ) -> tuple[Int[np.ndarray, " m"], Int[np.ndarray, " m"], Float[np.ndarray, " m"]]:
    """Lan et al.'s matching: each feature of the SAE with fewer features (B when the widths are
    equal, as the reference passes the second SAE last) with its most correlated feature of the
    other. Returns (a, b, correlation), one entry per feature of the smaller SAE."""
    if corr.shape[1] <= corr.shape[0]:
        b = np.arange(corr.shape[1])
        a = corr.argmax(0)
    else:
        a = np.arange(corr.shape[0])
        b = corr.argmax(1)
    return a, b, corr[a, b]


class TopActivations:
    """Each feature's `k` highest activations over a stream of tokens, and those tokens' ids
    (ties: the earlier token)."""

    def __init__(self, d: int, k: int = 5):
        self.k = k
        self.values = np.full((d, k), -np.inf)
        self.tokens = np.full((d, k), -1, dtype=np.int64)

    def update(self, acts: Float[np.ndarray, "n d"], token_ids: Int[np.ndarray, " n"]) -> None:
        if not len(acts):
            return
        vals = np.concatenate([self.values, np.asarray(acts, np.float64).T], axis=1)
        toks = np.concatenate([self.tokens, np.broadcast_to(token_ids, (len(self.values),
                                                                        len(token_ids)))], axis=1)
        order = np.argsort(-vals, axis=1, kind="stable")[:, :self.k]
        self.values = np.take_along_axis(vals, order, axis=1)
        self.tokens = np.take_along_axis(toks, order, axis=1)

    def top_tokens(self) -> list[list[int]]:
        """Per feature, the token ids of its top activations, highest first (activations above 0
        only: a feature that fires on fewer than k tokens has fewer)."""
        return [[int(t) for t, v in zip(tr, vr) if v > 0]
                for tr, vr in zip(self.tokens, self.values)]


JUNK = frozenset(string.punctuation)

LAN2024_JUNK = frozenset(['.', '\\n', '\n', '', ' ', '-', '<bos>', ',', '!', '?',
                          '<|endoftext|>', '|bos|'])
"""The reference's `junk_words` (getScores_* notebooks, run_expm), matched exactly against
each top token's decoded text."""


def junk_token(text: str, special: bool = False, rule: str = "lan2024") -> bool:
    """Lan et al.'s non-concept token. 'lan2024': the decoded text is one of the reference's
    `LAN2024_JUNK` strings. 'atlas': a special token, or text that is only whitespace or only
    punctuation (' .', '...', '),' too)."""
    if rule == "lan2024":
        return text in LAN2024_JUNK
    stripped = text.strip()
    return special or not stripped or all(c in JUNK for c in stripped)


def lan2024_keep(a: Int[np.ndarray, " m"], b: Int[np.ndarray, " m"],
                 corr: Float[np.ndarray, " m"], top_a: list[list[int]], top_b: list[list[int]],
                 junk: set[int], *, min_corr: float = 0.1) -> Bool[np.ndarray, " m"]:
    """Which matched pairs Lan et al. keep: neither feature's top tokens include a junk token,
    the two share at least one top token, and the correlation exceeds `min_corr`."""
    keep = np.zeros(len(a), dtype=bool)
    for i, (fa, fb) in enumerate(zip(a, b)):
        ta, tb = set(top_a[fa]), set(top_b[fb])
        keep[i] = corr[i] > min_corr and not (ta & junk) and not (tb & junk) and bool(ta & tb)
    return keep


def lan2024_components(s: Float[np.ndarray, " k"], threshold: float = 0.99) -> int:
    """Components the reference notebook keeps (`top_k_pca_comps`): the first index where the
    cumulative explained-variance ratio reaches `threshold` x the TOTAL variance (not x 1). For
    any matrix whose total variance exceeds 1/threshold the test never holds, argmax returns 0,
    and one component is kept."""
    total = np.sum(s**2)
    cumulative = np.cumsum(s**2 / total)
    return int(np.argmax(cumulative >= threshold * total) + 1)


def _top_directions(x: np.ndarray, keep: float) -> np.ndarray:
    centred = x - x.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    energy = np.cumsum(s**2) / max(np.sum(s**2), 1e-12)
    k = int(np.searchsorted(energy, keep) + 1)
    return u[:, :k] * s[:k]


def _reference_directions(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    k = lan2024_components(s)
    return u[:, :k] * s[:k]


def svcca_directions(x: np.ndarray, rule: str = "variance", keep: float = 0.99,
                     max_dims: int | None = None) -> np.ndarray:
    """The SVD directions SVCCA compares: the reference notebook's rule (`lan2024`) or those
    explaining `keep` of the variance (`variance`), at most `max_dims`."""
    xs = _reference_directions(x) if rule == "lan2024" else _top_directions(x, keep)
    return xs[:, :max_dims] if max_dims else xs


def svcca(x: Float[np.ndarray, "m d1"], y: Float[np.ndarray, "m d2"], *, keep: float = 0.99,
          max_dims: int | None = None, rule: str = "variance") -> float:
    """Mean canonical correlation between x and y after an SVD keeping `keep` of the variance
    (rows are matched: row i of x belongs with row i of y)."""
    xs = svcca_directions(x, rule, keep, max_dims)
    ys = svcca_directions(y, rule, keep, max_dims)
    qx, _ = np.linalg.qr(xs - xs.mean(0))
    qy, _ = np.linalg.qr(ys - ys.mean(0))
    rho = np.linalg.svd(qx.T @ qy, compute_uv=False)
    return float(np.mean(np.clip(rho[:min(qx.shape[1], qy.shape[1])], 0, 1)))


def _inner(v: np.ndarray, inner: str) -> np.ndarray:
    """Rows ready for a cosine: row-centred for Pearson correlation (Lan et al.'s inner
    similarity), as they are for cosine."""
    v = np.asarray(v, np.float64)
    return unit(v - v.mean(1, keepdims=True) if inner == "correlation" else v)


def rsa(x: Float[np.ndarray, "m d1"], y: Float[np.ndarray, "m d2"], *,
        inner: str = "correlation") -> float:
    """Spearman correlation of the two spaces' pairwise similarities (Pearson correlation of
    rows, or their cosine), rows matched."""
    from scipy.stats import spearmanr

    def sims(v: np.ndarray) -> np.ndarray:
        u = _inner(v, inner)
        return (u @ u.T)[np.triu_indices(len(u), k=1)]

    return float(spearmanr(sims(x), sims(y)).statistic)


@dataclass(frozen=True)
class NullTest:
    """A score of matched rows against the same score with y's rows shuffled."""

    score: float
    null_mean: float
    null_std: float
    p: float
    """Share of shuffles scoring at least as high: mean(null >= score) as the reference takes
    it ('lan2024'), or (1 + count) / (1 + shuffles) ('atlas')."""
    n_permutations: int


def against_shuffles(x: np.ndarray, y: np.ndarray, score: Callable[[np.ndarray, np.ndarray], float],
                     *, n_permutations: int = 100, seed: int = 0,
                     p_rule: str = "lan2024") -> NullTest:
    """Score the matched pairing and `n_permutations` random pairings."""
    rng = np.random.default_rng(seed)
    real = score(x, y)
    null = np.array([score(x, y[rng.permutation(len(y))]) for _ in range(n_permutations)])
    return _null(real, null, n_permutations, p_rule)


def _null(real: float, null: np.ndarray, n_permutations: int,
          p_rule: str = "lan2024") -> NullTest:
    if p_rule == "lan2024":
        p = np.mean(null >= real)
    else:
        p = (1 + np.sum(null >= real)) / (1 + n_permutations)
    return NullTest(real, float(null.mean()), float(null.std()), float(p), n_permutations)


def svcca_against_shuffles(x: Float[np.ndarray, "m d1"], y: Float[np.ndarray, "m d2"], *,
                           keep: float = 0.99, max_dims: int | None = None,
                           n_permutations: int = 100, seed: int = 0,
                           rule: str = "variance", p_rule: str = "lan2024") -> NullTest:
    """`against_shuffles(x, y, svcca)` computed once: shuffling y's rows permutes the rows of
    its SVD directions and of their orthonormal basis, so each shuffle is one small SVD."""
    xs = svcca_directions(x, rule, keep, max_dims)
    ys = svcca_directions(y, rule, keep, max_dims)
    qx, _ = np.linalg.qr(xs - xs.mean(0))
    qy, _ = np.linalg.qr(ys - ys.mean(0))
    r = min(qx.shape[1], qy.shape[1])

    def score(q: np.ndarray) -> float:
        return float(np.mean(np.clip(np.linalg.svd(qx.T @ q, compute_uv=False)[:r], 0, 1)))

    rng = np.random.default_rng(seed)
    null = np.array([score(qy[rng.permutation(len(y))]) for _ in range(n_permutations)])
    return _null(score(qy), null, n_permutations, p_rule)


def rsa_against_shuffles(x: Float[np.ndarray, "m d1"], y: Float[np.ndarray, "m d2"], *,
                         n_permutations: int = 100, seed: int = 0,
                         inner: str = "correlation", p_rule: str = "lan2024") -> NullTest:
    """`against_shuffles(x, y, rsa)` computed once: Spearman's rho is Pearson's on average
    ranks, and shuffling y's rows permutes its similarity matrix's ranks."""
    from scipy.stats import rankdata

    iu = np.triu_indices(len(x), k=1)
    ux, uy = _inner(x, inner), _inner(y, inner)
    rx = rankdata((ux @ ux.T)[iu])
    ranks = np.zeros((len(y), len(y)))
    ranks[iu] = rankdata((uy @ uy.T)[iu])
    ranks += ranks.T
    rx = (rx - rx.mean()) / np.linalg.norm(rx - rx.mean())

    def score(perm: np.ndarray) -> float:
        ry = ranks[np.ix_(perm, perm)][iu]
        ry = ry - ry.mean()
        return float(rx @ ry / np.linalg.norm(ry))

    rng = np.random.default_rng(seed)
    null = np.array([score(rng.permutation(len(y))) for _ in range(n_permutations)])
    return _null(score(np.arange(len(y))), null, n_permutations, p_rule)
