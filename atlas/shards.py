"""The harvest in shards: each shard of consecutive blocks yields a partial result per SAE, and
partials merge into the statistics of the whole corpus.

On a cluster each shard task writes its partials as Parquet under `<db>.shards/` and a merge
task folds them in block order (`Merger`). A build in one process keeps one accumulator per SAE
over every block instead (nothing per shard to hold or merge), adding activation sums shard by
shard: both give the same atlas exactly (integer counts, top examples with one tie rule, and
float sums added shard by shard in the same order).

A partial holds what can be summed or reduced: firing counts, activation sums and maxima,
top-example candidates, (block, feature) firings, (feature, token) counts, co-occurrence counts
within the shard's blocks, and the sums behind held-out quality.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from jaxtyping import Float, Int

from atlas.errors import AtlasError
from atlas.blockgram import BlockGram
from atlas.harvest import (N_BINS, FeatureAccumulator, FeatureStats, Samples, Triple,
                           select_samples, select_top, stats_from)
from atlas.saes import QualityPartial


PARTIAL_FORMAT = 2
"""Version of what a partial holds (2: activation histograms and decile-example candidates);
part of a shard's key, so partials written before are harvested again, not reused."""


def shard_ranges(n_blocks: int, shard_blocks: int) -> list[tuple[int, int]]:
    """[start, stop) block ranges of `shard_blocks` blocks (the last may be shorter)."""
    return [(s, min(s + shard_blocks, n_blocks)) for s in range(0, n_blocks, shard_blocks)]


@dataclass
class Partial:
    """One SAE's harvest of the blocks [start, stop)."""

    sae_id: str
    start: int
    stop: int
    n_tokens: int
    firing_count: Int[np.ndarray, " f"]
    act_sum: Float[np.ndarray, " f"]
    max_act: Float[np.ndarray, " f"]
    top: Triple          # (feature, activation, global token position), <= n per feature
    firings: Triple      # (global block, feature, max activation in the block)
    tokens: Triple       # (feature, token id, count)
    cooc: Triple         # (i, j, blocks of this shard where both fire), i < j
    quality: QualityPartial | None = None
    block_count: Int[np.ndarray, " f"] | None = None
    """Blocks of the shard where each feature fires (None: count `firings`)."""
    firings_top: int | None = None
    """`firings` holds each feature's best blocks only (None: all of them)."""
    histogram: Triple | None = None
    """(feature, bin, count) of the activation histogram, nonzero bins only."""
    samples: Samples | None = None
    """Decile-example candidates (key, priority, global position, activation)."""
    per_bin: int = 3


def sparse_histogram(dense: np.ndarray) -> Triple:
    f, b = np.nonzero(dense)
    return f.astype(np.int64), b.astype(np.int64), dense[f, b].astype(np.int64)


def partial_of(acc: FeatureAccumulator, sae_id: str, start: int, stop: int,
               quality: QualityPartial | None = None) -> Partial:
    """The accumulator's state after the blocks [start, stop), as a partial."""
    acc._end_shard()
    return Partial(sae_id, start, stop, acc.n_tokens, acc.firing_count.cpu().numpy().copy(),
                   acc.act_sum.cpu().numpy().copy(), acc.max_act.cpu().numpy().copy(), acc.top(),
                   acc.firings(), acc.token_counts(), acc.gram.pairs(), quality,
                   acc.block_count.cpu().numpy().copy(), acc.firings_top,
                   sparse_histogram(acc.histogram_counts()), acc.samples(), acc.per_bin)


def _sum_by_key(keys: np.ndarray, counts: np.ndarray, *, n_keys: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct keys (all below `n_keys`) and the summed counts of each: by a dense
    count array when it is small (no sort), else by sorting."""
    if n_keys <= 1 << 24:
        total = np.bincount(keys, weights=counts, minlength=n_keys)
        uniq = np.flatnonzero(total)
        return uniq, total[uniq].astype(np.int64)
    uniq, inverse = np.unique(keys, return_inverse=True)
    return uniq, np.bincount(inverse, weights=counts, minlength=len(uniq)).astype(np.int64)


class Merger:
    """The statistics of a corpus from its shards' partials, folded one at a time in block
    order: memory is bounded by the per-feature state, not by the number of shards."""

    def __init__(self, *, d_sae: int, n_blocks: int, block_size: int, n_examples: int):
        self.d_sae, self.n_blocks = d_sae, n_blocks
        self.block_size, self.n_examples = block_size, n_examples
        self.edges: list[tuple[int, int]] = []
        self.count = np.zeros(d_sae, np.int64)
        self.block_count = np.zeros(d_sae, np.int64)
        self.act_sum = np.zeros(d_sae)
        self.max_act = np.zeros(d_sae, np.float32)
        self.n_tokens = 0
        self.top: Triple = _empty()
        self.firings: list[Triple] = []
        self.firings_top: int | None = None
        self.tokens: Triple = _empty()
        self.gram = BlockGram(d_sae)
        self.histogram = np.zeros((d_sae, N_BINS), np.int64)
        self.samples: Samples = (*_empty(), np.zeros(0, np.float32))
        self.per_bin = 3

    def add(self, p: Partial) -> None:
        if self.edges and p.start != self.edges[-1][1]:
            self._refuse(extra=[(p.start, p.stop)])
        self.edges.append((p.start, p.stop))
        self.count += p.firing_count
        self.act_sum += p.act_sum
        np.maximum(self.max_act, p.max_act, out=self.max_act)
        self.n_tokens += p.n_tokens
        self.block_count += (p.block_count if p.block_count is not None else
                             np.bincount(p.firings[1], minlength=self.d_sae))
        self.top = select_top(_cat(self.top, p.top), self.n_examples)
        self.firings_top = p.firings_top
        if p.firings_top is None:
            self.firings.append(p.firings)
        else:
            b, f, a = self.firings[0] if self.firings else _empty()
            pb, pf, pa = p.firings
            f, a, b = select_top((np.concatenate([f, pf]), np.concatenate([a, pa]),
                                  np.concatenate([b, pb])), p.firings_top)
            self.firings = [(b, f, a)]
        tf, tt, tc = _cat(self.tokens, p.tokens)
        stride = np.int64(1) << 32
        keys, counts = _sum_by_key(tf * stride + tt, tc, n_keys=self.d_sae << 32)
        self.tokens = (keys >> 32, keys & (stride - 1), counts)
        self.gram.add_pairs(*p.cooc)
        if p.histogram is not None:
            hf, hb, hc = p.histogram
            np.add.at(self.histogram, (hf, hb), hc)
        if p.samples is not None:
            self.per_bin = p.per_bin
            f, v, q, x = (np.concatenate([a, b]) for a, b in zip(self.samples, p.samples))
            self.samples = select_samples((f, v, q, x), p.per_bin)

    def _refuse(self, extra=()) -> None:
        edges = [*self.edges, *extra]
        raise AtlasError(f"the shards {edges} do not cover blocks 0..{self.n_blocks} exactly; "
                         "re-run the build to harvest the missing ones")

    def result(self) -> FeatureStats:
        if not self.edges or self.edges[0][0] != 0 or self.edges[-1][1] != self.n_blocks:
            self._refuse()
        diag = np.arange(self.d_sae)
        self.gram.add_pairs(diag, diag, self.block_count)
        firings = _empty()
        if self.firings:
            b, f, a = (np.concatenate(x) for x in zip(*self.firings))
            firings = (b, f, a)
        return stats_from(count=self.count, block_count=self.block_count, act_sum=self.act_sum,
                          max_act=self.max_act, top=self.top, firings=firings,
                          firings_top=self.firings_top, tokens=self.tokens,
                          n_tokens=self.n_tokens, n_blocks=self.n_blocks,
                          block_size=self.block_size, n_examples=self.n_examples,
                          cooccurrence=self.gram, histogram=self.histogram,
                          samples=self.samples, per_bin=self.per_bin)


def _empty() -> Triple:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)


def _cat(a: Triple, b: Triple) -> Triple:
    return np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]), np.concatenate([a[2], b[2]])


def merge(parts: list[Partial], *, d_sae: int, n_blocks: int, block_size: int,
          n_examples: int) -> FeatureStats:
    """The statistics of the whole corpus from the partials of shards that tile it."""
    merger = Merger(d_sae=d_sae, n_blocks=n_blocks, block_size=block_size,
                    n_examples=n_examples)
    for p in sorted(parts, key=lambda p: p.start):
        merger.add(p)
    return merger.result()


# --- Parquet -------------------------------------------------------------------------------

def shard_key(fingerprint: dict) -> str:
    """Content address of a shard's partial: a hash of everything its result depends on."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str)
                          .encode()).hexdigest()[:20]


def partial_dir(root: Path, sae_id: str, start: int, stop: int, key: str) -> Path:
    from atlas.artifacts import safe_name

    return Path(root) / safe_name(sae_id) / f"{start:07d}-{stop:07d}-{key}"


def _triple_table(t: Triple, names: tuple[str, str, str]) -> pa.Table:
    return pa.table(dict(zip(names, t)))


def write_partial(path: Path, part: Partial) -> Path:
    """Write a partial as Parquet files in `path`, atomically (a temporary directory renamed
    into place): a directory that exists is complete."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    cols = {"firing_count": part.firing_count, "act_sum": part.act_sum, "max_act": part.max_act}
    if part.block_count is not None:
        cols["block_count"] = part.block_count
    meta = {"sae_id": part.sae_id, "start": part.start, "stop": part.stop,
            "n_tokens": part.n_tokens, "quality": None, "firings_top": part.firings_top,
            "per_bin": part.per_bin,
            "written_by": f"{socket.gethostname()}:{os.getpid()}"}
    if part.quality is not None:
        q = part.quality
        cols["ever"] = q.ever
        meta["quality"] = {"n": q.n, "sse": q.sse, "active": q.active, "sumsq": q.sumsq,
                           "sum_x": q.sum_x.tolist()}
    pq.write_table(pa.table(cols), tmp / "features.parquet")
    pq.write_table(_triple_table(part.top, ("feature", "act", "position")), tmp / "top.parquet")
    pq.write_table(_triple_table(part.firings, ("block_id", "feature", "max_act")),
                   tmp / "firings.parquet")
    pq.write_table(_triple_table(part.tokens, ("feature", "token", "count")),
                   tmp / "tokens.parquet")
    pq.write_table(_triple_table(part.cooc, ("i", "j", "n_ij")), tmp / "cooccurrence.parquet")
    if part.histogram is not None:
        pq.write_table(_triple_table(part.histogram, ("feature", "bin", "count")),
                       tmp / "histogram.parquet")
    if part.samples is not None:
        pq.write_table(pa.table(dict(zip(("key", "priority", "position", "act"), part.samples))),
                       tmp / "samples.parquet")
    (tmp / "meta.json").write_text(json.dumps(meta))
    try:
        os.rename(tmp, path)
    except OSError:
        if not path.exists():
            raise
        shutil.rmtree(tmp)  # another attempt at the same shard finished first
    return path


def _triple(path: Path) -> Triple:
    table = pq.read_table(path)
    return tuple(table.column(i).to_numpy() for i in range(3))


def read_meta(path: Path) -> dict:
    """A written partial's metadata (SAE, blocks, tokens)."""
    return json.loads((Path(path) / "meta.json").read_text())


def read_partial(path: Path) -> Partial:
    path = Path(path)
    meta = read_meta(path)
    feats = pq.read_table(path / "features.parquet")
    quality = None
    if meta["quality"] is not None:
        q = meta["quality"]
        quality = QualityPartial(q["n"], q["sse"], q["active"],
                                 feats.column("ever").to_numpy(zero_copy_only=False),
                                 np.asarray(q["sum_x"]), q["sumsq"])
    return Partial(meta["sae_id"], meta["start"], meta["stop"], meta["n_tokens"],
                   feats.column("firing_count").to_numpy(), feats.column("act_sum").to_numpy(),
                   feats.column("max_act").to_numpy(), _triple(path / "top.parquet"),
                   _triple(path / "firings.parquet"), _triple(path / "tokens.parquet"),
                   _triple(path / "cooccurrence.parquet"), quality,
                   (feats.column("block_count").to_numpy()
                    if "block_count" in feats.column_names else None),
                   meta.get("firings_top"),
                   _triple(path / "histogram.parquet")
                   if (path / "histogram.parquet").exists() else None,
                   _columns(path / "samples.parquet")
                   if (path / "samples.parquet").exists() else None,
                   meta.get("per_bin", 3))


def _columns(path: Path) -> tuple:
    table = pq.read_table(path)
    return tuple(c.to_numpy() for c in table.columns)
