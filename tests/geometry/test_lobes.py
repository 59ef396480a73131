import numpy as np
import pytest

from atlas.analyses.lobes.geometry import (METRICS, affinity, affinity_matrix, ami_test,
                                  cooccurrence_counts, cooccurrence_lobes, geometric_clusters,
                                  lobe_predictability, random_draw_generator)


def planted_lobes(n_per=40, d=32, n_blocks=400, seed=0):
    """Two lobes: features of a lobe co-fire in that lobe's blocks and point near its centre."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2, d)) * 2
    labels = np.repeat([0, 1], n_per)
    vectors = centres[labels] + rng.standard_normal((2 * n_per, d))
    block_lobe = rng.integers(0, 2, n_blocks)
    fires = rng.random((n_blocks, 2 * n_per)) < np.where(block_lobe[:, None] == labels[None],
                                                         0.6, 0.05)
    return labels, vectors, fires


def counts_from(fires):
    both = fires.T.astype(int) @ fires.astype(int)
    i, j = np.triu_indices(fires.shape[1], k=1)
    return i, j, both[i, j], fires.sum(0), fires.shape[0]


@pytest.mark.parametrize("metric", METRICS)
def test_affinities_match_their_definitions(metric):
    rng = np.random.default_rng(0)
    fires = rng.random((50, 6)) < 0.4
    i, j, nij, ni, n = counts_from(fires)
    got = affinity(nij, ni[i], ni[j], n, metric)
    for k, (a, b) in enumerate(zip(i, j)):
        x, y = fires[:, a], fires[:, b]
        want = {"jaccard": (x & y).sum() / (x | y).sum(),
                "dice": 2 * (x & y).sum() / (x.sum() + y.sum()),
                "overlap": (x & y).sum() / min(x.sum(), y.sum()),
                "smc": (x == y).mean(),
                "phi": np.corrcoef(x, y)[0, 1]}[metric]
        assert got[k] == pytest.approx(want, abs=1e-9)


def test_planted_lobes_are_found_and_match_geometry():
    labels, vectors, fires = planted_lobes()
    i, j, nij, ni, n = counts_from(fires)
    matrix = affinity_matrix(cooccurrence_counts(i, j, nij, len(ni)), ni, n, metric="phi")
    lobes = cooccurrence_lobes(matrix, 2)
    geo = geometric_clusters(vectors, 2)
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(labels, lobes) > 0.9
    test = ami_test(lobes, geo, n_permutations=100)
    assert test.score > 0.8 and test.z > 20 and abs(test.null_mean) < 0.05
    control = ami_test(lobes, np.random.default_rng(3).permutation(geo), n_permutations=100)
    assert abs(control.score) < 0.1 and abs(control.z) < 4


def test_lobe_is_predictable_from_planted_geometry_not_from_random_vectors():
    labels, vectors, _ = planted_lobes(n_per=100)
    order = np.random.default_rng(5).permutation(len(labels))   # mix the lobes over the split
    for definition in ("li2024", "atlas"):
        result = lobe_predictability(vectors[order], labels[order], n_draws=20,
                                     definition=definition)
        assert result.accuracy > 0.9 and result.chance == 0.5 and result.z > 3
        assert abs(result.random_mean - 0.5) < 0.2 and result.definition == definition


def test_lobe_predictability_is_the_papers_notebook_transcribed():
    """clusters3 (comparison), cells 13, 16 and 17: fit_model splits the features in order,
    first 80% / last 20%, fits LogisticRegression(max_iter=1000) and returns the balanced
    accuracy; 100 random unit-vector draws; z = (true - mean) / np.std (population)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    labels, vectors, _ = planted_lobes(n_per=60)
    order = np.random.default_rng(1).permutation(len(labels))
    labels, vectors = labels[order], vectors[order]

    def fit_model(X, labels, split=0.8):
        train_labels, test_labels = labels[:int(len(labels)*split)], labels[int(len(labels)*split):]
        train_X, test_X = X[:int(len(labels)*split)], X[int(len(labels)*split):]
        clf = LogisticRegression(max_iter=1000).fit(train_X, train_labels)
        preds = clf.predict(test_X)
        return balanced_accuracy_score(test_labels, preds)

    fit_results_random = []
    for i in range(7):
        random_features = random_draw_generator(2, i).standard_normal(vectors.shape)
        random_features /= np.linalg.norm(random_features, axis=1)[:, None]
        fit_results_random.append(fit_model(random_features, labels))
    std_dev, mean = np.std(fit_results_random), np.mean(fit_results_random)
    true = fit_model(vectors, labels)

    got = lobe_predictability(vectors, labels, n_draws=7, seed=2)
    assert got.definition == "li2024"
    assert got.accuracy == pytest.approx(true, abs=1e-6)
    assert got.random_mean == pytest.approx(mean, abs=1e-6)
    assert got.random_std == pytest.approx(std_dev, abs=1e-6)
    assert got.z == pytest.approx((true - mean) / std_dev, rel=1e-6)


def test_the_atlas_classifier_is_a_stratified_split_with_plain_accuracy():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    labels, vectors, _ = planted_lobes(n_per=60)
    got = lobe_predictability(vectors, labels, n_draws=7, seed=2, definition="atlas")
    tr, te = train_test_split(np.arange(len(labels)), test_size=0.3, random_state=2,
                              stratify=labels)

    def acc(x):
        pred = LogisticRegression(max_iter=1000).fit(x[tr], labels[tr]).predict(x[te])
        return np.mean(pred == labels[te])

    draws = []
    for i in range(7):
        r = random_draw_generator(2, i).standard_normal(vectors.shape)
        draws.append(acc(r / np.linalg.norm(r, axis=1, keepdims=True)))
    mean, std = np.mean(draws), np.std(draws, ddof=1)
    assert got.accuracy == pytest.approx(acc(vectors), abs=1e-6)
    assert got.random_mean == pytest.approx(mean, abs=1e-6)
    assert got.random_std == pytest.approx(std, abs=1e-6)
    assert got.chance == pytest.approx(np.bincount(labels[te]).max() / len(te))


def test_lobe_predictability_does_not_depend_on_how_draws_are_spread_over_processes():
    labels, vectors, _ = planted_lobes(n_per=40)
    one = lobe_predictability(vectors, labels, n_draws=6, seed=1, n_jobs=1)
    two = lobe_predictability(vectors, labels, n_draws=6, seed=1, n_jobs=2)
    assert one == two
