import numpy as np
import pytest

from atlas.geometry.galaxy import (clustering_entropy, cosine_tails, eigen_spectrum,
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
