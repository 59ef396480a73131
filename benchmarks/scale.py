"""The atlas at scale: a synthetic atlas of ~1M features (16 SAEs x 65,536, d = 2304, the shape
of Gemma-2-2B SAEs) with a sparse, clustered co-occurrence, written through the real schema.

    python benchmarks/scale.py --out /tmp/scale                       # 16 x 65,536 features
    python benchmarks/scale.py --out /tmp/scale --saes 4 --partners 32   # smaller

Prints, each with the peak resident memory of its phase: the DuckDB file size and bytes per
stored row, the write time, the time of the `affinity` (one feature's partners, one SAE, every
SAE), `lobes` and `layer_spectra` queries, and per-SAE FAISS index build time, recall@10 and
single-query latency against an exact BLAS pass over the same vectors (the baseline).
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa

from atlas import store
from atlas.analyses.galaxy.geometry import eigen_spectrum, gaussian_cloud
from atlas.index import FeatureIndex, blas_topk

log = logging.getLogger("benchmark")


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@contextmanager
def measured(name: str, out: dict):
    """Wall time and peak resident memory (sampled every 20 ms) of a block."""
    peak, stop = [rss()], threading.Event()

    def sample():
        while not stop.wait(0.02):
            peak[0] = max(peak[0], rss())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    yield
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    out[name] = (seconds, max(peak[0], rss()))
    log.info("%-44s %9.2f s   peak RSS %6.2f GB", name, seconds, out[name][1] / 2**30)


def synthetic_sae(rng, width: int, d: int, partners: int, n_blocks: int, n_lobes: int):
    """Clustered unit decoders, power-law firing, co-occurrence mostly within a cluster."""
    centers = rng.standard_normal((n_lobes * 32, d), dtype=np.float32)
    cluster = rng.integers(0, len(centers), width)
    dec = centers[cluster] * 0.3 + rng.standard_normal((width, d), dtype=np.float32)
    dec /= np.linalg.norm(dec, axis=1, keepdims=True)
    blocks = np.minimum(n_blocks, (rng.pareto(1.2, width) * 20 + 1).astype(np.int64))
    # partners: most from the same cluster, the rest anywhere
    i = np.repeat(np.arange(width), partners)
    same = rng.random(len(i)) < 0.7
    order = np.argsort(cluster, kind="stable")
    start = np.searchsorted(cluster[order], cluster[i])
    size = np.bincount(cluster, minlength=len(centers))[cluster[i]]
    j = np.where(same, order[start + (rng.random(len(i)) * size).astype(np.int64)],
                 rng.integers(0, width, len(i)))
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    keep = lo < hi
    key = np.unique(lo[keep] * width + hi[keep])
    lo, hi = key // width, key % width
    n_ij = np.maximum(1, (np.minimum(blocks[lo], blocks[hi]) * rng.random(len(lo)) * 0.5)
                      .astype(np.int64))
    return dec, cluster % n_lobes, blocks, (lo, hi, n_ij)


def write_atlas(db: Path, args, timings: dict) -> list[str]:
    rng = np.random.default_rng(0)
    con = store.connect(db)
    ids = []
    con.execute("INSERT INTO models VALUES ('synthetic-2b', 'benchmark', 26, ?, NULL)", [args.d])
    with measured("write atlas", timings):
        for s in range(args.saes):
            sid = f"synthetic-2b/L{s}/w{args.width}"
            ids.append(sid)
            dec, lobe, blocks, (lo, hi, n_ij) = synthetic_sae(rng, args.width, args.d,
                                                              args.partners, args.blocks, 8)
            w = args.width
            feat = np.arange(w, dtype=np.int32)
            con.execute("INSERT INTO saes (sae_id, model_id, layer, hook, d_in, d_sae, "
                        "architecture, k, source) VALUES (?, 'synthetic-2b', ?, ?, ?, ?, "
                        "'topk', 64, 'synthetic')", [sid, s, f"blocks.{s}.hook_resid_post",
                                                     args.d, w])
            con.execute("INSERT INTO harvests (harvest_id, sae_id, corpus, n_tokens, n_blocks, "
                        "block_size, threshold, config, created_at) "
                        "VALUES (?, ?, 'c', ?, ?, 1024, 1.0, NULL, now())",
                        [f"h{s}", sid, args.blocks * 1024, args.blocks])
            labels = pa.array([f"f{x}" for x in range(w)])
            store.insert_table(con, "features", pa.table({
                "sae_id": [sid] * w, "feature": feat, "firing_count": blocks * 3,
                "block_count": blocks.astype(np.int32), "mean_act": rng.random(w) + 1,
                "max_act": rng.random(w) + 2, "top_tokens": pa.array([["a", "b"]] * w),
                "top_token_counts": pa.array([[3, 2]] * w), "label": labels}))
            flat = pa.FixedSizeListArray.from_arrays(pa.array(dec.reshape(-1)), args.d)
            store.insert_table(con, "decoders", pa.table({
                "sae_id": [sid] * w, "feature": feat, "norm": np.ones(w, np.float32),
                "vector": flat.cast(pa.list_(pa.float32()))}))
            store.insert_table(con, "cooccurrence", pa.table({
                "sae_id": [sid] * len(lo), "i": lo.astype(np.int32), "j": hi.astype(np.int32),
                "n_ij": n_ij.astype(np.int32)}))
            store.insert_table(con, "clusters", pa.table({
                "run_id": ["r"] * w, "sae_id": [sid] * w, "method": ["cooccurrence"] * w,
                "metric": ["phi"] * w, "k": np.full(w, 8, np.int32), "feature": feat,
                "cluster": lobe.astype(np.int32)}))
            sample = dec[rng.choice(w, min(w, args.spectrum_sample), replace=False)]
            for cloud, pts in (("decoder", sample),
                               ("gaussian", gaussian_cloud(len(sample), args.d, seed=s))):
                ev = eigen_spectrum(pts.astype(np.float64))
                store.insert_table(con, "spectra", pa.table({
                    "run_id": ["r"] * len(ev), "sae_id": [sid] * len(ev), "cloud": [cloud] * len(ev),
                    "rank": np.arange(1, len(ev) + 1, dtype=np.int32), "eigenvalue": ev}))
            con.execute("INSERT INTO galaxy_stats (run_id, sae_id, rank_lo, rank_hi, tail_cut, "
                        "tail_mass, random_tail_mass) VALUES ('r', ?, 10, 150, 0.1, 0, 0)", [sid])
            log.info("  %s: %d features, %d co-occurring pairs", sid, w, len(lo))
            del dec
        con.execute("CHECKPOINT")
    con.close()
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--saes", type=int, default=16)
    parser.add_argument("--width", type=int, default=65536)
    parser.add_argument("--d", type=int, default=2304)
    parser.add_argument("--partners", type=int, default=64,
                        help="co-occurring partners drawn per feature")
    parser.add_argument("--blocks", type=int, default=50000, help="documents (blocks)")
    parser.add_argument("--spectrum-sample", type=int, default=8192)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    db = args.out / "scale.duckdb"
    for p in (db, db.with_name(db.name + ".wal")):
        p.unlink(missing_ok=True)
    t: dict = {}
    log.info("%d SAEs x %d features = %d features, d = %d", args.saes, args.width,
             args.saes * args.width, args.d)
    ids = write_atlas(db, args, t)

    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    rows = {name: con.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
            for name in ("features", "decoders", "cooccurrence", "clusters")}
    size = os.path.getsize(db)
    log.info("DuckDB file %.2f GB: %s", size / 2**30,
             ", ".join(f"{k} {v:,}" for k, v in rows.items()))
    vector_bytes = rows["decoders"] * args.d * 4
    log.info("decoder vectors alone: %.2f GB raw float32 (%.0f%% of the file)",
             vector_bytes / 2**30, 100 * vector_bytes / size)
    one = ids[len(ids) // 2]
    queries = {
        "affinity: one feature's top partners":
            f"SELECT j, phi FROM affinity WHERE sae_id = '{one}' AND i = 1234 "
            "ORDER BY phi DESC LIMIT 20",
        "affinity: one SAE, all pairs (mean phi)":
            f"SELECT count(*), avg(phi), avg(jaccard) FROM affinity WHERE sae_id = '{one}'",
        "affinity: every SAE (mean phi per SAE)":
            "SELECT sae_id, count(*), avg(phi) FROM affinity GROUP BY 1",
        "lobes (every SAE, k = 8)": "SELECT count(*), sum(n_features) FROM lobes",
        "layer_spectra": "SELECT layer, slope, gaussian_slope FROM layer_spectra",
    }
    for name, sql in queries.items():
        with measured(name, t):
            con.execute(sql).fetchall()

    with measured("load one SAE's decoders", t):
        from atlas.store import load_decoders

        vectors = load_decoders(con, one)
    con.close()
    rng = np.random.default_rng(1)
    qs = vectors[rng.choice(len(vectors), 50, replace=False)]
    times = []
    for q in qs:
        t0 = time.perf_counter()
        blas_topk(vectors, q[None], 10, np.arange(len(vectors)))
        times.append(time.perf_counter() - t0)
    base = float(np.median(times))
    log.info("%-44s %9.4f s   (baseline)", "exact BLAS pass, one query", base)
    for kind in ("hnsw", "ivf"):
        with measured(f"build {kind} index ({len(vectors):,} x {args.d})", t):
            index = FeatureIndex.build(vectors, kind=kind)
        lat = []
        for q in qs:
            t0 = time.perf_counter()
            index.search(q[None], 10, exact=False)
            lat.append(time.perf_counter() - t0)
        p50 = float(np.median(lat))
        log.info("  %s: recall@10 %.3f, query p50 %.4f s = %.1fx faster than the BLAS pass "
                 "(params %s)", kind, index.meta.recall_at_10, p50, base / p50,
                 index.meta.params)
        del index
    log.info("peak RSS over the run %.2f GB", max(v[1] for v in t.values()) / 2**30)


if __name__ == "__main__":
    main()
