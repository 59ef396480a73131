"""Words in the residual stream: each word's vector at a layer, the vocabulary analogies answer
in, and word analogies (b - a + c) with the SAE features nearest the answer."""

from __future__ import annotations

import re
from dataclasses import dataclass

import duckdb
import numpy as np
import torch

from atlas.geometry.vectors import unit
from atlas.index import FeatureIndex, blas_topk
from atlas.models import HookPoint
from atlas.query import Hit, describe


@dataclass(frozen=True)
class WordVectors:
    """Residual-stream vectors of words at one layer (last token of each word)."""

    words: tuple[str, ...]
    vectors: np.ndarray
    pieces: tuple[tuple[str, ...], ...]
    """How the tokenizer split each word (the last piece's residual is the word's vector)."""


def vocabulary(tokenizer, *, limit: int = 5000) -> list[str]:
    """Whole lowercase words that are single tokens with a leading space, most frequent first
    (BPE merge order), as the candidate answers of word analogies."""
    ids = list(range(min(len(tokenizer), 200_000)))
    words = []
    for word in tokenizer.batch_decode([[i] for i in ids]):
        if re.fullmatch(r" [a-z]{3,}", word):
            words.append(word[1:])
            if len(words) >= limit:
                break
    return words


@torch.no_grad()
def word_vectors(lm, layer: int | HookPoint, words: list[str], *,
                 batch: int = 256) -> WordVectors:
    """Each word's residual at `layer` (a block index: that block's output, resid_post; or a
    hook point): the last token of ' word' after an end-of-text token."""
    from atlas.models import capture_residuals

    hook = layer if isinstance(layer, HookPoint) else HookPoint(layer)
    lm.check_hooks([hook])
    pieces = [lm.tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in words]
    eos = lm.tokenizer.eos_token_id
    vectors = np.zeros((len(words), lm.d_model), np.float32)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(pieces):
        by_length.setdefault(len(p), []).append(i)
    # Words of equal token count share a batch, so no padding changes any word's context.
    for group_all in by_length.values():
        for start in range(0, len(group_all), batch):
            group = group_all[start:start + batch]
            ids = torch.tensor([[eos, *pieces[i]] for i in group])
            acts = capture_residuals(lm, ids, [hook])[hook.name][:, -1]
            vectors[group] = acts.float().cpu().numpy()
    split = tuple(tuple(lm.tokenizer.batch_decode([[t] for t in p])) for p in pieces)
    return WordVectors(tuple(words), vectors, split)


@dataclass(frozen=True)
class WordAnalogy:
    """b - a + c over word vectors: the nearest words and the nearest SAE features."""

    words: tuple[tuple[str, float], ...]
    features: tuple[Hit, ...]
    notes: tuple[str, ...]
    """How odd inputs were handled (a word split into several tokens, ...)."""


def word_analogy(lm, layer: int, a: str, b: str, c: str, *, k: int = 10,
                 vocab: list[str] | None = None, con: duckdb.DuckDBPyConnection | None = None,
                 index: FeatureIndex | None = None) -> WordAnalogy:
    """Words (and, with an SAE index at that layer, features) nearest to b - a + c.

    Word vectors are centred on the candidate vocabulary's mean before comparing.
    """
    vocab = vocab if vocab is not None else vocabulary(lm.tokenizer)
    inputs = word_vectors(lm, layer, [a, b, c])
    notes = tuple(f"'{w}' is {len(p)} tokens {list(p)}; its last token's residual was used"
                  for w, p in zip(inputs.words, inputs.pieces) if len(p) > 1)
    cands = [w for w in vocab if w not in (a, b, c)]
    table = word_vectors(lm, layer, cands)
    # Centre on the vocabulary's mean: residuals share a large common direction that would
    # otherwise dominate every cosine.
    mean = table.vectors.mean(0)
    va, vb, vc = inputs.vectors - mean
    q = vb - va + vc
    scores, order = blas_topk(unit(table.vectors - mean).astype(np.float32),
                              unit(q[None]).astype(np.float32), k,
                              np.arange(len(cands)))
    words = tuple((cands[i], float(s)) for i, s in zip(order[0], scores[0]))
    feats: tuple[Hit, ...] = ()
    if index is not None and con is not None:
        scores, ids = index.search(q[None], k)
        feats = tuple(describe(con, index.meta.sae_id, ids[0], scores[0]))
    return WordAnalogy(words, feats, notes)



