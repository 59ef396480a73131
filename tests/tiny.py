"""The tiny test model: a small randomly initialised Llama with a byte-level BPE tokenizer
trained in code, saved once as a Hugging Face model directory that `atlas` loads like any local
model (`--model <dir>`, also in subprocesses and Dask workers). Lives with the tests, outside
the library's import graph."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

NAME = "tiny-random-llama"
"""The model directory's name, which `atlas` records as the model id."""


def tiny_model_dir(*, seed: int = 0) -> Path:
    """The tiny model saved under the system's temporary folder (written once per version of
    this file, atomically, so parallel processes agree)."""
    import transformers

    key = hashlib.sha1(Path(__file__).read_bytes() + transformers.__version__.encode()
                       + str(seed).encode()).hexdigest()[:12]
    root = Path(tempfile.gettempdir()) / f"atlas-test-models-{os.getuid()}" / key
    return saved_once(root / NAME, lambda: tiny_llama(seed=seed))


def saved_once(final: Path, make) -> Path:
    """`final`, a model folder written once from `make()` -> (model, tokenizer), atomically
    (saved beside it, then renamed), so parallel processes agree."""
    if not (final / "config.json").exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=final.parent)) / final.name
        model, tok = make()
        model.save_pretrained(partial)
        tok.save_pretrained(partial)
        with contextlib.suppress(OSError):  # another process saved it first
            partial.rename(final)
        shutil.rmtree(partial.parent, ignore_errors=True)
    return final


def tiny_llama(*, seed: int = 0, n_layers: int = 4, d_model: int = 64,
               vocab_size: int = 512) -> tuple[torch.nn.Module, object]:
    """A small randomly initialised Llama with a byte-level BPE tokenizer, built offline."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer(vocab_size=vocab_size)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=d_model, intermediate_size=2 * d_model,
                      num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval(), tok


_TINY_TRAINING_TEXT = """
The quick brown fox jumps over the lazy dog. Paris is the capital of France, Berlin the
capital of Germany. def main(argv): return 0 if argv else 1
import os, sys; for i in range(10): print(i * 2 + 1)
The king and the queen, the man and the woman, a boy and a girl walked to the river.
class Node: def __init__(self, value): self.value = value; self.children = []
In 1905 Albert Einstein published four papers on physics, light and matter.
"""


def tiny_tokenizer(*, vocab_size: int = 512):
    """A deterministic byte-level BPE tokenizer trained in code on a fixed text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator([_TINY_TRAINING_TEXT] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>", eos_token="<eos>")


SMOL_NAME = "tiny-smol-tokenizer"
"""Tiny random models that share SmolLM2's tokenizer (the embedded GGUF's), as models of one
family do (Pythia-70m/160m, Gemma-1/2): what cross-model universality compares."""


def smol_model_dir(*, seed: int = 0, n_layers: int = 3, d_model: int = 48) -> Path:
    """A tiny randomly initialised Llama with SmolLM2's tokenizer, saved once (per seed and
    shape) under the system's temporary folder; its model id is `tiny-smol-tokenizer-s<seed>`."""
    import transformers
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from atlas.models import embedded_gguf

    key = hashlib.sha1(Path(__file__).read_bytes() + transformers.__version__.encode()
                       + f"{seed}-{n_layers}-{d_model}".encode()).hexdigest()[:12]
    root = Path(tempfile.gettempdir()) / f"atlas-test-models-{os.getuid()}" / key

    def make():
        gguf = embedded_gguf()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=d_model,
                          intermediate_size=2 * d_model, num_hidden_layers=n_layers,
                          num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg).eval(), tok

    return saved_once(root / f"{SMOL_NAME}-s{seed}", make)
