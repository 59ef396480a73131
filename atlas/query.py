"""Questions people ask of an atlas: neighbours of a feature, analogies, features of a text.

Functions take an open DuckDB connection (read-only is enough) and return small frozen
dataclasses; `FeatureIndex` objects come from `open_index`, which rebuilds a missing, corrupt or
stale index file and says so.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import torch

from atlas import store
from atlas.artifacts import index_path
from atlas.errors import AtlasError
from atlas.index import FeatureIndex, Kind, blas_topk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    """One search result: a feature, its cosine to the query, and what it fires on."""

    sae_id: str
    feature: int
    cosine: float
    label: str
    top_tokens: tuple[str, ...]


def resolve_sae(con: duckdb.DuckDBPyConnection, text: str) -> str:
    """An SAE id from its full id, a unique substring, or 'L<layer>' when one SAE reads that
    layer (`saes.layer`)."""
    rows = con.execute("SELECT sae_id, layer FROM saes ORDER BY layer, sae_id").fetchall()
    ids = [r[0] for r in rows]
    if text in ids:
        return text
    m = re.fullmatch(r"[Ll](\d+)", text)
    found = ([i for i, layer in rows if layer == int(m.group(1))] if m
             else [i for i in ids if text in i])
    if len(found) == 1:
        return found[0]
    listing = ", ".join(found or ids) or "none (build the atlas first)"
    what = "matches several SAEs" if found else "matches no SAE"
    raise AtlasError(f"'{text}' {what} in this atlas; use one of: {listing}")


def _checksum(con: duckdb.DuckDBPyConnection, sae_id: str) -> str:
    row = con.execute("SELECT decoder_checksum FROM saes WHERE sae_id = ?", [sae_id]).fetchone()
    if row is None:
        raise AtlasError(f"no SAE '{sae_id}' in this atlas; `atlas info` lists the SAEs")
    return row[0] or ""


def build_index(con: duckdb.DuckDBPyConnection, db: Path, sae_id: str, *, kind: Kind = "auto",
                save: bool = True) -> FeatureIndex:
    """Build an SAE's index from the decoders in DuckDB and persist it beside the database."""
    vectors = store.load_decoders(con, sae_id)
    index = FeatureIndex.build(vectors, sae_id=sae_id, checksum=_checksum(con, sae_id), kind=kind)
    if save:
        try:
            index.save(index_path(db, sae_id))
        except OSError as exc:
            log.warning("could not save the index of %s (%s); using it in memory", sae_id, exc)
    return index


def open_index(con: duckdb.DuckDBPyConnection, db: Path, sae_id: str, *,
               kind: Kind = "auto") -> FeatureIndex:
    """The SAE's index from disk, rebuilt (and saved again) when missing, corrupt or stale."""
    path = index_path(db, sae_id)
    want = _checksum(con, sae_id)
    if path.exists():
        try:
            index = FeatureIndex.load(path)
        except AtlasError as exc:
            log.warning("%s", exc)
        else:
            if index.meta.checksum == want and index.meta.sae_id == sae_id:
                return index
            log.warning("index %s was built from other decoders than the atlas holds now; "
                        "rebuilding it", path)
    else:
        log.info("no index for %s yet; building it", sae_id)
    return build_index(con, db, sae_id, kind=kind)


def describe(con: duckdb.DuckDBPyConnection, sae_id: str, features: np.ndarray,
             cosines: np.ndarray) -> list[Hit]:
    """Hits with each feature's label and top tokens."""
    rows = con.execute("SELECT feature, label, top_tokens FROM features WHERE sae_id = ? AND "
                       "feature IN (SELECT unnest(?::INTEGER[]))",
                       [sae_id, [int(f) for f in features]]).fetchall()
    info = {f: (label, tuple(tops)) for f, label, tops in rows}
    return [Hit(sae_id, int(f), float(c), *info.get(int(f), ("", ())))
            for f, c in zip(features, cosines)]


def feature_vector(index: FeatureIndex, feature: int) -> np.ndarray:
    """The unit decoder vector of a feature, with a clear error for an unknown id."""
    where = np.nonzero(index.ids == feature)[0]
    if len(where) == 0:
        raise AtlasError(f"feature {feature} does not exist in {index.meta.sae_id} (ids "
                         f"{int(index.ids.min())}..{int(index.ids.max())})")
    return index.vectors[where[0]]


def neighbors(con: duckdb.DuckDBPyConnection, index: FeatureIndex, feature: int, k: int = 10, *,
              target: FeatureIndex | None = None) -> list[Hit]:
    """The k features whose decoder directions are closest to `feature`'s.

    Args:
        target: search another SAE's index (same d_in), e.g. another layer; the feature itself
            is only excluded when searching its own SAE.
    """
    q = feature_vector(index, feature)
    where = target or index
    _check_width(q, where)
    own = target is None or target.meta.sae_id == index.meta.sae_id
    scores, ids = where.search(q[None], k + int(own))
    keep = ids[0] != feature if own else np.ones(len(ids[0]), bool)
    return describe(con, where.meta.sae_id, ids[0][keep][:k], scores[0][keep][:k])


def analogy(con: duckdb.DuckDBPyConnection, index: FeatureIndex, a: int, b: int, c: int,
            k: int = 10) -> list[Hit]:
    """Features nearest to vec(b) - vec(a) + vec(c), the three inputs excluded."""
    q = feature_vector(index, b) - feature_vector(index, a) + feature_vector(index, c)
    scores, ids = index.search(q[None], k + 3)
    keep = ~np.isin(ids[0], [a, b, c])
    return describe(con, index.meta.sae_id, ids[0][keep][:k], scores[0][keep][:k])


def _check_width(q: np.ndarray, index: FeatureIndex) -> None:
    if len(q) != index.meta.d:
        raise AtlasError(f"vectors of width {len(q)} cannot be searched in "
                         f"{index.meta.sae_id} (d_in {index.meta.d}); pick an SAE of this model")


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
    from atlas.harvest import encode_sparse
    from atlas.models import capture_residuals
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
def word_vectors(lm, layer: int, words: list[str], *, batch: int = 256) -> WordVectors:
    """Each word's residual at `layer`: the last token of ' word' after an end-of-text token."""
    from atlas.models import HookPoint, capture_residuals

    hook = HookPoint(layer)
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
    scores, order = blas_topk(_unit(table.vectors - mean), _unit(q[None]), k,
                              np.arange(len(cands)))
    words = tuple((cands[i], float(s)) for i, s in zip(order[0], scores[0]))
    feats: tuple[Hit, ...] = ()
    if index is not None and con is not None:
        scores, ids = index.search(q[None], k)
        feats = tuple(describe(con, index.meta.sae_id, ids[0], scores[0]))
    return WordAnalogy(words, feats, notes)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)
