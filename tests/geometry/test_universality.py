import numpy as np
import pytest

from atlas.analyses.universality import geometry as un
from atlas.analyses.universality.geometry import (CorrelationAccumulator, against_shuffles,
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
    from atlas.analyses.universality.geometry import (against_shuffles, rsa, rsa_against_shuffles, svcca,
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


# Lan et al. 2024 (wlg1/univ_feat_geom, getScores_pythia): transcriptions of the reference.

JUNK_TEXTS = {".", "\n", "", " ", "-", ",", "!", "?"}


def _reference_pairs(acts_a, acts_b, tokens, texts, special, k=5):
    """`batched_correlation(A, B)`: each B feature's best A feature by Pearson correlation;
    then `run_expm`'s filter on each feature's top-k activating tokens and corr > 0.1."""
    za = (acts_a - acts_a.mean(0)) / np.where(acts_a.std(0) > 0, acts_a.std(0), np.inf)
    zb = (acts_b - acts_b.mean(0)) / np.where(acts_b.std(0) > 0, acts_b.std(0), np.inf)
    corr = za.T @ zb / len(acts_a)
    best_a, best_val = corr.argmax(0), corr.max(0)

    def top(acts, f):
        order = np.argsort(-acts[:, f], kind="stable")[:k]
        return [texts[tokens[i]] for i in order if acts[i, f] > 0]

    junk_words = ['.', '\\n', '\n', '', ' ', '-', '<bos>', ',', '!', '?', '<|endoftext|>',
                  '|bos|']

    kept = []
    for fb, fa in enumerate(best_a):
        ta, tb = top(acts_a, fa), top(acts_b, fb)
        flag = True
        for junk in junk_words:
            if junk in ta or junk in tb:
                flag = False
                break
        if not flag or not set(ta) & set(tb) or best_val[fb] <= 0.1:
            continue
        kept.append((fa, fb, best_val[fb]))
    return best_a, best_val, kept


def test_lan2024_matching_and_filter_equal_the_reference_transcription():
    rng = np.random.default_rng(3)
    n, d_a, d_b, vocab = 600, 40, 30, 50
    texts = [f" w{i}" for i in range(vocab - 8)] + [".", " ", ",", "\n", "<bos>", "?", " .",
                                                    "..."]
    special = {"<bos>"}
    tokens = rng.integers(0, vocab, n)
    base = rng.normal(size=(n, 12))
    acts_a = np.maximum(base @ rng.normal(size=(12, d_a)) + rng.normal(size=(n, d_a)) - 1, 0)
    acts_b = np.maximum(base @ rng.normal(size=(12, d_b)) + rng.normal(size=(n, d_b)) - 1, 0)
    acts_b[:, 0] = 0  # a dead feature
    best_a, best_val, kept = _reference_pairs(acts_a, acts_b, tokens, texts, special)

    acc = un.CorrelationAccumulator(d_a, d_b)
    top_a, top_b = un.TopActivations(d_a), un.TopActivations(d_b)
    for rows in np.array_split(np.arange(n), 7):
        acc.update(acts_a[rows], acts_b[rows])
        top_a.update(acts_a[rows], tokens[rows])
        top_b.update(acts_b[rows], tokens[rows])
    a, b, c = un.match_smaller(acc.result())
    np.testing.assert_array_equal(b, np.arange(d_b))
    np.testing.assert_array_equal(a[1:], best_a[1:])  # the dead feature has no best partner
    np.testing.assert_allclose(c, np.where(np.arange(d_b) == 0, 0, best_val), atol=1e-6)
    junk = {t for t, s in enumerate(texts) if un.junk_token(s, s in special, "lan2024")}
    keep = un.lan2024_keep(a, b, c, top_a.top_tokens(), top_b.top_tokens(), junk)
    got = [(int(x), int(y), float(v)) for x, y, v, k in zip(a, b, c, keep) if k]
    assert 2 <= len(kept) < d_b  # the filter keeps some and drops some
    assert [(x, y) for x, y, _ in got] == [(int(x), int(y)) for x, y, _ in kept]
    np.testing.assert_allclose([v for *_, v in got], [v for *_, v in kept], atol=1e-6)


def test_match_smaller_matches_each_feature_of_the_narrower_sae():
    corr = np.random.default_rng(0).normal(size=(5, 8))
    a, b, c = un.match_smaller(corr)
    np.testing.assert_array_equal(a, np.arange(5))
    np.testing.assert_array_equal(b, corr.argmax(1))


def _reference_svcca(x, y, threshold=0.99):
    """`_svcca_original(R.T, Rp.T)` with `top_k_pca_comps` as written (argmax over
    cumulative ratio >= threshold * total variance) and CCA from covariance matrices."""
    def directions(r):
        acts = r.T
        c = acts - acts.mean(1, keepdims=True)
        _, s, v = np.linalg.svd(c, full_matrices=False)
        total = np.sum(s**2)
        k = np.argmax(np.cumsum(s**2 / total) >= threshold * total) + 1
        return (s[:k] * np.eye(k)) @ v[:k]

    sx, sy = directions(x), directions(y)
    sx, sy = sx - sx.mean(1, keepdims=True), sy - sy.mean(1, keepdims=True)
    cxx, cyy, cxy = sx @ sx.T, sy @ sy.T, sx @ sy.T

    def inv_sqrt(m):
        w, v = np.linalg.eigh(m)
        return v @ np.diag(w ** -0.5) @ v.T

    rho = np.linalg.svd(inv_sqrt(cxx) @ cxy @ inv_sqrt(cyy), compute_uv=False)
    return float(np.mean(rho[:min(len(sx), len(sy))]))


def _reference_rsa(x, y):
    """`representational_similarity_analysis(inner='correlation', outer='spearman')`."""
    from scipy.spatial.distance import squareform
    from scipy.stats import spearmanr

    def rsm(r):
        r = r - r.mean(1, keepdims=True)
        u = r / np.linalg.norm(r, axis=1, keepdims=True)
        s = u @ u.T
        np.fill_diagonal(s, 0)
        return squareform(s, checks=False)

    return float(spearmanr(rsm(x), rsm(y)).statistic)


def test_svcca_and_rsa_equal_the_reference_transcriptions():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(120, 16))
    y = x @ rng.normal(size=(16, 20)) + 0.5 * rng.normal(size=(120, 20))
    assert un.lan2024_components(np.linalg.svd(x - x.mean(0), compute_uv=False)) == 1
    assert un.svcca(x, y, rule="lan2024") == pytest.approx(_reference_svcca(x, y), abs=1e-6)
    # With a total variance below 1 the reference's test keeps more than one component.
    scale = np.sqrt(0.5 / np.sum((x - x.mean(0)) ** 2))
    small = x * scale
    assert un.lan2024_components(np.linalg.svd(small - small.mean(0), compute_uv=False)) > 1
    assert un.svcca(small, y * scale, rule="lan2024") == pytest.approx(
        _reference_svcca(small, y * scale), abs=1e-6)
    assert un.rsa(x, y) == pytest.approx(_reference_rsa(x, y), abs=1e-6)
    assert un.rsa_against_shuffles(x, y, n_permutations=3).score == pytest.approx(
        _reference_rsa(x, y), abs=1e-6)
    assert un.svcca_against_shuffles(x, y, n_permutations=3, rule="lan2024").score == \
        pytest.approx(_reference_svcca(x, y), abs=1e-6)


def test_junk_rules_the_reference_list_against_the_atlas_s_broader_one():
    for text in (".", "\n", " ", "", ",", "<|endoftext|>", "<bos>"):
        special = text.startswith("<")
        assert un.junk_token(text, rule="lan2024") and un.junk_token(text, special, "atlas")
    for text in (" .", "...", "),", "  "):
        assert not un.junk_token(text, rule="lan2024") and un.junk_token(text, rule="atlas")
    assert not un.junk_token(" the", rule="lan2024") and not un.junk_token(" the", rule="atlas")


def test_p_value_rules():
    null = np.array([0.1, 0.2, 0.3, 0.5])
    assert un._null(0.3, null, 4).p == np.mean(null >= 0.3) == 0.5
    assert un._null(0.3, null, 4, "atlas").p == (1 + 2) / (1 + 4)
