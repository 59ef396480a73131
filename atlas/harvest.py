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

from atlas.corpus import Blocks
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
    ids = torch.from_numpy(blocks.token_ids)
    base = torch.from_numpy(blocks.mask)
    for start in range(0, blocks.n_blocks, batch_blocks):
        batch = ids[start:start + batch_blocks]
        acts = capture_residuals(lm, batch, hooks)
        mask = base[start:start + batch_blocks].to(lm.device)
        yield ActivationBatch(start, batch, acts,
                              {name: sink_free(a, mask) for name, a in acts.items()})


@dataclass(frozen=True)
class FeatureStats:
    """What the harvest of one SAE produced; arrays are indexed by feature."""

    firing_count: Int[np.ndarray, " f"]
    block_count: Int[np.ndarray, " f"]
    mean_act: Float[np.ndarray, " f"]
    """Mean activation over the tokens where the feature fires (NaN when it never fires)."""
    max_act: Float[np.ndarray, " f"]
    top_acts: Float[np.ndarray, "n_examples f"]
    top_blocks: Int[np.ndarray, "n_examples f"]
    top_positions: Int[np.ndarray, "n_examples f"]
    block_firings: tuple[Int[np.ndarray, " m"], Int[np.ndarray, " m"], Float[np.ndarray, " m"]]
    """(block, feature, max activation in the block) for every block where a feature fires."""
    token_counts: tuple[Int[np.ndarray, " p"], Int[np.ndarray, " p"], Int[np.ndarray, " p"]]
    """(feature, token id, firing count) for every pair that fired at least once."""
    n_tokens: int
    """Tokens that counted (mask true)."""
    n_blocks: int


class FeatureAccumulator:
    """Accumulates firing statistics of one SAE over batches of activations.

    Args:
        d_sae: number of features.
        n_blocks: number of blocks in the corpus.
        threshold: a feature fires on a token when its activation is above this.
        n_examples: top activating examples kept per feature.
    """

    def __init__(self, d_sae: int, n_blocks: int, *, threshold: float, n_examples: int):
        self.d_sae, self.n_blocks = d_sae, n_blocks
        self.threshold, self.n_examples = threshold, n_examples
        self.firing_count = torch.zeros(d_sae, dtype=torch.int64)
        self.act_sum = torch.zeros(d_sae, dtype=torch.float64)
        self.max_act = torch.zeros(d_sae)
        self.top_acts = torch.full((n_examples, d_sae), -torch.inf)
        self.top_pos = torch.zeros((n_examples, d_sae), dtype=torch.int64)
        self._firings: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._token_keys: list[np.ndarray] = []
        self.n_tokens = 0
        self.vocab_stride = 0

    @torch.no_grad()
    def update(self, start: int, feats: Float[torch.Tensor, "b t f"],
               token_ids: Int[torch.Tensor, "b t"], mask: Bool[torch.Tensor, "b t"]) -> None:
        """Add one batch of SAE activations for blocks start..start+b."""
        feats = feats.float().cpu() * mask.cpu().unsqueeze(-1)
        b, t, f = feats.shape
        fired = feats > self.threshold
        self.n_tokens += int(mask.sum())
        self.firing_count += fired.sum((0, 1))
        self.act_sum += torch.where(fired, feats, 0).sum((0, 1), dtype=torch.float64)
        flat = feats.reshape(b * t, f)
        self.max_act = torch.maximum(self.max_act, flat.max(0).values)
        self._merge_top(flat, start * t)
        block_max = feats.amax(1)
        rows, cols = (block_max > self.threshold).nonzero(as_tuple=True)
        self._firings.append(((rows + start).numpy(), cols.numpy(),
                              block_max[rows, cols].numpy()))
        tok_rows, tok_feats = fired.reshape(b * t, f).nonzero(as_tuple=True)
        toks = token_ids.reshape(-1).cpu()[tok_rows]
        self.vocab_stride = max(self.vocab_stride, int(token_ids.max()) + 1)
        self._token_keys.append(np.stack([tok_feats.numpy(), toks.numpy()], 1))

    def _merge_top(self, flat: torch.Tensor, offset: int) -> None:
        k = min(self.n_examples, flat.shape[0])
        vals, idx = flat.topk(k, dim=0)
        both_vals = torch.cat([self.top_acts, vals])
        both_pos = torch.cat([self.top_pos, idx + offset])
        keep = both_vals.topk(self.n_examples, dim=0).indices
        self.top_acts = both_vals.gather(0, keep)
        self.top_pos = both_pos.gather(0, keep)

    def result(self, block_size: int) -> FeatureStats:
        """Final statistics (call once, after the last batch)."""
        if self._firings:
            blocks, feats, acts = (np.concatenate(x) for x in zip(*self._firings))
        else:
            blocks = feats = np.zeros(0, np.int64)
            acts = np.zeros(0, np.float32)
        block_count = np.bincount(feats, minlength=self.d_sae)
        count = self.firing_count.numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, self.act_sum.numpy() / count, np.nan)
        top_acts = self.top_acts.numpy()
        top_pos = self.top_pos.numpy()
        return FeatureStats(
            firing_count=count, block_count=block_count, mean_act=mean,
            max_act=self.max_act.numpy(), top_acts=np.where(np.isfinite(top_acts), top_acts, 0),
            top_blocks=top_pos // block_size, top_positions=top_pos % block_size,
            block_firings=(blocks.astype(np.int64), feats.astype(np.int64),
                           acts.astype(np.float32)),
            token_counts=self._token_counts(), n_tokens=self.n_tokens, n_blocks=self.n_blocks)

    def _token_counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self._token_keys:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        pairs = np.concatenate(self._token_keys)
        keys = pairs[:, 0] * self.vocab_stride + pairs[:, 1]
        uniq, counts = np.unique(keys, return_counts=True)
        return uniq // self.vocab_stride, uniq % self.vocab_stride, counts


def cooccurrence(block_ids: Int[np.ndarray, " m"], features: Int[np.ndarray, " m"], *,
                 n_blocks: int, d_sae: int
                 ) -> tuple[Int[np.ndarray, " p"], Int[np.ndarray, " p"], Int[np.ndarray, " p"]]:
    """n_ij = blocks where features i and j both fire, for i < j, by a sparse product.

    Args:
        block_ids, features: one entry per (block, feature) firing, each pair at most once.
    Returns:
        (i, j, n_ij) for every pair with n_ij > 0, sorted by (i, j).
    """
    ones = np.ones(len(block_ids), dtype=np.int32)
    fires = sp.csr_matrix((ones, (block_ids, features)), shape=(n_blocks, d_sae))
    counts = sp.triu(fires.T @ fires, k=1).tocoo()
    order = np.lexsort((counts.col, counts.row))
    return (counts.row[order].astype(np.int64), counts.col[order].astype(np.int64),
            counts.data[order].astype(np.int64))


def top_tokens(stats: FeatureStats, *, n: int = 5) -> list[list[tuple[int, int]]]:
    """Per feature, its `n` most frequent firing tokens as (token id, count), most frequent first."""
    feats, toks, counts = stats.token_counts
    order = np.lexsort((toks, -counts, feats))
    feats, toks, counts = feats[order], toks[order], counts[order]
    group_start = np.searchsorted(feats, feats, side="left")
    keep = (np.arange(len(feats)) - group_start) < n
    out: list[list[tuple[int, int]]] = [[] for _ in range(len(stats.firing_count))]
    for f, t, c in zip(feats[keep].tolist(), toks[keep].tolist(), counts[keep].tolist()):
        out[f].append((t, c))
    return out
