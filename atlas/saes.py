"""SAEs: SAELens objects throughout — load published or saved ones, or train TopK SAEs.

Training runs on activations cached from the single harvest forward pass, so the model is never
run again per layer. Inputs are scaled to mean norm sqrt(d_in) while training (SmolLM2's residual
norms are ~170 with outlier dimensions); the scale is folded into the weights afterwards, so the
saved SAE reads raw residuals and its activations stay on the normalised scale that the firing
threshold assumes.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Bool, Float
from sae_lens import SAE
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

from atlas.errors import AtlasError
from atlas.models import HookPoint
from atlas.progress import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SAEQuality:
    """How well an SAE reconstructs held-out activations."""

    l0: float
    """Mean number of active (non-zero) features per token."""
    explained_variance: float
    """1 - SSE / total variance of the held-out activations."""
    dead_fraction: float
    """Share of features never active on the held-out tokens."""
    n_tokens: int


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of TopK SAE training on cached activations."""

    d_sae: int
    k: int
    epochs: int = 4
    batch_size: int = 1024
    lr: float = 1e-3
    seed: int = 0
    aux_k: int = 256
    """Dead latents used by the auxiliary loss that revives them (Gao et al. 2024)."""
    aux_coef: float = 1 / 32
    dead_after_tokens: int = 20_000
    """A latent silent for this many training tokens counts as dead for the auxiliary loss."""


def load_saved(path: Path, *, device: str = "cpu") -> SAE:
    """An SAE saved in SAELens format (`SAE.load_from_disk`)."""
    if not (path / "cfg.json").is_file():
        raise AtlasError(f"{path} holds no SAE (cfg.json is missing); pass a folder written by "
                         "SAE.save_model / an atlas build")
    try:
        return SAE.load_from_disk(path, device=device)
    except Exception as exc:  # safetensors, json and torch each raise their own
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AtlasError(f"the SAE in {path} could not be loaded ({type(exc).__name__}: "
                         f"{first}); its weights file may be truncated or corrupt: copy or "
                         "save it again") from None


def load_published(release: str, sae_id: str, *, device: str = "cpu") -> SAE:
    """A published SAE by SAELens release and id, through `SAE.from_pretrained` unchanged (from
    the Hugging Face hub, or from its local cache when `HF_HUB_OFFLINE=1`)."""
    try:
        return SAE.from_pretrained(release, sae_id, device=device)
    except Exception as exc:
        raise AtlasError(f"SAE '{sae_id}' of release '{release}' could not be loaded "
                         f"({type(exc).__name__}: {str(exc)[:200]}); check the names against "
                         "SAELens' pretrained_saes.yaml and that the hub (or its local cache) "
                         "holds them") from exc


def load_recorded(path: str | None, release: str | None, release_sae_id: str | None, *,
                  device: str = "cpu") -> SAE:
    """An SAE as the atlas's `saes` row records it: from its folder, else from its release."""
    if path:
        return load_saved(Path(path), device=device)
    if release and release_sae_id:
        return load_published(release, release_sae_id, device=device)
    raise AtlasError("the atlas records neither a folder nor a release for this SAE; rebuild "
                     "it with `atlas build`")


def release_ids(release: str) -> list[str]:
    """The SAE ids SAELens lists for a release (empty for a release it does not list)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    found = get_pretrained_saes_directory().get(release)
    return list(found.saes_map) if found else []


def expand_sae_ids(release: str, patterns: Sequence[str], layers: Sequence[int]) -> list[str]:
    """SAE ids of a release from the given ids or patterns, in order, without repeats.

    A pattern with '{layer}' stands for one id per layer in `layers`
    ('layer_{layer}/width_16k/canonical'); one with '*' or '?' matches the ids SAELens lists
    for the release ('blocks.*.hook_resid_pre').

    Raises:
        AtlasError: a pattern matches no listed id.
    """
    out: list[str] = []
    for pattern in patterns:
        if "{layer}" in pattern:
            found = [pattern.replace("{layer}", str(layer)) for layer in layers]
        elif any(c in pattern for c in "*?["):
            known = release_ids(release)
            found = [i for i in known if fnmatch.fnmatchcase(i, pattern)]
            if not found:
                listed = (f"it lists {', '.join(known[:8])}{', ...' if len(known) > 8 else ''}"
                          if known else "SAELens lists no ids for it")
                raise AtlasError(f"--sae-id '{pattern}' matches no SAE of release '{release}' "
                                 f"({listed}); check the pattern")
        else:
            found = [pattern]
        out += [i for i in found if i not in out]
    return out


def neuronpedia_id(sae: SAE) -> str | None:
    """The SAE's Neuronpedia id ('gpt2-small/8-res-jb'), which `SAE.from_pretrained` copies
    into its metadata from SAELens's list of releases; None when it has none."""
    return sae.cfg.metadata.neuronpedia_id or None


def reads_centered(sae: SAE) -> bool:
    """True when the SAE was trained on a TransformerLens model loaded with
    `center_writing_weights=True` (SAELens records it in `model_from_pretrained_kwargs`, e.g.
    gpt2-small-res-jb). Such a model's residual stream is a Hugging Face model's residual minus
    its mean over d_model: every write into it is centred, and LayerNorm ignores the mean."""
    kwargs = sae.cfg.metadata.model_from_pretrained_kwargs or {}
    return bool(kwargs.get("center_writing_weights"))


def sae_input(sae: SAE, x: Float[torch.Tensor, "... d"]) -> Float[torch.Tensor, "... d"]:
    """Residuals of the Hugging Face model as the SAE expects them (see `reads_centered`)."""
    return x - x.mean(-1, keepdim=True) if reads_centered(sae) else x


def encode_dtype(setting: str, residuals: torch.dtype, own: torch.dtype) -> torch.dtype:
    """The dtype a harvest encodes in (`BuildConfig.sae_dtype`): 'auto' is bfloat16 where the
    residuals are bfloat16 and the SAE's own dtype otherwise."""
    if setting == "auto":
        return torch.bfloat16 if residuals == torch.bfloat16 else own
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[setting]


def encoding_copy(sae: SAE, dtype: torch.dtype) -> SAE:
    """The SAE itself when it already is in `dtype`, else a copy cast to it (the original
    keeps its weights: quality and decoder geometry read those)."""
    if sae.W_dec.dtype == dtype:
        return sae
    return copy.deepcopy(sae).to(dtype=dtype)


def pre_topk_codes(sae: SAE, x: Float[torch.Tensor, "... d"]) -> Float[torch.Tensor, "... f"]:
    """A TopK SAE's activations before the top-k selection, ReLU(encoder pre-activation) (what
    EleutherAI's `Sae.pre_acts` returns and Lan et al. correlate); any other SAE's codes.
    `x` as `encode` takes it."""
    if not isinstance(sae, TopKSAE):
        return sae.encode(x)
    hidden_pre = sae.process_sae_in(x) @ sae.W_enc + sae.b_enc
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):
        hidden_pre = hidden_pre * sae.W_dec.norm(dim=-1)
    return hidden_pre.relu()


def is_transcoder(sae: SAE) -> bool:
    """Whether `sae` is one of SAELens's transcoders (Transcoder, SkipTranscoder, JumpReLU and
    JumpReLUSkip transcoders): it encodes at one hook and decodes into another."""
    return hasattr(sae.cfg, "d_out")


def hook_of(sae: SAE) -> HookPoint:
    """The hook point an SAE reads (the residual stream), or a transcoder reads (the MLP's
    input), from its metadata."""
    name = sae.cfg.metadata.hook_name
    if not name:
        raise AtlasError("the SAE's metadata names no hook_name; save it with "
                         "metadata.hook_name like 'blocks.6.hook_resid_post'")
    if not is_transcoder(sae):
        return HookPoint.parse(name)
    hook = HookPoint.parse_any(name)
    if hook.where not in ("mid", "mlp_in"):
        raise AtlasError(f"the transcoder reads {name}; the atlas reads transcoders whose input "
                         "is the MLP's ('blocks.L.ln2.hook_normalized', 'blocks.L.mlp.hook_in' "
                         "or 'blocks.L.hook_mlp_in')")
    return hook


def hook_out_of(sae: SAE) -> HookPoint | None:
    """The hook a transcoder writes (the MLP's output), from its metadata; None for an SAE,
    whose output is its input's hook."""
    if not is_transcoder(sae):
        return None
    name = sae.cfg.metadata.hook_name_out
    if not name:
        raise AtlasError("the transcoder's metadata names no hook_name_out; save it with "
                         "metadata.hook_name_out like 'blocks.6.hook_mlp_out'")
    hook = HookPoint.parse_any(name)
    if hook.where != "mlp_out" or hook.layer != hook_of(sae).layer:
        raise AtlasError(f"the transcoder writes {name}; the atlas reads transcoders that write "
                         f"the MLP output of the block they read, "
                         f"'blocks.{hook_of(sae).layer}.hook_mlp_out'")
    return hook


def output_width(sae: SAE) -> int:
    """The width of what the SAE reconstructs: d_in, or a transcoder's d_out."""
    return int(getattr(sae.cfg, "d_out", sae.cfg.d_in))


def reconstruct(sae: SAE, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """What the SAE outputs for input `x` with codes `codes`: the decoder's, plus a skip
    transcoder's linear skip path (`W_skip`)."""
    out = sae.decode(codes)
    skip = getattr(sae, "W_skip", None)
    return out if skip is None else out + x @ skip.T.to(x.dtype)


def check_width(sae: SAE, d_model: int, what: str) -> None:
    """Raise a clear error when an SAE does not read (or a transcoder write) vectors of the
    model's width."""
    if sae.cfg.d_in != d_model:
        raise AtlasError(f"SAE {what} reads vectors of width d_in={sae.cfg.d_in} but the model's "
                         f"residual stream has d_model={d_model}; use an SAE trained on this "
                         "model, or the model it was trained on")
    if output_width(sae) != d_model:
        raise AtlasError(f"transcoder {what} writes vectors of width d_out={output_width(sae)} "
                         f"but the model's MLP output has d_model={d_model}; use a transcoder "
                         "trained on this model")


def norm_scale(acts: Float[torch.Tensor, "n d"]) -> float:
    """Factor bringing the mean activation norm to sqrt(d) (SAELens 'expected_average_only_in')."""
    return float(math.sqrt(acts.shape[1]) / acts.float().norm(dim=1).mean())


def train_topk(acts: Float[torch.Tensor, "n d"], settings: TrainSettings, *,
               hook: HookPoint, model_name: str, device: torch.device | str = "cpu",
               desc: str = "train SAE") -> TopKSAE:
    """Train a TopK SAE on cached activations and return it as a SAELens `TopKSAE`.

    The decoder rows are kept at unit norm during training; the input scale is folded in at the
    end (so the saved decoder rows have norm 1/scale and the SAE reads raw activations).
    """
    gen = torch.Generator().manual_seed(settings.seed)
    n, d = acts.shape
    scale = norm_scale(acts)
    params = _init_params(acts, scale, settings.d_sae, gen, device)
    opt = torch.optim.Adam(params.values(), lr=settings.lr)
    steps = settings.epochs * math.ceil(n / settings.batch_size)
    # Constant rate, then a linear decay to zero over the last fifth of training.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, 5.0 * (1 - i / steps)))
    silent = torch.zeros(settings.d_sae, device=device)
    variance = ((acts.float() * scale) - params["b_dec"].cpu()).pow(2).sum(1).mean().item()
    bar = Progress(desc, total=steps, unit="step", leave=False)
    for _ in range(settings.epochs):
        for idx in torch.randperm(n, generator=gen).split(settings.batch_size):
            x = acts[idx].to(device, torch.float32) * scale
            loss, fired = _step_loss(x, params, silent, settings, variance)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _project_decoder_grad(params["W_dec"])
            opt.step()
            sched.step()
            with torch.no_grad():
                params["W_dec"].div_(params["W_dec"].norm(dim=1, keepdim=True))
                silent += len(idx)
                silent[fired] = 0
            bar.update(1, fvu=f"{loss.item():.3f}")
    bar.close()
    return _to_sae_lens(params, scale, settings.k, hook=hook, model_name=model_name)


def _init_params(acts: torch.Tensor, scale: float, d_sae: int, gen: torch.Generator,
                 device) -> dict[str, torch.nn.Parameter]:
    d = acts.shape[1]
    w_dec = torch.randn(d_sae, d, generator=gen)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    sample = acts[torch.randperm(len(acts), generator=gen)[:50_000]].float() * scale
    b_dec = sample.median(dim=0).values
    raw = {"W_enc": w_dec.T.clone(), "W_dec": w_dec, "b_enc": torch.zeros(d_sae), "b_dec": b_dec}
    return {k: torch.nn.Parameter(v.to(device)) for k, v in raw.items()}


class _Encoder(torch.autograd.Function):
    """Pre-activations (x - b_dec) W_enc + b_enc whose backward reads the incoming gradient as
    sparse: only the latents TopK (and AuxK) selected carry one, so W_enc's gradient is a sparse
    product (k + aux_k latents per token instead of all of them), and b_dec's is -g_b_enc
    W_enc^T (the sum over tokens of each token's gradient, without forming any token's)."""

    @staticmethod
    def forward(ctx, x, w_enc, b_enc, b_dec):
        centred = x - b_dec
        ctx.save_for_backward(centred, w_enc)
        return torch.addmm(b_enc, centred, w_enc)

    @staticmethod
    def backward(ctx, grad):
        centred, w_enc = ctx.saved_tensors
        grad_w = torch.sparse.mm(grad.to_sparse().t(), centred).t()
        grad_b = grad.sum(0)
        return None, grad_w, grad_b, -(grad_b @ w_enc.t())


def _pre_acts(x: torch.Tensor, p: Mapping[str, torch.Tensor]) -> torch.Tensor:
    if x.device.type == "cpu":
        return _Encoder.apply(x, p["W_enc"], p["b_enc"], p["b_dec"])
    return (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]  # dense products are cheap on a GPU


def _step_loss(x: torch.Tensor, p: Mapping[str, torch.Tensor], silent: torch.Tensor,
               s: TrainSettings, variance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised reconstruction loss (+ AuxK loss on dead latents) and the latents that fired."""
    pre = _pre_acts(x, p)
    vals, idx = pre.topk(s.k, dim=1)
    vals = vals.relu()
    recon = _sparse_decode(vals, idx, p["W_dec"]) + p["b_dec"]
    err = x - recon
    loss = err.pow(2).sum(1).mean() / variance
    dead = silent > s.dead_after_tokens
    n_dead = int(dead.sum())
    if n_dead:
        aux_vals, aux_idx = pre.masked_fill(~dead, -torch.inf).topk(min(s.aux_k, n_dead), dim=1)
        aux_recon = _sparse_decode(aux_vals.relu(), aux_idx, p["W_dec"])
        target = err.detach()
        scale = target.pow(2).sum(1).mean().clamp(min=1e-8)
        aux = (target - aux_recon).pow(2).sum(1).mean() / scale
        loss = loss + s.aux_coef * aux
    return loss, idx[vals > 0].unique()


def _sparse_decode(vals: torch.Tensor, idx: torch.Tensor, w_dec: torch.Tensor) -> torch.Tensor:
    """sum_k vals[:, k] * w_dec[idx[:, k]] without building the dense (batch, d_sae) code."""
    return torch.nn.functional.embedding_bag(idx, w_dec, per_sample_weights=vals, mode="sum")


def _project_decoder_grad(w_dec: torch.nn.Parameter) -> None:
    """Remove the gradient component along each (unit) decoder row, keeping rows on the sphere."""
    if w_dec.grad is not None:
        with torch.no_grad():
            along = (w_dec.grad * w_dec).sum(1, keepdim=True)
            w_dec.grad -= along * w_dec


def _to_sae_lens(p: Mapping[str, torch.Tensor], scale: float, k: int, *, hook: HookPoint,
                 model_name: str) -> TopKSAE:
    d_in, d_sae = p["W_enc"].shape
    cfg = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device="cpu",
                        metadata=SAEMetadata(model_name=model_name, hook_name=hook.name,
                                             hook_layer=hook.layer, trained_by="feature-atlas",
                                             norm_scaling_factor=scale))
    sae = TopKSAE(cfg)
    sae.load_state_dict({k_: v.detach().cpu().float() for k_, v in p.items()})
    sae.fold_activation_norm_scaling_factor(scale)
    return sae.eval()


@torch.no_grad()
def evaluate(sae: SAE, acts: Float[torch.Tensor, "n d"], *, batch_size: int = 4096) -> SAEQuality:
    """L0, explained variance and dead fraction of an SAE on (held-out) activations."""
    part = QualityPartial.empty(sae.cfg.d_sae, sae.cfg.d_in)
    for chunk in acts.split(batch_size):
        part.update(sae, chunk)
    return merge_quality([part])


@dataclass
class QualityPartial:
    """Sums over held-out tokens from which explained variance, L0 and dead fraction follow."""

    n: int
    sse: float
    active: float
    ever: Bool[np.ndarray, " f"]
    sum_x: Float[np.ndarray, " d"]
    sumsq: float

    @classmethod
    def empty(cls, d_sae: int, d_in: int) -> QualityPartial:
        return cls(0, 0.0, 0.0, np.zeros(d_sae, bool), np.zeros(d_in), 0.0)

    @torch.no_grad()
    def update(self, sae: SAE, x: Float[torch.Tensor, "n d"],
               target: Float[torch.Tensor, "n d_out"] | None = None) -> None:
        """Add tokens: the SAE's input `x` and, for a transcoder, the `target` it reconstructs
        (the MLP's output; an SAE reconstructs its input)."""
        if not len(x):
            return
        x = sae_input(sae, x.to(sae.W_dec.device, sae.W_dec.dtype))
        feats = sae.encode(x)
        y = x.float() if target is None else target.to(sae.W_dec.device).float()
        self.sse += float((y - reconstruct(sae, x, feats).float()).pow(2).sum())
        active = feats != 0  # AbsTopK SAEs code with signed activations
        self.active += float(active.sum())
        self.ever |= active.any(0).cpu().numpy()
        x64 = y.double()
        self.sum_x += x64.sum(0).cpu().numpy()
        self.sumsq += float(x64.pow(2).sum())
        self.n += len(x)


def merge_quality(parts: list[QualityPartial]) -> SAEQuality:
    """Quality of the held-out tokens of all shards."""
    n = sum(p.n for p in parts)
    if n == 0:
        raise AtlasError("no held-out tokens to measure the SAE's quality; raise --tokens or "
                         "--holdout")
    sse = sum(p.sse for p in parts)
    sum_x = np.sum([p.sum_x for p in parts], axis=0)
    total = sum(p.sumsq for p in parts) - float(sum_x @ sum_x) / n
    ever = np.logical_or.reduce([p.ever for p in parts])
    return SAEQuality(l0=sum(p.active for p in parts) / n,
                      explained_variance=1.0 - sse / max(total, 1e-12),
                      dead_fraction=1.0 - float(ever.mean()), n_tokens=n)
