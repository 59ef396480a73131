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

from atlas.corpus import Blocks
from atlas.errors import AtlasError
from atlas.models import HookPoint, LoadedModel, capture_residuals

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
                  hooks: Sequence[HookPoint], *, batch_blocks: int,
                  offset: int = 0) -> Iterator[ActivationBatch]:
    """`forward_batches` over a run of blocks whose first is block `offset` of the corpus."""
    ids = torch.from_numpy(np.ascontiguousarray(token_ids))
    base = torch.from_numpy(np.ascontiguousarray(mask))
    for start in range(0, len(ids), batch_blocks):
        batch = ids[start:start + batch_blocks]
        keep = base[start:start + batch_blocks]
        # Short (document) blocks: the model runs only up to the batch's last counted
        # position (causal attention: later padding cannot change earlier positions), and the
        # residuals are padded back with zeros that no mask counts.
        counted = keep.any(0).nonzero()
        width = int(counted.max()) + 1 if len(counted) else 1
        acts = capture_residuals(lm, batch[:, :width], hooks)
        if width < batch.shape[1]:
            acts = {k: torch.nn.functional.pad(a, (0, 0, 0, batch.shape[1] - width))
                    for k, a in acts.items()}
        keep = keep.to(lm.device)
        yield ActivationBatch(offset + start, batch, acts,
                              {name: sink_free(a, keep) for name, a in acts.items()})


PairCounts = tuple[Int[np.ndarray, " p"], Int[np.ndarray, " p"], Int[np.ndarray, " p"]]
Triple = tuple[np.ndarray, np.ndarray, np.ndarray]


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
    """(block, feature, max activation in the block) for every block where a feature fires."""
    token_counts: tuple[Int[np.ndarray, " p"], Int[np.ndarray, " p"], Int[np.ndarray, " p"]]
    """(feature, token id, firing count) for every pair that fired at least once."""
    n_tokens: int
    """Tokens that counted (mask true)."""
    n_blocks: int
    cooccurrence: PairCounts | None = None
    """(i, j, n_ij) when already counted (merged shards); else computed from block_firings."""


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
        rows = torch.arange(len(values), device=values.device).repeat_interleave(values.shape[1])
        values, indices = values.reshape(-1), indices.reshape(-1)
        keep = values > 0
        return cls(rows[keep], indices[keep], values[keep])


def encode_sparse(sae: SAE, x: Float[torch.Tensor, "n d"]) -> SparseCodes:
    """SAE activations as sparse entries; TopK SAEs skip the dense (n, d_sae) code entirely.

    The shortcut is taken for plain TopK only: subclasses such as AbsTopK select by another
    rule, so they go through their own `encode`."""
    if (type(sae) is TopKSAE and not sae.cfg.rescale_acts_by_decoder_norm
            and not sae.use_error_term):
        pre = sae.process_sae_in(x) @ sae.W_enc + sae.b_enc
        values, indices = pre.topk(sae.cfg.k, dim=-1, sorted=False)
        return SparseCodes.from_topk(values.relu(), indices)
    return SparseCodes.from_dense(sae.encode(x))


TOKEN_BITS = 32
"""A (feature, token) pair is one int64 key: feature << 32 | token id."""
TOKEN_KEYS_PENDING = 1 << 22
"""(feature, token) keys held before they are folded into the running counts."""


class FeatureAccumulator:
    """Accumulates firing statistics of one SAE over batches of sparse activations.

    Args:
        d_sae: number of features.
        n_blocks: number of blocks in the corpus.
        block_size: tokens per block.
        threshold: a feature fires on a token when its activation is above this.
        n_examples: top activating examples kept per feature.
    """

    def __init__(self, d_sae: int, n_blocks: int, *, block_size: int, threshold: float,
                 n_examples: int):
        self.d_sae, self.n_blocks, self.block_size = d_sae, n_blocks, block_size
        self.threshold, self.n_examples = threshold, n_examples
        self._on(torch.device("cpu"))
        self._firings: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        # (feature, token) firing counts, reduced as they come: compacted keys and counts, plus
        # the keys of recent batches until they pass TOKEN_KEYS_PENDING.
        self._token_keys = np.zeros(0, np.int64)
        self._token_counts = np.zeros(0, np.int64)
        self._pending: list[np.ndarray] = []
        self._n_pending = 0
        self.n_tokens = 0

    def _on(self, device: torch.device) -> None:
        """Per-feature state on `device`, where the codes are (moved there on first use)."""
        d = self.d_sae
        self.device = device
        self.firing_count = torch.zeros(d, dtype=torch.int64, device=device)
        self.act_sum = torch.zeros(d, dtype=torch.float64, device=device)
        self.max_act = torch.zeros(d, device=device)
        # Running top examples: (feature, activation, global token position), <= n per feature.
        self._top = (torch.zeros(0, dtype=torch.int64, device=device),
                     torch.zeros(0, device=device),
                     torch.zeros(0, dtype=torch.int64, device=device))
        self._floor = torch.full((d,), -torch.inf, device=device)

    @torch.no_grad()
    def update(self, start: int, codes: SparseCodes, token_ids: Int[torch.Tensor, "b t"],
               mask: Bool[torch.Tensor, "b t"]) -> None:
        """Add the codes of blocks start..start+b (rows index the flattened b*t tokens).

        Counts, sums, maxima and top examples are reduced where the codes are (the GPU when
        the SAEs run there); only per-block and per-(feature, token) reductions leave it."""
        device = codes.rows.device
        if device != self.device:
            if self.n_tokens:
                raise ValueError("an accumulator's codes must all come from one device")
            self._on(device)
        mask = mask.to(device).reshape(-1)
        keep = mask[codes.rows]
        rows, feats, vals = codes.rows[keep], codes.features[keep], codes.values.float()[keep]
        self.n_tokens += int(mask.sum())
        fired = vals > self.threshold
        self.firing_count += torch.bincount(feats[fired], minlength=self.d_sae)
        self.act_sum.index_add_(0, feats[fired], vals[fired].double())
        self.max_act.scatter_reduce_(0, feats, vals, reduce="amax")
        self._merge_top(feats, vals, rows + start * self.block_size)
        self._block_firings(start, rows[fired], feats[fired], vals[fired])
        toks = token_ids.to(device).reshape(-1)[rows[fired]]
        keys = ((feats[fired].long() << TOKEN_BITS) | toks.long()).cpu().numpy()
        self._pending.append(keys)
        self._n_pending += len(keys)
        if self._n_pending > TOKEN_KEYS_PENDING:
            self._compact_tokens()

    def _compact_tokens(self) -> None:
        """Fold the pending (feature, token) keys into the compacted counts: memory then grows
        with the distinct pairs, not with the tokens."""
        if not self._pending:
            return
        keys = np.concatenate([self._token_keys, *self._pending])
        weights = np.concatenate([self._token_counts,
                                  np.ones(self._n_pending, np.int64)])
        self._token_keys, inverse = np.unique(keys, return_inverse=True)
        self._token_counts = np.bincount(inverse, weights=weights).astype(np.int64)
        self._pending, self._n_pending = [], 0

    def _block_firings(self, start: int, rows, feats, vals) -> None:
        keys = (rows // self.block_size) * self.d_sae + feats
        uniq, inverse = torch.unique(keys, return_inverse=True)
        best = torch.zeros(len(uniq), device=vals.device).scatter_reduce_(
            0, inverse, vals, reduce="amax", include_self=False)
        uniq, best = uniq.cpu(), best.cpu()
        self._firings.append(((uniq // self.d_sae + start).numpy(),
                              (uniq % self.d_sae).numpy(), best.numpy()))

    def _merge_top(self, feats, vals, positions) -> None:
        # Only entries that beat a feature's current n-th best can enter its top list.
        better = vals > self._floor[feats]
        feats, vals, positions = feats[better], vals[better], positions[better]
        f = torch.cat([self._top[0], feats])
        v = torch.cat([self._top[1], vals])
        p = torch.cat([self._top[2], positions])
        order = _lexsort(-v.double(), f)
        f, v, p = f[order], v[order], p[order]
        first = torch.searchsorted(f, f, side="left")
        rank = torch.arange(len(f), device=f.device) - first
        keep = rank < self.n_examples
        self._top = (f[keep], v[keep], p[keep])
        full = rank == self.n_examples - 1
        self._floor[f[full]] = v[full]

    def result(self) -> FeatureStats:
        """Final statistics (call once, after the last batch)."""
        return stats_from(count=self.firing_count.cpu().numpy(),
                          act_sum=self.act_sum.cpu().numpy(),
                          max_act=self.max_act.cpu().numpy(), top=self.top(),
                          firings=self.firings(),
                          tokens=self.token_counts(), n_tokens=self.n_tokens,
                          n_blocks=self.n_blocks, block_size=self.block_size,
                          n_examples=self.n_examples)

    def top(self) -> Triple:
        """Top-example candidates: (feature, activation, global token position)."""
        f, v, p = (x.cpu().numpy() for x in self._top)
        return f.astype(np.int64), v.astype(np.float32), p.astype(np.int64)

    def firings(self) -> Triple:
        """(block, feature, max activation in the block), ordered by block then feature."""
        if not self._firings:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        b, f, a = (np.concatenate(x) for x in zip(*self._firings))
        return b.astype(np.int64), f.astype(np.int64), a.astype(np.float32)

    def token_counts(self) -> Triple:
        """(feature, token id, firing count), ordered by feature then token."""
        self._compact_tokens()
        keys = self._token_keys
        return keys >> TOKEN_BITS, keys & ((1 << TOKEN_BITS) - 1), self._token_counts.copy()


def stats_from(*, count: np.ndarray, act_sum: np.ndarray, max_act: np.ndarray, top: Triple,
               firings: Triple, tokens: Triple, n_tokens: int, n_blocks: int, block_size: int,
               n_examples: int, cooccurrence: PairCounts | None = None) -> FeatureStats:
    """FeatureStats from summed counts and sums, top-example candidates in any order (each
    feature keeps its `n_examples` highest, ties to the earlier token) and firings."""
    d_sae = len(count)
    f, v, p = top
    order = np.lexsort((p, -v.astype(np.float64), f))
    f, v, p = f[order], v[order], p[order]
    rank = np.arange(len(f)) - np.searchsorted(f, f, side="left")
    keep = rank < n_examples
    top_acts = np.zeros((n_examples, d_sae), np.float32)
    top_pos = np.zeros((n_examples, d_sae), np.int64)
    top_acts[rank[keep], f[keep]] = v[keep]
    top_pos[rank[keep], f[keep]] = p[keep]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, act_sum / count, np.nan)
    blocks, feats, acts = firings
    return FeatureStats(
        firing_count=count, block_count=np.bincount(feats, minlength=d_sae), mean_act=mean,
        max_act=max_act, top_acts=top_acts, top_blocks=top_pos // block_size,
        top_positions=top_pos % block_size,
        block_firings=(blocks.astype(np.int64), feats.astype(np.int64), acts.astype(np.float32)),
        token_counts=tokens, n_tokens=n_tokens, n_blocks=n_blocks, cooccurrence=cooccurrence)


def _lexsort(minor: torch.Tensor, major: torch.Tensor) -> torch.Tensor:
    """Order by `major`, then `minor` (both ascending), with two stable sorts."""
    order = torch.argsort(minor, stable=True)
    return order[torch.argsort(major[order], stable=True)]


DENSE_GRAM_ENTRIES = 1 << 25
"""Above this many (block, live feature) entries, co-occurrence uses the sparse product."""


def cooccurrence(block_ids: Int[np.ndarray, " m"], features: Int[np.ndarray, " m"], *,
                 n_blocks: int, d_sae: int, chunk: int = 2048,
                 dense_limit: int = DENSE_GRAM_ENTRIES) -> PairCounts:
    """n_ij = blocks where features i and j both fire, for i < j.

    The Gram matrix of the blocks' firing indicators over the features that fire, by dense
    BLAS products of `chunk` features at a time (exact: float32 holds every count below 2^24);
    a sparse product when the indicator matrix would hold more than `dense_limit` entries (a
    whole corpus at once).

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
