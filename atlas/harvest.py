"""Harvest: per-feature firing statistics, top examples, block firings and co-occurrence.

Pure computation over activations: the accumulator takes SAE activations batch by batch (from a
live forward pass or from cached activations) and never holds more than one batch of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from jaxtyping import Bool, Float, Int
from sae_lens import SAE
from sae_lens.saes.topk_sae import TopKSAE

from atlas.blockgram import BlockGram
from atlas.corpus import Blocks
from atlas.errors import AtlasError
from atlas.models import HookPoint, LoadedModel, capture_residuals
from atlas.selection import group_topk, ordered_int32

SINK_FACTOR = 20.0
"""A token whose residual norm exceeds this many times the batch median is an attention sink
(massive activation, ~150x the median in SmolLM2); the atlas leaves such tokens out."""


@dataclass(frozen=True)
class ActivationBatch:
    """Residuals of a run of consecutive blocks at every requested hook."""

    start: int
    """Index of the first block."""
    token_ids: Int[torch.Tensor, "b t"]
    acts: dict[str, Float[torch.Tensor, "b t d"]]
    masks: dict[str, Bool[torch.Tensor, "b t"]]
    """Per hook: positions that count (corpus mask minus attention sinks at that hook)."""


def sink_free(acts: Float[torch.Tensor, "b t d"], mask: Bool[torch.Tensor, "b t"],
              factor: float = SINK_FACTOR) -> Bool[torch.Tensor, "b t"]:
    """`mask` minus the positions whose norm exceeds `factor` x the median of masked norms."""
    norms = acts.norm(dim=-1)
    if not mask.any():
        return mask
    limit = factor * norms[mask].median()
    return mask & (norms <= limit)


def forward_batches(lm: LoadedModel, blocks: Blocks, hooks: Sequence[HookPoint], *,
                    batch_blocks: int) -> Iterator[ActivationBatch]:
    """Run the model over the blocks, yielding residuals at the hooks (one early-stopping pass)."""
    return forward_range(lm, blocks.token_ids, blocks.mask, hooks, batch_blocks=batch_blocks)


def forward_range(lm: LoadedModel, token_ids: np.ndarray, mask: np.ndarray,
                  hooks: Sequence[HookPoint], *, batch_blocks: int, offset: int = 0,
                  window: int = 64) -> Iterator[ActivationBatch]:
    """`forward_batches` over a run of blocks whose first is block `offset` of the corpus.

    Short (document) blocks cost only their own length: each `window` of blocks runs through
    the model in groups of similar length (sorted by length, each group at most
    `batch_blocks` x block size positions, cut at its longest block; causal attention, so
    later padding could not change earlier positions), and its residuals are put back in
    corpus order (positions past a group's longest block are zero; no mask counts padding).
    Batches of
    `batch_blocks` consecutive blocks come out, as the harvest reads them."""
    ids = torch.from_numpy(np.ascontiguousarray(token_ids))
    base = torch.from_numpy(np.ascontiguousarray(mask))
    n, width = ids.shape
    budget = batch_blocks * width
    window = max(window, batch_blocks) // batch_blocks * batch_blocks
    for first in range(0, n, window):
        stop = min(first + window, n)
        acts = _window_residuals(lm, ids[first:stop], base[first:stop], hooks, budget)
        for start in range(first, stop, batch_blocks):
            end = min(start + batch_blocks, stop)
            keep = base[start:end].to(lm.device)
            part = {k: a[start - first:end - first] for k, a in acts.items()}
            yield ActivationBatch(offset + start, ids[start:end], part,
                                  {name: sink_free(a, keep) for name, a in part.items()})


def block_lengths(mask: Bool[torch.Tensor, "b t"]) -> Int[torch.Tensor, " b"]:
    """Positions each block needs: up to its last counted one (1 for a block with none)."""
    t = mask.shape[1]
    last = torch.where(mask, torch.arange(t), torch.full_like(mask, -1, dtype=torch.long))
    return last.max(1).values.clamp(min=0) + 1


def length_groups(lengths: np.ndarray, budget: int) -> list[np.ndarray]:
    """Block indices grouped by similar length (shortest first), each group's size x its
    longest length at most `budget` positions (a group holds at least one block)."""
    order = np.argsort(lengths, kind="stable")
    groups: list[np.ndarray] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * int(lengths[i]) > budget:
            groups.append(np.asarray(current))
            current = []
        current.append(int(i))
    if current:
        groups.append(np.asarray(current))
    return groups


def prefix_roots(ids: Int[torch.Tensor, "b t"], lengths: np.ndarray) -> np.ndarray:
    """For each row, the row whose pass also gives its residuals: itself, or a later row that
    starts with it (an li2024 window's row is a prefix of the next window's row of the same
    document; causal attention makes a prefix's residuals those of the longer pass)."""
    roots = np.arange(len(lengths))
    for i in range(len(lengths) - 2, -1, -1):
        n = int(lengths[i])
        if n <= lengths[i + 1] and torch.equal(ids[i, :n], ids[i + 1, :n]):
            roots[i] = roots[i + 1]
    return roots


def _window_residuals(lm: LoadedModel, ids: Int[torch.Tensor, "b t"],
                      mask: Bool[torch.Tensor, "b t"], hooks: Sequence[HookPoint],
                      budget: int) -> dict[str, Float[torch.Tensor, "b t d"]]:
    lengths = block_lengths(mask).numpy()
    roots = prefix_roots(ids, lengths)
    run = np.flatnonzero(roots == np.arange(len(roots)))
    out: dict[str, torch.Tensor] = {}
    for group in length_groups(lengths[run], budget):
        group = run[group]
        cut = int(lengths[group].max())
        acts = capture_residuals(lm, ids[group, :cut], hooks)
        rows = torch.from_numpy(group).to(lm.device)
        for name, a in acts.items():
            if name not in out:
                out[name] = torch.zeros(ids.shape + (a.shape[-1],), dtype=a.dtype,
                                        device=a.device)
            out[name][rows, :cut] = a
    for i in np.flatnonzero(roots != np.arange(len(roots))):
        n = int(lengths[i])
        for a in out.values():
            a[i, :n] = a[roots[i], :n]
    return out


PairCounts = tuple[Int[np.ndarray, " p"], Int[np.ndarray, " p"], Int[np.ndarray, " p"]]
Triple = tuple[np.ndarray, np.ndarray, np.ndarray]

FIRINGS_MAX_CELLS = 1 << 26
"""`block_firings` keeps every (block, feature) firing while blocks x features stays below
this (67M cells: the embedded default holds ~6M); above it, each feature's TOP_BLOCKS blocks
with the highest activation, so that the table is bounded by the SAE, not the corpus."""
TOP_BLOCKS = 64


def firings_kept(d_sae: int, n_blocks: int) -> int | None:
    """How many blocks per feature `block_firings` keeps: None for all of them."""
    return None if d_sae * n_blocks <= FIRINGS_MAX_CELLS else TOP_BLOCKS


@dataclass(frozen=True)
class FeatureStats:
    """What the harvest of one SAE produced; arrays are indexed by feature."""

    firing_count: Int[np.ndarray, " f"]
    block_count: Int[np.ndarray, " f"]
    mean_act: Float[np.ndarray, " f"]
    """Mean activation over the tokens where the feature fires (NaN when it never fires)."""
    max_act: Float[np.ndarray, " f"]
    top_acts: Float[np.ndarray, "n_examples f"]
    """Top activations per feature, descending; 0 where a feature has fewer positive ones."""
    top_blocks: Int[np.ndarray, "n_examples f"]
    top_positions: Int[np.ndarray, "n_examples f"]
    block_firings: tuple[Int[np.ndarray, " m"], Int[np.ndarray, " m"], Float[np.ndarray, " m"]]
    """(block, feature, max activation in the block) for every block where a feature fires
    (`firings_top` None), else for each feature's `firings_top` best blocks; by block, feature."""
    token_counts: tuple[Int[np.ndarray, " p"], Int[np.ndarray, " p"], Int[np.ndarray, " p"]]
    """(feature, token id, firing count) for every pair that fired at least once."""
    n_tokens: int
    """Tokens that counted (mask true)."""
    n_blocks: int
    cooccurrence: BlockGram
    """Exact block co-occurrence counts (diagonal: block counts)."""
    firings_top: int | None = None
    histogram: Int[np.ndarray, "f bins"] | None = None
    """Positive activations per feature in each bin of the shared log grid (`HIST_EDGES`)."""
    samples: Samples | None = None
    """Decile-example candidates: each (feature, bin)'s `per_bin` entries of highest
    `sample_priority`, as (feature * N_BINS + bin, priority, global position, activation)."""


Samples = tuple[Int[np.ndarray, " s"], Float[np.ndarray, " s"], Int[np.ndarray, " s"],
                Float[np.ndarray, " s"]]


@dataclass(frozen=True)
class SparseCodes:
    """The positive SAE activations of a batch of tokens, as (row, feature, value) entries."""

    rows: Int[torch.Tensor, " nnz"]
    """Token index within the batch (block-major: block * block_size + position)."""
    features: Int[torch.Tensor, " nnz"]
    values: Float[torch.Tensor, " nnz"]

    @classmethod
    def from_dense(cls, feats: Float[torch.Tensor, "n f"]) -> SparseCodes:
        rows, cols = (feats > 0).nonzero(as_tuple=True)
        return cls(rows, cols, feats[rows, cols])

    @classmethod
    def from_topk(cls, values: Float[torch.Tensor, "n k"],
                  indices: Int[torch.Tensor, "n k"]) -> SparseCodes:
        flat = values.reshape(-1)
        keep = (flat > 0).nonzero().squeeze(1)  # found once, then gathered by position
        return cls(keep // values.shape[1], indices.reshape(-1).index_select(0, keep),
                   flat.index_select(0, keep))


def encode_sparse(sae: SAE, x: Float[torch.Tensor, "n d"]) -> SparseCodes:
    """SAE activations as sparse entries; TopK SAEs skip the dense (n, d_sae) code entirely.

    The shortcut is taken for plain TopK only: subclasses such as AbsTopK select by another
    rule, so they go through their own `encode`."""
    if (type(sae) is TopKSAE and not sae.cfg.rescale_acts_by_decoder_norm
            and not sae.use_error_term):
        # one pass: the bias is added in the product's accumulator (x @ W_enc + b_enc)
        pre = torch.addmm(sae.b_enc, sae.process_sae_in(x), sae.W_enc)
        values, indices = topk_codes(pre, sae.cfg.k)
        return SparseCodes.from_topk(values, indices)  # keeps the positive ones
    return SparseCodes.from_dense(sae.encode(x))


def topk_codes(pre: Float[torch.Tensor, "n f"], k: int
               ) -> tuple[Float[torch.Tensor, "n k"], Int[torch.Tensor, "n k"]]:
    """Each row's k largest pre-activations (values, columns), in no particular order.

    On a CPU, 16-bit floats are selected by their bits read as int16: positive floats order
    as their bit patterns do and every negative one reads below every positive one, so the
    positive values selected are the same (up to which of equal values is taken at the k-th
    place, as with any top-k), and integer comparisons skip a float conversion per element
    (~1.4x faster over 2,048 columns), and the selection runs in two stages (`group_topk`,
    1.4-2x faster again over 2,048-65,536 columns). The codes keep only positive values."""
    if pre.device.type == "cpu" and pre.dtype in (torch.bfloat16, torch.float16):
        indices = group_topk(pre.view(torch.int16), k)
        return pre.gather(1, indices), indices
    return pre.topk(k, dim=-1, sorted=False)


TOKEN_BITS = 32
"""A (feature, token) pair is one int64 key: feature << 32 | token id."""
TOKEN_KEYS_PENDING = 1 << 22
"""(feature, token) keys held before they are folded into the running counts (or more, up to
as many as the running counts hold, so that folding costs O(n log n) over the harvest)."""


TOP_PENDING = 1 << 18
"""Candidate entries a `TopPerFeature` gathers before it sorts them into its lists (or more, up
to as many as the lists hold, so that sorting costs O(n log n) over the harvest)."""


class TopPerFeature:
    """Each feature's n highest (value, position) entries, ties to the earlier position, kept
    where the values are; `payload` carries one more value per entry along.

    Offered entries that beat their feature's floor (its n-th best value at the last sort, a
    lower bound of the current one) are gathered and sorted in only when enough have come:
    no per-batch sort, and no read of the values back to the host."""

    def __init__(self, d: int, n: int, device: torch.device, *, payload: bool = False):
        self.n = n
        self.f = torch.zeros(0, dtype=torch.int64, device=device)
        self.v = torch.zeros(0, device=device)
        self.p = torch.zeros(0, dtype=torch.int64, device=device)
        self.x = torch.zeros(0, device=device) if payload else None
        self.floor = torch.full((d,), -torch.inf, device=device)
        self.pending: list[tuple] = []
        self.n_pending = 0

    def add(self, feats, vals, positions, payload=None) -> None:
        """Offer entries whose positions all follow the ones offered before."""
        # Only entries that beat a feature's n-th best (at the last sort) can enter its list.
        better = (vals > self.floor.index_select(0, feats)).nonzero().squeeze(1)
        self.pending.append(tuple(None if x is None else x.index_select(0, better)
                                  for x in (feats, vals, positions, payload)))
        self.n_pending += len(better)  # known: finding them has read their number already
        if self.n_pending > max(TOP_PENDING, len(self.f)):
            self.fold()

    def fold(self) -> None:
        """Sort the gathered entries into the lists (held ones first: they came earlier)."""
        if not self.pending:
            return
        f = torch.cat([self.f, *(e[0] for e in self.pending)])
        v = torch.cat([self.v, *(e[1] for e in self.pending)])
        key, order = torch.sort(_feature_desc_key(f, v), stable=True)
        f = key >> 32  # the sorted features, read from the key (no gather of all entries)
        rank = run_rank(f)
        keep = (rank < self.n).nonzero().squeeze(1)
        kept = order.index_select(0, keep)  # only the kept entries are gathered
        self.f, self.v = f.index_select(0, keep), v.index_select(0, kept)
        self.p = torch.cat([self.p, *(e[2] for e in self.pending)]).index_select(0, kept)
        if self.x is not None:
            x = torch.cat([self.x, *(e[3] for e in self.pending)])
            self.x = x.index_select(0, kept)
        full = (rank == self.n - 1).nonzero().squeeze(1)
        self.floor[f.index_select(0, full)] = v.index_select(0, order.index_select(0, full))
        self.pending, self.n_pending = [], 0

    def numpy(self) -> Triple:
        """(feature, value, position) in no particular order."""
        self.fold()
        return (self.f.cpu().numpy().astype(np.int64), self.v.cpu().numpy().astype(np.float32),
                self.p.cpu().numpy().astype(np.int64))


HIST_PER_DECADE = 10
HIST_DECADES = (-3, 4)
"""Activation histograms share one log-spaced grid: 10 bins per decade from 1e-3 to 1e4, one
bin below (0, 1e-3) and one above [1e4, inf); fixed edges make shard histograms add exactly."""
HIST_EDGES = np.float32(10.0) ** (np.arange(HIST_DECADES[0] * HIST_PER_DECADE,
                                            HIST_DECADES[1] * HIST_PER_DECADE + 1)
                                  / np.float32(HIST_PER_DECADE)).astype(np.float32)
N_BINS = len(HIST_EDGES) + 1


class HistogramBins:
    """Each activation's bin on the shared grid (`HIST_EDGES`), where the activations are.

    16-bit floats have 65,536 bit patterns, so their bins are read from a table of every
    pattern's bin (the grid's own search, run once per device), one gather instead of a
    binary search per value (~10x faster on a CPU); wider floats are searched."""

    def __init__(self, device: torch.device):
        self.edges = torch.from_numpy(HIST_EDGES).to(device)
        self.tables: dict[torch.dtype, torch.Tensor] = {}

    def __call__(self, values: Float[torch.Tensor, " n"]) -> Int[torch.Tensor, " n"]:
        if values.dtype not in (torch.bfloat16, torch.float16):
            return torch.bucketize(values.float(), self.edges, right=True)
        table = self.tables.get(values.dtype)
        if table is None:
            patterns = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32,
                                    device=self.edges.device).to(torch.int16)
            table = torch.bucketize(patterns.view(values.dtype).float(), self.edges, right=True)
            self.tables[values.dtype] = table
        return table.index_select(0, values.view(torch.int16).int() + (1 << 15))


def bin_edges(bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) activation of each bin (0 below the first edge, inf above the last)."""
    edges = np.concatenate([[0.0], HIST_EDGES.astype(np.float64), [np.inf]])
    bins = np.asarray(bins)
    return edges[bins], edges[bins + 1]


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


def _shr(z: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns."""
    return (z >> n) & ((1 << (64 - n)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64 (Steele, Lea & Flood) of int64 bit patterns: a bijection whose outputs
    read as independent uniform 64-bit numbers."""
    z = z + _signed(0x9E3779B97F4A7C15)
    z = (z ^ _shr(z, 30)) * _signed(0xBF58476D1CE4E5B9)
    z = (z ^ _shr(z, 27)) * _signed(0x94D049BB133111EB)
    return z ^ _shr(z, 31)


FEATURE_SALT = 1 << 62
"""Features are mixed apart from token positions (`sample_priority`)."""


def sample_priority(feature_mix: torch.Tensor, position_mix: torch.Tensor) -> torch.Tensor:
    """A pseudo-random number in [0, 1) per (feature, global token position), from their
    mixes mix64(feature + FEATURE_SALT) and mix64(position): the top 24 bits of their XOR, as
    float32 (exact). The decile examples of a feature are the entries of highest priority in
    their range: a uniform sample (for one feature, XOR with its mix permutes the positions'
    uniform numbers) that any split of the corpus into shards selects identically. The
    harvest mixes each feature once and each token once, and combines them per entry."""
    return _shr(feature_mix ^ position_mix, 40).float() / float(1 << 24)


def sorted_values(x: Int[torch.Tensor, " n"]) -> Int[torch.Tensor, " n"]:
    """`x` sorted ascending, without the permutation: on a CPU by numpy's vectorised sort
    (~1.5x torch's for int64 keys), elsewhere by torch's."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy()))
    return torch.sort(x).values


class TokenCounts:
    """Firing counts per (feature, token) pair, folded as they come where the keys are: memory
    grows with the distinct pairs, not the tokens."""

    def __init__(self, device: torch.device):
        self.keys = torch.zeros(0, dtype=torch.int64, device=device)
        self.counts = torch.zeros(0, dtype=torch.int64, device=device)
        self.pending: list[torch.Tensor] = []
        self.n_pending = 0

    def add(self, features, tokens) -> None:
        self.pending.append((features.long() << TOKEN_BITS) | tokens.long())
        self.n_pending += len(self.pending[-1])
        if self.n_pending > max(TOKEN_KEYS_PENDING, len(self.keys)):
            self.fold()

    def fold(self) -> None:
        if not self.pending:
            return
        # The new keys sorted and counted by their runs (no weights to carry through the
        # permutation), then merged with the held counts: a sort of distinct pairs only.
        new = torch.cat(self.pending) if len(self.pending) > 1 else self.pending[0]
        keys, counts = torch.unique_consecutive(sorted_values(new), return_counts=True)
        if len(self.keys):
            keys, order = torch.sort(torch.cat([self.keys, keys]))
            counts = torch.cat([self.counts, counts]).index_select(0, order)
            # each key at most twice (once held, once new): runs summed by a running sum
            keys, runs = torch.unique_consecutive(keys, return_counts=True)
            running = counts.cumsum(0).index_select(0, runs.cumsum(0) - 1)
            counts = torch.diff(running, prepend=running.new_zeros(1))
        self.keys, self.counts = keys, counts
        self.pending, self.n_pending = [], 0

    def numpy(self) -> Triple:
        """(feature, token id, firing count), ordered by feature then token."""
        self.fold()
        keys = self.keys.cpu().numpy()
        return keys >> TOKEN_BITS, keys & ((1 << TOKEN_BITS) - 1), self.counts.cpu().numpy()


class FeatureAccumulator:
    """Accumulates firing statistics of one SAE over batches of sparse activations.

    Everything is reduced where the codes are (the GPU when the SAEs run there) and held per
    feature, per (feature, token) pair or per pair of features; only `block_firings` in full
    (small corpora) moves to the host batch by batch.

    Args:
        d_sae: number of features.
        n_blocks: number of blocks in the corpus.
        block_size: tokens per block.
        threshold: a feature fires on a token when its activation is above this.
        n_examples: top activating examples kept per feature.
        firings_top: blocks per feature kept in `block_firings` (None: every firing block).
        shard_blocks: activation sums are added shard by shard (blocks of this many), as a
            sharded build merges them, so that both give the same floats.
        per_bin: decile-example candidates kept per (feature, histogram bin).
    """

    def __init__(self, d_sae: int, n_blocks: int, *, block_size: int, threshold: float,
                 n_examples: int, firings_top: int | None = None,
                 shard_blocks: int | None = None, per_bin: int = 3):
        self.d_sae, self.n_blocks, self.block_size = d_sae, n_blocks, block_size
        self.threshold, self.n_examples, self.per_bin = threshold, n_examples, per_bin
        self.firings_top, self.shard_blocks = firings_top, shard_blocks
        self._on(torch.device("cpu"))
        self._firings: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.n_tokens = 0
        self._shard: int | None = None

    def _on(self, device: torch.device) -> None:
        """Per-feature state on `device`, where the codes are (moved there on first use)."""
        d = self.d_sae
        self.device = device
        self.firing_count = torch.zeros(d, dtype=torch.int64, device=device)
        self.block_count = torch.zeros(d, dtype=torch.int64, device=device)
        self.act_sum = torch.zeros(d, dtype=torch.float64, device=device)
        self._shard_sum = torch.zeros(d, dtype=torch.float64, device=device)
        self.max_act = torch.zeros(d, device=device)
        self._top = TopPerFeature(d, self.n_examples, device)
        self._top_blocks = TopPerFeature(d, self.firings_top or 1, device)
        self._tokens = TokenCounts(device)
        self.gram = BlockGram(d, device)
        self.histogram = torch.zeros(d * N_BINS, dtype=torch.int64, device=device)
        self._bins = HistogramBins(device)
        self._samples = TopPerFeature(d * N_BINS, self.per_bin, device, payload=True)
        self._feature_mix = mix64(torch.arange(d, device=device) + FEATURE_SALT)

    @torch.no_grad()
    def update(self, start: int, codes: SparseCodes, token_ids: Int[torch.Tensor, "b t"],
               mask: Bool[torch.Tensor, "b t"], *, masked: bool = False) -> None:
        """Add the codes of blocks start..start+b (rows index the flattened b*t tokens).
        `masked`: the codes hold only positions in `mask` already (as `encode_batch` makes
        them), so they are not filtered again."""
        device = codes.rows.device
        if device != self.device:
            if self.n_tokens:
                raise ValueError("an accumulator's codes must all come from one device")
            self._on(device)
        shard = start // self.shard_blocks if self.shard_blocks else 0
        if shard != self._shard:
            self._end_shard()
            self._shard = shard
        mask = mask.to(device).reshape(-1)
        rows, feats, codes_vals = codes.rows, codes.features, codes.values
        if not masked:
            keep = mask[rows].nonzero().squeeze(1)
            rows, feats, codes_vals = (x.index_select(0, keep) for x in (rows, feats, codes_vals))
        vals = codes_vals.float()
        self.n_tokens += int(mask.sum())
        # the firing entries, found once and gathered (a boolean index would find them again
        # per use, and `index_select` gathers ~2x faster than indexing on a CPU); codes are
        # positive, so at a threshold of 0 or below every one fires
        fired = None if self.threshold <= 0 else (vals > self.threshold).nonzero().squeeze(1)
        if fired is None or len(fired) == len(vals):  # every code fires: nothing to gather
            f_rows, f_feats, f_vals = rows, feats, vals
        else:
            f_rows, f_feats, f_vals = (x.index_select(0, fired) for x in (rows, feats, vals))
        self.firing_count += torch.bincount(f_feats, minlength=self.d_sae)
        self._shard_sum.index_add_(0, f_feats, f_vals.double())
        self.max_act.scatter_reduce_(0, feats, vals, reduce="amax")
        positions = rows + start * self.block_size
        self._top.add(feats, vals, positions)
        # Every code is positive: each goes into its feature's histogram and may be sampled.
        keys = feats * N_BINS + self._bins(codes_vals)
        self.histogram.index_add_(0, keys, torch.ones_like(keys))
        token_mix = mix64(torch.arange(start * self.block_size,
                                       (start + len(token_ids)) * self.block_size,
                                       device=device))
        priority = sample_priority(self._feature_mix.index_select(0, feats),
                                   token_mix.index_select(0, rows))
        self._samples.add(keys, priority, positions, vals)
        self._blocks(start, len(token_ids), f_rows, f_feats, f_vals)
        toks = token_ids.to(device).reshape(-1).index_select(0, f_rows)
        self._tokens.add(f_feats, toks)

    def _end_shard(self) -> None:
        self.act_sum += self._shard_sum
        self._shard_sum.zero_()

    def _blocks(self, start: int, n_blocks: int, rows, feats, vals) -> None:
        """Per (block, feature): block counts, co-occurrence and the block's top activation."""
        # Each (block, feature) cell's best activation in a dense row of the batch's cells
        # (no sort): the firing values are positive, so a cell fired if its best is above 0.
        keys = (rows // self.block_size) * self.d_sae + feats
        cells = torch.zeros(n_blocks * self.d_sae, device=vals.device)
        cells.scatter_reduce_(0, keys, vals, reduce="amax")
        uniq = (cells > 0).nonzero().squeeze(1)
        best = cells.index_select(0, uniq)
        block, feature = uniq // self.d_sae, uniq % self.d_sae
        self.block_count += torch.bincount(feature, minlength=self.d_sae)
        self.gram.add(block, feature, n_blocks)
        if self.firings_top is None:
            self._firings.append(((block + start).cpu().numpy(), feature.cpu().numpy(),
                                  best.cpu().numpy()))
        else:
            self._top_blocks.add(feature, best, block + start)

    def result(self) -> FeatureStats:
        """Final statistics (call once, after the last batch)."""
        self._end_shard()
        return stats_from(count=self.firing_count.cpu().numpy(),
                          block_count=self.block_count.cpu().numpy(),
                          act_sum=self.act_sum.cpu().numpy(),
                          max_act=self.max_act.cpu().numpy(), top=self.top(),
                          firings=self.firings(), firings_top=self.firings_top,
                          tokens=self.token_counts(), n_tokens=self.n_tokens,
                          n_blocks=self.n_blocks, block_size=self.block_size,
                          n_examples=self.n_examples, cooccurrence=self.gram,
                          histogram=self.histogram_counts(), samples=self.samples(),
                          per_bin=self.per_bin)

    def histogram_counts(self) -> Int[np.ndarray, "f bins"]:
        return self.histogram.reshape(self.d_sae, N_BINS).cpu().numpy()

    def samples(self) -> Samples:
        """Decile-example candidates: (feature * N_BINS + bin, priority, position, act)."""
        s = self._samples
        s.fold()
        assert s.x is not None  # made with a payload (the activations)
        return (s.f.cpu().numpy().astype(np.int64), s.v.cpu().numpy().astype(np.float32),
                s.p.cpu().numpy().astype(np.int64), s.x.cpu().numpy().astype(np.float32))

    def top(self) -> Triple:
        """Top-example candidates: (feature, activation, global token position)."""
        return self._top.numpy()

    def firings(self) -> Triple:
        """(block, feature, max activation in the block): every firing, ordered by block then
        feature, or each feature's `firings_top` best blocks in no particular order."""
        if self.firings_top is not None:
            f, a, b = self._top_blocks.numpy()
            return b, f, a
        if not self._firings:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        b, f, a = (np.concatenate(x) for x in zip(*self._firings))
        return b.astype(np.int64), f.astype(np.int64), a.astype(np.float32)

    def token_counts(self) -> Triple:
        """(feature, token id, firing count), ordered by feature then token."""
        return self._tokens.numpy()


def select_top(triple: Triple, n: int, *payload: np.ndarray) -> tuple:
    """Each feature's n highest (feature, value, position) entries, ties to the earlier
    position, ordered by feature, value descending (with any payload arrays alongside)."""
    f, v, p = triple
    order = np.lexsort((p, -v.astype(np.float64), f))
    f = f[order]
    keep = np.arange(len(f)) - np.searchsorted(f, f, side="left") < n
    return (f[keep], *(x[order][keep] for x in (v, p, *payload)))


@dataclass(frozen=True)
class DecileExamples:
    """Examples from across each feature's activation range, one row per example."""

    feature: Int[np.ndarray, " e"]
    decile: Int[np.ndarray, " e"]
    """1..10: the decile of the feature's positive activations its range covers (by the
    middle of its bins' share); a bin wider than a decile takes the deciles it covers."""
    act_lo: Float[np.ndarray, " e"]
    act_hi: Float[np.ndarray, " e"]
    share: Float[np.ndarray, " e"]
    """Share of the feature's positive activations inside [act_lo, act_hi)."""
    rank: Int[np.ndarray, " e"]
    act: Float[np.ndarray, " e"]
    position: Int[np.ndarray, " e"]
    """Global token position (block * block_size + position in block)."""


def decile_examples(histogram: Int[np.ndarray, "f bins"], samples: Samples, *,
                    per_decile: int) -> DecileExamples:
    """Each feature's `per_decile` examples of highest priority in each activation decile.

    Decile ranges follow histogram bin edges: bin b goes to decile
    floor(10 * (activations below b + half of b's) / all), so the ranges tile the activations.
    Candidates hold each bin's highest-priority entries, so each range's highest ones are
    among them: a uniform sample of the range, the same however the corpus was sharded.
    """
    counts = histogram.astype(np.float64)
    total = counts.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        middle = (np.cumsum(counts, 1) - counts / 2) / total
    decile_of_bin = np.minimum((10 * np.nan_to_num(middle)).astype(np.int64), 9)
    keys, prio, pos, act = samples
    feat, bins = keys // N_BINS, keys % N_BINS
    group = feat * 10 + decile_of_bin[feat, bins]
    g, _, pos, act = select_top((group, prio, pos), per_decile, act)
    rank = np.arange(len(g)) - np.searchsorted(g, g, side="left") + 1
    f, d = g // 10, g % 10
    # Each (feature, decile)'s bin range and share of the feature's activations.
    in_decile = counts > 0
    lo_bin = np.full((len(counts), 10), N_BINS, np.int64)
    hi_bin = np.full((len(counts), 10), -1, np.int64)
    share = np.zeros((len(counts), 10))
    rows, bins_ = np.nonzero(in_decile)
    dec = decile_of_bin[rows, bins_]
    np.minimum.at(lo_bin, (rows, dec), bins_)
    np.maximum.at(hi_bin, (rows, dec), bins_)
    np.add.at(share, (rows, dec), counts[rows, bins_] / total[rows, 0])
    lo, _ = bin_edges(lo_bin[f, d])
    _, hi = bin_edges(hi_bin[f, d])
    return DecileExamples(f, d + 1, lo, hi, share[f, d], rank, act, pos)


def stats_from(*, count: np.ndarray, block_count: np.ndarray, act_sum: np.ndarray,
               max_act: np.ndarray, top: Triple, firings: Triple, firings_top: int | None,
               tokens: Triple, n_tokens: int, n_blocks: int, block_size: int,
               n_examples: int, cooccurrence, histogram: np.ndarray | None = None,
               samples: Samples | None = None, per_bin: int = 3) -> FeatureStats:
    """FeatureStats from summed counts and sums, top-example candidates in any order (each
    feature keeps its `n_examples` highest, ties to the earlier token) and firings."""
    d_sae = len(count)
    f, v, p = select_top(top, n_examples)
    rank = np.arange(len(f)) - np.searchsorted(f, f, side="left")
    top_acts = np.zeros((n_examples, d_sae), np.float32)
    top_pos = np.zeros((n_examples, d_sae), np.int64)
    top_acts[rank, f] = v
    top_pos[rank, f] = p
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, act_sum / count, np.nan)
    blocks, feats, acts = firings
    if firings_top is not None:
        feats, acts, blocks = select_top((feats, acts, blocks), firings_top)
        order = np.lexsort((feats, blocks))
        blocks, feats, acts = blocks[order], feats[order], acts[order]
    return FeatureStats(
        firing_count=count, block_count=block_count.astype(np.int64), mean_act=mean,
        max_act=max_act, top_acts=top_acts, top_blocks=top_pos // block_size,
        top_positions=top_pos % block_size,
        block_firings=(blocks.astype(np.int64), feats.astype(np.int64), acts.astype(np.float32)),
        token_counts=tokens, n_tokens=n_tokens, n_blocks=n_blocks, cooccurrence=cooccurrence,
        firings_top=firings_top, histogram=histogram,
        samples=None if samples is None else select_samples(samples, per_bin))


def select_samples(samples: Samples, per_bin: int) -> Samples:
    """Each (feature, bin)'s `per_bin` candidates of highest priority, ties to the earlier
    position: what one accumulator over the whole corpus keeps."""
    return select_top(samples[:3], per_bin, samples[3])


def run_rank(f: Int[torch.Tensor, " m"]) -> Int[torch.Tensor, " m"]:
    """Each entry's place within its run of equal values in sorted `f` (0 for a run's first):
    its index less its run's start (linear in the entries, where searching each start costs a
    log factor)."""
    _, counts = torch.unique_consecutive(f, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(len(f), device=f.device) - starts.repeat_interleave(counts)


def _feature_desc_key(f: Int[torch.Tensor, " m"], v: Float[torch.Tensor, " m"]
                      ) -> Int[torch.Tensor, " m"]:
    """One int64 per entry ordering by feature ascending, then value descending: the feature
    in the high 32 bits, the float32 value's bits made order-preserving and reversed in the
    low 32 (one stable sort instead of two)."""
    mono = ordered_int32(v.float().contiguous()).long()  # ascending with the value
    return (f.long() << 32) | ((1 << 31) - 1 - mono)


DENSE_GRAM_ENTRIES = 1 << 25
"""Above this many (block, live feature) entries, `cooccurrence` uses the sparse product."""


def cooccurrence(block_ids: Int[np.ndarray, " m"], features: Int[np.ndarray, " m"], *,
                 n_blocks: int, d_sae: int, chunk: int = 2048,
                 dense_limit: int = DENSE_GRAM_ENTRIES) -> PairCounts:
    """n_ij = blocks where features i and j both fire, for i < j, from (block, feature)
    firings: a recount independent of `BlockGram` (tests and small corpora).

    The Gram matrix of the blocks' firing indicators over the features that fire, by dense
    BLAS products of `chunk` features at a time (exact: float32 holds every count below 2^24);
    a sparse product when the indicator matrix would hold more than `dense_limit` entries.

    Args:
        block_ids, features: one entry per (block, feature) firing, each pair at most once.
    Returns:
        (i, j, n_ij) for every pair with n_ij > 0, sorted by (i, j).
    """
    live, column = np.unique(features, return_inverse=True)
    if n_blocks * len(live) <= dense_limit and n_blocks < (1 << 24):
        fires = np.zeros((n_blocks, len(live)), np.float32)
        fires[block_ids, column] = 1.0
        i, j, n = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for lo in range(0, len(live), chunk):
            gram = np.triu(fires[:, lo:lo + chunk].T @ fires[:, lo:], k=1)
            r, c = np.nonzero(gram)  # row-major, so sorted by (i, j)
            i.append(live[lo + r])
            j.append(live[lo + c])
            n.append(gram[r, c].astype(np.int64))
        return np.concatenate(i), np.concatenate(j), np.concatenate(n)
    ones = np.ones(len(block_ids), dtype=np.int32)
    fires = sp.csr_matrix((ones, (block_ids, features)), shape=(n_blocks, d_sae))
    counts = sp.triu(fires.T @ fires, k=1).tocoo()
    order = np.lexsort((counts.col, counts.row))
    return (counts.row[order].astype(np.int64), counts.col[order].astype(np.int64),
            counts.data[order].astype(np.int64))


def top_tokens(stats: FeatureStats, *, n: int = 5) -> list[list[tuple[int, int]]]:
    """Per feature, its `n` most frequent firing tokens as (token id, count), commonest first."""
    feats, toks, counts = stats.token_counts
    order = np.lexsort((toks, -counts, feats))
    feats, toks, counts = feats[order], toks[order], counts[order]
    group_start = np.searchsorted(feats, feats, side="left")
    keep = (np.arange(len(feats)) - group_start) < n
    out: list[list[tuple[int, int]]] = [[] for _ in range(len(stats.firing_count))]
    for f, t, c in zip(feats[keep].tolist(), toks[keep].tolist(), counts[keep].tolist()):
        out[f].append((t, c))
    return out


@dataclass(frozen=True)
class TokenFeatures:
    """The SAE features active on one token of a text."""

    position: int
    token: str
    features: tuple[tuple[int, float], ...]
    """(feature, activation), strongest first."""


@torch.no_grad()
def features_of(lm, sae, text: str, *, top: int = 8) -> list[TokenFeatures]:
    """Per token of `text`, the SAE's active features with their activations.

    The text is preceded by the end-of-text token, which absorbs the attention sink of the
    first position, so the first real token reads like any other.
    """
    from atlas.saes import hook_of, sae_input

    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise AtlasError("the text is empty; give some words to read")
    hook = hook_of(sae)
    full = torch.tensor([[lm.tokenizer.eos_token_id, *ids]])
    acts = capture_residuals(lm, full, [hook])[hook.name][0, 1:]
    codes = encode_sparse(sae, sae_input(sae, acts.to(sae.W_dec.device)))
    out = []
    for pos, tok in enumerate(lm.tokenizer.batch_decode([[i] for i in ids])):
        sel = codes.rows == pos
        vals, feats = codes.values[sel], codes.features[sel]
        order = torch.argsort(vals, descending=True)[:top]
        out.append(TokenFeatures(pos, tok, tuple((int(feats[i]), float(vals[i]))
                                                 for i in order)))
    return out
