"""The harvest in shards: each shard of consecutive blocks yields a partial result per SAE, and
partials merge into the statistics of the whole corpus.

Every build harvests this way. In one process the partials stay in memory; on a cluster each
shard task writes its partials as Parquet under `<db>.shards/` and a merge task reads them. Both
merge the same partials in the same order, so a sharded build equals a single-process one
exactly (integer counts, top examples, and float sums added shard by shard in the same order).

A partial holds what can be summed or reduced: firing counts, activation sums and maxima,
top-example candidates, (block, feature) firings, (feature, token) counts, co-occurrence counts
within the shard's blocks, and the sums behind held-out quality.
"""

from __future__ import annotations

import hashlib
import itertools
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
from atlas.harvest import FeatureAccumulator, FeatureStats, Triple, cooccurrence, stats_from
from atlas.saes import QualityPartial


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


def partial_of(acc: FeatureAccumulator, sae_id: str, start: int, stop: int,
               quality: QualityPartial | None = None) -> Partial:
    """The accumulator's state after the blocks [start, stop), as a partial."""
    b, f, a = acc.firings()
    i, j, n = cooccurrence(b - start, f, n_blocks=max(stop - start, 1), d_sae=acc.d_sae)
    return Partial(sae_id, start, stop, acc.n_tokens, acc.firing_count.cpu().numpy().copy(),
                   acc.act_sum.cpu().numpy().copy(), acc.max_act.cpu().numpy().copy(), acc.top(),
                   (b, f, a),
                   acc.token_counts(), (i, j, n), quality)


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


def merge(parts: list[Partial], *, d_sae: int, n_blocks: int, block_size: int,
          n_examples: int) -> FeatureStats:
    """The statistics of the whole corpus from the partials of shards that tile it."""
    parts = sorted(parts, key=lambda p: p.start)
    edges = [(p.start, p.stop) for p in parts]
    if not parts or edges[0][0] != 0 or edges[-1][1] != n_blocks or any(
            a[1] != b[0] for a, b in itertools.pairwise(edges)):
        raise AtlasError(f"the shards {edges} do not cover blocks 0..{n_blocks} exactly; "
                         "re-run the build to harvest the missing ones")
    count = np.zeros(d_sae, np.int64)
    act_sum = np.zeros(d_sae)
    max_act = np.zeros(d_sae, np.float32)
    for p in parts:
        count += p.firing_count
        act_sum += p.act_sum
        np.maximum(max_act, p.max_act, out=max_act)

    def joined(name: str) -> Triple:
        return tuple(np.concatenate(x) for x in zip(*(getattr(p, name) for p in parts)))

    tf, tt, tc = joined("tokens")
    stride = int(tt.max()) + 1 if len(tt) else 1
    keys, counts = _sum_by_key(tf * stride + tt, tc, n_keys=d_sae * stride)
    ci, cj, cn = joined("cooc")
    pairs, n_ij = _sum_by_key(ci * d_sae + cj, cn, n_keys=d_sae * d_sae)
    return stats_from(count=count, act_sum=act_sum, max_act=max_act, top=joined("top"),
                      firings=joined("firings"), tokens=(keys // stride, keys % stride, counts),
                      n_tokens=sum(p.n_tokens for p in parts), n_blocks=n_blocks,
                      block_size=block_size, n_examples=n_examples,
                      cooccurrence=(pairs // d_sae, pairs % d_sae, n_ij))


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
    meta = {"sae_id": part.sae_id, "start": part.start, "stop": part.stop,
            "n_tokens": part.n_tokens, "quality": None,
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


def read_partial(path: Path) -> Partial:
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
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
                   _triple(path / "cooccurrence.parquet"), quality)
