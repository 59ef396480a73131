"""Words in the residual stream: each word's vector at a layer, the vocabulary analogies answer
in, and word analogies (b - a + c) with the SAE features nearest the answer."""

from __future__ import annotations

import re
from dataclasses import dataclass

import duckdb
import numpy as np
import torch

from atlas.errors import AtlasError
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


REPRESENTATIONS = ("bare", "bos", "eos", "li2024")
"""How a word is fed to the model, its vector read at the last token:
'bare': ' word' alone; 'bos': the tokenizer's BOS token, then ' word'; 'eos': its end-of-text
token, then ' word'; 'li2024': the geometry paper's crystal inputs, 'word' (no leading space)
as the tokenizer encodes a text, after BOS."""

DEFAULT_REPRESENTATION = "bare"
"""The representation word analogies use unless told: the best held-out top-1 on the shipped
tasks at most layers of the embedded default (the crystal analysis's `word_representations`
table measures it for any model)."""


def word_tokens(tokenizer, word: str, representation: str = DEFAULT_REPRESENTATION
                ) -> tuple[list[int], int]:
    """The token ids fed for `word` and how many of them are the word itself."""
    if representation not in REPRESENTATIONS:
        raise AtlasError(f"word representation '{representation}' is not one of "
                         f"{', '.join(REPRESENTATIONS)}")
    if representation == "li2024":
        ids = tokenizer(word)["input_ids"]
        bos = tokenizer.bos_token_id
        n = len(ids)
        if bos is not None and ids[:1] != [bos]:
            ids = [bos, *ids]
        elif bos is not None:
            n -= 1
        return ids, n
    pieces = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    if representation == "bare":
        return pieces, len(pieces)
    special = tokenizer.bos_token_id if representation == "bos" else tokenizer.eos_token_id
    if special is None:
        raise AtlasError(f"the tokenizer has no {representation.upper()} token; choose another "
                         f"word representation ({', '.join(REPRESENTATIONS)})")
    return [special, *pieces], len(pieces)


@torch.no_grad()
def word_vectors(lm, layer: int | HookPoint, words: list[str], *,
                 representation: str = DEFAULT_REPRESENTATION, batch: int = 256) -> WordVectors:
    """Each word's residual at `layer` (a block index: that block's output, resid_post; or a
    hook point), read at the word's last token, the word fed as `representation` says
    (`REPRESENTATIONS`)."""
    from atlas.models import capture_residuals

    hook = layer if isinstance(layer, HookPoint) else HookPoint(layer)
    lm.check_hooks([hook])
    fed = [word_tokens(lm.tokenizer, w, representation) for w in words]
    vectors = np.zeros((len(words), lm.d_model), np.float32)
    by_length: dict[int, list[int]] = {}
    for i, (ids, _) in enumerate(fed):
        by_length.setdefault(len(ids), []).append(i)
    # Inputs of equal token count share a batch, so no padding changes any word's context.
    for group_all in by_length.values():
        for start in range(0, len(group_all), batch):
            group = group_all[start:start + batch]
            ids = torch.tensor([fed[i][0] for i in group])
            acts = capture_residuals(lm, ids, [hook])[hook.name][:, -1]
            vectors[group] = acts.float().cpu().numpy()
    split = tuple(tuple(lm.tokenizer.batch_decode([[t] for t in ids[len(ids) - n:]]))
                  for ids, n in fed)
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
                 index: FeatureIndex | None = None,
                 representation: str = DEFAULT_REPRESENTATION) -> WordAnalogy:
    """Words (and, with an SAE index at that layer, features) nearest to b - a + c.

    Word vectors are centred on the candidate vocabulary's mean before comparing.
    """
    vocab = vocab if vocab is not None else vocabulary(lm.tokenizer)
    inputs = word_vectors(lm, layer, [a, b, c], representation=representation)
    notes = tuple(f"'{w}' is {len(p)} tokens {list(p)}; its last token's residual was used"
                  for w, p in zip(inputs.words, inputs.pieces) if len(p) > 1)
    cands = [w for w in vocab if w not in (a, b, c)]
    table = word_vectors(lm, layer, cands, representation=representation)
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



