"""Logit lens of SAE features: the tokens each decoder direction promotes and suppresses.

Definition (sae_vis / SAEDashboard, as Neuronpedia shows it): the logit effect of feature i is
W_dec[i] @ W_U, where W_U is the model's unembedding with the final norm's scale folded in and
centred over the vocabulary (TransformerLens `fold_ln` and `center_unembed`, the defaults that
sae_vis loads models with):

    effect[i, v] = sum_d W_dec[i, d] * g[d] * W_U[v, d]  -  mean over v' of the same

where g is the final norm's per-dimension scale (LayerNorm / RMSNorm weight; Gemma's RMSNorm
scales by 1 + weight, which `final_norm_scale` reads off the module itself). W_dec rows are
used as the SAE stores them (not scaled to unit norm): an effect is per unit of activation.
The norm's bias (LayerNorm) adds the same logits to every feature and is left out, as in
TransformerLens.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from jaxtyping import Float, Int
from torch import nn

log = logging.getLogger(__name__)

DEFINITION = "sae_vis"
"""W_dec @ (g * W_U), centred over the vocabulary (module docstring)."""
TOP_K = 10
"""Tokens kept per feature in each direction (Neuronpedia shows ten)."""
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm")


@dataclass(frozen=True)
class Unembedding:
    """What the logit lens reads from a model: W_U (vocab x d_model) and the final norm's
    per-dimension scale, or None when the model has no final norm with a weight."""

    W_U: Float[torch.Tensor, "vocab d"]
    scale: Float[torch.Tensor, " d"] | None
    norm: str | None
    """Name of the final norm module whose scale was folded in (None: none)."""


def final_norm(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The model's final norm: the last module named like one (`FINAL_NORM_NAMES`) outside
    the transformer blocks, e.g. model.norm (Llama, Gemma), transformer.ln_f (GPT-2)."""
    found = [(name, m) for name, m in model.named_modules()
             if name.rsplit(".", 1)[-1] in FINAL_NORM_NAMES
             and not any(part.isdigit() for part in name.split("."))]
    return found[-1] if found else None


@torch.no_grad()
def final_norm_scale(module: nn.Module, d_model: int) -> Float[torch.Tensor, " d"] | None:
    """The norm's per-dimension scale g: LayerNorm's weight; for an RMS norm, its output on a
    vector of ones (rms 1), which is g however the module parametrises it (Gemma: 1 + w)."""
    weight = getattr(module, "weight", None)
    if weight is None:
        return None
    if isinstance(module, nn.LayerNorm) or getattr(module, "bias", None) is not None:
        return weight.detach().float()
    ones = torch.ones(1, d_model, dtype=weight.dtype, device=weight.device)
    out = module(ones).float()[0]
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", 0.0)) or 0.0
    return out * float(np.sqrt(1.0 + eps))  # undo the epsilon's 1/sqrt(1 + eps)


def unembedding(lm) -> Unembedding:
    """The unembedding and final norm scale of a loaded model (`atlas.models.LoadedModel`)."""
    W_U = lm.model.get_output_embeddings().weight.detach()
    found = final_norm(lm.model)
    if found is None:
        return Unembedding(W_U, None, None)
    scale = final_norm_scale(found[1], lm.d_model)
    return Unembedding(W_U, scale, None if scale is None else found[0])


@dataclass(frozen=True)
class LogitLens:
    """Each feature's top and bottom tokens by logit effect."""

    top_ids: Int[np.ndarray, "f k"]
    top_values: Float[np.ndarray, "f k"]
    bottom_ids: Int[np.ndarray, "f k"]
    """Most suppressed first."""
    bottom_values: Float[np.ndarray, "f k"]


SCREEN_CANDIDATES = 32
"""Tokens per feature and direction that the bfloat16 screen hands to the exact float32 pass
(on 16,384 random unit decoders and SmolLM2's vocabulary: 64 took 13.4 s with every row
proven, 32 took 6.6 s with 6% of rows recomputed, 24 took 10.4 s with 31% recomputed)."""


@torch.no_grad()
def logit_lens(W_dec: Float[torch.Tensor, "f d"], unembed: Unembedding, *, k: int = TOP_K,
               chunk: int = 512, screen: bool = False) -> LogitLens:
    """Top-k and bottom-k tokens of every feature's centred logit effect (module docstring),
    `chunk` features at a time (memory: chunk x vocab floats) on W_dec's device.

    `screen` (CPUs with bfloat16 instructions, where a bfloat16 product runs ~3.5x float32's):
    a bfloat16 product picks each feature's SCREEN_CANDIDATES best tokens per direction, their
    effects are recomputed in float32, and a row is kept only where a rounding-error bound
    proves that no token outside the candidates can enter its top (bottom) k; other rows are
    computed again in float32. The result equals the float32 computation's."""
    device = W_dec.device
    # one float32 copy of the unembedding, scaled and centred in place (vocab x d floats)
    W_U = unembed.W_U.to(device=device, dtype=torch.float32, copy=True)
    if unembed.scale is not None:
        W_U.mul_(unembed.scale.to(device)[None, :])
    W_U.sub_(W_U.mean(0, keepdim=True))   # centre over the vocabulary
    k = min(k, W_U.shape[0])
    screened = screen and W_U.shape[0] > 4 * SCREEN_CANDIDATES
    if screened:
        screen_set = Screen.of(W_U)
        work = screen_set.workspace(min(chunk, len(W_dec)))
    parts: list[list[torch.Tensor]] = [[], [], [], []]
    redone = 0
    for lo in range(0, len(W_dec), chunk):
        rows = W_dec[lo:lo + chunk].float()
        if screened:
            top, bottom, proven = screen_set.lens(rows, k, work)
            if not bool(proven.all()):
                again = (~proven).nonzero().squeeze(1)
                redone += len(again)
                for t, exact in zip((top, bottom), _exact(rows[again], W_U, k)):
                    t[0][again], t[1][again] = exact
        else:
            top, bottom = _exact(rows, W_U, k)
        for out, x in zip(parts, (*top, *bottom)):
            out.append(x)
    if screened:
        log.debug("logit lens: bfloat16 screen, %d of %d features recomputed in float32",
                  redone, len(W_dec))
    ids_t, val_t, ids_b, val_b = (torch.cat(p).cpu().numpy() if p else np.zeros((0, k))
                                  for p in parts)
    return LogitLens(ids_t.astype(np.int64), val_t.astype(np.float32), ids_b.astype(np.int64),
                     val_b.astype(np.float32))


def _exact(rows, W_U, k: int):
    """((ids, effects) of the top k, (ids, effects) of the bottom k) of each row, in float32."""
    effect = rows @ W_U.T
    t, b = effect.topk(k, dim=1), effect.topk(k, dim=1, largest=False)
    return (t.indices, t.values), (b.indices, b.values)


UNIT_ROUNDOFF_BF16 = 2.0 ** -8
LONG_TOKENS = 0.02
"""Share of the vocabulary (the longest unembedding rows) the screen computes exactly."""


@dataclass(frozen=True)
class Screen:
    """The bfloat16 screen of `logit_lens`: the vocabulary split into its longest rows
    (computed exactly for every feature) and the rest (screened in bfloat16)."""

    W_U: Float[torch.Tensor, "vocab d"]
    long_ids: Int[torch.Tensor, " l"]
    long_rows: Float[torch.Tensor, "l d"]
    rest_ids: Int[torch.Tensor, " r"]
    rest16: Float[torch.Tensor, "r d"]
    """The rest's rows in bfloat16 (their float32 rows are read from W_U)."""
    err: float
    """c with |bf16 effect - exact| <= c * ||w|| + u * |bf16 effect| on the rest (`of`)."""

    @classmethod
    def of(cls, W_U: Float[torch.Tensor, "vocab d"]) -> Screen:
        """Error bound: inputs rounded to bfloat16 (unit roundoff u = 2^-8 each), products
        summed in float32 over d terms, the output rounded to bfloat16 (the u * |effect|
        term); |sum_d w_d b_d| <= ||w|| * max ||b|| over the rest (Cauchy-Schwarz); 1% slack."""
        norms = W_U.norm(dim=1)
        n_long = max(1, int(LONG_TOKENS * len(W_U)))
        order = norms.argsort(descending=True)
        long_ids, rest_ids = order[:n_long], order[n_long:]
        u, d = UNIT_ROUNDOFF_BF16, W_U.shape[1]
        err = 1.01 * (2 * u + u * u + d * 2.0 ** -24) * (1 + u) * float(norms[rest_ids].max())
        return cls(W_U, long_ids, W_U[long_ids], rest_ids, W_U[rest_ids].to(torch.bfloat16),
                   err)

    def workspace(self, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Buffers for `lens` on up to `chunk` rows at a time: the bfloat16 screen (chunk x
        rest) and the candidates' float32 rows (chunk x SCREEN_CANDIDATES x d). Reused from
        chunk to chunk, the largest temporaries are allocated once instead of per chunk, where
        a thread's heap fragments and grows by ~30 MB per chunk at 16k features."""
        m, d = SCREEN_CANDIDATES, self.W_U.shape[1]
        return (torch.empty((chunk, len(self.rest_ids)), dtype=torch.bfloat16,
                            device=self.W_U.device),
                torch.empty((chunk * m, d), dtype=self.W_U.dtype, device=self.W_U.device))

    def lens(self, rows: Float[torch.Tensor, "f d"], k: int,
             work: tuple[torch.Tensor, torch.Tensor] | None = None):
        """(top, bottom, proven): each (token ids, float32 effects) of the rows' k best tokens
        among the long tokens and the screen's candidates, and whether the bound proves both
        directions exact for each row. `work`: buffers from `workspace` (made here if None)."""
        u, m = UNIT_ROUNDOFF_BF16, SCREEN_CANDIDATES
        n, d = rows.shape
        screen_buf, cand_buf = self.workspace(n) if work is None else work
        approx = torch.mm(rows.to(torch.bfloat16), self.rest16.T, out=screen_buf[:n])
        slack = self.err * rows.norm(dim=1)
        long_exact = rows @ self.long_rows.T
        out, proven = [], torch.ones(len(rows), dtype=torch.bool, device=rows.device)
        for largest in (True, False):
            cand = approx.topk(m, dim=1, largest=largest)
            edge = cand.values[:, -1].float()            # the m-th best approximate effect
            cand_ids = self.rest_ids[cand.indices]
            cand_rows = torch.index_select(self.W_U, 0, cand_ids.reshape(-1),
                                           out=cand_buf[:n * m]).view(n, m, d)
            exact = torch.cat([torch.einsum("fd,fmd->fm", rows, cand_rows), long_exact], dim=1)
            ids = torch.cat([cand_ids, self.long_ids.expand(len(rows), -1)], dim=1)
            best = exact.topk(k, dim=1, largest=largest)
            # a token of the rest outside the candidates has an exact effect beyond `bound`
            # at best, so the k best lie among the candidates and the long tokens
            if largest:
                proven &= best.values[:, -1] > edge + u * edge.abs() + slack
            else:
                proven &= best.values[:, -1] < edge - u * edge.abs() - slack
            out.append((ids.gather(1, best.indices), best.values))
        return out[0], out[1], proven


def logit_table(sae_id: str, lens: LogitLens, token_text) -> pa.Table:
    """`feature_logits` rows: (sae_id, feature, direction, rank, token_id, token, value);
    `token_text` maps a list of token ids to their strings."""
    n, k = lens.top_ids.shape
    ids = np.concatenate([lens.top_ids, lens.bottom_ids], 1)
    values = np.concatenate([lens.top_values, lens.bottom_values], 1)
    vocab, where = np.unique(ids, return_inverse=True)
    names = np.asarray(token_text(vocab.tolist()), dtype=object)
    direction = np.tile(np.repeat(np.array(["top", "bottom"], dtype=object), k), n)
    return pa.table({
        "sae_id": pa.array([sae_id] * (2 * n * k), pa.string()),
        "feature": np.repeat(np.arange(n, dtype=np.int32), 2 * k),
        "direction": pa.array(direction, pa.string()),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int16), 2 * n),
        "token_id": ids.reshape(-1).astype(np.int32),
        "token": pa.array(names[where.reshape(-1)], pa.string()),
        "value": values.reshape(-1).astype(np.float32)})
