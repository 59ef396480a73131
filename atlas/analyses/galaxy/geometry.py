"""Large-scale shape of a decoder point cloud: eigenvalue spectrum, clustering entropy, and
the tails of the pairwise cosine distribution, each beside an isotropic reference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Float
from scipy.special import digamma, gammaln

from atlas.geometry.vectors import unit

RANK_RANGE = (11, 150)
"""Ranks over which the power law is fitted, both ends included: the paper's galaxy notebook
fits `log_x[10:150]` with `log_x = log10(arange(1, n + 1))`, ranks 11 to 150."""


def unit_rows(x: Float[np.ndarray, "n d"]) -> Float[np.ndarray, "n d"]:
    """Rows scaled to unit norm."""
    return unit(x)


def eigen_spectrum(points: Float[np.ndarray, "n d"]) -> Float[np.ndarray, " r"]:
    """Eigenvalues (descending) of the covariance of the points."""
    centred = points - points.mean(0)
    # Singular values of the centred data give the covariance eigenvalues without forming it.
    s = np.linalg.svd(centred.astype(np.float64), compute_uv=False)
    return s**2 / max(len(points) - 1, 1)


def gaussian_cloud(n: int, d: int, *, seed: int = 0) -> Float[np.ndarray, "n d"]:
    """An isotropic Gaussian cloud of the same size, on the unit sphere like the decoders."""
    return unit_rows(np.random.default_rng(seed).standard_normal((n, d)))


@dataclass(frozen=True)
class PowerLaw:
    """log(eigenvalue) = slope * log(rank) + intercept over ranks rank_lo..rank_hi."""

    slope: float
    intercept: float
    r2: float
    rank_lo: int
    rank_hi: int


def power_law_fit(eigenvalues: Float[np.ndarray, " r"], *,
                  ranks: tuple[int, int] = RANK_RANGE) -> PowerLaw:
    """Least-squares fit of log eigenvalue against log rank (ranks count from 1)."""
    lo, hi = ranks[0], min(ranks[1], len(eigenvalues))
    r = np.arange(lo, hi + 1)
    y = np.log(eigenvalues[lo - 1:hi])
    x = np.log(r)
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (slope * x + intercept)
    r2 = 1 - resid.var() / y.var() if y.var() > 0 else 1.0
    return PowerLaw(float(slope), float(intercept), float(r2), lo, hi)


def knn_entropy(x: Float[np.ndarray, "n d"], *, k: int = 5) -> float:
    """Kozachenko-Leonenko k-nearest-neighbour estimate of differential entropy (nats)."""
    from sklearn.neighbors import NearestNeighbors

    n, d = x.shape
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    eps = np.maximum(dist[:, k], 1e-12)
    log_unit_ball = d / 2 * np.log(np.pi) - gammaln(d / 2 + 1)
    return float(digamma(n) - digamma(k) + log_unit_ball + d * np.mean(np.log(eps)))


def gaussian_entropy(x: Float[np.ndarray, "n d"]) -> float:
    """Entropy of a Gaussian with the sample covariance of x (nats)."""
    d = x.shape[1]
    _, logdet = np.linalg.slogdet(np.cov(x, rowvar=False))
    return float(0.5 * (d * np.log(2 * np.pi * np.e) + logdet))


@dataclass(frozen=True)
class ClusteringEntropy:
    """H_gauss - H_kNN: how much less spread out the cloud is than a Gaussian of its covariance
    (0 for a Gaussian, larger for a clustered cloud), with a bootstrap standard error."""

    value: float
    stderr: float
    h_knn: float
    h_gauss: float
    n: int
    dims: int


def clustering_entropy(points: Float[np.ndarray, "n d"], *, dims: int = 10, n_sample: int = 2000,
                       n_boot: int = 20, k: int = 5, seed: int = 0) -> ClusteringEntropy:
    """Subsample, standardise, reduce to `dims` principal components, compare entropies."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    sample = points[rng.choice(len(points), min(n_sample, len(points)), replace=False)]
    z = (sample - sample.mean(0)) / np.maximum(sample.std(0), 1e-12)
    y = PCA(n_components=dims, random_state=seed).fit_transform(z)

    def gap(v: np.ndarray) -> tuple[float, float, float]:
        hk, hg = knn_entropy(v, k=k), gaussian_entropy(v)
        return hg - hk, hk, hg

    value, hk, hg = gap(y)
    boots = []
    for _ in range(n_boot):
        # Resample without replacement (duplicates would give zero kNN distances).
        idx = rng.choice(len(y), int(0.8 * len(y)), replace=False)
        boots.append(gap(y[idx])[0])
    return ClusteringEntropy(value, float(np.std(boots)), hk, hg, len(y), dims)


@dataclass(frozen=True)
class PaperEntropy:
    """Clustering entropy as the geometry paper's galaxy notebook computes it (li2024)."""

    value: float
    """H_gauss - mean bootstrap H_kNN (nats; 0 for a Gaussian cloud, larger = more clustered)."""
    ci95: float
    """Half-width of the 95% interval: t(0.975, n_boot - 1) x the bootstrap standard error."""
    h_knn: float
    """Mean over bootstraps of the nearest-neighbour entropy estimate."""
    h_gauss: float
    """Entropy of a Gaussian with the reduced cloud's principal variances."""
    n: int
    dims: int


def knn_entropy_li2024(x: Float[np.ndarray, "n d"], *, k: int = 1,
                       offset: float = 1e-2) -> float:
    """The paper's nearest-neighbour entropy: d * mean log(rho_k + offset) + mean log of the
    covariance eigenvalues (clipped at 1e-10) + log(n - 1) - psi(k), where rho_k is the
    distance to the k-th neighbour (self excluded).

    As the paper's notebook computes it: the points in float32, distances by `torch.cdist`
    (a matrix product, so a bootstrap duplicate sits at its rounding error, ~0.02 on
    standardised 100-component clouds, not at 0), the distance term's mean in float32."""
    import torch

    x32 = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    n, d = x32.shape
    eig = np.sort(np.maximum(np.linalg.eigvalsh(np.cov(x32.numpy(), rowvar=False)), 1e-10))[::-1]
    psi = -0.577216 + np.sum(1.0 / np.arange(1, k + 1))
    dist = torch.cdist(x32, x32, p=2)
    rho = torch.topk(dist, k + 1, dim=1, largest=False).values[:, k] + offset
    h_rho = d * torch.mean(torch.log(rho))
    return float(h_rho + (np.mean(np.log(eig[:d])) + np.log(n - 1) - psi))


def clustering_entropy_li2024(points: Float[np.ndarray, "n d"], *, n_sample: int = 5000,
                              dims: int = 100, k: int = 1, offset: float = 1e-2,
                              n_boot: int = 30, seed: int = 0) -> PaperEntropy:
    """The paper's clustering entropy: subsample `n_sample` points, standardise each
    coordinate, project on `dims` principal components, and compare the Gaussian entropy of
    those components with the nearest-neighbour estimate averaged over `n_boot` bootstrap
    resamples (with replacement, as the paper draws them)."""
    from scipy.stats import t
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    if len(points) > n_sample:
        points = points[rng.choice(len(points), n_sample, replace=False)]
    z = (points - points.mean(0)) / np.maximum(points.std(0), 1e-12)
    dims = min(dims, z.shape[1], len(z) - 1)
    y = PCA(n_components=dims, svd_solver="full").fit_transform(z)
    boots = [knn_entropy_li2024(y[rng.choice(len(y), len(y), replace=True)], k=k,
                                offset=offset) for _ in range(n_boot)]
    eig = np.sort(np.maximum(np.linalg.eigvalsh(np.cov(y, rowvar=False)), 1e-10))[::-1]
    h_gauss = float(dims / 2 * (1 + np.log(2 * np.pi)) + 0.5 * np.sum(np.log(eig[:dims])))
    h_knn = float(np.mean(boots))
    ci = float(t.ppf(0.975, n_boot - 1) * np.std(boots, ddof=1) / np.sqrt(n_boot))
    return PaperEntropy(h_gauss - h_knn, ci, h_knn, h_gauss, len(y), dims)


@dataclass(frozen=True)
class CosineTails:
    """Pairwise cosine similarities: histogram and the mass with |cos| >= `cut`."""

    tail_mass: float
    random_tail_mass: float
    bins: Float[np.ndarray, " b"]
    counts: Float[np.ndarray, " b-1"]
    random_counts: Float[np.ndarray, " b-1"]
    cut: float


def pairwise_cosines(vectors: Float[np.ndarray, "n d"], *, max_n: int = 4096,
                     seed: int = 0) -> Float[np.ndarray, " p"]:
    """Cosines of all pairs i < j (of a random subset of at most max_n rows)."""
    rng = np.random.default_rng(seed)
    if len(vectors) > max_n:
        vectors = vectors[rng.choice(len(vectors), max_n, replace=False)]
    u = unit_rows(vectors)
    sims = u @ u.T
    return sims[np.triu_indices(len(u), k=1)]


def cosine_tails(vectors: Float[np.ndarray, "n d"], *, cut: float = 0.1, n_bins: int = 80,
                 seed: int = 0) -> CosineTails:
    """Tail mass of decoder cosines in [-1,-cut] u [cut,1] beside as many random unit vectors
    on the sphere of the same dimension (computed, not assumed)."""
    cos = pairwise_cosines(vectors, seed=seed)
    rand = pairwise_cosines(gaussian_cloud(len(vectors), vectors.shape[1], seed=seed + 1),
                            seed=seed)
    bins = np.linspace(-1, 1, n_bins + 1)
    return CosineTails(float(np.mean(np.abs(cos) >= cut)), float(np.mean(np.abs(rand) >= cut)),
                       bins, np.histogram(cos, bins)[0].astype(float),
                       np.histogram(rand, bins)[0].astype(float), cut)
