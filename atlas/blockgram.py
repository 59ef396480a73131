"""Co-occurrence as the Gram matrix of block-level firing indicators, counted exactly where the
SAE runs, and the forms in which the atlas stores it.

n_ij = number of blocks in which features i and j both fire = (F^T F)_ij for the (blocks x
features) 0/1 indicator matrix F. The counter keeps the upper triangle of F^T F in row tiles
(tile t holds rows t0..t1 and columns t0..d; within its diagonal block the upper
triangle counts), adds one buffer of up to `flush_blocks` blocks
at a time with a dense matrix product (cuBLAS in half precision on a GPU, BLAS in single
precision on the CPU) and accumulates in float32. Every value involved is an integer: a flush
adds at most 1024 per cell (exact in float16, which holds integers up to 2048) and the running
counts stay exact in float32 below 2^24 blocks. The diagonal is each feature's block count.

Memory: d^2/2 float32 per SAE (537 MB at 16,384 features, 8.6 GB at 65,536) plus the buffer;
nothing grows with the corpus.

Storage forms (`harvests.cooccurrence_storage`), chosen by the SAE's width:
- 'pairs' (d_sae <= PAIRS_MAX_FEATURES): every pair with n_ij > 0 as a row (i < j) of the
  `cooccurrence` table, behind the `affinity` view;
- 'rows' (d_sae <= ROWS_MAX_FEATURES): one row per feature in `cooccurrence_rows` holding its
  counts with every feature (the full symmetric matrix, list position = partner);
- 'top-m' (wider SAEs): each feature's partners among the m best by each of the five
  affinities (their union) with exact counts; the marginals stay exact in `features`.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Int

from atlas.geometry.lobes import METRICS, affinity

FLUSH_BLOCKS = 1024
"""Blocks added per matrix product (at most 2048, so that half-precision sums stay exact)."""
TILE = 2048
"""Rows of the counter per tile."""
PAIRS_MAX_FEATURES = 4096
"""Widest SAE whose co-occurrence is stored as one row per pair."""
ROWS_MAX_FEATURES = 16384
"""Widest SAE whose full co-occurrence matrix is stored (one row per feature)."""
TOP_PARTNERS = 64
"""Partners kept per feature and affinity above ROWS_MAX_FEATURES."""
MAX_BLOCKS = 1 << 24
"""Float32 counts are exact below this many blocks."""


def storage_for(d_sae: int, *, top: int = TOP_PARTNERS) -> str:
    """The storage form of an SAE of `d_sae` features: 'pairs', 'rows' or 'top-<m>'."""
    if d_sae <= PAIRS_MAX_FEATURES:
        return "pairs"
    return "rows" if d_sae <= ROWS_MAX_FEATURES else f"top-{top}"


class BlockGram:
    """Exact co-occurrence counts of one SAE's features over blocks, on `device`."""

    def __init__(self, d_sae: int, device: torch.device | str = "cpu", *,
                 flush_blocks: int = FLUSH_BLOCKS, tile: int = TILE):
        if not 0 < flush_blocks <= 2048:
            raise ValueError("flush_blocks must lie in 1..2048 (exact half-precision sums)")
        self.d_sae, self.device = d_sae, torch.device(device)
        self.flush_blocks, self.tile = flush_blocks, tile
        self.starts = list(range(0, d_sae, tile))
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.tiles: list[torch.Tensor] | None = None
        self.buffer: torch.Tensor | None = None
        self.filled = 0
        self.n_blocks = 0

    def _alloc(self) -> None:
        if self.tiles is None:
            d = self.d_sae
            self.tiles = [torch.zeros((min(self.tile, d - r0), d - r0), device=self.device)
                          for r0 in self.starts]
            self.buffer = torch.zeros((self.flush_blocks, d), dtype=self.dtype,
                                      device=self.device)

    @torch.no_grad()
    def add(self, blocks: Int[torch.Tensor, " m"], features: Int[torch.Tensor, " m"],
            n_blocks: int) -> None:
        """Add `n_blocks` blocks whose firings are (block within them, feature) pairs."""
        if n_blocks > self.flush_blocks:
            for lo in range(0, n_blocks, self.flush_blocks):
                sel = (blocks >= lo) & (blocks < lo + self.flush_blocks)
                self.add(blocks[sel] - lo, features[sel], min(self.flush_blocks, n_blocks - lo))
            return
        self._alloc()
        if self.n_blocks + n_blocks >= MAX_BLOCKS:
            raise ValueError(f"co-occurrence counts are exact up to {MAX_BLOCKS} blocks; "
                             "harvest fewer blocks")
        if self.filled + n_blocks > self.flush_blocks:
            self.flush()
        self.buffer[self.filled + blocks.to(self.device), features.to(self.device)] = 1
        self.filled += n_blocks
        self.n_blocks += n_blocks

    @torch.no_grad()
    def flush(self) -> None:
        """Fold the buffered blocks into the counts."""
        if not self.filled:
            return
        f = self.buffer[:self.filled]
        for r0, tile in zip(self.starts, self.tiles):
            rows = f[:, r0:r0 + len(tile)].T
            if f.dtype == torch.float32:
                tile.addmm_(rows, f[:, r0:])
            else:
                tile += rows @ f[:, r0:]
        f.zero_()
        self.filled = 0

    @torch.no_grad()
    def add_pairs(self, i: np.ndarray, j: np.ndarray, n: np.ndarray) -> None:
        """Add counted pairs (i <= j; i == j adds to a feature's block count)."""
        self._alloc()
        i, j, n = (torch.from_numpy(np.array(x, dtype=dt)).to(self.device)
                   for x, dt in ((i, np.int64), (j, np.int64), (n, np.float32)))
        for r0, tile in zip(self.starts, self.tiles):
            sel = (i >= r0) & (i < r0 + len(tile))
            tile.index_put_((i[sel] - r0, j[sel] - r0), n[sel], accumulate=True)

    def merge(self, other: BlockGram) -> None:
        """Add another counter's counts (other blocks of the same SAE)."""
        other.flush()
        if other.tiles is None:
            return
        self._alloc()
        for a, b in zip(self.tiles, other.tiles):
            a += b.to(self.device)
        self.n_blocks += other.n_blocks

    # --- reading ---------------------------------------------------------------------------

    def _ready(self) -> list[torch.Tensor]:
        self.flush()
        self._alloc()
        return self.tiles

    def pairs(self) -> tuple[Int[np.ndarray, " p"], Int[np.ndarray, " p"], Int[np.ndarray, " p"]]:
        """(i, j, n_ij) for every pair i < j with n_ij > 0, sorted by (i, j)."""
        out = [], [], []
        for r0, tile in zip(self.starts, self._ready()):
            upper = torch.ones(tile.shape, dtype=torch.bool, device=tile.device).triu_(1)
            r, c = ((tile > 0) & upper).nonzero(as_tuple=True)  # row-major: sorted
            out[0].append((r + r0).cpu().numpy())
            out[1].append((c + r0).cpu().numpy())
            out[2].append(tile[r, c].cpu().numpy())
        return tuple(np.concatenate(x).astype(np.int64) for x in out)

    def diagonal(self) -> Int[np.ndarray, " f"]:
        """n_ii: the blocks where each feature fires."""
        return np.concatenate([torch.diagonal(t).cpu().numpy()
                               for t in self._ready()]).astype(np.int64)

    def row_tiles(self):
        """The full symmetric rows, tile by tile: (first feature, int32 counts (rows, d))."""
        tiles = self._ready()
        for t, (t0, tile) in enumerate(zip(self.starts, tiles)):
            width = len(tile)
            left = [tiles[q][:, t0 - q0:t0 - q0 + width].T
                    for q, q0 in enumerate(self.starts[:t])]
            # within the diagonal block only the upper triangle is authoritative
            own = tile[:, :width].triu()
            own = own + own.triu(1).T
            yield t0, torch.cat([*left, own, tile[:, width:]], dim=1).to(torch.int32).cpu(
                ).numpy()

    def dense(self) -> Int[np.ndarray, "f f"]:
        """The full symmetric count matrix (diagonal: block counts)."""
        if not self.d_sae:
            return np.zeros((0, 0), np.int64)
        return np.concatenate([rows for _, rows in self.row_tiles()]).astype(np.int64)


def top_partners(rows: Int[np.ndarray, "r f"], first: int, n_i: Int[np.ndarray, " f"],
                 n_blocks: int, m: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per row (feature first + r), the union of its m best partners by each affinity among the
    features it ever fires with, ascending, with their counts."""
    r, d = rows.shape
    keep = np.zeros((r, d), dtype=bool)
    own = first + np.arange(r)
    together = rows > 0
    together[np.arange(r), own] = False
    m = min(m, d - 1)
    for metric in METRICS:
        score = affinity(rows, n_i[own][:, None], n_i[None, :], n_blocks, metric)
        score = np.where(together, score, -np.inf)
        best = np.argpartition(-score, m - 1, axis=1)[:, :m] if m > 0 else np.zeros((r, 0), int)
        np.put_along_axis(keep, best, True, axis=1)
    keep &= together
    partners = [np.flatnonzero(k) for k in keep]
    return partners, [rows[x, p] for x, p in enumerate(partners)]
