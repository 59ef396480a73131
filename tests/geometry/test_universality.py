import numpy as np
import pytest

from atlas.geometry.universality import (CorrelationAccumulator, against_shuffles,
                                         match_features, rsa, svcca)


def test_correlations_equal_numpy_corrcoef_in_batches():
    rng = np.random.default_rng(0)
    a, b = rng.random((300, 7)), rng.random((300, 5))
    b[:, 2] = 0.0  # constant: correlation 0 by convention
    acc = CorrelationAccumulator(7, 5)
    for chunk in range(0, 300, 64):
        acc.update(a[chunk:chunk + 64], b[chunk:chunk + 64])
    want = np.corrcoef(a.T, b.T)[:7, 7:]
    want[:, 2] = 0.0
    np.testing.assert_allclose(acc.result(), np.nan_to_num(want), atol=1e-10)


def planted_pair(n_tokens=4000, d=40, d_model=24, noise=0.1, seed=0):
    """SAE B has A's features in another order (plus noise in activations and decoders)."""
    rng = np.random.default_rng(seed)
    acts_a = rng.random((n_tokens, d)) * (rng.random((n_tokens, d)) < 0.1)
    perm = rng.permutation(d)
    acts_b = acts_a[:, perm] + noise * rng.random((n_tokens, d))
    dec_a = rng.standard_normal((d, d_model))
    dec_b = dec_a[perm] + noise * rng.standard_normal((d, d_model))
    return acts_a, acts_b, dec_a, dec_b, perm


@pytest.mark.parametrize("one_to_one", [False, True])
def test_matching_recovers_a_planted_permutation(one_to_one):
    acts_a, acts_b, _, _, perm = planted_pair()
    acc = CorrelationAccumulator(40, 40)
    acc.update(acts_a, acts_b)
    a, b, corr = match_features(acc.result(), one_to_one=one_to_one)
    inverse = np.argsort(perm)  # feature f of A sits at column inverse[f] of B
    assert (b == inverse[a]).mean() > 0.95 and corr.mean() > 0.8


def test_svcca_and_rsa_separate_matched_from_shuffled_pairings():
    _, _, dec_a, dec_b, perm = planted_pair(d=120, d_model=32)
    matched = dec_b[np.argsort(perm)]  # rows of B aligned with A
    s = against_shuffles(dec_a, matched, lambda x, y: svcca(x, y, max_dims=20), n_permutations=50)
    r = against_shuffles(dec_a, matched, rsa, n_permutations=50)
    assert s.score > 0.95 and s.score > s.null_mean + 5 * s.null_std and s.p < 0.05
    assert r.score > 0.9 and abs(r.null_mean) < 0.1 and r.p < 0.05


def test_independent_spaces_score_like_the_null():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((120, 32)), rng.standard_normal((120, 32))
    r = against_shuffles(x, y, rsa, n_permutations=50)
    assert abs(r.score - r.null_mean) < 4 * r.null_std + 1e-9 and r.p > 0.01


def test_shuffle_tests_computed_once_equal_rescoring_every_shuffle():
    from atlas.geometry.universality import (against_shuffles, rsa, rsa_against_shuffles, svcca,
                                             svcca_against_shuffles)

    rng = np.random.default_rng(5)
    x = rng.normal(size=(120, 16))
    y = x @ rng.normal(size=(16, 12)) + 0.5 * rng.normal(size=(120, 12))
    slow = against_shuffles(x, y, lambda p, q: svcca(p, q, max_dims=8), n_permutations=15,
                            seed=3)
    fast = svcca_against_shuffles(x, y, max_dims=8, n_permutations=15, seed=3)
    for a, b in ((slow, fast), (against_shuffles(x, y, rsa, n_permutations=15, seed=3),
                                rsa_against_shuffles(x, y, n_permutations=15, seed=3))):
        assert b.score == pytest.approx(a.score, abs=1e-9)
        assert b.null_mean == pytest.approx(a.null_mean, abs=1e-9)
        assert b.null_std == pytest.approx(a.null_std, abs=1e-9) and b.p == a.p
