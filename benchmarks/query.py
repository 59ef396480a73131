"""Neighbour-query speed: exact single queries against one BLAS pass, approximate indexes
against exact search, and batch throughput, in one run.

    python benchmarks/query.py                       # 16k, 65k, 262k random unit vectors, d=2304
    python benchmarks/query.py --sizes 16384 --d 576

For each size it prints: p50 latency of one exact query through `FeatureIndex.search` (BLAS
path) and through FAISS's flat scan, each as a ratio to the time of one bare BLAS pass over the
matrix (goal <= 1.2x); HNSW and IVF build time, p50 latency, speed-up over exact and recall@10
(goal >= 10x at recall >= 0.95 from 262k); and queries/s for a batch of 1024.
Vectors are uniform on the sphere ('random') and, for comparison, clustered around 2,000
directions ('clustered'), which is closer to how SAE decoder directions are arranged.
"""

from __future__ import annotations

import argparse
import statistics
import time

import faiss
import numpy as np

from atlas.index import FeatureIndex, blas_topk


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def dataset(kind: str, n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "random":
        return unit(rng.standard_normal((n, d), dtype=np.float32))
    centres = unit(rng.standard_normal((2000, d), dtype=np.float32))
    noise = rng.standard_normal((n, d), dtype=np.float32) * (0.6 / np.sqrt(d))
    return unit(centres[rng.integers(0, 2000, n)] + noise)


def p50(fn, queries: np.ndarray) -> float:
    fn(queries[:1])
    times = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q[None])
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(kind: str, n: int, d: int, n_queries: int, approx: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    vectors = dataset(kind, n, d, rng)
    queries = vectors[rng.choice(n, n_queries, replace=False)] + 0.01 * unit(
        rng.standard_normal((n_queries, d), dtype=np.float32))
    exact = FeatureIndex.build(vectors, kind="flat")
    t_blas = p50(lambda q: vectors @ q[0], queries)
    t_exact = p50(lambda q: exact.search(q, 10), queries)
    t_faiss = p50(lambda q: exact.index.search(q, 10), queries)
    print(f"\n{kind} n={n} d={d}: one BLAS pass {1e3 * t_blas:.2f} ms")
    print(f"  exact single query (BLAS path)  {1e3 * t_exact:7.2f} ms  = "
          f"{t_exact / t_blas:.2f}x BLAS pass  (goal <= 1.2x)")
    print(f"  exact single query (FAISS flat) {1e3 * t_faiss:7.2f} ms  = "
          f"{t_faiss / t_blas:.2f}x BLAS pass")
    batch = queries[:min(1024, n_queries)]
    t0 = time.perf_counter()
    blas_topk(vectors, batch, 10, exact.ids)
    t_bb = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact.index.search(batch, 10)
    t_fb = time.perf_counter() - t0
    print(f"  batch of {len(batch)}: BLAS {len(batch) / t_bb:8.0f} q/s, "
          f"FAISS flat {len(batch) / t_fb:8.0f} q/s")
    _, truth = blas_topk(vectors, queries, 10, exact.ids)
    for approx_kind in approx:
        t0 = time.perf_counter()
        index = FeatureIndex.build(vectors, kind=approx_kind, seed=seed)
        t_build = time.perf_counter() - t0
        t_q = p50(lambda q, index=index: index.index.search(q, 10), queries)
        _, got = index.index.search(queries, 10)
        recall = np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got.tolist(),
                                                                     truth.tolist())])
        print(f"  {approx_kind:4} build {t_build:6.1f}s  p50 {1e3 * t_q:7.2f} ms  "
              f"speed-up {t_exact / t_q:6.1f}x over exact  recall@10 {recall:.3f} "
              f"{index.meta.params}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="16384,65536,262144")
    parser.add_argument("--d", type=int, default=2304)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--data", default="random,clustered")
    parser.add_argument("--approx", default="hnsw,ivf")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads")
    for n in (int(x) for x in args.sizes.split(",")):
        for kind in args.data.split(","):
            bench(kind, n, args.d, args.queries, [a for a in args.approx.split(",") if a],
                  args.seed)


if __name__ == "__main__":
    main()
