"""The LLMs that explain and score: a Hugging Face causal LM through transformers (the embedded
SmolLM2-135M-Instruct, a local folder or a hub id; GPU when there is one), or any
OpenAI-compatible chat endpoint (vLLM, llama.cpp's server, hosted APIs) through the `openai`
client, its key from the environment. Both answer the same two questions: `generate` (greedy
text for each chat) and `judge` (P("1") of each chat's answer, Delphi's log-prob reading, or
None when the answer has no digit)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from atlas.analyses.explanations.explain import Message, parse_detection, probability_of_one
from atlas.errors import AtlasError

log = logging.getLogger(__name__)

KEY_ENV = "OPENAI_API_KEY"
"""Where the endpoint's key is read from (servers on your own machine take any key)."""
TOP_LOGPROBS = 5
"""Candidates read for P("1") vs P("0"), as Delphi reads them."""


class Backend(Protocol):
    name: str
    """What `explanations.explainer` / `explanation_scores.scorer` record."""

    def generate(self, chats: Sequence[list[Message]], max_tokens: int) -> list[str]: ...

    def judge(self, chats: Sequence[list[Message]]) -> list[float | None]: ...


def _plain(chat: list[Message]) -> str:
    """A chat as plain text, for a model without a chat template."""
    return "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in chat) + "Assistant:"


class HuggingFace:
    """A causal LM loaded as the atlas loads models (`atlas.models.load_model`)."""

    def __init__(self, lm, *, batch: int = 8) -> None:
        """`lm`: a `LoadedModel` (`atlas.models.load_model`)."""
        self.model, self.tokenizer, self.device = lm.model.eval(), lm.tokenizer, lm.device
        self.name, self.batch = f"hf:{lm.model_id}", batch
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _texts(self, chats: Sequence[list[Message]]) -> list[str]:
        if getattr(self.tokenizer, "chat_template", None):
            return [self.tokenizer.apply_chat_template(c, add_generation_prompt=True,
                                                       tokenize=False) for c in chats]
        return [_plain(c) for c in chats]

    def _encode(self, texts: list[str]):
        tok = self.tokenizer
        side, tok.padding_side = tok.padding_side, "left"   # generation continues on the right
        try:
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = side
        return {k: v.to(self.device) for k, v in enc.items()}

    def generate(self, chats: Sequence[list[Message]], max_tokens: int) -> list[str]:
        out: list[str] = []
        texts = self._texts(chats)
        for s in range(0, len(texts), self.batch):
            enc = self._encode(texts[s:s + self.batch])
            with torch.inference_mode():
                ids = self.model.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id)
            out += self.tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:],
                                               skip_special_tokens=True)
        return out

    def judge(self, chats: Sequence[list[Message]]) -> list[float | None]:
        """P("1") / (P("0") + P("1")) of the answer's first token over the model's whole
        distribution (every token that reads "1" or "0", spaces aside): a local model gives
        all of it, where Delphi reads an endpoint's top 5 candidates."""
        one, zero = self._digits()
        out: list[float | None] = []
        texts = self._texts(chats)
        for s in range(0, len(texts), self.batch):
            enc = self._encode(texts[s:s + self.batch])
            with torch.inference_mode():
                logits = self.model(**enc).logits[:, -1].float()
            probs = torch.softmax(logits, dim=-1)
            p1, p0 = probs[:, one].sum(-1), probs[:, zero].sum(-1)
            out += [float(a / (a + b)) if a + b > 0 else None
                    for a, b in zip(p1.tolist(), p0.tolist())]
        return out

    def _digits(self) -> tuple[list[int], list[int]]:
        if not hasattr(self, "_digit_ids"):
            names = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
            clean = [self.tokenizer.convert_tokens_to_string([n]).strip() if n else ""
                     for n in names]
            self._digit_ids = ([i for i, t in enumerate(clean) if t == "1"],
                               [i for i, t in enumerate(clean) if t == "0"])
            if not all(self._digit_ids):
                raise AtlasError(f"the scorer {self.name} has no token for the digits 0 and 1")
        return self._digit_ids


def _summed(tokens: Sequence[str], probs: Sequence[float]) -> dict[str, float]:
    acc: dict[str, float] = {}
    for t, p in zip(tokens, probs):
        acc[t] = acc.get(t, 0.0) + p
    return acc


class OpenAICompatible:
    """A chat endpoint that speaks OpenAI's API: `url` is its base (".../v1")."""

    def __init__(self, url: str, model: str, *, timeout: float = 120.0) -> None:
        from openai import OpenAI

        if not model:
            raise AtlasError(f"--explainer {url} is an endpoint: name the model it serves with "
                             "--explainer-model (and --scorer-model for --scorer)")
        self.url, self.model, self.name = url, model, f"openai:{url}#{model}"
        self.client = OpenAI(base_url=url, api_key=os.environ.get(KEY_ENV) or "none",
                             timeout=timeout, max_retries=1)

    def _ask(self, chat: list[Message], **kwargs):
        import openai

        try:
            return self.client.chat.completions.create(model=self.model, messages=chat,  # type: ignore[arg-type]
                                                       temperature=0.0, **kwargs)
        except openai.APIConnectionError as exc:
            raise AtlasError(f"cannot reach the chat endpoint {self.url} ({exc}); start the "
                             "server or pass another URL") from None
        except openai.APIStatusError as exc:
            raise AtlasError(f"the chat endpoint {self.url} refused the request for model "
                             f"'{self.model}' (HTTP {exc.status_code}: {exc.message}); check "
                             f"the model name and the key in ${KEY_ENV}") from None

    def generate(self, chats: Sequence[list[Message]], max_tokens: int) -> list[str]:
        return [self._ask(c, max_tokens=max_tokens).choices[0].message.content or ""
                for c in chats]

    def judge(self, chats: Sequence[list[Message]]) -> list[float | None]:
        out: list[float | None] = []
        for chat in chats:
            choice = self._ask(chat, max_tokens=1, logprobs=True,
                               top_logprobs=TOP_LOGPROBS).choices[0]
            content = choice.logprobs.content if choice.logprobs else None
            if content and content[0].top_logprobs:
                first = content[0].top_logprobs
                out.append(probability_of_one(_summed([c.token for c in first],
                                                      [math.exp(c.logprob) for c in first])))
            else:  # a server that gives no log-probs: the answer's digit
                out.append(parse_detection(choice.message.content or ""))
        return out


def backend(spec: str, model: str = "", *, load: Callable[[str], Any],
            batch: int = 8) -> Backend:
    """The backend a --explainer / --scorer names: an http(s) URL (an OpenAI-compatible
    endpoint serving `model`), else a model `atlas build --model` takes ('smollm2-135m', a
    folder, a hub id), loaded by `load` (spec -> `LoadedModel`)."""
    if spec.startswith(("http://", "https://")):
        return OpenAICompatible(spec, model)
    return HuggingFace(load(spec), batch=batch)


class Embedder:
    """A text embedding from any transformers model (a folder or a hub id: a sentence
    embedding model such as a BERT or E5, or a causal LM): the mean of its last hidden states
    over the text's tokens, scaled to unit length."""

    def __init__(self, spec: str, *, device: str = "auto", batch: int = 32) -> None:
        from transformers import AutoModel, AutoTokenizer

        dev = "cuda" if device == "auto" and torch.cuda.is_available() else (
            "cpu" if device == "auto" else device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(spec)
            self.model = AutoModel.from_pretrained(spec).to(dev).eval()
        except (OSError, ValueError) as exc:
            raise AtlasError(f"--embedder {spec}: cannot load it as a transformers model "
                             f"({str(exc).splitlines()[0]}); give a model folder or a hub id "
                             "in the local cache") from None
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.name, self.device, self.batch = f"hf:{spec}", dev, batch

    def embed(self, texts: Sequence[str]):
        """(len(texts), d) float32 unit vectors."""
        import numpy as np

        out = []
        for s in range(0, len(texts), self.batch):
            enc = self.tokenizer(list(texts[s:s + self.batch]), return_tensors="pt",
                                 padding=True, truncation=True, max_length=256)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(mean, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
