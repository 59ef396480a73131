"""Lobes (intermediate scale), per SAE: spectral clusters of the co-occurrence affinity graph
against spectral clusters of decoder geometry (AMI against shuffles), and how well a logistic
regression predicts the lobe from the decoder vector. Views: `lobes`, `lobe_modularity`,
`feature_map`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import pyarrow as pa

from atlas import store
from atlas.analyses.runner import Inputs, Output, Subject
from atlas.blockgram import read_matrix
from atlas.errors import AtlasError
from atlas.analyses.lobes import geometry as lb

NAME = "lobes"
DEFINITION = "li2024"
"""Firing = activation above the threshold per block, spectral clusters of the affinity, AMI
against geometric clusters, and the paper's lobe predictability test (unweighted logistic
regression, first 80% of features fit and last 20% scored by balanced accuracy, against 100
draws of random unit vectors; `lobe_tests.logreg_definition` names the classifier used)."""
TABLES = ("clusters", "lobe_tests", "feature_maps")
NEEDS_MODEL = False

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """Parameters of the lobe analysis, recorded with every run."""

    ks: tuple[int, ...] = (2, 4, 8)
    """Numbers of lobes / geometric clusters."""

    metrics: tuple[str, ...] = ("phi",)
    """Co-occurrence affinities to cluster: phi, jaccard, dice, overlap, smc."""

    n_permutations: int = 100
    """Shuffles of the lobe labels behind the AMI null distribution."""

    random_draws: int = 100
    """Draws of random unit vectors behind the logistic regression's baseline (li2024: 100)."""

    classifier: str = "li2024"
    """Lobe predictability test: 'li2024' (the paper's notebook: first 80% / last 20% split,
    balanced accuracy, population std of the draws) or 'atlas' (stratified random 30% held out,
    accuracy, sample std)."""

    seed: int = 0
    """Seed of spectral clustering, shuffles and the logistic-regression split."""

    def __post_init__(self) -> None:
        bad = set(self.metrics) - set(lb.METRICS)
        if bad:
            raise AtlasError(f"unknown --metrics {sorted(bad)}; choose from "
                             f"{', '.join(lb.METRICS)}")
        if not self.ks or min(self.ks) < 2:
            raise AtlasError("--ks must list numbers of lobes of at least 2")
        if self.classifier not in lb.CLASSIFIERS:
            raise AtlasError(f"unknown --classifier {self.classifier!r}; choose from "
                             f"{', '.join(lb.CLASSIFIERS)}")


def subjects(inputs: Inputs, settings: Settings) -> list[Subject]:
    """One run per SAE."""
    return [Subject(s, (s,)) for s in inputs.sae_ids]


def compute(inputs: Inputs, subject: Subject, settings: Settings, shared=None) -> Output:
    """Co-occurrence lobes and geometric clusters for each k, and their modularity tests."""
    con = inputs.con
    (sae_id,) = subject.sae_ids
    row = con.execute(
        "SELECT h.n_blocks, c.block_rule, c.block_size FROM harvests h "
        "JOIN corpora c ON c.corpus_id = h.corpus WHERE h.sae_id = ?", [sae_id]).fetchone()
    if row is None:
        raise AtlasError(f"no harvest of {sae_id} in this atlas; `atlas info` lists the SAEs")
    n_blocks, rule, size = row
    window = window_rule(rule, size, n_blocks)
    counts = con.execute("SELECT block_count FROM features WHERE sae_id = ? ORDER BY feature",
                         [sae_id]).fetchnumpy()["block_count"].astype(np.float64)
    # Phi is undefined for features that fire in no block or in every block.
    keep = np.nonzero((counts > 0) & (counts < n_blocks))[0]
    stored = load_cooccurrence(con, sae_id, keep)
    decoders = store.load_decoders(con, sae_id)
    vectors = decoders[keep]
    ks = [k for k in settings.ks if k < len(keep)]
    if not ks:
        log.warning("%s: only %d features fire in some but not all of the %d blocks, too few "
                    "for %s lobes; harvest more blocks (--tokens) or raise --threshold",
                    sae_id, len(keep), n_blocks, ",".join(map(str, settings.ks)))
    sparse = not isinstance(stored, np.ndarray)
    graph = f"knn-{stored[2]}" if sparse else "dense"
    geo = spectral_labels(lb.knn_angular(vectors, stored[2]) if sparse
                          else lb.angular_similarity(vectors), ks, settings.seed)
    cluster_rows, tests = [("geometry", "angular", k, geo[k]) for k in ks], []
    for name in settings.metrics:
        metric = cast(lb.Metric, name)  # checked against lb.METRICS with the settings
        matrix = (lb.knn_affinity(stored[0], stored[1], counts[keep], n_blocks, metric=metric,
                                  k=stored[2]) if sparse else
                  lb.affinity_matrix(stored, counts[keep], n_blocks, metric=metric))
        labels = spectral_labels(matrix, ks, settings.seed)
        for k in ks:
            cluster_rows.append(("cooccurrence", metric, k, labels[k]))
            ami = lb.ami_test(labels[k], geo[k], n_permutations=settings.n_permutations,
                              seed=settings.seed)
            pred = lb.lobe_predictability(vectors, labels[k], n_draws=settings.random_draws,
                                          definition=settings.classifier,
                                          seed=settings.seed)
            tests.append({"sae_id": sae_id, "metric": metric, "k": k, "n_features": len(keep),
                          "ami": ami.score, "ami_null_mean": ami.null_mean,
                          "ami_null_std": ami.null_std, "ami_z": ami.z,
                          "n_permutations": ami.n_permutations,
                          "logreg_accuracy": pred.accuracy,
                          "logreg_random_accuracy": pred.random_mean,
                          "logreg_random_std": pred.random_std, "logreg_z": pred.z,
                          "logreg_draws": pred.n_draws, "chance": pred.chance,
                          "logreg_definition": pred.definition,
                          "graph": graph, "window_rule": window})
    n = len(keep)
    clusters = pa.table({
        "sae_id": [sae_id] * n * len(cluster_rows),
        "method": [m for m, _, _, _ in cluster_rows for _ in range(n)],
        "metric": [x for _, x, _, _ in cluster_rows for _ in range(n)],
        "k": np.repeat([k for _, _, k, _ in cluster_rows], n).astype(np.int32),
        "feature": np.tile(keep, len(cluster_rows)).astype(np.int32),
        "cluster": np.concatenate([np.zeros(0)] + [lab for *_, lab in cluster_rows])
        .astype(np.int32)})
    method, xy = lb.feature_map(decoders, seed=settings.seed)
    layout = pa.table({"sae_id": [sae_id] * len(xy), "method": [method] * len(xy),
                       "feature": np.arange(len(xy), dtype=np.int32), "x": xy[:, 0],
                       "y": xy[:, 1]})
    return Output({"clusters": clusters, "lobe_tests": pa.Table.from_pylist(tests),
                   "feature_maps": layout}, {"sae_id": sae_id, "tests": tests})


def window_rule(rule: str, row_width: int, n_blocks: int) -> str:
    """What one co-occurrence window of the harvest was, as `lobe_tests.window_rule` names it."""
    if rule == "li2024":
        return f"li2024: full windows inside one context per document ({n_blocks} windows)"
    if rule == "document":
        return (f"document: each block its own context (start token + up to {row_width - 1} "
                f"tokens of one document, short last blocks counted; {n_blocks} blocks)")
    return f"packed: full blocks of {row_width} tokens across documents ({n_blocks} blocks)"


def load_cooccurrence(con, sae_id: str, keep: np.ndarray):
    """The co-occurrence counts among the features `keep`, renumbered 0..len(keep)-1: a dense
    symmetric matrix when the harvest stored every pair ('pairs', 'matrix', 'rows'), else
    (partners, counts, m) per kept feature ('top-<m>': each affinity's m best partners)."""
    storage = con.execute("SELECT cooccurrence_storage FROM harvests WHERE sae_id = ?",
                          [sae_id]).fetchone()[0]
    position = np.full(int(keep.max()) + 1 if len(keep) else 0, -1)
    position[keep] = np.arange(len(keep))

    def kept(ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        inside = ids < len(position)
        out = np.full(len(ids), -1)
        out[inside] = position[ids[inside]]
        return out

    if storage == "pairs":
        rows = con.execute("SELECT i, j, n_ij FROM cooccurrence WHERE sae_id = ?",
                           [sae_id]).fetchnumpy()
        i, j = kept(rows["i"]), kept(rows["j"])
        both = (i >= 0) & (j >= 0)
        return lb.cooccurrence_counts(i[both], j[both], rows["n_ij"][both], len(keep))
    if storage == "matrix":
        path = store.matrix_path(con, sae_id)
        if path is None or not path.is_file():
            raise AtlasError(f"the co-occurrence matrix of {sae_id} ({path}) is missing; "
                             "harvest that SAE again (`atlas build` with the settings in its "
                             "harvests.config) to write it")
        return np.asarray(read_matrix(path)[np.ix_(keep, keep)], dtype=np.float64)
    with con.cursor() as cur:
        table = cur.sql("SELECT feature, partners, counts FROM cooccurrence_rows "
                        "WHERE sae_id = ? ORDER BY feature", params=[sae_id]).to_arrow_table()
    features = table.column("feature").to_numpy()
    if storage == "rows":  # every count, one list per feature (schema version 1)
        flat = table.column("counts").combine_chunks().flatten().to_numpy()
        dense = flat.reshape(len(features), -1)
        return dense[np.ix_(keep, keep)].astype(np.float64)
    partners, counts = [], []
    by_feature = dict(zip(features.tolist(), range(len(features))))
    p_col = table.column("partners").to_pylist()
    c_col = table.column("counts").to_pylist()
    for f in keep.tolist():
        p = kept(np.asarray(p_col[by_feature[f]]))
        c = np.asarray(c_col[by_feature[f]])
        partners.append(p[p >= 0])
        counts.append(c[p >= 0])
    return partners, counts, int(storage.split("-")[1])


def spectral_labels(matrix: np.ndarray, ks: Sequence[int], seed: int) -> dict[int, np.ndarray]:
    """Spectral clustering for several k from one eigendecomposition of the affinity."""
    from sklearn.cluster import KMeans
    from sklearn.manifold import spectral_embedding

    if not ks:
        return {}
    emb = spectral_embedding(matrix, n_components=max(ks), random_state=seed, drop_first=False)
    return {k: KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(emb[:, :k])
            for k in ks}


def describe(s: dict) -> str:
    return "; ".join(f"{t['metric']} k={t['k']}: AMI {t['ami']:.3f} (z {t['ami_z']:.1f}), "
                     f"logreg {t['logreg_accuracy']:.2f} vs random "
                     f"{t['logreg_random_accuracy']:.2f} (z {t['logreg_z']:.1f})"
                     for t in s["tests"]) or "no k fits"
