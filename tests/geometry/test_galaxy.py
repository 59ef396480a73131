import numpy as np
import pytest

from atlas.analyses.galaxy.geometry import (clustering_entropy, cosine_tails, eigen_spectrum,
                                   gaussian_cloud, power_law_fit)


def power_law_cloud(n=3000, d=300, alpha=0.5, seed=0):
    """Points whose covariance eigenvalues are rank^-alpha exactly (in expectation)."""
    rng = np.random.default_rng(seed)
    scales = np.arange(1, d + 1) ** (-alpha / 2)
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (rng.standard_normal((n, d)) * scales) @ basis.T


def test_planted_power_law_gives_its_slope():
    eig = eigen_spectrum(power_law_cloud(alpha=0.5))
    fit = power_law_fit(eig, ranks=(10, 150))
    assert fit.slope == pytest.approx(-0.5, abs=0.06) and fit.r2 > 0.98


def test_default_power_law_fit_is_the_notebooks_linregress_transcribed():
    """The galaxy notebook: log_x = log10(arange(1, n + 1)), log_y = log10(eigenvalues),
    linregress(log_x[10:150], log_y[10:150])."""
    from scipy.stats import linregress

    eig = eigen_spectrum(power_law_cloud(alpha=0.7, n=3000, d=300))
    log_x, log_y = np.log10(np.arange(1, len(eig) + 1)), np.log10(eig)
    want = linregress(log_x[10:150], log_y[10:150])
    fit = power_law_fit(eig)
    assert fit.slope == pytest.approx(want.slope, abs=1e-9)
    assert fit.r2 == pytest.approx(want.rvalue ** 2, abs=1e-9)
    assert (fit.rank_lo, fit.rank_hi) == (11, 150)


def test_spectrum_equals_numpy_covariance_eigenvalues():
    x = power_law_cloud(n=400, d=30)
    want = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
    np.testing.assert_allclose(eigen_spectrum(x), want, rtol=1e-8)


def test_gaussian_cloud_is_nearly_flat_when_points_far_outnumber_dimensions():
    # Marchenko-Pastur: the sample spectrum of an isotropic cloud spreads as d/n grows, which
    # is why the atlas fits a Gaussian cloud of the decoders' own size beside them.
    flat = power_law_fit(eigen_spectrum(gaussian_cloud(20000, 100)), ranks=(5, 80))
    spread = power_law_fit(eigen_spectrum(gaussian_cloud(400, 100)), ranks=(5, 80))
    assert abs(flat.slope) < 0.1 and spread.slope < flat.slope - 0.2


def test_clustering_entropy_is_zero_for_a_gaussian_and_positive_for_clusters():
    rng = np.random.default_rng(0)
    gauss = rng.standard_normal((2000, 20))
    centres = rng.standard_normal((8, 20)) * 5
    clustered = centres[rng.integers(0, 8, 2000)] + 0.3 * rng.standard_normal((2000, 20))
    g = clustering_entropy(gauss, dims=5, n_boot=5)
    c = clustering_entropy(clustered, dims=5, n_boot=5)
    assert abs(g.value) < 0.3 and c.value > 1.0 and c.value > g.value + 5 * g.stderr


def test_cosine_tails_of_planted_clusters_exceed_the_sphere():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((10, 512))
    clustered = centres[rng.integers(0, 10, 1000)] + 0.5 * rng.standard_normal((1000, 512))
    tails = cosine_tails(clustered)
    rand = cosine_tails(gaussian_cloud(1000, 512, seed=5))
    assert tails.tail_mass > 2 * tails.random_tail_mass
    # Random unit vectors in d=512: cos ~ N(0, 1/512), so P(|cos| >= 0.1) = P(|z| >= 2.26).
    assert rand.tail_mass == pytest.approx(0.0236, abs=0.004)
    assert tails.random_tail_mass == pytest.approx(0.0236, abs=0.004)
    assert tails.counts.sum() == 1000 * 999 // 2


def _li2024_transcribed(points, *, n_sample, dims, n_boot, seed):
    """The galaxy notebook's clustering entropy (get_entropy_revised with k = 1, th = 1e-2,
    calculate_gaussian_entropy, 30 bootstraps and a t interval), with its float32 torch
    arithmetic for the distances."""
    import torch
    from scipy.stats import t

    def eigenvalues(x):
        return np.sort(np.maximum(np.linalg.eigvalsh(np.cov(x, rowvar=False)), 1e-10))[::-1]

    def entropy(x):
        x = torch.tensor(x, dtype=torch.float32)
        n, d = x.shape
        h_const = np.mean(np.log(eigenvalues(x.numpy())[:d])) + np.log(n - 1) - (-0.577216 + 1.0)
        dist = torch.cdist(x, x, p=2)
        rho = torch.sort(dist, dim=1).values[:, 1] + 1e-2
        return (d * torch.mean(torch.log(rho)) + h_const).item()

    rng = np.random.default_rng(seed)
    if len(points) > n_sample:
        points = points[rng.choice(len(points), n_sample, replace=False)]
    z = (points - points.mean(0)) / points.std(0)
    zc = z - z.mean(0)
    _, _, vt = np.linalg.svd(zc, full_matrices=False)
    x = zc @ vt[:dims].T
    boots = [entropy(x[rng.choice(len(x), len(x), replace=True)]) for _ in range(n_boot)]
    h_gauss = dims / 2 * (1 + np.log(2 * np.pi)) + 0.5 * np.sum(np.log(eigenvalues(x)[:dims]))
    ci = t.ppf(0.975, n_boot - 1) * np.std(boots, ddof=1) / np.sqrt(n_boot)
    return h_gauss - np.mean(boots), ci


def test_li2024_entropy_equals_the_papers_formula_transcribed():
    from atlas.analyses.galaxy.geometry import clustering_entropy_li2024

    rng = np.random.default_rng(3)
    points = rng.normal(size=(700, 40)) @ rng.normal(size=(40, 40))
    got = clustering_entropy_li2024(points, n_sample=500, dims=20, n_boot=6, seed=4)
    value, ci = _li2024_transcribed(points, n_sample=500, dims=20, n_boot=6, seed=4)
    assert got.value == pytest.approx(value, rel=1e-6, abs=1e-6)
    assert got.ci95 == pytest.approx(ci, rel=1e-6, abs=1e-9)
    assert got.n == 500 and got.dims == 20


def test_li2024_and_atlas_entropies_disagree_on_a_gaussian_as_documented():
    """On a Gaussian cloud the atlas's estimator gives ~0 while the paper's, whose bootstrap
    duplicates sit at the distance offset, gives tens of nats at 20 dimensions."""
    from atlas.analyses.galaxy.geometry import clustering_entropy_li2024

    gaussian = np.random.default_rng(0).normal(size=(1500, 30))
    paper = clustering_entropy_li2024(gaussian, dims=20, n_boot=5)
    ours = clustering_entropy(gaussian, dims=20)
    assert abs(ours.value) < 3                      # small-sample bias of k-NN, a few nats
    assert paper.value > 30 and paper.ci95 > 0 and paper.value - ours.value > 25
