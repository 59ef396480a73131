"""Universality: do two SAEs (two layers, two seeds, two models) learn the same features?

Features are matched by the correlation of their activations over the same tokens; the matched
decoder spaces are then compared with SVCCA and RSA against shuffled pairings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float, Int

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


def _top_directions(x: np.ndarray, keep: float) -> np.ndarray:
    centred = x - x.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    energy = np.cumsum(s**2) / max(np.sum(s**2), 1e-12)
    k = int(np.searchsorted(energy, keep) + 1)
    return u[:, :k] * s[:k]


def svcca(x: Float[np.ndarray, "m d1"], y: Float[np.ndarray, "m d2"], *, keep: float = 0.99,
          max_dims: int | None = None) -> float:
    """Mean canonical correlation between x and y after an SVD keeping `keep` of the variance
    (rows are matched: row i of x belongs with row i of y)."""
    xs, ys = _top_directions(x, keep), _top_directions(y, keep)
    if max_dims:
        xs, ys = xs[:, :max_dims], ys[:, :max_dims]
    qx, _ = np.linalg.qr(xs - xs.mean(0))
    qy, _ = np.linalg.qr(ys - ys.mean(0))
    rho = np.linalg.svd(qx.T @ qy, compute_uv=False)
    return float(np.mean(np.clip(rho[:min(qx.shape[1], qy.shape[1])], 0, 1)))


def rsa(x: Float[np.ndarray, "m d1"], y: Float[np.ndarray, "m d2"]) -> float:
    """Spearman correlation of the two spaces' pairwise cosine similarities (rows matched)."""
    from scipy.stats import spearmanr

    def sims(v: np.ndarray) -> np.ndarray:
        u = unit(v)
        return (u @ u.T)[np.triu_indices(len(u), k=1)]

    return float(spearmanr(sims(x), sims(y)).statistic)


@dataclass(frozen=True)
class NullTest:
    """A score of matched rows against the same score with y's rows shuffled."""

    score: float
    null_mean: float
    null_std: float
    p: float
    """Share of shuffles scoring at least as high (with the +1 correction)."""
    n_permutations: int


def against_shuffles(x: np.ndarray, y: np.ndarray, score: Callable[[np.ndarray, np.ndarray], float],
                     *, n_permutations: int = 100, seed: int = 0) -> NullTest:
    """Score the matched pairing and `n_permutations` random pairings."""
    rng = np.random.default_rng(seed)
    real = score(x, y)
    null = np.array([score(x, y[rng.permutation(len(y))]) for _ in range(n_permutations)])
    return _null(real, null, n_permutations)


def _null(real: float, null: np.ndarray, n_permutations: int) -> NullTest:
    p = (1 + np.sum(null >= real)) / (1 + n_permutations)
    return NullTest(real, float(null.mean()), float(null.std()), float(p), n_permutations)


def svcca_against_shuffles(x: Float[np.ndarray, "m d1"], y: Float[np.ndarray, "m d2"], *,
                           keep: float = 0.99, max_dims: int | None = None,
                           n_permutations: int = 100, seed: int = 0) -> NullTest:
    """`against_shuffles(x, y, svcca)` computed once: shuffling y's rows permutes the rows of
    its SVD directions and of their orthonormal basis, so each shuffle is one small SVD."""
    xs, ys = _top_directions(x, keep), _top_directions(y, keep)
    if max_dims:
        xs, ys = xs[:, :max_dims], ys[:, :max_dims]
    qx, _ = np.linalg.qr(xs - xs.mean(0))
    qy, _ = np.linalg.qr(ys - ys.mean(0))
    r = min(qx.shape[1], qy.shape[1])

    def score(q: np.ndarray) -> float:
        return float(np.mean(np.clip(np.linalg.svd(qx.T @ q, compute_uv=False)[:r], 0, 1)))

    rng = np.random.default_rng(seed)
    null = np.array([score(qy[rng.permutation(len(y))]) for _ in range(n_permutations)])
    return _null(score(qy), null, n_permutations)


def rsa_against_shuffles(x: Float[np.ndarray, "m d1"], y: Float[np.ndarray, "m d2"], *,
                         n_permutations: int = 100, seed: int = 0) -> NullTest:
    """`against_shuffles(x, y, rsa)` computed once: Spearman's rho is Pearson's on average
    ranks, and shuffling y's rows permutes its similarity matrix's ranks."""
    from scipy.stats import rankdata

    iu = np.triu_indices(len(x), k=1)
    ux, uy = unit(x), unit(y)
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
    return _null(score(np.arange(len(y))), null, n_permutations)
