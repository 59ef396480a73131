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
    scale = None if found is None else final_norm_scale(found[1], lm.d_model)
    return Unembedding(W_U, scale, None if scale is None else found[0])


@dataclass(frozen=True)
class LogitLens:
    """Each feature's top and bottom tokens by logit effect."""

    top_ids: Int[np.ndarray, "f k"]
    top_values: Float[np.ndarray, "f k"]
    bottom_ids: Int[np.ndarray, "f k"]
    """Most suppressed first."""
    bottom_values: Float[np.ndarray, "f k"]


@torch.no_grad()
def logit_lens(W_dec: Float[torch.Tensor, "f d"], unembed: Unembedding, *, k: int = TOP_K,
               chunk: int = 1024) -> LogitLens:
    """Top-k and bottom-k tokens of every feature's centred logit effect (module docstring),
    `chunk` features at a time (memory: chunk x vocab floats) on W_dec's device."""
    device = W_dec.device
    W_U = unembed.W_U.to(device=device, dtype=torch.float32)
    if unembed.scale is not None:
        W_U = W_U * unembed.scale.to(device)[None, :]
    W_U = W_U - W_U.mean(0, keepdim=True)   # centre over the vocabulary
    k = min(k, W_U.shape[0])
    parts: list[list[np.ndarray]] = [[], [], [], []]
    for lo in range(0, len(W_dec), chunk):
        effect = W_dec[lo:lo + chunk].float() @ W_U.T
        top = effect.topk(k, dim=1)
        bottom = effect.topk(k, dim=1, largest=False)
        for out, t in zip(parts, (top.indices, top.values, bottom.indices, bottom.values)):
            out.append(t.cpu().numpy())
    ids_t, val_t, ids_b, val_b = (np.concatenate(p) if p else np.zeros((0, k)) for p in parts)
    return LogitLens(ids_t.astype(np.int64), val_t.astype(np.float32), ids_b.astype(np.int64),
                     val_b.astype(np.float32))


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
