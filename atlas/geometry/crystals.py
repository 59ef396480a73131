"""Small scale: crystals — parallelograms and trapezoids among word vectors — and the removal
of distractor directions (such as word length) by linear discriminant analysis."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import numpy as np
from jaxtyping import Float

from atlas.geometry.vectors import unit


def word_pair_tasks() -> dict[str, list[tuple[str, str]]]:
    """The shipped word-pair tasks (male:female, country:capital, singular:plural, ...)."""
    text = resources.files("atlas.data").joinpath("word_pairs.json").read_text()
    return {task: [tuple(p) for p in pairs] for task, pairs in json.loads(text).items()}


def parallelogram_error(a, b, c, d) -> float:
    """|(b - a) - (d - c)| relative to the mean side length: 0 for a perfect parallelogram."""
    u, v = b - a, d - c
    return float(np.linalg.norm(u - v) / max(0.5 * (np.linalg.norm(u) + np.linalg.norm(v)),
                                              1e-12))


def trapezoid_error(a, b, c, d) -> float:
    """1 - cos(b - a, d - c): 0 when the two sides are parallel, whatever their lengths."""
    return float(1 - unit(b - a) @ unit(d - c))


def parallelogram_quality(a: Float[np.ndarray, "m d"], b: Float[np.ndarray, "m d"]) -> float:
    """Mean cosine of each pair's difference with the mean difference of the other pairs."""
    diffs = b - a
    total = diffs.sum(0)
    others = (total[None] - diffs) / max(len(diffs) - 1, 1)
    return float(np.mean(np.sum(unit(diffs) * unit(others), axis=1)))


def analogy_accuracy(vectors: dict[str, np.ndarray], pairs: list[tuple[str, str]],
                     candidates: list[str]) -> float:
    """Share of ordered pair-of-pairs (p, q) where b_p - a_p + a_q is nearest to b_q among the
    candidate words (a_p, b_p and a_q excluded), by cosine."""
    names = [w for w in candidates if w in vectors]
    mat = unit(np.stack([vectors[w] for w in names]))
    index = {w: i for i, w in enumerate(names)}
    quads = [(ap, bp, aq, bq) for ap, bp in pairs for aq, bq in pairs
             if (ap, bp) != (aq, bq) and aq != bq]
    if not quads:
        return float("nan")
    queries = unit(np.stack([vectors[bp] - vectors[ap] + vectors[aq]
                              for ap, bp, aq, _ in quads]))
    scores = queries @ mat.T
    rows = np.arange(len(quads))
    for col in range(3):
        scores[rows, [index[q[col]] for q in quads]] = -np.inf
    best = np.argmax(scores, axis=1)
    return float(np.mean([names[b] == q[3] for b, q in zip(best, quads)]))


@dataclass(frozen=True)
class Crystal:
    """Two word pairs whose difference vectors nearly coincide: a - b ~ c - d."""

    a: str
    b: str
    c: str
    d: str
    parallelogram_error: float
    trapezoid_error: float
    cluster: int


def find_crystals(vectors: dict[str, np.ndarray], *, n_clusters: int = 20, per_cluster: int = 3,
                  members: int = 60, max_words: int = 160, seed: int = 0) -> list[Crystal]:
    """Cluster the difference vectors of all word pairs; in each cluster report the quadruples
    (two pairs with four distinct words) of smallest parallelogram error.

    At most `max_words` words (a seeded sample) enter, bounding the pairs at ~max_words^2 / 2.
    """
    from sklearn.cluster import KMeans

    words = sorted(vectors)
    if len(words) > max_words:
        rng = np.random.default_rng(seed)
        words = sorted(rng.choice(words, max_words, replace=False).tolist())
    mat = np.stack([vectors[w] for w in words])
    i, j = np.triu_indices(len(words), k=1)
    diffs = mat[j] - mat[i]
    k = min(n_clusters, len(diffs))
    labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(unit(diffs))
    found: list[Crystal] = []
    for cluster in range(k):
        idx = np.nonzero(labels == cluster)[0]
        centre = unit(diffs[idx]).mean(0)
        idx = idx[np.argsort(-(unit(diffs[idx]) @ centre))][:members]
        sub = diffs[idx]
        lengths = np.linalg.norm(sub, axis=1)
        gaps = np.linalg.norm(sub[:, None] - sub[None], axis=2)
        errors = gaps / np.maximum(0.5 * (lengths[:, None] + lengths[None]), 1e-12)
        xs, ys = np.triu_indices(len(idx), k=1)
        cands = [(float(errors[x, y]), idx[x], idx[y]) for x, y in zip(xs, ys)
                 if len({i[idx[x]], j[idx[x]], i[idx[y]], j[idx[y]]}) == 4]
        for err, p, q in sorted(cands)[:per_cluster]:
            a, b, c, d = (words[t] for t in (i[p], j[p], i[q], j[q]))
            found.append(Crystal(a, b, c, d, err, trapezoid_error(*(vectors[w] for w in
                                                                   (a, b, c, d))), cluster))
    return sorted(found, key=lambda c: c.parallelogram_error)


@dataclass(frozen=True)
class DistractorRemoval:
    """Task structure before and after projecting onto LDA's signal directions."""

    silhouette_before: float
    silhouette_after: float
    accuracy_before: dict[str, float]
    """Held-out analogy accuracy per task in the raw space."""
    accuracy_after: dict[str, float]
    removed_direction: np.ndarray
    """The top within-class (noise) direction LDA suppresses."""
    length_corr: float
    """Correlation of the words' projection on the removed direction with their length in
    characters."""
    token_corr: float | None
    """The same with their length in tokens, when token counts are given."""
    projection: np.ndarray
    """(d, n_signal) matrix onto LDA's signal directions."""


def remove_distractors(vectors: dict[str, np.ndarray], tasks: dict[str, list[tuple[str, str]]],
                       *, token_counts: dict[str, int] | None = None, seed: int = 0,
                       ) -> DistractorRemoval:
    """LDA with classes = the two sides of each task (signal = between classes, noise = within).

    Half of each task's pairs fit the LDA; analogy accuracy is measured on the other half, in
    the raw space and in the LDA space, so the gain is not the LDA fitting its own words.
    """
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(seed)
    train, test = {}, {}
    for task, pairs in tasks.items():
        pairs = [p for p in pairs if p[0] in vectors and p[1] in vectors and p[0] != p[1]]
        order = rng.permutation(len(pairs))
        half = len(pairs) // 2
        train[task] = [pairs[o] for o in order[:half]]
        test[task] = [pairs[o] for o in order[half:]]
    x, y = _class_points(vectors, train)
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto").fit(x, y)
    n_dims = min(len(np.unique(y)) - 1, x.shape[1])
    project = lda.scalings_[:, :n_dims]
    projected = {w: v @ project for w, v in vectors.items()}
    xt, yt = _class_points(vectors, test)
    sil_before = float(silhouette_score(xt, yt, metric="cosine"))
    sil_after = float(silhouette_score(xt @ project, yt, metric="cosine"))
    words = sorted({w for pairs in test.values() for p in pairs for w in p})
    acc_before = {t: analogy_accuracy(vectors, p, words) for t, p in test.items()}
    acc_after = {t: analogy_accuracy(projected, p, words) for t, p in test.items()}
    noise = _within_class_scatter(x, y)
    direction = np.linalg.eigh(noise)[1][:, -1]
    all_words = sorted(vectors)
    proj = np.array([vectors[w] @ direction for w in all_words])
    length_corr = float(abs(np.corrcoef(proj, [len(w) for w in all_words])[0, 1]))
    token_corr = None
    if token_counts:
        token_corr = float(abs(np.corrcoef(proj, [token_counts[w] for w in all_words])[0, 1]))
    return DistractorRemoval(sil_before, sil_after, acc_before, acc_after, direction,
                             length_corr, token_corr, project)


def task_layout(vectors: dict[str, np.ndarray], pairs: list[tuple[str, str]],
                projection: np.ndarray | None = None) -> np.ndarray:
    """2-D PCA coordinates of a task's words (a-side then b-side per pair), optionally after
    projecting onto LDA's signal directions: the picture of its parallelograms."""
    from sklearn.decomposition import PCA

    words = [w for pair in pairs for w in pair]
    x = np.stack([vectors[w] for w in words])
    if projection is not None:
        x = x @ projection
    return PCA(n_components=2, random_state=0).fit_transform(x - x.mean(0))


def _class_points(vectors, tasks) -> tuple[np.ndarray, np.ndarray]:
    points, labels = [], []
    for task, pairs in tasks.items():
        for side in (0, 1):
            for pair in pairs:
                points.append(vectors[pair[side]])
                labels.append(f"{task}:{side}")
    return np.stack(points), np.asarray(labels)


def _within_class_scatter(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    centred = np.concatenate([x[y == c] - x[y == c].mean(0) for c in np.unique(y)])
    return centred.T @ centred / len(centred)
