"""Words in the residual stream: each word's vector at a layer, the vocabulary analogies answer
in, and word analogies (b - a + c) with the SAE features nearest the answer."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import duckdb
import numpy as np
from atlas.artifacts import word_table_path
from atlas.errors import AtlasError
from atlas.geometry.vectors import unit
from atlas.index import FeatureIndex, blas_topk
from atlas.hooks import HookPoint
from atlas.query import Hit, describe
from atlas.tokens import decode_each

log = logging.getLogger(__name__)


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
    for word in decode_each(tokenizer, [[i] for i in ids]):
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


def word_vectors(lm, layer: int | HookPoint, words: list[str], *,
                 representation: str = DEFAULT_REPRESENTATION, batch: int = 256) -> WordVectors:
    """Each word's residual at `layer` (a block index: that block's output, resid_post; or a
    hook point), read at the word's last token, the word fed as `representation` says
    (`REPRESENTATIONS`)."""
    hook = layer if isinstance(layer, HookPoint) else HookPoint(layer)
    return word_vectors_at(lm, [hook], words, representation=representation,
                           batch=batch)[hook.name]


def word_vectors_at(lm, hooks: list[HookPoint], words: list[str], *,
                    representation: str = DEFAULT_REPRESENTATION, batch: int = 256
                    ) -> dict[str, WordVectors]:
    """`word_vectors` at several hooks from one pass: {hook name: WordVectors}."""
    import torch

    from atlas.models import capture_residuals

    lm.check_hooks(hooks)
    fed = [word_tokens(lm.tokenizer, w, representation) for w in words]
    vectors = {h.name: np.zeros((len(words), lm.d_model), np.float32) for h in hooks}
    by_length: dict[int, list[int]] = {}
    for i, (ids, _) in enumerate(fed):
        by_length.setdefault(len(ids), []).append(i)
    # Inputs of equal token count share a batch, so no padding changes any word's context.
    for group_all in by_length.values():
        for start in range(0, len(group_all), batch):
            group = group_all[start:start + batch]
            batch_ids = torch.tensor([fed[i][0] for i in group])
            with torch.no_grad():
                acts = capture_residuals(lm, batch_ids, hooks)
            for name, x in acts.items():
                vectors[name][group] = x[:, -1].float().cpu().numpy()
    split = tuple(tuple(decode_each(lm.tokenizer, [[t] for t in ids[len(ids) - n:]]))
                  for ids, n in fed)
    return {name: WordVectors(tuple(words), v, split) for name, v in vectors.items()}


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
    """Words (and, with an SAE index at that layer, features) nearest to b - a + c, with the
    model at hand (`table_analogy` answers from a stored word table)."""
    vocab = vocab if vocab is not None else vocabulary(lm.tokenizer)
    table = compute_table(lm, HookPoint(layer), vocab, [a, b, c], representation)
    return table_analogy(table, a, b, c, k=k, con=con, index=index)


# --- Word tables: the vocabulary's vectors, computed once and kept beside the atlas ---------

@dataclass(frozen=True)
class WordTable:
    """Vectors of the analogy vocabulary (the first `n_vocab` words) and of any other word
    asked for, at one hook of one model, each word fed as `representation` says."""

    model_id: str
    hook: str
    representation: str
    words: tuple[str, ...]
    vectors: np.ndarray
    pieces: tuple[tuple[str, ...], ...]
    n_vocab: int

    def checksum(self) -> str:
        h = hashlib.sha1(np.ascontiguousarray(self.vectors, np.float32).tobytes())
        h.update(json.dumps([self.words, self.pieces, self.n_vocab]).encode())
        return h.hexdigest()

    def row(self, word: str) -> int | None:
        return self._rows.get(word)

    def index(self, word: str) -> int:
        """The row of a word known to be in the table."""
        return self._rows[word]

    @cached_property
    def _rows(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    def missing(self, words) -> list[str]:
        return [w for w in dict.fromkeys(words) if self.row(w) is None]


def compute_table(lm, hook: HookPoint, vocab: list[str], extra=(),
                  representation: str = DEFAULT_REPRESENTATION) -> WordTable:
    """A word table computed with the model: the vocabulary, then `extra` words not in it."""
    return compute_tables(lm, [hook], vocab, extra, representation)[0]


def compute_tables(lm, hooks: list[HookPoint], vocab: list[str], extra=(),
                   representation: str = DEFAULT_REPRESENTATION) -> list[WordTable]:
    """`compute_table` at several hooks from one pass of the model."""
    words = list(dict.fromkeys([*vocab, *extra]))
    at = word_vectors_at(lm, hooks, words, representation=representation)
    return [WordTable(lm.model_id, h.name, representation, tuple(words), at[h.name].vectors,
                      at[h.name].pieces, len(dict.fromkeys(vocab))) for h in hooks]


def extend_table(lm, table: WordTable, words) -> WordTable:
    """`table` with the vectors of `words` it lacks appended (the vocabulary unchanged)."""
    new = table.missing(words)
    if not new:
        return table
    wv = word_vectors(lm, HookPoint.parse(table.hook), new, representation=table.representation)
    return WordTable(table.model_id, table.hook, table.representation, (*table.words, *new),
                     np.concatenate([table.vectors, wv.vectors]), (*table.pieces, *wv.pieces),
                     table.n_vocab)


def save_table(db: Path, table: WordTable) -> Path:
    """Write a word table beside the atlas (vectors, then the sidecar that names their
    checksum; each written to a temporary file and renamed into place)."""
    path = word_table_path(Path(db), table.model_id, table.hook, table.representation)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(table.vectors, np.float32))
    os.replace(tmp, path)
    meta = {"model_id": table.model_id, "hook": table.hook,
            "representation": table.representation, "n_vocab": table.n_vocab,
            "words": list(table.words), "pieces": [list(p) for p in table.pieces],
            "checksum": table.checksum()}
    side = path.with_suffix(".json")
    tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, side)
    return path


def load_table(db: Path, model_id: str, hook: str,
               representation: str = DEFAULT_REPRESENTATION) -> WordTable | None:
    """The stored word table, or None when there is none or it does not match its checksum
    (a torn write, an edited file): it is then computed again, never answered from."""
    path = word_table_path(Path(db), model_id, hook, representation)
    side = path.with_suffix(".json")
    if not (path.is_file() and side.is_file()):
        return None
    try:
        meta = json.loads(side.read_text())
        vectors = np.load(path, allow_pickle=False)
        table = WordTable(meta["model_id"], meta["hook"], meta["representation"],
                          tuple(meta["words"]), vectors,
                          tuple(tuple(p) for p in meta["pieces"]), int(meta["n_vocab"]))
    except (OSError, ValueError, KeyError) as exc:
        log.warning("word table %s is unreadable (%s); computing it again", path, exc)
        return None
    if table.checksum() != meta.get("checksum") or len(vectors) != len(table.words):
        log.warning("word table %s does not match its checksum; computing it again", path)
        return None
    return table


def word_table(db: Path, model_id: str, hook: HookPoint, words=(), *,
               representation: str = DEFAULT_REPRESENTATION, load_lm=None) -> WordTable:
    """The word table of (model, hook, representation) holding `words`: read from beside the
    atlas when it holds them all (no model needed), else computed or extended with the model
    (`load_lm()`) and stored for the next call."""
    table = load_table(db, model_id, hook.name, representation)
    if table is not None and not table.missing(words):
        return table
    if load_lm is None:
        missing = words if table is None else table.missing(words)
        raise AtlasError(f"the word table of {model_id} at {hook.name} ({representation}) "
                         f"{'does not exist' if table is None else 'lacks ' + repr(missing)}; "
                         f"`atlas analogy --db {db} --words --layer {hook.layer} A B C` "
                         "computes it with the model")
    lm = load_lm()
    t0 = time.perf_counter()
    table = (compute_table(lm, hook, vocabulary(lm.tokenizer), words, representation)
             if table is None else extend_table(lm, table, words))
    save_table(db, table)
    log.info("word table of %s at %s (%s): %d words (%.1fs)", model_id, hook.name,
             representation, len(table.words), time.perf_counter() - t0)
    return table


def store_tables(db: Path, lm, hooks: list[HookPoint], *,
                 representation: str = DEFAULT_REPRESENTATION) -> list[WordTable]:
    """The vocabulary's word tables at `hooks`, those not stored yet computed in one pass of
    the model and stored (what `atlas build` keeps beside the atlas)."""
    stored = {h.name: load_table(db, lm.model_id, h.name, representation) for h in hooks}
    tables = {name: t for name, t in stored.items() if t is not None}
    todo = [h for h in hooks if h.name not in tables]
    if todo:
        t0 = time.perf_counter()
        for table in compute_tables(lm, todo, vocabulary(lm.tokenizer),
                                    representation=representation):
            save_table(db, table)
            tables[table.hook] = table
        log.info("word tables of %s at %s (%s): %d words (%.1fs)", lm.model_id,
                 ", ".join(h.name for h in todo), representation, len(tables[todo[0].name].words),
                 time.perf_counter() - t0)
    return [tables[h.name] for h in hooks]


def stored_tables(db: Path) -> list[dict]:
    """(model_id, hook, representation, words) of the word tables beside an atlas."""
    folder = word_table_path(Path(db), "m", "h", "r").parent
    out = []
    for side in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError):
            continue
        out.append({"model_id": meta.get("model_id"), "hook": meta.get("hook"),
                    "representation": meta.get("representation"),
                    "words": len(meta.get("words", ()))})
    return out


def _nearest(table: WordTable, query_of, exclude: tuple[str, ...], k: int, con,
             index: FeatureIndex | None) -> WordAnalogy:
    """Words of the vocabulary (minus `exclude`) and SAE features nearest the query that
    `query_of(vector of word minus mean)` builds, every vector centred on the candidates'
    mean: residuals share a large common direction that would otherwise dominate every
    cosine."""
    missing = table.missing(exclude)
    if missing:
        raise AtlasError(f"{missing} are not in the word table of {table.model_id} at "
                         f"{table.hook}; `atlas analogy --words` or `atlas neighbors --words` "
                         "adds them with the model")
    keep = [i for i, w in enumerate(table.words[:table.n_vocab]) if w not in set(exclude)]
    cands = [table.words[i] for i in keep]
    mean = table.vectors[keep].mean(0)
    q = query_of(lambda w: table.vectors[table.row(w)] - mean)
    scores, order = blas_topk(unit(table.vectors[keep] - mean).astype(np.float32),
                              unit(q[None]).astype(np.float32), k, np.arange(len(cands)))
    words = tuple((cands[i], float(s)) for i, s in zip(order[0], scores[0]))
    feats: tuple[Hit, ...] = ()
    if index is not None and con is not None:
        scores, ids = index.search(q[None], k)
        feats = tuple(describe(con, index.meta.sae_id, ids[0], scores[0]))
    notes = tuple(f"'{w}' is {len(p)} tokens {list(p)}; its last token's residual was used"
                  for w in exclude for p in [table.pieces[table.index(w)]] if len(p) > 1)
    return WordAnalogy(words, feats, notes)


def table_analogy(table: WordTable, a: str, b: str, c: str, *, k: int = 10,
                  con: duckdb.DuckDBPyConnection | None = None,
                  index: FeatureIndex | None = None) -> WordAnalogy:
    """Words (and, with an SAE index at that layer, features) nearest to b - a + c in a word
    table."""
    return _nearest(table, lambda v: v(b) - v(a) + v(c), (a, b, c), k, con, index)


def table_neighbors(table: WordTable, word: str, *, k: int = 10,
                    con: duckdb.DuckDBPyConnection | None = None,
                    index: FeatureIndex | None = None) -> WordAnalogy:
    """The words (and SAE features) nearest a word's vector in a word table."""
    return _nearest(table, lambda v: v(word), (word,), k, con, index)
