"""Run the analyses on an atlas: read inputs from DuckDB, compute with `atlas.geometry`, write
result tables. Each run replaces the previous results of its subject in one transaction."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from atlas import store
from atlas.geometry import crystals as cr
from atlas.geometry import galaxy as gx
from atlas.geometry import lobes as lb
from atlas.saes import sae_input

log = logging.getLogger(__name__)

WHAT = ("galaxy", "lobes", "crystals")


@dataclass(frozen=True)
class AnalysisSettings:
    """Parameters recorded with every run."""

    ranks: tuple[int, int] = gx.RANK_RANGE
    entropy_dims: int = 10
    tail_cut: float = 0.1
    ks: tuple[int, ...] = (2, 4, 8)
    metrics: tuple[str, ...] = ("phi",)
    n_permutations: int = 100
    crystal_clusters: int = 20
    seed: int = 0


def _run_id(subject: str, what: str, settings: AnalysisSettings) -> str:
    key = f"{subject}|{what}|{json.dumps(settings.__dict__, default=str)}|{time.time_ns()}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def _replace(con: duckdb.DuckDBPyConnection, *, subject: str, what: str, run_id: str,
             settings: AnalysisSettings, seconds: float, tables: dict[str, pa.Table],
             key: dict[str, object]) -> None:
    """Delete the subject's previous results (rows matching `key`) and insert the new ones."""
    where = " AND ".join(f"{store.quote_identifier(c)} = ?" for c in key)
    old = [r[0] for r in con.execute("SELECT run_id FROM analysis_runs WHERE subject = ? AND "
                                     "what = ?", [subject, what]).fetchall()]
    with store.transaction(con):
        for name in tables:
            con.execute(f"DELETE FROM {store.quote_identifier(name)} WHERE {where}",
                        list(key.values()))
        for run in old:
            con.execute("DELETE FROM analysis_runs WHERE run_id = ?", [run])
        con.execute("INSERT INTO analysis_runs VALUES (?, ?, ?, ?, ?, ?)",
                    [run_id, subject, what, json.dumps(settings.__dict__), seconds,
                     store.utc_now()])
        for name, table in tables.items():
            if table.num_rows:
                store.insert_table(con, name, table)


def galaxy(con: duckdb.DuckDBPyConnection, sae_id: str, settings: AnalysisSettings) -> dict:
    """Eigenvalue spectrum, clustering entropy and cosine tails of one SAE's decoders."""
    t0 = time.perf_counter()
    vectors = store.load_decoders(con, sae_id).astype(np.float64)
    run = _run_id(sae_id, "galaxy", settings)
    eig = gx.eigen_spectrum(vectors)
    ref = gx.eigen_spectrum(gx.gaussian_cloud(*vectors.shape, seed=settings.seed))
    ent = gx.clustering_entropy(vectors, dims=settings.entropy_dims, seed=settings.seed)
    tails = gx.cosine_tails(vectors, cut=settings.tail_cut, seed=settings.seed)
    spectra = pa.table({
        "run_id": [run] * (len(eig) + len(ref)), "sae_id": [sae_id] * (len(eig) + len(ref)),
        "cloud": ["decoder"] * len(eig) + ["gaussian"] * len(ref),
        "rank": np.concatenate([np.arange(1, len(eig) + 1), np.arange(1, len(ref) + 1)]),
        "eigenvalue": np.concatenate([eig, ref])})
    stats = pa.table({
        "run_id": [run], "sae_id": [sae_id], "rank_lo": [settings.ranks[0]],
        "rank_hi": [min(settings.ranks[1], len(eig))], "entropy_gap": [ent.value],
        "entropy_stderr": [ent.stderr], "h_knn": [ent.h_knn], "h_gauss": [ent.h_gauss],
        "entropy_dims": [ent.dims], "tail_cut": [tails.cut], "tail_mass": [tails.tail_mass],
        "random_tail_mass": [tails.random_tail_mass]})
    nb = len(tails.counts)
    hist = pa.table({
        "run_id": [run] * 2 * nb, "sae_id": [sae_id] * 2 * nb,
        "cloud": ["decoder"] * nb + ["random"] * nb,
        "bin_lo": np.tile(tails.bins[:-1], 2), "bin_hi": np.tile(tails.bins[1:], 2),
        "pairs": np.concatenate([tails.counts, tails.random_counts])})
    _replace(con, subject=sae_id, what="galaxy", run_id=run, settings=settings,
             seconds=time.perf_counter() - t0,
             tables={"spectra": spectra, "galaxy_stats": stats, "cosine_hist": hist},
             key={"sae_id": sae_id})
    fit = gx.power_law_fit(eig, ranks=settings.ranks)
    return {"sae_id": sae_id, "slope": fit.slope, "entropy_gap": ent.value,
            "tail_mass": tails.tail_mass, "random_tail_mass": tails.random_tail_mass}


def lobes(con: duckdb.DuckDBPyConnection, sae_id: str, settings: AnalysisSettings) -> list[dict]:
    """Co-occurrence lobes and geometric clusters for each k, and their modularity tests."""
    t0 = time.perf_counter()
    run = _run_id(sae_id, "lobes", settings)
    n_blocks = con.execute("SELECT n_blocks FROM harvests WHERE sae_id = ?", [sae_id]).fetchone()[0]
    counts = con.execute("SELECT block_count FROM features WHERE sae_id = ? ORDER BY feature",
                         [sae_id]).fetchnumpy()["block_count"].astype(np.float64)
    # Phi is undefined for features that fire in no block or in every block.
    keep = np.nonzero((counts > 0) & (counts < n_blocks))[0]
    rows = con.execute("SELECT i, j, n_ij FROM cooccurrence WHERE sae_id = ?",
                       [sae_id]).fetchnumpy()
    position = np.full(len(counts), -1)
    position[keep] = np.arange(len(keep))
    both = (position[rows["i"]] >= 0) & (position[rows["j"]] >= 0)
    pair_counts = lb.cooccurrence_counts(position[rows["i"][both]], position[rows["j"][both]],
                                         rows["n_ij"][both], len(keep))
    vectors = store.load_decoders(con, sae_id)[keep]
    ks = [k for k in settings.ks if k < len(keep)]
    if not ks:
        log.warning("%s: only %d features fire in some but not all of the %d blocks, too few "
                    "for %s lobes; harvest more blocks (--tokens) or raise --threshold",
                    sae_id, len(keep), n_blocks, ",".join(map(str, settings.ks)))
    geo = _spectral_labels(lb.angular_similarity(vectors), ks, settings.seed)
    cluster_rows, tests = [], []
    for k in ks:
        cluster_rows.append(("geometry", "angular", k, geo[k]))
    for metric in settings.metrics:
        matrix = lb.affinity_matrix(pair_counts, counts[keep], n_blocks, metric=metric)
        labels = _spectral_labels(matrix, ks, settings.seed)
        for k in ks:
            cluster_rows.append(("cooccurrence", metric, k, labels[k]))
            ami = lb.ami_test(labels[k], geo[k], n_permutations=settings.n_permutations,
                              seed=settings.seed)
            pred = lb.lobe_predictability(vectors, labels[k], seed=settings.seed)
            tests.append({"run_id": run, "sae_id": sae_id, "metric": metric, "k": k,
                          "n_features": len(keep), "ami": ami.score,
                          "ami_null_mean": ami.null_mean, "ami_null_std": ami.null_std,
                          "ami_z": ami.z, "n_permutations": ami.n_permutations,
                          "logreg_accuracy": pred.accuracy,
                          "logreg_random_accuracy": pred.random_accuracy,
                          "chance": pred.chance})
    n = len(keep)
    clusters = pa.table({
        "run_id": [run] * n * len(cluster_rows), "sae_id": [sae_id] * n * len(cluster_rows),
        "method": [m for m, _, _, _ in cluster_rows for _ in range(n)],
        "metric": [x for _, x, _, _ in cluster_rows for _ in range(n)],
        "k": np.repeat([k for _, _, k, _ in cluster_rows], n).astype(np.int32),
        "feature": np.tile(keep, len(cluster_rows)).astype(np.int32),
        "cluster": np.concatenate([np.zeros(0)] + [lab for *_, lab in cluster_rows])
        .astype(np.int32)})
    method, xy = lb.feature_map(store.load_decoders(con, sae_id), seed=settings.seed)
    layout = pa.table({"run_id": [run] * len(xy), "sae_id": [sae_id] * len(xy),
                       "method": [method] * len(xy), "feature": np.arange(len(xy), dtype=np.int32),
                       "x": xy[:, 0], "y": xy[:, 1]})
    _replace(con, subject=sae_id, what="lobes", run_id=run, settings=settings,
             seconds=time.perf_counter() - t0,
             tables={"clusters": clusters, "lobe_tests": pa.Table.from_pylist(tests),
                     "feature_maps": layout},
             key={"sae_id": sae_id})
    return tests


def _spectral_labels(matrix: np.ndarray, ks: Sequence[int], seed: int) -> dict[int, np.ndarray]:
    """Spectral clustering for several k from one eigendecomposition of the affinity."""
    from sklearn.cluster import KMeans
    from sklearn.manifold import spectral_embedding

    if not ks:
        return {}
    emb = spectral_embedding(matrix, n_components=max(ks), random_state=seed, drop_first=False)
    return {k: KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(emb[:, :k])
            for k in ks}


def crystals(con: duckdb.DuckDBPyConnection, lm, layer: int, settings: AnalysisSettings, *,
             sae=None, sae_id: str | None = None) -> list[dict]:
    """Word-pair crystals at one layer: residual space, and SAE code space when `sae` is given."""
    import torch

    from atlas.query import word_vectors

    t0 = time.perf_counter()
    tasks = cr.word_pair_tasks()
    words = sorted({w for pairs in tasks.values() for p in pairs for w in p})
    wv = word_vectors(lm, layer, words)
    spaces = {"residual": dict(zip(words, wv.vectors.astype(np.float64)))}
    if sae is not None:
        with torch.no_grad():
            x = sae_input(sae, torch.from_numpy(wv.vectors).to(sae.W_dec.device))
            codes = sae.encode(x).cpu().numpy()
        # Only features active on some task word carry information here; dropping the rest
        # keeps LDA's covariance small (a few hundred dimensions instead of d_sae).
        codes = codes[:, np.abs(codes).sum(0) > 0]
        spaces[sae_id] = dict(zip(words, codes.astype(np.float64)))
    token_counts = {w: len(p) for w, p in zip(words, wv.pieces)}
    subject = f"{lm.model_id}/L{layer}"
    run = _run_id(subject, "crystals", settings)
    task_rows, crystal_rows, distractor_rows, point_rows = [], [], [], []
    for space, vectors in spaces.items():
        removal = cr.remove_distractors(vectors, tasks, token_counts=token_counts,
                                        seed=settings.seed)
        for task, pairs in tasks.items():
            before = cr.task_layout(vectors, pairs)
            after = cr.task_layout(vectors, pairs, removal.projection)
            for n, (word, side) in enumerate((w, s) for p in pairs for w, s in zip(p, "ab")):
                point_rows.append({"run_id": run, "model_id": lm.model_id, "layer": layer,
                                   "space": space, "task": task, "pair": n // 2, "side": side,
                                   "word": word, "x_before": before[n, 0],
                                   "y_before": before[n, 1], "x_after": after[n, 0],
                                   "y_after": after[n, 1]})
            a = np.stack([vectors[p[0]] for p in pairs])
            b = np.stack([vectors[p[1]] for p in pairs])
            task_rows.append({"run_id": run, "model_id": lm.model_id, "layer": layer,
                              "space": space, "task": task, "n_pairs": len(pairs),
                              "parallelogram_quality": cr.parallelogram_quality(a, b),
                              "accuracy_before": removal.accuracy_before[task],
                              "accuracy_after": removal.accuracy_after[task]})
        distractor_rows.append({"run_id": run, "model_id": lm.model_id, "layer": layer,
                                "space": space, "silhouette_before": removal.silhouette_before,
                                "silhouette_after": removal.silhouette_after,
                                "length_corr": removal.length_corr,
                                "token_corr": removal.token_corr})
        for c in cr.find_crystals(vectors, n_clusters=settings.crystal_clusters,
                                  seed=settings.seed)[:50]:
            crystal_rows.append({"run_id": run, "model_id": lm.model_id, "layer": layer,
                                 "space": space, "a": c.a, "b": c.b, "c": c.c, "d": c.d,
                                 "parallelogram_error": c.parallelogram_error,
                                 "trapezoid_error": c.trapezoid_error, "cluster": c.cluster})
    _replace(con, subject=subject, what="crystals", run_id=run, settings=settings,
             seconds=time.perf_counter() - t0,
             tables={"crystal_tasks": pa.Table.from_pylist(task_rows),
                     "crystals": pa.Table.from_pylist(crystal_rows),
                     "distractors": pa.Table.from_pylist(distractor_rows),
                     "crystal_points": pa.Table.from_pylist(point_rows)},
             key={"model_id": lm.model_id, "layer": layer})
    return task_rows


def run_all(con: duckdb.DuckDBPyConnection, what: Sequence[str], *, settings: AnalysisSettings,
            lm=None, saes: dict | None = None) -> dict[str, list]:
    """Run the chosen analyses on every SAE of the atlas (crystals: per harvested layer).

    Args:
        lm: the model, needed for crystals (word vectors).
        saes: sae_id -> loaded SAE, to add SAE code space to the crystals.
    """
    unknown = set(what) - set(WHAT)
    if unknown:
        from atlas.errors import AtlasError

        raise AtlasError(f"unknown analyses {sorted(unknown)}; choose from {', '.join(WHAT)}")
    rows = con.execute("SELECT sae_id, layer FROM saes ORDER BY layer, sae_id").fetchall()
    out: dict[str, list] = {w: [] for w in what}
    for sae_id, layer in rows:
        if "galaxy" in what:
            out["galaxy"].append(galaxy(con, sae_id, settings))
            log.info("galaxy %s: slope %.3f, entropy gap %.2f, tail %.3f vs %.3f random",
                     sae_id, *(out["galaxy"][-1][k] for k in ("slope", "entropy_gap",
                                                              "tail_mass",
                                                              "random_tail_mass")))
        if "lobes" in what:
            tests = lobes(con, sae_id, settings)
            out["lobes"] += tests
            for t in tests:
                log.info("lobes %s %s k=%d: AMI %.3f (z %.1f), logreg %.2f vs random %.2f",
                         sae_id, t["metric"], t["k"], t["ami"], t["ami_z"],
                         t["logreg_accuracy"], t["logreg_random_accuracy"])
    if "crystals" in what and lm is not None:
        done = set()
        for sae_id, layer in rows:
            if layer in done:
                continue
            done.add(layer)
            sae = (saes or {}).get(sae_id)
            out["crystals"] += crystals(con, lm, layer, settings, sae=sae, sae_id=sae_id)
            log.info("crystals L%d done", layer)
    return out
