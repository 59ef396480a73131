import numpy as np
import pytest

from atlas.analyses.crystals.geometry import (Crystal, analogy_scores, crystal_error, crystal_relation,
                                     find_crystals, lda_silhouettes, nearest_by_abs_cosine,
                                     pair_differences,
                                     parallelogram_error, parallelogram_quality,
                                     remove_distractors, same_relation_chance, split_pairs,
                                     trapezoid_error, word_pair_tasks)


def test_shipped_tasks_are_a_dozen_relations_of_dozens_of_pairs():
    tasks = word_pair_tasks()
    assert len(tasks) >= 12 and all(len(p) >= 24 for p in tasks.values())
    assert ("man", "woman") in tasks["male_female"]
    assert all(a != b for pairs in tasks.values() for a, b in pairs)


def test_split_is_seeded_and_disjoint():
    tasks = word_pair_tasks()
    train, test = split_pairs(tasks, seed=3)
    assert (train, test) == split_pairs(tasks, seed=3)
    for task in tasks:
        assert not set(train[task]) & set(test[task])
        assert sorted(train[task] + test[task]) == sorted(tasks[task])


def test_parallelogram_trapezoid_and_crystal_errors():
    a, b, c = np.array([0.0, 0]), np.array([1.0, 0]), np.array([0.0, 1])
    assert parallelogram_error(a, b, c, c + (b - a)) == pytest.approx(0)
    assert trapezoid_error(a, b, c, c + 3 * (b - a)) == pytest.approx(0)
    assert parallelogram_error(a, b, c, c + 3 * (b - a)) > 0.9
    # A thin parallelogram (c next to a) is no crystal, however parallel its sides.
    near = np.array([0.0, 0.01])
    d = near + (b - a) * 1.02
    assert parallelogram_error(a, b, near, d) < 0.03 and crystal_error(a, b, near, d) > 1
    # Transcription: |(b-a)-(d-c)| / min(mean(|b-a|,|d-c|), mean(|c-a|,|d-b|)).
    rng = np.random.default_rng(0)
    for _ in range(5):
        p, q, r, s = rng.standard_normal((4, 7))
        n = np.linalg.norm
        want = n((q - p) - (s - r)) / min((n(q - p) + n(s - r)) / 2, (n(r - p) + n(s - q)) / 2)
        assert crystal_error(p, q, r, s) == pytest.approx(want, abs=1e-9)


def test_analogy_scores_match_a_transcription():
    """Mean-centred cosine in a closed vocabulary, a_p, b_p, a_q excluded, top-1 and top-5."""
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(40)]
    vectors = {w: rng.standard_normal(12) + 3.0 for w in words}
    offset = rng.standard_normal(12)
    pairs = [(f"w{i}", f"w{i + 20}") for i in range(8)]
    for a, b in pairs:
        vectors[b] = vectors[a] + offset + 0.6 * rng.standard_normal(12)
    got = analogy_scores(vectors, {"t": pairs}, words)["t"]

    mean = np.mean([vectors[w] for w in words], axis=0)
    top1 = top5 = n = 0
    for ap, bp in pairs:
        for aq, bq in pairs:
            if (ap, bp) == (aq, bq):
                continue
            q = vectors[bp] - vectors[ap] + vectors[aq] - mean
            cos = {w: (vectors[w] - mean) @ q / np.linalg.norm(vectors[w] - mean)
                   / np.linalg.norm(q) for w in words if w not in (ap, bp, aq)}
            ranked = sorted(cos, key=lambda w: -cos[w])
            top1 += ranked[0] == bq
            top5 += bq in ranked[:5]
            n += 1
    assert got.n_queries == n
    assert got.top1 == pytest.approx(top1 / n, abs=1e-6)
    assert got.top5 == pytest.approx(top5 / n, abs=1e-6)
    assert 0 < got.top1 < got.top5 <= 1


def _silhouette(x, y):
    """Rousseeuw's silhouette, Euclidean: (b - a) / max(a, b) averaged over points."""
    dist = np.linalg.norm(x[:, None] - x[None], axis=2)
    s = []
    for i in range(len(x)):
        same = (y == y[i])
        a = dist[i, same].sum() / (same.sum() - 1)
        b = min(dist[i, y == c].mean() for c in np.unique(y) if c != y[i])
        s.append((b - a) / max(a, b))
    return float(np.mean(s))


def _lda(x, y, n):
    """Fisher's LDA: the top-n generalized eigenvectors of (between, within) scatter."""
    from scipy.linalg import eigh

    mu = x.mean(0)
    sw = sum((x[y == c] - x[y == c].mean(0)).T @ (x[y == c] - x[y == c].mean(0))
             for c in np.unique(y))
    sb = sum((y == c).sum() * np.outer(x[y == c].mean(0) - mu, x[y == c].mean(0) - mu)
             for c in np.unique(y))
    vals, vecs = eigh(sb, sw)
    return vecs[:, np.argsort(-vals)[:n]]


def test_lda_silhouettes_match_a_transcription():
    """li2024: silhouette of task classes among pair differences, raw and after LDA."""
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(5), 30)
    centres = rng.standard_normal((5, 8)) * 1.5
    diffs = centres[labels] + rng.standard_normal((150, 8)) * np.linspace(0.5, 3, 8)
    heldout = np.zeros(150, bool)
    heldout[1::2] = True
    scores = {s.n_components: s for s in lda_silhouettes(diffs, labels, heldout,
                                                         components=range(2, 5))}
    assert sorted(scores) == [0, 2, 3, 4]
    assert scores[0].silhouette == pytest.approx(_silhouette(diffs, labels), abs=1e-6)
    assert scores[0].silhouette_heldout == pytest.approx(
        _silhouette(diffs[heldout], labels[heldout]), abs=1e-6)
    for n in (2, 3, 4):
        w = _lda(diffs, labels, n)
        assert scores[n].silhouette == pytest.approx(_silhouette(diffs @ w, labels), abs=1e-6)
        w = _lda(diffs[~heldout], labels[~heldout], n)
        assert scores[n].silhouette_heldout == pytest.approx(
            _silhouette(diffs[heldout] @ w, labels[heldout]), abs=1e-6)
    assert scores[4].silhouette > scores[0].silhouette


def test_pair_differences_are_object_minus_subject():
    vectors = {"a": np.array([1.0, 0]), "b": np.array([0.0, 2]), "c": np.array([3.0, 3])}
    diffs, labels, names = pair_differences(vectors, {"t": [("a", "b")], "u": [("c", "a")]})
    np.testing.assert_array_equal(diffs, [[-1, 2], [-2, -3]])
    assert labels.tolist() == [0, 1] and names == [("t", "a", "b"), ("u", "c", "a")]


def test_planted_parallelogram_is_found_first():
    rng = np.random.default_rng(0)
    vectors = {f"w{i}": rng.standard_normal(16) for i in range(30)}
    shift = rng.standard_normal(16)
    vectors["king"] = rng.standard_normal(16)
    vectors["queen"] = vectors["king"] + shift
    vectors["man"] = rng.standard_normal(16)
    vectors["woman"] = vectors["man"] + shift
    best = find_crystals(vectors)[0]
    assert {best.a, best.b, best.c, best.d} == {"king", "queen", "man", "woman"}
    assert best.crystal_error < 1e-6
    assert crystal_relation(best, {"gender": [("man", "woman"), ("king", "queen")]}) == "gender"


def planted_words(seed=0, d=40, n_pairs=24, distractor=12.0, n_tasks=3, noise=0.1):
    """Task offsets plus a strong word-length direction and noise: removal should find length."""
    rng = np.random.default_rng(seed)
    length_dir = rng.standard_normal(d)
    length_dir /= np.linalg.norm(length_dir)
    vectors, tasks = {}, {}
    for t in range(n_tasks):
        offset = rng.standard_normal(d) * 1.5
        pairs = []
        for p in range(n_pairs):
            a, b = f"t{t}a{p}" + "x" * rng.integers(0, 9), f"t{t}b{p}" + "x" * rng.integers(0, 9)
            base = rng.standard_normal(d) * 0.3 + rng.standard_normal(d) * noise
            vectors[a] = base + distractor * len(a) / 10 * length_dir
            vectors[b] = base + offset + distractor * len(b) / 10 * length_dir
            pairs.append((a, b))
        tasks[f"task{t}"] = pairs
    return vectors, tasks, length_dir


def test_removal_finds_a_planted_length_distractor_and_helps_held_out_analogies():
    vectors, tasks, length_dir = planted_words()
    train, test = split_pairs(tasks)
    result = remove_distractors(vectors, train, test)
    assert result.n_dims >= 1
    assert abs(result.removed_direction @ length_dir) > 0.9
    assert result.length_corr > 0.9
    before = np.mean([s.top1 for s in result.before.values()])
    after = np.mean([s.top1 for s in result.after.values()])
    assert before < 0.7 and after > 0.9
    assert result.silhouette_after > result.silhouette_before


def test_no_distractor_means_nothing_removed():
    vectors, tasks, _ = planted_words(distractor=0.0)
    train, test = split_pairs(tasks)
    assert remove_distractors(vectors, train, test).n_dims == 0


def test_parallelogram_quality_on_clean_pairs():
    vectors, tasks, _ = planted_words(distractor=0.0)
    pairs = tasks["task0"]
    a = np.stack([vectors[p[0]] for p in pairs])
    b = np.stack([vectors[p[1]] for p in pairs])
    assert parallelogram_quality(a, b) > 0.9


def test_search_finds_planted_relations_far_above_chance():
    vectors, tasks, _ = planted_words(distractor=0.0, n_tasks=4, n_pairs=12, noise=0.02)
    found = find_crystals(vectors, limit=20)
    rate = np.mean([crystal_relation(c, tasks) is not None for c in found])
    chance = same_relation_chance(sorted(vectors), tasks)
    assert rate > 0.8 and chance < 0.01


def test_same_relation_chance_counts_every_quadruple():
    from itertools import combinations

    tasks = {"t": [("a", "b"), ("c", "d"), ("e", "f")], "u": [("a", "c"), ("g", "h")]}
    words = list("abcdefgh")
    pairs = list(combinations(words, 2))
    hits = total = 0
    for p, q in combinations(pairs, 2):
        total += 1
        hits += any({frozenset(p), frozenset(q)} <= {frozenset(x) for x in ps}
                    for ps in tasks.values())
    assert same_relation_chance(words, tasks) == pytest.approx(hits / total)
    assert crystal_relation(Crystal("a", "c", "b", "d", 0, 0, 0), tasks) == "t"


def test_sampled_words_keep_pairs_whole():
    from atlas.analyses.crystals.geometry import sample_words

    tasks = word_pair_tasks()
    words = set(sample_words(tasks, 100, seed=1))
    assert 95 <= len(words) <= 100
    whole = [p for ps in tasks.values() for p in ps if p[0] in words and p[1] in words]
    assert len({w for p in whole for w in p}) == len(words)
    assert len(sample_words(tasks, 10_000)) == len({w for ps in tasks.values() for p in ps
                                                    for w in p})


@pytest.mark.parametrize("n,d,k,chunk", [(300, 12, 11, 64), (40, 5, 11, 1024), (3, 4, 11, 2)])
def test_nearest_by_abs_cosine_equals_a_brute_force_ranking(n, d, k, chunk):
    # |cosine| ranked in float64 by numpy: the same k columns per row (itself among them) and
    # the sign of each cosine; chunks of any size give the same answer
    rng = np.random.default_rng(n)
    units = rng.standard_normal((n, d))
    units /= np.linalg.norm(units, axis=1, keepdims=True)
    cos = units @ units.T
    want = np.sort(np.argsort(-np.abs(cos), axis=1, kind="stable")[:, :min(k, n)], axis=1)
    got = list(nearest_by_abs_cosine(units.astype(np.float32), k, chunk=chunk))
    assert [start for start, _, _ in got] == list(range(0, n, chunk))
    columns = np.concatenate([c for _, c, _ in got])
    negative = np.concatenate([f for _, _, f in got])
    assert np.array_equal(columns, want)
    assert (columns == np.arange(n)[:, None]).any(1).all()
    assert np.array_equal(negative, np.take_along_axis(cos, want, 1) < 0)
