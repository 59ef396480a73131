"""Intermediate scale: lobes of features that fire together, and whether they are also
neighbours in decoder space (spatial modularity).

Co-occurrence affinities come from counts over blocks: n_ij (both fire), n_i, n_j, and N
blocks. The SQL view `affinity` computes the same five measures for the public surface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from jaxtyping import Float, Int

from atlas.geometry.vectors import unit

Metric = Literal["phi", "jaccard", "dice", "overlap", "smc"]
METRICS: tuple[str, ...] = ("phi", "jaccard", "dice", "overlap", "smc")


def affinity(n_ij: np.ndarray, n_i: np.ndarray, n_j: np.ndarray, n: int,
             metric: Metric) -> np.ndarray:
    """One co-occurrence affinity per pair, from block counts (vectorised).

    phi is the correlation of the two firing indicators, in [-1, 1]; the others lie in [0, 1].
    """
    n_ij, n_i, n_j = (np.asarray(a, dtype=np.float64) for a in (n_ij, n_i, n_j))
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "jaccard":
            out = n_ij / (n_i + n_j - n_ij)
        elif metric == "dice":
            out = 2 * n_ij / (n_i + n_j)
        elif metric == "overlap":
            out = n_ij / np.minimum(n_i, n_j)
        elif metric == "smc":
            out = (n - n_i - n_j + 2 * n_ij) / n
        elif metric == "phi":
            out = (n * n_ij - n_i * n_j) / np.sqrt(n_i * (n - n_i) * n_j * (n - n_j))
        else:
            raise ValueError(f"unknown affinity metric {metric!r}; use one of {METRICS}")
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def cooccurrence_counts(i: Int[np.ndarray, " p"], j: Int[np.ndarray, " p"],
                        n_ij: Int[np.ndarray, " p"], n_features: int) -> np.ndarray:
    """Dense symmetric matrix of n_ij from the stored (i < j) rows; zero where never together."""
    m = np.zeros((n_features, n_features))
    m[i, j] = n_ij
    m[j, i] = n_ij
    return m


def affinity_matrix(counts: np.ndarray, n_i: np.ndarray, n_blocks: int, *,
                    metric: Metric) -> Float[np.ndarray, "n n"]:
    """Dense non-negative affinity over every pair, ready for spectral clustering.

    Phi is shifted to [0, 2] (phi + 1) so anti-correlated pairs get small, not negative,
    weights. The diagonal holds the largest value the metric takes.
    """
    n = len(n_i)
    rows, cols = np.triu_indices(n, k=1)
    values = affinity(counts[rows, cols], n_i[rows], n_i[cols], n_blocks, metric)
    shift = 1.0 if metric == "phi" else 0.0
    m = np.empty((n, n))
    m[rows, cols] = values + shift
    m[cols, rows] = values + shift
    np.fill_diagonal(m, 1.0 + shift)
    return np.clip(m, 0.0, None)


def knn_affinity(partners: list[np.ndarray], counts: list[np.ndarray], n_i: np.ndarray,
                 n_blocks: int, *, metric: Metric, k: int):
    """Sparse symmetric affinity for spectral clustering of wide SAEs: feature r linked to its
    k best partners by `metric` among `partners[r]` (feature indices, with their co-occurrence
    `counts[r]`), weights shifted like `affinity_matrix`, symmetrised by the maximum, the
    diagonal at the metric's largest value."""
    import scipy.sparse as sp

    shift = 1.0 if metric == "phi" else 0.0
    rows, cols, vals = [], [], []
    for r, (p, c) in enumerate(zip(partners, counts)):
        if not len(p):
            continue
        score = affinity(c, np.full(len(p), n_i[r]), n_i[p], n_blocks, metric) + shift
        best = np.argsort(-score, kind="stable")[:k]
        rows.append(np.full(len(best), r))
        cols.append(p[best])
        vals.append(np.clip(score[best], 0.0, None))
    n = len(n_i)
    if rows:
        m = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(n, n))
    else:
        m = sp.csr_matrix((n, n))
    m = m.maximum(m.T)
    m.setdiag(1.0 + shift)
    return m.tocsr()


def knn_angular(vectors: Float[np.ndarray, "n d"], k: int):
    """Sparse symmetric angular similarity (1 - angle/pi) of each decoder direction to its k
    nearest (exact inner-product search), for the geometric side of sparse lobes."""
    import faiss
    import scipy.sparse as sp

    u = np.ascontiguousarray(unit(vectors), dtype=np.float32)
    index = faiss.IndexFlatIP(u.shape[1])
    index.add(u)
    sims, idx = index.search(u, min(k + 1, len(u)))
    keep = idx >= 0
    rows = np.repeat(np.arange(len(u)), idx.shape[1])[keep.reshape(-1)]
    vals = 1.0 - np.arccos(np.clip(sims[keep], -1.0, 1.0)) / np.pi
    m = sp.csr_matrix((vals, (rows, idx[keep])), shape=(len(u), len(u)))
    m = m.maximum(m.T)
    m.setdiag(1.0)
    return m.tocsr()


def cooccurrence_lobes(matrix: Float[np.ndarray, "n n"], k: int, *, seed: int = 0
                       ) -> Int[np.ndarray, " n"]:
    """Spectral clustering of a precomputed affinity matrix into k lobes."""
    from sklearn.cluster import SpectralClustering

    model = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed,
                               assign_labels="cluster_qr")
    return model.fit_predict(matrix)


def angular_similarity(vectors: Float[np.ndarray, "n d"]) -> Float[np.ndarray, "n n"]:
    """1 - angle/pi between unit directions: in [0, 1], 1 for the same direction."""
    u = unit(vectors)
    return 1.0 - np.arccos(np.clip(u @ u.T, -1.0, 1.0)) / np.pi


def geometric_clusters(vectors: Float[np.ndarray, "n d"], k: int, *, seed: int = 0
                       ) -> Int[np.ndarray, " n"]:
    """Spectral clustering of decoder directions by angular similarity into k clusters."""
    return cooccurrence_lobes(angular_similarity(vectors), k, seed=seed)


@dataclass(frozen=True)
class PermutationTest:
    """A score, the mean and spread of the same score under shuffled labels, and z."""

    score: float
    null_mean: float
    null_std: float
    z: float
    n_permutations: int


def ami_test(a: Int[np.ndarray, " n"], b: Int[np.ndarray, " n"], *, n_permutations: int = 100,
             seed: int = 0) -> PermutationTest:
    """Adjusted mutual information between two labelings against shuffled `b`."""
    from sklearn.metrics import adjusted_mutual_info_score

    rng = np.random.default_rng(seed)
    score = adjusted_mutual_info_score(a, b)
    null = np.array([adjusted_mutual_info_score(a, rng.permutation(b))
                     for _ in range(n_permutations)])
    std = float(null.std())
    return PermutationTest(float(score), float(null.mean()), std,
                           float((score - null.mean()) / std) if std > 0 else float("inf"),
                           n_permutations)


@dataclass(frozen=True)
class Predictability:
    """How well an unweighted logistic regression predicts the lobe from the decoder vector
    (held-out score), against the same classifier on random unit vectors (li2024)."""

    accuracy: float
    """Held-out score on the decoders: balanced accuracy (li2024) or accuracy (atlas)."""
    random_mean: float
    """Mean held-out score over the draws of random unit vectors."""
    random_std: float
    """Their standard deviation (population, li2024; sample, atlas)."""
    z: float
    """(accuracy - random_mean) / random_std."""
    n_draws: int
    chance: float
    """Score of always guessing the largest lobe on the held-out split: 1 / lobes present
    (balanced accuracy) or the largest lobe's share (accuracy)."""
    definition: str = "li2024"


CLASSIFIERS = ("li2024", "atlas")
"""`lobe_predictability` definitions. li2024: the geometry paper's comparison notebook
(clusters3, cells 13, 16, 17): features in their order, the first 80% fit and the last 20%
scored by balanced accuracy, population std of the random draws. atlas: a stratified random
30% held out, plain accuracy, sample std."""


def lobe_predictability(vectors: Float[np.ndarray, "n d"], labels: Int[np.ndarray, " n"], *,
                        n_draws: int = 100, definition: str = "li2024", seed: int = 0,
                        n_jobs: int | None = None) -> Predictability:
    """Held-out score of an unweighted logistic regression (scikit-learn's default, max_iter
    1000) from decoder direction to lobe, against `n_draws` draws of random unit vectors put
    through the same split and classifier (the geometry paper's test), by `definition`
    (`CLASSIFIERS`).

    Draw i is `unit(standard_normal)` from `random_draw_generator(seed, i)`, so the draws do
    not depend on how they are spread over `n_jobs` processes (default: one per core, at most
    8)."""
    import os

    if definition not in CLASSIFIERS:
        raise ValueError(f"classifier {definition!r} is not one of {CLASSIFIERS}")
    paper = definition == "li2024"
    n = len(labels)
    if paper:
        cut = int(n * 0.8)
        train, test = np.arange(cut), np.arange(cut, n)
    else:
        from sklearn.model_selection import train_test_split

        counts = np.bincount(labels)
        strat = labels if counts[counts > 0].min() >= 2 else None
        train, test = train_test_split(np.arange(n), test_size=0.3, random_state=seed,
                                       stratify=strat)
    accuracy = _logreg_score(np.asarray(vectors, dtype=np.float64), labels, train, test, paper)
    jobs = max(1, min(n_jobs or os.cpu_count() or 1, 8, n_draws))
    parts = [list(range(n_draws))[j::jobs] for j in range(jobs)]
    args = [(vectors.shape, labels, train, test, paper, seed, part) for part in parts if part]
    if len(args) > 1:
        from joblib import Parallel, delayed

        results = Parallel(n_jobs=len(args))(delayed(_random_scores)(*a) for a in args)
    else:
        results = [_random_scores(*a) for a in args]
    by_draw = dict(pair for result in results for pair in result)
    draws = np.array([by_draw[i] for i in range(n_draws)])
    ddof = 0 if paper else 1
    std = float(draws.std(ddof=ddof)) if n_draws > ddof else float("nan")
    present = np.bincount(labels[test])
    chance = 1 / np.count_nonzero(present) if paper else present.max() / len(test)
    return Predictability(accuracy, float(draws.mean()), std,
                          (accuracy - float(draws.mean())) / std if std > 0 else float("nan"),
                          n_draws, float(chance), definition)


def random_draw_generator(seed: int, draw: int) -> np.random.Generator:
    """The generator of `lobe_predictability`'s random draw number `draw`."""
    return np.random.default_rng([seed, draw])


def _logreg_score(x: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray,
                  balanced: bool) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from threadpoolctl import threadpool_limits

    # One fit's products are small (features x model width): one BLAS thread runs them several
    # times faster than a pool that synchronizes at every L-BFGS step.
    with threadpool_limits(1):
        pred = LogisticRegression(max_iter=1000).fit(x[train], labels[train]).predict(x[test])
    if balanced:
        return float(balanced_accuracy_score(labels[test], pred))
    return float(np.mean(pred == labels[test]))


def _random_scores(shape: tuple[int, int], labels: np.ndarray, train: np.ndarray,
                   test: np.ndarray, balanced: bool, seed: int,
                   draws: list[int]) -> list[tuple[int, float]]:
    return [(i, _logreg_score(unit(random_draw_generator(seed, i).standard_normal(shape)),
                              labels, train, test, balanced)) for i in draws]


def feature_map(vectors: Float[np.ndarray, "n d"], *, seed: int = 0,
                tsne_max: int = 10_000) -> tuple[str, Float[np.ndarray, "n 2"]]:
    """A 2-D layout of decoder directions for the lobe map: t-SNE on cosine distance up to
    `tsne_max` features (after a 50-component PCA), PCA above that."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    u = unit(vectors)
    if len(u) > tsne_max or len(u) < 10:
        return "pca", PCA(n_components=2, random_state=seed).fit_transform(u)
    reduced = PCA(n_components=min(50, u.shape[1], len(u)), random_state=seed).fit_transform(u)
    # 500 iterations (250 of them early exaggeration) settle a map of a few thousand points:
    # on the default's L3 decoders KL 3.25 against 3.22 after sklearn's default 1,000, with
    # the same share (0.25) of each feature's 10 nearest neighbours kept, at 0.6x the cost.
    tsne = TSNE(n_components=2, perplexity=min(30.0, (len(u) - 1) / 3), init="pca",
                random_state=seed, metric="cosine", max_iter=500)
    return "tsne", tsne.fit_transform(reduced)
