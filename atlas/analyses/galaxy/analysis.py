"""Galaxy (large scale), per SAE: the eigenvalue spectrum of the decoder point cloud beside an
isotropic Gaussian's, its clustering entropy by the paper's estimator (li2024) and by the
atlas's (Kozachenko-Leonenko in 10 components), and the tail mass of pairwise decoder cosines
against random unit vectors. Views: `layer_spectra`, `clustering_entropy`, `cosine_tails`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from atlas import store
from atlas.analyses.runner import Inputs, Output, Subject
from atlas.analyses.galaxy import geometry as gx

NAME = "galaxy"
DEFINITION = "li2024"
"""Spectrum and clustering entropy as the geometry paper computes them; the atlas's own
entropy estimator and the cosine tails are stored beside them, labeled."""
TABLES = ("spectra", "galaxy_stats", "cosine_hist")
NEEDS_MODEL = False


@dataclass(frozen=True)
class Settings:
    """Parameters of the galaxy analysis, recorded with every run."""

    ranks: tuple[int, int] = gx.RANK_RANGE
    """Rank range of the power-law fit of the eigenvalue spectrum."""

    entropy_dims: int = 10
    """Principal components of the atlas's clustering entropy (Kozachenko-Leonenko, k = 5)."""

    li2024_dims: int = 100
    """Principal components of the paper's clustering entropy (li2024)."""

    li2024_sample: int = 5000
    """Points subsampled for the paper's clustering entropy."""

    li2024_bootstraps: int = 30
    """Bootstrap resamples of the paper's clustering entropy."""

    tail_cut: float = 0.1
    """|cosine| from which a pair of decoder directions counts in the tail."""

    seed: int = 0
    """Seed of the Gaussian and random reference clouds."""


def subjects(inputs: Inputs, settings: Settings) -> list[Subject]:
    """One run per SAE."""
    return [Subject(s, (s,)) for s in inputs.sae_ids]


def compute(inputs: Inputs, subject: Subject, settings: Settings, shared=None) -> Output:
    """Spectrum, entropy and cosine tails of one SAE's stored unit decoders."""
    (sae_id,) = subject.sae_ids
    vectors = store.load_decoders(inputs.con, sae_id).astype(np.float64)
    eig = gx.eigen_spectrum(vectors)
    ref = gx.eigen_spectrum(gx.gaussian_cloud(*vectors.shape, seed=settings.seed))
    ent = gx.clustering_entropy(vectors, dims=settings.entropy_dims, seed=settings.seed)
    paper = gx.clustering_entropy_li2024(vectors, n_sample=settings.li2024_sample,
                                         dims=settings.li2024_dims,
                                         n_boot=settings.li2024_bootstraps, seed=settings.seed)
    tails = gx.cosine_tails(vectors, cut=settings.tail_cut, seed=settings.seed)
    spectra = pa.table({
        "sae_id": [sae_id] * (len(eig) + len(ref)),
        "cloud": ["decoder"] * len(eig) + ["gaussian"] * len(ref),
        "rank": np.concatenate([np.arange(1, len(eig) + 1), np.arange(1, len(ref) + 1)]),
        "eigenvalue": np.concatenate([eig, ref])})
    stats = pa.table({
        "sae_id": [sae_id], "rank_lo": [settings.ranks[0]],
        "rank_hi": [min(settings.ranks[1], len(eig))], "entropy_gap": [ent.value],
        "entropy_stderr": [ent.stderr], "h_knn": [ent.h_knn], "h_gauss": [ent.h_gauss],
        "entropy_dims": [ent.dims], "li2024_entropy_gap": [paper.value],
        "li2024_entropy_ci95": [paper.ci95], "li2024_h_knn": [paper.h_knn],
        "li2024_h_gauss": [paper.h_gauss], "li2024_entropy_dims": [paper.dims],
        "li2024_entropy_n": [paper.n], "tail_cut": [tails.cut], "tail_mass": [tails.tail_mass],
        "random_tail_mass": [tails.random_tail_mass]})
    nb = len(tails.counts)
    hist = pa.table({
        "sae_id": [sae_id] * 2 * nb, "cloud": ["decoder"] * nb + ["random"] * nb,
        "bin_lo": np.tile(tails.bins[:-1], 2), "bin_hi": np.tile(tails.bins[1:], 2),
        "pairs": np.concatenate([tails.counts, tails.random_counts])})
    fit = gx.power_law_fit(eig, ranks=settings.ranks)
    return Output({"spectra": spectra, "galaxy_stats": stats, "cosine_hist": hist},
                  {"sae_id": sae_id, "slope": fit.slope, "entropy_gap": ent.value,
                   "li2024_entropy_gap": paper.value,
                   "tail_mass": tails.tail_mass, "random_tail_mass": tails.random_tail_mass})


def describe(s: dict) -> str:
    return (f"slope {s['slope']:.3f}, clustering entropy {s['li2024_entropy_gap']:.1f} (li2024), "
            f"{s['entropy_gap']:.2f} (atlas), tail "
            f"{s['tail_mass']:.3f} vs {s['random_tail_mass']:.3f} random")
