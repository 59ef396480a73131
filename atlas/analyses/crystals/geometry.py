"""Small scale: crystals — parallelograms and trapezoids among word vectors.

Two experiments, each named by whose definition it follows:

- li2024 (the geometry paper's Section 3, `atom/crystal_pca.py` and `atom/crystal_lda.py` of
  ejmichaud/feature-geometry): one difference vector per word pair (object minus subject), one
  class per task; LDA with 2..11 components and the silhouette score of the projected
  differences (Euclidean), beside the silhouette of the raw differences.
- atlas: analogies b - a + c scored on held-out pairs in a closed vocabulary with mean-centred
  cosine (top-1 and top-5), before and after projecting out distractor directions — the leading
  directions along which a task's pair differences vary among themselves (word length is the
  paper's example) — and a search for crystal quadruples, reported with how often their four
  words belong to one relation against chance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

import numpy as np
from jaxtyping import Float

from atlas.geometry.vectors import unit

Pairs = dict[str, list[tuple[str, str]]]


def word_pair_tasks() -> Pairs:
    """The shipped word-pair tasks: a dozen function-vector-style relations (male:female,
    country:capital, english:french, product:company, ...), 28-36 pairs each."""
    text = resources.files("atlas.data").joinpath("word_pairs.json").read_text()
    return {task: [tuple(p) for p in pairs] for task, pairs in json.loads(text).items()}


def split_pairs(tasks: Pairs, *, seed: int = 0, fraction: float = 0.5) -> tuple[Pairs, Pairs]:
    """Each task's pairs split at random into a fitting part and a held-out part."""
    rng = np.random.default_rng(seed)
    train, test = {}, {}
    for task, pairs in tasks.items():
        pairs = [p for p in pairs if p[0] != p[1]]
        order = rng.permutation(len(pairs))
        cut = int(round(len(pairs) * fraction))
        train[task] = [pairs[o] for o in sorted(order[:cut])]
        test[task] = [pairs[o] for o in sorted(order[cut:])]
    return train, test


def task_words(tasks: Pairs) -> list[str]:
    return sorted({w for pairs in tasks.values() for p in pairs for w in p})


def sample_words(tasks: Pairs, max_words: int, *, seed: int = 0) -> list[str]:
    """The words of whole pairs drawn at random from every task until `max_words` (all of them
    when there are fewer): a sample that keeps pairs intact."""
    pairs = sorted({p for ps in tasks.values() for p in ps})
    order = np.random.default_rng(seed).permutation(len(pairs))
    words: set[str] = set()
    for o in order:
        if len(words | set(pairs[o])) > max_words:
            break
        words |= set(pairs[o])
    return sorted(words)


def parallelogram_error(a, b, c, d) -> float:
    """|(b - a) - (d - c)| relative to the mean side length: 0 for a perfect parallelogram."""
    u, v = b - a, d - c
    side = 0.5 * float(np.linalg.norm(u) + np.linalg.norm(v))
    return float(np.linalg.norm(u - v)) / max(side, 1e-12)


def crystal_error(a, b, c, d) -> float:
    """|(b - a) - (d - c)| relative to the shorter of the parallelogram's two side lengths (mean
    of b - a and d - c; mean of c - a and d - b): 0 for a perfect parallelogram, large for a
    thin one whose two pairs are near-copies of each other (a ~ c, b ~ d)."""
    u, v, w, z = b - a, d - c, c - a, d - b
    sides = min(0.5 * float(np.linalg.norm(u) + np.linalg.norm(v)),
                0.5 * float(np.linalg.norm(w) + np.linalg.norm(z)))
    return float(np.linalg.norm(u - v)) / max(sides, 1e-12)


def trapezoid_error(a, b, c, d) -> float:
    """1 - cos(b - a, d - c): 0 when the two sides are parallel, whatever their lengths."""
    return float(1 - unit(b - a) @ unit(d - c))


def parallelogram_quality(a: Float[np.ndarray, "m d"], b: Float[np.ndarray, "m d"]) -> float:
    """Mean cosine of each pair's difference with the mean difference of the other pairs."""
    diffs = b - a
    total = diffs.sum(0)
    others = (total[None] - diffs) / max(len(diffs) - 1, 1)
    return float(np.mean(np.sum(unit(diffs) * unit(others), axis=1)))


# -- li2024: LDA on pair differences, one class per task -------------------------------------

def pair_differences(vectors: dict[str, np.ndarray], tasks: Pairs,
                     ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str, str]]]:
    """Object minus subject for every pair (the paper's script stores subject minus object;
    the sign changes neither LDA nor silhouettes), task labels, and (task, subject, object)."""
    rows, labels, names = [], [], []
    for t, (task, pairs) in enumerate(tasks.items()):
        for s, o in pairs:
            if s in vectors and o in vectors and s != o:
                rows.append(vectors[o] - vectors[s])
                labels.append(t)
                names.append((task, s, o))
    return np.stack(rows), np.asarray(labels), names


@dataclass(frozen=True)
class LdaScore:
    n_components: int
    """0: the raw differences, no LDA."""
    silhouette: float
    """The paper's: LDA fitted on every pair, silhouette of the same pairs' projections."""
    silhouette_heldout: float
    """LDA fitted on the fitting pairs, silhouette of the held-out pairs' projections."""


def lda_silhouettes(diffs: np.ndarray, labels: np.ndarray, heldout: np.ndarray, *,
                    components: range = range(2, 12)) -> list[LdaScore]:
    """Silhouette (Euclidean) of task classes among pair differences, raw and after LDA with
    each number of components (scikit-learn's LDA, SVD solver, as the paper's script).

    Where there are fewer pairs than dimensions the in-sample LDA separates any labelling, so
    its silhouette approaches 1 whatever the geometry; the held-out column is the one that
    tests the geometry (`heldout` marks the pairs left out of the fit)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.metrics import silhouette_score

    fit = ~heldout
    scores = [LdaScore(0, float(silhouette_score(diffs, labels)),
                       float(silhouette_score(diffs[heldout], labels[heldout])))]
    top = min(len(np.unique(labels)) - 1, diffs.shape[1])
    for n in components:
        if n > top:
            break
        every = LinearDiscriminantAnalysis(n_components=n).fit_transform(diffs, labels)
        part = LinearDiscriminantAnalysis(n_components=n).fit(diffs[fit], labels[fit])
        scores.append(LdaScore(n, float(silhouette_score(every, labels)),
                               float(silhouette_score(part.transform(diffs[heldout]),
                                                      labels[heldout]))))
    return scores


def lda_layout(diffs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper's two pictures: 2-D PCA of the raw differences, and the first two LDA
    components (fitted on every pair)."""
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    pca = PCA(n_components=2, random_state=0).fit_transform(diffs - diffs.mean(0))
    lda = LinearDiscriminantAnalysis(n_components=2).fit_transform(diffs, labels)
    return pca, lda


# -- atlas: analogies in a closed vocabulary, distractor removal -----------------------------

@dataclass(frozen=True)
class AnalogyScore:
    top1: float
    top5: float
    n_queries: int


def analogy_scores(vectors: dict[str, np.ndarray], tasks: Pairs, candidates: list[str],
                   ) -> dict[str, AnalogyScore]:
    """Per task: for every ordered pair of its pairs (p, q), is b_q the nearest candidate to
    b_p - a_p + a_q (top-1), or among the five nearest (top-5)? Vectors are centred on the
    candidates' mean and compared by cosine; a_p, b_p and a_q are not candidates."""
    names = [w for w in candidates if w in vectors]
    index = {w: i for i, w in enumerate(names)}
    mat = np.stack([vectors[w] for w in names])
    mean = mat.mean(0)
    cand = unit(mat - mean)
    out = {}
    for task, pairs in tasks.items():
        quads = [(ap, bp, aq, bq) for ap, bp in pairs for aq, bq in pairs
                 if (ap, bp) != (aq, bq) and aq != bq and bq in index]
        if not quads:
            out[task] = AnalogyScore(float("nan"), float("nan"), 0)
            continue
        q = unit(np.stack([vectors[bp] - vectors[ap] + vectors[aq] - mean
                           for ap, bp, aq, _ in quads]))
        scores = q @ cand.T
        rows = np.arange(len(quads))
        for col in range(3):
            known = [(r, index[x[col]]) for r, x in zip(rows, quads) if x[col] in index]
            if known:
                r, c = zip(*known)
                scores[list(r), list(c)] = -np.inf
        target = scores[rows, [index[x[3]] for x in quads]]
        rank = (scores > target[:, None]).sum(1)
        out[task] = AnalogyScore(float(np.mean(rank < 1)), float(np.mean(rank < 5)), len(quads))
    return out


def mean_score(scores: dict[str, AnalogyScore], field: str = "top1") -> float:
    """Mean over tasks, each task weighted by its number of queries."""
    n = sum(s.n_queries for s in scores.values())
    return float(sum(getattr(s, field) * s.n_queries for s in scores.values()
                     if s.n_queries) / max(n, 1))


def distractor_directions(vectors: dict[str, np.ndarray], tasks: Pairs, n_dims: int
                          ) -> np.ndarray:
    """(d, n_dims) orthonormal: the leading eigenvectors of the within-task scatter of pair
    differences (each difference minus its task's mean difference) — LDA's noise term. The
    directions along which one relation's differences disagree: word length, frequency, ..."""
    diffs, labels, _ = pair_differences(vectors, tasks)
    centred = np.concatenate([diffs[labels == t] - diffs[labels == t].mean(0)
                              for t in np.unique(labels)])
    if n_dims == 0:
        return np.zeros((diffs.shape[1], 0))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[:n_dims].T


def project_out(vectors: dict[str, np.ndarray], directions: np.ndarray
                ) -> dict[str, np.ndarray]:
    return {w: v - directions @ (directions.T @ v) for w, v in vectors.items()}


def choose_distractor_dims(vectors: dict[str, np.ndarray], train: Pairs, *,
                           options: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32),
                           seed: int = 0) -> tuple[int, dict[int, float]]:
    """How many distractor directions to remove, chosen inside the fitting pairs only: fit the
    directions on half of them, score top-1 on the other half, keep the best (fewest on ties).
    Returns the choice and each option's inner top-1."""
    inner_fit, inner_val = split_pairs(train, seed=seed + 1)
    words = task_words(inner_val)
    scores = {}
    for n in options:
        dirs = distractor_directions(vectors, inner_fit, n)
        scores[n] = mean_score(analogy_scores(project_out(vectors, dirs), inner_val, words))
    best = max(scores.values())
    return min(n for n, s in scores.items() if s >= best - 1e-12), scores


@dataclass(frozen=True)
class DistractorRemoval:
    """Held-out analogies and task structure before and after removing distractors."""

    n_dims: int
    before: dict[str, AnalogyScore]
    after: dict[str, AnalogyScore]
    silhouette_before: float
    """Silhouette (cosine) of the held-out pair differences by task."""
    silhouette_after: float
    removed_direction: np.ndarray | None
    """The leading distractor direction (None when none is removed)."""
    length_corr: float | None
    """|corr| of the words' projection on it with their length in characters."""
    token_corr: float | None
    """The same with their length in tokens, when token counts are given."""
    directions: np.ndarray


def remove_distractors(vectors: dict[str, np.ndarray], train: Pairs, test: Pairs, *,
                       n_dims: int | None = None, token_counts: dict[str, int] | None = None,
                       seed: int = 0) -> DistractorRemoval:
    """Fit distractor directions on the `train` pairs (their number chosen inside `train` when
    not given) and score analogies on the `test` pairs, in a closed vocabulary of the test
    words, before and after projecting the directions out."""
    from sklearn.metrics import silhouette_score

    if n_dims is None:
        n_dims, _ = choose_distractor_dims(vectors, train, seed=seed)
    dirs = distractor_directions(vectors, train, n_dims)
    cleaned = project_out(vectors, dirs)
    words = task_words(test)
    diffs, labels, _ = pair_differences(vectors, test)
    diffs_after, _, _ = pair_differences(cleaned, test)
    many = len(np.unique(labels)) > 1
    sil_before = float(silhouette_score(diffs, labels, metric="cosine")) if many else np.nan
    sil_after = float(silhouette_score(diffs_after, labels, metric="cosine")) if many else np.nan
    direction = length_corr = token_corr = None
    if n_dims:
        direction = dirs[:, 0]
        all_words = sorted(vectors)
        proj = np.array([vectors[w] @ direction for w in all_words])
        length_corr = _abs_corr(proj, [len(w) for w in all_words])
        if token_counts:
            token_corr = _abs_corr(proj, [token_counts[w] for w in all_words])
    return DistractorRemoval(n_dims, analogy_scores(vectors, test, words),
                             analogy_scores(cleaned, test, words), sil_before, sil_after,
                             direction, length_corr, token_corr, dirs)


def _abs_corr(x, y) -> float | None:
    y = np.asarray(y, float)
    if np.std(y) == 0 or np.std(x) == 0:
        return None
    return float(abs(np.corrcoef(x, y)[0, 1]))


def task_layout(vectors: dict[str, np.ndarray], pairs: list[tuple[str, str]],
                directions: np.ndarray | None = None) -> np.ndarray:
    """2-D PCA coordinates of a task's words (a-side then b-side per pair), optionally after
    projecting distractor directions out: the picture of its parallelograms."""
    from sklearn.decomposition import PCA

    words = [w for pair in pairs for w in pair]
    x = np.stack([vectors[w] for w in words])
    if directions is not None and directions.shape[1]:
        x = x - (x @ directions) @ directions.T
    return PCA(n_components=2, random_state=0).fit_transform(x - x.mean(0))


# -- crystal search --------------------------------------------------------------------------

@dataclass(frozen=True)
class Crystal:
    """Two word pairs whose difference vectors nearly coincide: b - a ~ d - c."""

    a: str
    b: str
    c: str
    d: str
    crystal_error: float
    parallelogram_error: float
    trapezoid_error: float


def find_crystals(vectors: dict[str, np.ndarray], *, neighbours: int = 10, max_words: int = 240,
                  limit: int = 50, search_dims: int = 48, seed: int = 0) -> list[Crystal]:
    """Quadruples of four distinct words whose pair differences nearly coincide, smallest
    `crystal_error` first (so near-duplicate pairs, a thin parallelogram, do not count).

    Every pair difference (centred vectors, at most `max_words` words, a seeded sample) is
    matched with its `neighbours` nearest differences by |cosine| in the words' leading
    `search_dims` principal components (a reversed pair is a parallelogram too); a set of
    four words is reported once, and each word pair enters at most one reported crystal."""
    words = sorted(vectors)
    if len(words) > max_words:
        rng = np.random.default_rng(seed)
        words = sorted(rng.choice(words, max_words, replace=False).tolist())
    mat = np.stack([vectors[w] for w in words])
    mat = mat - mat.mean(0)
    i, j = np.triu_indices(len(words), k=1)
    # Every difference lies in the span of the centred words: their principal components are an
    # exact basis of rank <= n_words. Candidates are matched in the leading `search_dims`.
    _, sv, vt = np.linalg.svd(mat, full_matrices=False)
    basis = (mat @ vt[:int(np.sum(sv > sv[0] * 1e-9))].T).astype(np.float32)   # exact, rank-sized
    units = unit(basis[j, :search_dims] - basis[i, :search_dims])
    found: list[np.ndarray] = []
    for start, near, flip in nearest_by_abs_cosine(units, neighbours + 1):
        p = np.repeat(np.arange(start, start + len(near)), near.shape[1])
        q, flip = near.ravel(), flip.ravel()
        a, b = i[p], j[p]
        c, d = np.where(flip, j[q], i[q]), np.where(flip, i[q], j[q])
        keep = (q != p) & (a != c) & (a != d) & (b != c) & (b != d)
        a, b, c, d = a[keep], b[keep], c[keep], d[keep]
        found.append(np.stack([_crystal_errors(basis, a, b, c, d), a, b, c, d], 1))
    table = np.concatenate(found) if found else np.zeros((0, 5))
    table = table[np.argsort(table[:, 0], kind="stable")]
    used: set[tuple[int, int]] = set()
    seen: set[frozenset[int]] = set()
    out: list[Crystal] = []
    for row in table:
        qa, qb, qc, qd = (int(x) for x in row[1:])
        sides = {(min(qa, qb), max(qa, qb)), (min(qc, qd), max(qc, qd))}
        if sides & used or frozenset((qa, qb, qc, qd)) in seen:
            continue
        used |= sides
        seen.add(frozenset((qa, qb, qc, qd)))
        va, vb, vc, vd = mat[qa], mat[qb], mat[qc], mat[qd]
        out.append(Crystal(words[qa], words[qb], words[qc], words[qd], crystal_error(va, vb, vc, vd),
                           parallelogram_error(va, vb, vc, vd), trapezoid_error(va, vb, vc, vd)))
        if len(out) >= limit:
            break
    return out


BLOCK_BYTES = 8 << 20
"""Size of the similarity block `nearest_by_abs_cosine` fills per chunk (it stays in cache)."""


def nearest_by_abs_cosine(units: Float[np.ndarray, "n d"], k: int, *, chunk: int | None = None):
    """Each unit row's k rows of largest |cosine| (itself among them), exactly, `chunk` rows
    at a time: yields (first row, columns (rows x k, ascending), whether each cosine is
    negative). A difference and its reverse are the same direction, hence |cosine|.

    One float32 product per chunk into one reused block, then the top k of its absolute
    values selected by their bits read as int32 (non-negative floats order as their bit
    patterns do) in two stages (`group_topk`); the signs are recomputed for the k chosen.
    The chunk (default: as many rows as make an 8 MiB block, 73 at 240 words) keeps the block
    in cache between the product, the absolute values and the selection. At 240 words (28,680
    differences) on 2 cores a search took ~0.85 s against ~1.1 s with 1,024-row chunks, whose
    117 MB block is written and re-read from memory (~2.3-2.8 s on a search whose block is
    faulted in anew). Memory: one chunk x n float32 block."""
    import torch

    from atlas.selection import group_topk

    U = torch.from_numpy(np.ascontiguousarray(units, dtype=np.float32))
    k = min(k, len(U))
    if chunk is None:
        chunk = max(1, BLOCK_BYTES // (4 * max(len(U), 1)))
    block = torch.empty((min(chunk, len(U)), len(U)))
    for start in range(0, len(U), chunk):   # tensors from numpy: no gradients are recorded
        rows = U[start:start + chunk]
        cos = torch.mm(rows, U.T, out=block[:len(rows)])
        columns = group_topk(cos.abs_().view(torch.int32), k).sort(dim=1).values
        negative = torch.einsum("rd,rkd->rk", rows, U[columns]) < 0
        yield start, columns.numpy(), negative.numpy()


def _crystal_errors(mat, a, b, c, d) -> np.ndarray:
    """`crystal_error` of many quadruples (index arrays into the rows of `mat`)."""
    u, v, w, z = mat[b] - mat[a], mat[d] - mat[c], mat[c] - mat[a], mat[d] - mat[b]
    n = np.linalg.norm
    sides = np.minimum(0.5 * (n(u, axis=1) + n(v, axis=1)), 0.5 * (n(w, axis=1) + n(z, axis=1)))
    return n(u - v, axis=1) / np.maximum(sides, 1e-12)


def crystal_relation(crystal: Crystal, tasks: Pairs) -> str | None:
    """The task two opposite sides of the crystal are pairs of, if any: (a, b) and (c, d), or
    (a, c) and (b, d) — b - a ~ d - c is the same parallelogram as c - a ~ d - b."""
    x = crystal
    for task, pairs in tasks.items():
        known = {frozenset(p) for p in pairs}
        for one, other in (((x.a, x.b), (x.c, x.d)), ((x.a, x.c), (x.b, x.d))):
            if frozenset(one) in known and frozenset(other) in known:
                return task
    return None


def same_relation_chance(words: list[str], tasks: Pairs) -> float:
    """The share of random quadruples from `words` (two distinct unordered pairs) whose two
    pairs are pairs of one task: what a search that ignores geometry would score."""
    pool = set(words)
    n = len(pool) * (len(pool) - 1) // 2
    total = n * (n - 1) / 2
    hits = 0.0
    for pairs in tasks.values():
        m = len({frozenset(p) for p in pairs if p[0] in pool and p[1] in pool and p[0] != p[1]})
        hits += m * (m - 1) / 2
    return float(hits / total) if total else float("nan")
