"""FAISS indexes over unit decoder vectors: inner product = cosine similarity.

One index per SAE, persisted beside the database with its id map inside (IndexIDMap2) and a
JSON sidecar recording what it was built from (the decoders' checksum in `saes`). An index whose
checksum no longer matches is rebuilt, never answered from silently.

Exact search has two paths: a single BLAS matrix-vector product for small query batches
(FAISS's flat scan costs several times a BLAS pass for one query on a CPU) and FAISS's flat
index for large batches. Approximate indexes (HNSW, IVF) are chosen above `APPROX_ABOVE`
vectors, with their recall@10 against exact search measured at build time and recorded.

Where FAISS sees a GPU (the `gpu` extra installs a GPU build), flat and IVF indexes are built
and searched there: IVF's k-means and its adds run on the GPU, and the index is copied back to
the CPU to be saved, so files on disk are always CPU indexes that any machine reads. HNSW has
no GPU form in FAISS and stays on the CPU.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb
import faiss as _faiss
import numpy as np
from jaxtyping import Float, Int

from atlas import faults
from atlas.artifacts import index_path
from atlas.errors import AtlasError
from atlas.geometry.vectors import unit

log = logging.getLogger(__name__)
faiss: Any = _faiss
"""FAISS, untyped here: its stubs name only the base `Index` (no `hnsw`, `nprobe`, `id_map`)."""

Kind = Literal["auto", "flat", "hnsw", "ivf"]
APPROX_ABOVE = 200_000
"""Below this many vectors exact search is fast enough (benchmarks/query.py); above, HNSW."""
TARGET_RECALL = 0.95
"""Approximate indexes widen their search at build time until recall@10 reaches this."""
BLAS_MAX_QUERIES = 64
"""Query batches up to this size use the BLAS path; larger ones FAISS's flat scan."""


@dataclass(frozen=True)
class IndexMeta:
    """What an index file was built from and how good it is."""

    sae_id: str
    kind: str
    n: int
    d: int
    checksum: str
    recall_at_10: float | None = None
    """Share of exact top-10 neighbours an approximate index returns (None for exact)."""
    params: dict = field(default_factory=dict)
    built_seconds: float = 0.0


class FeatureIndex:
    """Nearest-neighbour search over unit vectors with their feature ids.

    Args:
        vectors: unit-norm rows.
        ids: the feature id of each row.
        meta: what the index was built from.
        index: the FAISS index (IndexIDMap2 over the chosen kind).
    """

    def __init__(self, vectors: Float[np.ndarray, "n d"], ids: Int[np.ndarray, " n"],
                 meta: IndexMeta, index: faiss.Index):
        self.vectors, self.ids, self.meta, self.index = vectors, ids, meta, index
        self._gpu: faiss.Index | None = None

    def gpu_index(self) -> faiss.Index | None:
        """A GPU copy of a flat or IVF index (with its feature ids), made on first use; None
        for HNSW, or without a FAISS GPU build and a GPU."""
        if self._gpu is None and self.meta.kind in GPU_KINDS and gpu_count() > 0:
            self._gpu = to_gpu(self.index)
        return self._gpu

    @classmethod
    def build(cls, vectors: Float[np.ndarray, "n d"], ids: Int[np.ndarray, " n"] | None = None,
              *, sae_id: str = "", checksum: str = "", kind: Kind = "auto",
              seed: int = 0) -> FeatureIndex:
        """Build an index; approximate kinds measure their recall@10 against exact search."""
        t0 = time.perf_counter()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.arange(len(vectors), dtype=np.int64) if ids is None else ids.astype(np.int64)
        if kind == "auto":
            kind = "hnsw" if len(vectors) >= APPROX_ABOVE else "flat"
        inner, params = _make_index(kind, vectors, seed, gpu=gpu_count() > 0)
        index = faiss.IndexIDMap2(inner)
        index.add_with_ids(vectors, ids)
        meta = IndexMeta(sae_id, kind, len(vectors), vectors.shape[1], checksum, None, params)
        out = cls(vectors, ids, meta, index)
        recall = None if kind == "flat" else out._tune(inner, params, seed)
        out.meta = IndexMeta(sae_id, kind, len(vectors), vectors.shape[1], checksum, recall,
                             params, time.perf_counter() - t0)
        return out

    def _tune(self, inner: faiss.Index, params: dict, seed: int) -> float:
        """Widen the search (HNSW efSearch, IVF nprobe) until recall@10 reaches TARGET_RECALL
        or the widest setting; records the setting in `params`, returns the recall."""
        knob = "efSearch" if isinstance(inner, faiss.IndexHNSW) else "nprobe"
        limit = 1024 if knob == "efSearch" else max(1, params.get("nlist", 1) // 4)
        while True:
            recall = self.recall_at_10(seed=seed)
            if recall >= TARGET_RECALL or params[knob] >= limit:
                return recall
            params[knob] = min(limit, params[knob] * 2)
            self._gpu = None  # the GPU copy is made again with the wider setting
            if knob == "efSearch":
                inner.hnsw.efSearch = params[knob]
            else:
                inner.nprobe = params[knob]

    def search(self, queries: Float[np.ndarray, "m d"], k: int, *, exact: bool | None = None,
               ) -> tuple[Float[np.ndarray, "m k"], Int[np.ndarray, "m k"]]:
        """Top-k cosine scores and feature ids per query (queries need not be unit norm)."""
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        q = unit(q)
        k = min(k, len(self.ids))
        use_exact = self.meta.kind == "flat" if exact is None else exact
        if use_exact and (len(q) <= BLAS_MAX_QUERIES or self.meta.kind != "flat"):
            return blas_topk(self.vectors, q, k, self.ids)
        gpu = self.gpu_index()
        if gpu is not None:
            return gpu.search(q, k)
        return self.index.search(q, k)

    def recall_at_10(self, *, n_queries: int = 200, seed: int = 0) -> float:
        """Recall@10 of this index against exact search, on stored vectors as queries."""
        rng = np.random.default_rng(seed)
        q = self.vectors[rng.choice(len(self.vectors), min(n_queries, len(self.vectors)),
                                    replace=False)]
        _, exact = blas_topk(self.vectors, q, 10, self.ids)
        gpu = self.gpu_index()
        _, approx = (gpu if gpu is not None else self.index).search(q, 10)
        hits = sum(len(set(a) & set(e)) for a, e in zip(approx.tolist(), exact.tolist()))
        return hits / exact.size

    def save(self, path: Path) -> None:
        """Write the FAISS index and its JSON sidecar (atomically, via temporary names)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".faiss.tmp")
        faiss.write_index(self.index, str(tmp))
        faults.point("index")
        tmp.replace(path)
        side = path.with_suffix(".json")
        side.with_suffix(".json.tmp").write_text(json.dumps(asdict(self.meta), indent=1))
        side.with_suffix(".json.tmp").replace(side)

    @classmethod
    def load(cls, path: Path) -> FeatureIndex:
        """Read an index written by `save`."""
        try:
            meta = IndexMeta(**json.loads(path.with_suffix(".json").read_text()))
            index = faiss.read_index(str(path))
        except (OSError, RuntimeError, ValueError, TypeError) as exc:
            raise AtlasError(f"index {path} is missing or unreadable ({exc}); it will be "
                             "rebuilt from the decoders") from None
        ids = faiss.vector_to_array(faiss.downcast_index(index).id_map).astype(np.int64)
        vectors = faiss.downcast_index(index).index
        vectors = _stored_vectors(faiss.downcast_index(vectors), len(ids), meta.d)
        return cls(vectors, ids, meta, index)


GPU_KINDS = ("flat", "ivf")
"""Index kinds FAISS builds and searches on a GPU."""


def gpu_count() -> int:
    """GPUs FAISS can use: 0 with faiss-cpu."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def to_gpu(index: faiss.Index) -> faiss.Index:
    """A copy of a CPU index on the first GPU (IDMap2 over flat or IVF)."""
    return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)


def blas_topk(vectors: Float[np.ndarray, "n d"], queries: Float[np.ndarray, "m d"], k: int,
              ids: Int[np.ndarray, " n"]) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product: one matrix product and a partial sort."""
    scores = queries @ vectors.T
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    rows = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(top, order, axis=1), ids[rows]


def _make_index(kind: str, vectors: np.ndarray, seed: int, *, gpu: bool = False
                ) -> tuple[faiss.Index, dict]:
    """An empty CPU index of this kind, trained where it needs training (IVF's k-means on the
    GPU when `gpu`)."""
    n, d = vectors.shape
    if kind == "flat":
        return faiss.IndexFlatIP(d), {}
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
        index.hnsw.efSearch = 64
        return index, {"M": 32, "efConstruction": 64, "efSearch": 64}
    if kind == "ivf":
        nlist = max(1, int(4 * np.sqrt(n)))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = vectors[rng.choice(n, min(n, 64 * nlist), replace=False)]
        index.cp.seed = seed
        nprobe = max(1, nlist // 64)
        if gpu:
            trained = to_gpu(index)
            trained.train(sample)
            index = faiss.index_gpu_to_cpu(trained)
        else:
            index.train(sample)
        index.nprobe = nprobe
        return index, {"nlist": nlist, "nprobe": nprobe, "trained_on": "gpu" if gpu else "cpu"}
    raise AtlasError(f"index kind '{kind}' is unknown; use auto, flat, hnsw or ivf")


def _stored_vectors(inner: faiss.Index, n: int, d: int) -> np.ndarray:
    if isinstance(inner, faiss.IndexFlat):
        return faiss.rev_swig_ptr(inner.get_xb(), n * d).reshape(n, d).copy()
    if isinstance(inner, faiss.IndexHNSW):
        return _stored_vectors(faiss.downcast_index(inner.storage), n, d)
    if isinstance(inner, faiss.IndexIVF):
        inner.make_direct_map()
        return inner.reconstruct_n(0, n)
    raise AtlasError(f"cannot read vectors back from a {type(inner).__name__}; rebuild the index")


# An atlas's persisted indexes: one file per SAE beside the database.

def _checksum(con: duckdb.DuckDBPyConnection, sae_id: str) -> str:
    row = con.execute("SELECT decoder_checksum FROM saes WHERE sae_id = ?", [sae_id]).fetchone()
    if row is None:
        raise AtlasError(f"no SAE '{sae_id}' in this atlas; `atlas info` lists the SAEs")
    return row[0] or ""


def build_index(con: duckdb.DuckDBPyConnection, db: Path, sae_id: str, *, kind: Kind = "auto",
                save: bool = True) -> FeatureIndex:
    """Build an SAE's index from the decoders in DuckDB and persist it beside the database."""
    from atlas import store

    vectors = store.load_decoders(con, sae_id)
    index = FeatureIndex.build(vectors, sae_id=sae_id, checksum=_checksum(con, sae_id), kind=kind)
    if save:
        try:
            index.save(index_path(db, sae_id))
        except OSError as exc:
            log.warning("could not save the index of %s (%s); using it in memory", sae_id, exc)
    return index


def current_index(con: duckdb.DuckDBPyConnection, db: Path, sae_id: str
                  ) -> FeatureIndex | None:
    """The SAE's index from disk when it is whole and built from the decoders the atlas holds
    now; else None (saying why)."""
    path = index_path(db, sae_id)
    if not path.exists():
        log.info("no index for %s yet", sae_id)
        return None
    try:
        index = FeatureIndex.load(path)
    except AtlasError as exc:
        log.warning("%s", exc)
        return None
    if index.meta.checksum == _checksum(con, sae_id) and index.meta.sae_id == sae_id:
        return index
    log.warning("index %s was built from other decoders than the atlas holds now", path)
    return None


def open_index(con: duckdb.DuckDBPyConnection, db: Path, sae_id: str, *,
               kind: Kind = "auto") -> FeatureIndex:
    """The SAE's index from disk, rebuilt (and saved again) when missing, corrupt or stale."""
    index = current_index(con, db, sae_id)
    if index is not None:
        return index
    if index_path(db, sae_id).exists():
        log.warning("rebuilding the index of %s", sae_id)
    return build_index(con, db, sae_id, kind=kind)
