import numpy as np
import pytest

from atlas.geometry.crystals import (analogy_accuracy, find_crystals, parallelogram_error,
                                     parallelogram_quality, remove_distractors, trapezoid_error,
                                     word_pair_tasks)


def test_shipped_tasks_have_dozens_of_pairs():
    tasks = word_pair_tasks()
    assert len(tasks) >= 5 and all(len(p) >= 24 for p in tasks.values())
    assert ("man", "woman") in tasks["male_female"]


def test_parallelogram_and_trapezoid_errors():
    a, b, c = np.array([0.0, 0]), np.array([1.0, 0]), np.array([0.0, 1])
    assert parallelogram_error(a, b, c, c + (b - a)) == pytest.approx(0)
    assert trapezoid_error(a, b, c, c + 3 * (b - a)) == pytest.approx(0)
    assert parallelogram_error(a, b, c, c + 3 * (b - a)) > 0.9


def test_planted_parallelogram_is_found_first():
    rng = np.random.default_rng(0)
    vectors = {f"w{i}": rng.standard_normal(16) for i in range(30)}
    shift = rng.standard_normal(16)
    vectors["king"] = rng.standard_normal(16)
    vectors["queen"] = vectors["king"] + shift
    vectors["man"] = rng.standard_normal(16)
    vectors["woman"] = vectors["man"] + shift
    best = find_crystals(vectors, n_clusters=8)[0]
    assert {best.a, best.b, best.c, best.d} == {"king", "queen", "man", "woman"}
    assert best.parallelogram_error < 1e-6


def planted_words(seed=0, d=40, n_pairs=24, distractor=12.0):
    """Task offsets plus a strong word-length direction and noise: LDA should remove length."""
    rng = np.random.default_rng(seed)
    length_dir = rng.standard_normal(d)
    length_dir /= np.linalg.norm(length_dir)
    vectors, tasks = {}, {}
    for t in range(3):
        offset = rng.standard_normal(d) * 1.5
        pairs = []
        for p in range(n_pairs):
            a, b = f"t{t}a{p}" + "x" * rng.integers(0, 9), f"t{t}b{p}" + "x" * rng.integers(0, 9)
            base = rng.standard_normal(d) * 0.3 + rng.standard_normal(d) * 0.1
            vectors[a] = base + distractor * len(a) / 10 * length_dir
            vectors[b] = base + offset + distractor * len(b) / 10 * length_dir
            pairs.append((a, b))
        tasks[f"task{t}"] = pairs
    return vectors, tasks, length_dir


def test_lda_removes_a_planted_length_distractor():
    vectors, tasks, length_dir = planted_words()
    result = remove_distractors(vectors, tasks)
    assert abs(result.removed_direction @ length_dir) > 0.9
    assert result.length_corr > 0.9
    before = np.mean(list(result.accuracy_before.values()))
    after = np.mean(list(result.accuracy_after.values()))
    assert before < 0.7 and after > 0.9


def test_parallelogram_quality_and_accuracy_on_clean_pairs():
    vectors, tasks, _ = planted_words(distractor=0.0)
    pairs = tasks["task0"]
    a = np.stack([vectors[p[0]] for p in pairs])
    b = np.stack([vectors[p[1]] for p in pairs])
    assert parallelogram_quality(a, b) > 0.9
    assert analogy_accuracy(vectors, pairs, sorted(vectors)) > 0.9
