"""Co-occurrence as the Gram matrix of block-level firing indicators, counted exactly where the
SAE runs, and the forms in which the atlas stores it.

n_ij = number of blocks in which features i and j both fire = (F^T F)_ij for the (blocks x
features) 0/1 indicator matrix F. The counter holds the (d, d) counts as integers. It adds one
buffer of up to `flush_blocks` blocks at a time with a dense matrix product per row tile (tile
t: rows t0..t1 against columns t0..d, the upper triangle's tiles; cuBLAS in half precision on
a GPU, BLAS in single precision on the CPU), and mirrors the part left of each tile once, when
full rows are read. Every value involved is an integer: a flush adds at most 2048 per cell
(exact in float16, which holds integers up to 2048), and counts stay in int16 up to 32,767
blocks (int32 beyond). The diagonal is each feature's block count. Full rows are views of the
counts, written to the 'matrix' file as they are, with no conversion or copy.

Memory: d^2 int16 per SAE (512 MiB at 16,384 features, 8.6 GB at 65,536; twice that past
32,767 blocks) plus the buffer; nothing grows with the corpus.

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
from jaxtyping import Int

from atlas.selection import group_topk, ordered_int32

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
"""Counts are ranked in float32 (`top_partners`), exact below this many blocks."""
INT16_COUNTS = (1 << 15) - 1
"""Counts are kept in int16 while none can pass this (32,767 blocks), in int32 beyond."""


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
        """The products' dtype (the counts are integers)."""
        self.counts: torch.Tensor | None = None
        """(d, d) counts, int16 (int32 once a count could pass INT16_COUNTS); row tile t's
        columns from t0 on are counted, the part left of them mirrored on reading."""
        self.buffer: torch.Tensor | None = None
        self.filled = 0
        self.n_blocks = 0
        self.bound = 0
        """An upper bound on every count (blocks added, pairs' largest counts)."""
        self.mirrored = True

    def _alloc(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The counts and the block buffer, allocated on first use."""
        if self.counts is None or self.buffer is None:
            d = self.d_sae
            self.counts = torch.zeros((d, d), dtype=torch.int16, device=self.device)
            self.buffer = torch.zeros((self.flush_blocks, d), dtype=self.dtype,
                                      device=self.device)
        return self.counts, self.buffer

    def _counts(self) -> torch.Tensor:
        return self._alloc()[0]

    def _room(self, more: int) -> torch.Tensor:
        """The counts, widened to int32 first if `more` could carry one past int16."""
        counts = self._counts()
        self.bound += more
        if counts.dtype == torch.int16 and self.bound > INT16_COUNTS:
            self.counts = counts = counts.to(torch.int32)
        return counts

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
        """Fold the buffered blocks into the counts: each row tile's product with the columns
        from its own on (the upper triangle's tiles; the rest is their mirror)."""
        if not self.filled:
            return
        _, buffer = self._alloc()
        counts = self._room(self.filled)
        f = buffer[:self.filled]
        for r0 in self.starts:
            r1 = min(r0 + self.tile, self.d_sae)
            # whole numbers up to flush_blocks: exact in the product's dtype and in int16
            counts[r0:r1, r0:] += (f[:, r0:r1].T @ f[:, r0:]).to(counts.dtype)
        f.zero_()
        self.filled = 0
        self.mirrored = False

    @torch.no_grad()
    def add_pairs(self, i: np.ndarray, j: np.ndarray, n: np.ndarray) -> None:
        """Add counted pairs (i <= j; i == j adds to a feature's block count)."""
        ti, tj, tn = (torch.from_numpy(np.array(x, dtype=dt)).to(self.device)
                      for x, dt in ((i, np.int64), (j, np.int64), (n, np.int64)))
        if not len(tn):
            return
        counts = self._room(int(tn.max()))
        off = ti != tj
        # both (i, j) and (j, i): within a diagonal tile both are counted cells
        counts.index_put_((torch.cat([ti, tj[off]]), torch.cat([tj, ti[off]])),
                          torch.cat([tn, tn[off]]).to(counts.dtype), accumulate=True)
        self.mirrored = False

    def merge(self, other: BlockGram) -> None:
        """Add another counter's counts (other blocks of the same SAE)."""
        other.flush()
        if other.counts is None:
            return
        counts = self._room(other.bound)
        counts += other._full().to(self.device, counts.dtype)
        self.n_blocks += other.n_blocks
        self.mirrored = False

    def release(self) -> None:
        """Free the counts and the buffer (once what is stored has been read from them); the
        counter reads as empty afterwards."""
        self.counts = self.buffer = None
        self.filled = self.n_blocks = self.bound = 0
        self.mirrored = True

    # --- reading ---------------------------------------------------------------------------

    def _ready(self) -> torch.Tensor:
        self.flush()
        return self._counts()

    def _full(self) -> torch.Tensor:
        """The full symmetric counts: each row tile's left part mirrored from the tiles above."""
        counts = self._ready()
        if not self.mirrored:
            for r0 in self.starts[1:]:
                r1 = min(r0 + self.tile, self.d_sae)
                counts[r0:r1, :r0] = counts[:r0, r0:r1].T
            self.mirrored = True
        return counts

    def pairs(self) -> tuple[Int[np.ndarray, " p"], Int[np.ndarray, " p"], Int[np.ndarray, " p"]]:
        """(i, j, n_ij) for every pair i < j with n_ij > 0, sorted by (i, j)."""
        out: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = [], [], []
        counts = self._ready()
        for r0 in self.starts:
            tile = counts[r0:r0 + self.tile, r0:]
            upper = torch.ones(tile.shape, dtype=torch.bool, device=tile.device).triu_(1)
            r, c = ((tile > 0) & upper).nonzero(as_tuple=True)  # row-major: sorted
            out[0].append((r + r0).cpu().numpy())
            out[1].append((c + r0).cpu().numpy())
            out[2].append(tile[r, c].cpu().numpy())
        i, j, n = (np.concatenate(x).astype(np.int64) for x in out)
        return i, j, n

    def diagonal(self) -> Int[np.ndarray, " f"]:
        """n_ii: the blocks where each feature fires."""
        if not self.d_sae:
            return np.zeros(0, np.int64)
        return torch.diagonal(self._ready()).cpu().numpy().astype(np.int64)

    def full_rows(self) -> Iterator[tuple[int, Int[torch.Tensor, "r f"]]]:
        """The full symmetric rows, tile by tile: (first feature, integer counts (rows, d),
        a view of the counter's), where the counter is."""
        counts = self._full()
        for r0 in self.starts:
            yield r0, counts[r0:r0 + self.tile]

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

    def write(self, rows: Int[torch.Tensor, "r f"]) -> None:
        """Append rows of non-negative integer counts (each at most n_blocks): read as the
        file's unsigned type where the widths agree (no copy), converted otherwise."""
        counts = rows.cpu().numpy()
        if counts.dtype.itemsize == self.dtype.itemsize:
            counts.view(self.dtype).tofile(self.out)
        else:
            counts.astype(self.dtype).tofile(self.out)


def read_matrix(path) -> np.ndarray:
    """A stored count matrix, memory-mapped read-only."""
    return np.load(path, mmap_mode="r")


# --- each feature's best partners ----------------------------------------------------------

PARTNER_ROWS = 64
"""Rows scored at a time by `top_partners` (their temporaries stay in cache)."""
APART = 1e30
"""Subtracted from the smc and phi scores of pairs that never fire together: far beyond any
score (|phi score| <= n^2 < 2.9e14 below MAX_BLOCKS), far within float32's range."""


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
    rows = torch.as_tensor(rows)
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
        c = rows[at].float()                       # a copy
        h = len(c)
        c[torch.arange(h, device=c.device), at + first] = 0   # not its own partner
        apart = c <= 0
        # ranks pairs that never fire together below every other (adding 0 elsewhere keeps
        # the other scores as they are): one float add, cheaper than a masked fill
        below = apart.to(c.dtype).mul_(-APART)
        a = n_i[at + first, None]
        keep = torch.zeros((h, d), dtype=torch.bool, device=c.device)
        s = torch.empty_like(c)
        if m > 0:
            for score, masked in _ranked(c, a, b, q, n, s):
                if masked:
                    score.add_(below)
                keep.scatter_(1, _best_columns(score, m), True)
        keep &= ~apart
        rr, cc = keep.nonzero(as_tuple=True)
        found_r.append(at[rr])
        found_c.append(cc)
    rr, cc = (torch.cat(x) if x else torch.zeros(0, dtype=torch.int64) for x in (found_r, found_c))
    values = rows[rr, cc].to(torch.int64).cpu().numpy()
    sizes = torch.bincount(rr, minlength=r).cpu().numpy()
    cut = np.cumsum(sizes)[:-1]
    return np.split(cc.cpu().numpy(), cut), np.split(values, cut)


def _best_columns(score: torch.Tensor, m: int) -> Int[torch.Tensor, "r m"]:
    """Each row's m highest float32 scores' columns, in no particular order. On a CPU the
    floats are read as int32 keys in the same order (negative ones with their magnitude bits
    flipped: `ordered_int32`) and selected in two stages (`group_topk`: ~1.7x faster over
    16,384 columns)."""
    if score.device.type != "cpu" or score.dtype != torch.float32:
        return score.topk(m, dim=1, sorted=False).indices
    return group_topk(ordered_int32(score), m)


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
