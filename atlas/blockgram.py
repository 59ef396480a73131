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
- 'matrix' (d_sae <= MATRIX_MAX_FEATURES): the full symmetric count matrix as a .npy file
  beside the atlas (`harvests.cooccurrence_file`, uint16 below 65,536 blocks: 512 MiB at
  16,384 features, written in about a second), read memory-mapped; `cooccurrence_rows`
  holds each feature's TOP_PARTNERS best partners by each affinity for SQL. Writing the same
  268M counts as DuckDB lists took ~13 s and ~4 GB per 16k SAE on 2 cores;
- 'top-m' (wider SAEs): only each feature's partners among the m best by each of the five
  affinities (their union) with exact counts; the marginals stay exact in `features`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
import torch
from jaxtyping import Float, Int

FLUSH_BLOCKS = 1024
"""Blocks added per matrix product (at most 2048, so that half-precision sums stay exact)."""
TILE = 2048
"""Rows of the counter per tile."""
PAIRS_MAX_FEATURES = 4096
"""Widest SAE whose co-occurrence is stored as one row per pair."""
MATRIX_MAX_FEATURES = 16384
"""Widest SAE whose full co-occurrence matrix is stored (a file beside the atlas)."""
TOP_PARTNERS = 64
"""Partners kept per feature and affinity in `cooccurrence_rows` ('matrix' and 'top-m' forms)."""
MAX_BLOCKS = 1 << 24
"""Float32 counts are exact below this many blocks."""


def storage_for(d_sae: int, *, top: int = TOP_PARTNERS) -> str:
    """The storage form of an SAE of `d_sae` features: 'pairs', 'matrix' or 'top-<m>'."""
    if d_sae <= PAIRS_MAX_FEATURES:
        return "pairs"
    return "matrix" if d_sae <= MATRIX_MAX_FEATURES else f"top-{top}"


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

    def _alloc(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The count tiles and the block buffer, allocated on first use."""
        if self.tiles is None or self.buffer is None:
            d = self.d_sae
            self.tiles = [torch.zeros((min(self.tile, d - r0), d - r0), device=self.device)
                          for r0 in self.starts]
            self.buffer = torch.zeros((self.flush_blocks, d), dtype=self.dtype,
                                      device=self.device)
        return self.tiles, self.buffer

    def _tiles(self) -> list[torch.Tensor]:
        return self._alloc()[0]

    @torch.no_grad()
    def add(self, blocks: Int[torch.Tensor, " m"], features: Int[torch.Tensor, " m"],
            n_blocks: int) -> None:
        """Add `n_blocks` blocks whose firings are (block within them, feature) pairs."""
        if n_blocks > self.flush_blocks:
            for lo in range(0, n_blocks, self.flush_blocks):
                sel = (blocks >= lo) & (blocks < lo + self.flush_blocks)
                self.add(blocks[sel] - lo, features[sel], min(self.flush_blocks, n_blocks - lo))
            return
        _, buffer = self._alloc()
        if self.n_blocks + n_blocks >= MAX_BLOCKS:
            raise ValueError(f"co-occurrence counts are exact up to {MAX_BLOCKS} blocks; "
                             "harvest fewer blocks")
        if self.filled + n_blocks > self.flush_blocks:
            self.flush()
        buffer[self.filled + blocks.to(self.device), features.to(self.device)] = 1
        self.filled += n_blocks
        self.n_blocks += n_blocks

    @torch.no_grad()
    def flush(self) -> None:
        """Fold the buffered blocks into the counts."""
        if not self.filled:
            return
        tiles, buffer = self._alloc()
        f = buffer[:self.filled]
        for r0, tile in zip(self.starts, tiles):
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
        ti, tj, tn = (torch.from_numpy(np.array(x, dtype=dt)).to(self.device)
                      for x, dt in ((i, np.int64), (j, np.int64), (n, np.float32)))
        for r0, tile in zip(self.starts, self._tiles()):
            sel = (ti >= r0) & (ti < r0 + len(tile))
            tile.index_put_((ti[sel] - r0, tj[sel] - r0), tn[sel], accumulate=True)

    def merge(self, other: BlockGram) -> None:
        """Add another counter's counts (other blocks of the same SAE)."""
        other.flush()
        if other.tiles is None:
            return
        for a, b in zip(self._tiles(), other.tiles):
            a += b.to(self.device)
        self.n_blocks += other.n_blocks

    # --- reading ---------------------------------------------------------------------------

    def _ready(self) -> list[torch.Tensor]:
        self.flush()
        return self._tiles()

    def pairs(self) -> tuple[Int[np.ndarray, " p"], Int[np.ndarray, " p"], Int[np.ndarray, " p"]]:
        """(i, j, n_ij) for every pair i < j with n_ij > 0, sorted by (i, j)."""
        out: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = [], [], []
        for r0, tile in zip(self.starts, self._ready()):
            upper = torch.ones(tile.shape, dtype=torch.bool, device=tile.device).triu_(1)
            r, c = ((tile > 0) & upper).nonzero(as_tuple=True)  # row-major: sorted
            out[0].append((r + r0).cpu().numpy())
            out[1].append((c + r0).cpu().numpy())
            out[2].append(tile[r, c].cpu().numpy())
        i, j, n = (np.concatenate(x).astype(np.int64) for x in out)
        return i, j, n

    def diagonal(self) -> Int[np.ndarray, " f"]:
        """n_ii: the blocks where each feature fires."""
        return np.concatenate([torch.diagonal(t).cpu().numpy()
                               for t in self._ready()]).astype(np.int64)

    def full_rows(self) -> Iterator[tuple[int, Float[torch.Tensor, "r f"]]]:
        """The full symmetric rows, tile by tile: (first feature, float32 counts (rows, d)),
        where the counter is."""
        tiles = self._ready()
        for t, (t0, tile) in enumerate(zip(self.starts, tiles)):
            width = len(tile)
            left = [tiles[q][:, t0 - q0:t0 - q0 + width].T
                    for q, q0 in enumerate(self.starts[:t])]
            # within the diagonal block only the upper triangle is authoritative
            own = tile[:, :width].triu()
            own = own + own.triu(1).T
            yield t0, torch.cat([*left, own, tile[:, width:]], dim=1)

    def row_tiles(self) -> Iterator[tuple[int, Int[np.ndarray, "r f"]]]:
        """`full_rows` as int32 arrays on the host."""
        for t0, rows in self.full_rows():
            yield t0, rows.to(torch.int32).cpu().numpy()

    def dense(self) -> Int[np.ndarray, "f f"]:
        """The full symmetric count matrix (diagonal: block counts)."""
        if not self.d_sae:
            return np.zeros((0, 0), np.int64)
        return np.concatenate([rows for _, rows in self.row_tiles()]).astype(np.int64)


# --- the 'matrix' file ---------------------------------------------------------------------

def matrix_dtype(n_blocks: int) -> np.dtype:
    """The narrowest unsigned integer that holds every count (each at most n_blocks)."""
    return np.dtype(np.uint16 if n_blocks <= np.iinfo(np.uint16).max else np.uint32)


class MatrixWriter:
    """Writes a (d, d) count matrix row tile by row tile to an open binary file as .npy."""

    def __init__(self, out: BinaryIO, d: int, n_blocks: int):
        self.out, self.dtype = out, matrix_dtype(n_blocks)
        np.lib.format.write_array_header_1_0(out, {
            "descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
            "shape": (d, d)})

    def write(self, rows: Float[torch.Tensor, "r f"]) -> None:
        """Append rows (float32 counts: whole numbers below 2^24, exact in either dtype)."""
        torch_dtype = torch.uint16 if self.dtype == np.uint16 else torch.uint32
        rows.cpu().to(torch_dtype).numpy().tofile(self.out)


def read_matrix(path) -> np.ndarray:
    """A stored count matrix, memory-mapped read-only."""
    return np.load(path, mmap_mode="r")


# --- each feature's best partners ----------------------------------------------------------

PARTNER_ROWS = 64
"""Rows scored at a time by `top_partners` (their temporaries stay in cache)."""


@torch.no_grad()
def top_partners(rows: Int[np.ndarray, "r f"] | torch.Tensor, first: int,
                 n_i: Int[np.ndarray, " f"] | torch.Tensor, n_blocks: int, m: int
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per row (feature first + r), the union of its m best partners by each affinity among the
    features it ever fires with, ascending, with their counts.

    Each affinity is ranked by a quantity with the same order along a row (n_i fixed): jaccard
    by n_ij / (n_i + n_j - n_ij) (dice = 2J / (1 + J) orders alike), overlap by
    n_ij / min(n_i, n_j), smc by 2 n_ij - n_j, phi by (n n_ij - n_i n_j) / sqrt(n_j (n - n_j))
    (its positive row factor dropped). Computed in float32 where the counts are,
    PARTNER_ROWS rows at a time."""
    rows = torch.as_tensor(rows).float()
    n_i = torch.as_tensor(n_i, device=rows.device).float()
    n = float(n_blocks)
    r, d = rows.shape
    m = min(m, d - 1)
    b = n_i[None, :]
    spread = b * (n - b)
    q = torch.where(spread > 0, spread.clamp(min=1).rsqrt(), torch.zeros((), device=b.device))
    found_r, found_c = [], []
    # features that never fire (n_i = 0) have no partners: only live rows are scored
    live = (n_i[first:first + r] > 0).nonzero().squeeze(1)
    for lo in range(0, len(live), PARTNER_ROWS):
        at = live[lo:lo + PARTNER_ROWS]
        c = rows[at]                               # a copy
        h = len(c)
        c[torch.arange(h, device=c.device), at + first] = 0   # not its own partner
        apart = c <= 0
        a = n_i[at + first, None]
        keep = torch.zeros((h, d), dtype=torch.bool, device=c.device)
        s = torch.empty_like(c)
        if m > 0:
            for score, masked in _ranked(c, a, b, q, n, s):
                if masked:
                    score.masked_fill_(apart, -torch.inf)
                keep.scatter_(1, score.topk(m, dim=1).indices, True)
        keep &= ~apart
        rr, cc = keep.nonzero(as_tuple=True)
        found_r.append(at[rr])
        found_c.append(cc)
    rr, cc = (torch.cat(x) if x else torch.zeros(0, dtype=torch.int64) for x in (found_r, found_c))
    values = rows[rr, cc].to(torch.int64).cpu().numpy()
    sizes = torch.bincount(rr, minlength=r).cpu().numpy()
    cut = np.cumsum(sizes)[:-1]
    return np.split(cc.cpu().numpy(), cut), np.split(values, cut)


def _ranked(c, a, b, q, n: float, s) -> Iterator[tuple[torch.Tensor, bool]]:
    """The rows' ranking quantities, one affinity after another, each written into `s`, and
    whether pairs that never fire together must be masked: jaccard and overlap are 0 there,
    their least value (denominators kept >= 1: only pairs of dead features reach 0), while
    smc and phi can rank such pairs above real partners."""
    torch.add(a, b, out=s)
    s.sub_(c).clamp_(min=1)
    yield torch.div(c, s, out=s), False              # jaccard (and dice)
    torch.minimum(a, b, out=s).clamp_(min=1)
    yield torch.div(c, s, out=s), False              # overlap
    torch.mul(c, 2, out=s)
    yield s.sub_(b), True                            # smc
    torch.mul(c, n, out=s)
    s.sub_(a * b)
    yield s.mul_(q), True                            # phi
