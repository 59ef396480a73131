import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from atlas.corpus import documents_for, start_token, tokenize_blocks
from atlas.errors import AtlasError


def test_default_corpus_mixes_wiki_and_code_in_pure_blocks(tiny_lm):
    groups = documents_for("default")
    assert len(groups["wiki"]) > 9000 and len(groups["code"]) > 100
    blocks = tokenize_blocks(groups, tiny_lm.tokenizer, tokens=64 * 40, block_size=64,
                             code_fraction=0.25, rule="packed")
    assert blocks.token_ids.shape == (40, 64)
    assert blocks.sources.count("code") == 10 and blocks.sources.count("wiki") == 30
    for b, doc in enumerate(blocks.doc_ids):
        assert blocks.documents[doc].source == blocks.sources[b]
    assert not blocks.mask[:, 0].any()
    special = set(tiny_lm.tokenizer.all_special_ids)
    assert not any(t in special for t in blocks.token_ids[blocks.mask])


def test_same_tokens_give_the_same_corpus_id(tiny_lm):
    groups = documents_for("wiki")
    a = tokenize_blocks(groups, tiny_lm.tokenizer, tokens=640, block_size=64)
    b = tokenize_blocks(groups, tiny_lm.tokenizer, tokens=640, block_size=64)
    assert a.rule == "document"
    assert a.corpus_id == b.corpus_id and np.array_equal(a.token_ids, b.token_ids)


def test_user_corpora_text_dir_jsonl_parquet_records(tmp_path, tiny_lm):
    text = "The river runs to the sea. " * 40
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text(text)
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": text, "source": "s"})
                                                for _ in range(3)))
    pq.write_table(pa.table({"text": [text] * 3}), tmp_path / "p.parquet")
    for spec in (tmp_path / "d", tmp_path / "d" / "a.txt", tmp_path / "c.jsonl",
                 tmp_path / "p.parquet", [text, {"text": text}]):
        groups = documents_for(spec)
        blocks = tokenize_blocks(groups, tiny_lm.tokenizer, tokens=128, block_size=64)
        assert blocks.n_blocks >= 1
    assert list(documents_for(tmp_path / "c.jsonl")) == ["s"]


@pytest.mark.parametrize("make, needle", [
    (lambda p: p / "missing.txt", "does not exist"),
    (lambda p: (p / "x.bin").write_bytes(b"\x00\x01\x02" * 100) and p / "x.bin", "not text"),
    (lambda p: (p / "x.txt").write_bytes(b"caf\xe9 " * 100) and p / "x.txt", "not UTF-8"),
    (lambda p: (p / "x.jsonl").write_text("{oops\n") and p / "x.jsonl", "line 1 is not JSON"),
    (lambda p: (p / "e.txt").write_text("   ") and p / "e.txt", "holds no text"),
    (lambda p: (p / "s.txt").write_text("tiny") and p / "s.txt", "fewer tokens than one block"),
])
def test_bad_corpus_gets_one_clear_error(tmp_path, tiny_lm, make, needle):
    # packed blocks need a whole block of text; a document block may be short
    rule = "packed" if needle.startswith("fewer") else "document"
    with pytest.raises(AtlasError, match=needle):
        tokenize_blocks(documents_for(make(tmp_path)), tiny_lm.tokenizer, tokens=256,
                        block_size=64, rule=rule)


def test_document_blocks_never_span_two_documents(tiny_lm):
    """The paper's rule: each block is a start token and a slice of one document's tokens;
    a document's last block is shorter, padded, and its padding is masked out."""
    tok = tiny_lm.tokenizer
    docs = ["The river runs to the sea. " * 9, "A king and a queen.", "def main(): return 0\n" * 7]
    groups = documents_for(docs)
    blocks = tokenize_blocks(groups, tok, tokens=10_000, block_size=16, rule="document")
    assert blocks.rule == "document" and blocks.n_blocks > len(docs)
    for b in range(blocks.n_blocks):
        n = int(blocks.lengths[b])
        ids = tok(blocks.documents[blocks.doc_ids[b]].text, add_special_tokens=False)["input_ids"]
        row = blocks.token_ids[b].tolist()
        assert row[0] == start_token(tok) == tok.eos_token_id and 2 <= n <= 16
        body = row[1:n]
        starts = [s for s in range(0, len(ids), 15) if ids[s:s + 15] == body]
        assert starts, f"block {b} is not a slice of its document"
        assert not blocks.mask[b, n:].any() and not blocks.mask[b, 0]
    # every document token lands in exactly one block
    per_doc = {d: sum(int(blocks.lengths[b]) - 1 for b in range(blocks.n_blocks)
                      if blocks.doc_ids[b] == d) for d in set(blocks.doc_ids.tolist())}
    for d, n in per_doc.items():
        assert n == min(len(tok(blocks.documents[d].text, add_special_tokens=False)
                            ["input_ids"]), 4 * 15)
    assert blocks.n_tokens == int(blocks.lengths.sum()) - blocks.n_blocks


def test_packed_blocks_stay_available(tiny_lm):
    groups = documents_for("wiki")
    blocks = tokenize_blocks(groups, tiny_lm.tokenizer, tokens=640, block_size=64,
                             rule="packed")
    assert blocks.token_ids.shape == (10, 64) and blocks.n_tokens == 640
    eos = tiny_lm.tokenizer.eos_token_id
    assert (blocks.token_ids == eos).any(axis=1).sum() > 0   # a block holds a document break


def test_a_packed_build_records_its_rule_and_full_blocks(tmp_path):
    import duckdb

    from atlas.builder import build
    from tests.conftest import tiny_config

    config = tiny_config(tmp_path / "packed.duckdb", block_rule="packed", quick=True)
    build(config)
    with duckdb.connect(str(config.db), read_only=True) as con:
        rule, n_blocks, n_tokens = con.execute("SELECT block_rule, n_blocks, n_tokens "
                                               "FROM corpora").fetchone()
        lengths = {r[0] for r in con.execute("SELECT DISTINCT n_tokens FROM blocks").fetchall()}
        runs = con.execute("SELECT count(*) FROM analysis_runs").fetchone()[0]
    assert (rule, n_blocks, n_tokens, lengths) == ("packed", 96, 96 * 64, {64}) and runs == 0


def _words(n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    vocab = ["river", "sea", "king", "queen", "stone", "bridge", "def", "return", "import",
             "light", "cloud", "north", "value", "table", "green", "old", "walks", "flows"]
    return " ".join(rng.choice(vocab, n))


def test_li2024_blocks_are_the_full_windows_of_one_context_per_document(tiny_lm):
    """Each document is one context (start token + at most 1,023 tokens); its blocks are the
    full windows inside it, each row holding the document up to the window's end."""
    from atlas.corpus import LI2024_CONTEXT

    tok = tiny_lm.tokenizer
    texts = [_words(40, 0), _words(600, 1), _words(3000, 2)]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    w = 128
    blocks = tokenize_blocks(documents_for(texts), tok, tokens=10 ** 6, block_size=w,
                             rule="li2024")
    want = [(d, j) for d, x in enumerate(ids) for j in range(min(len(x), 1023) // w)]
    assert len(ids[0]) < w and len(ids[2]) > 1023            # one too short, one truncated
    assert blocks.n_blocks == len(want) and blocks.token_ids.shape[1] == LI2024_CONTEXT
    start = start_token(tok)
    kept = [d for d in range(3) if any(x == d for x, _ in want)]
    for b, (d, j) in enumerate(want):
        row, mask = blocks.token_ids[b], blocks.mask[b]
        assert row[0] == start and list(row[1:1 + (j + 1) * w]) == ids[d][:(j + 1) * w]
        assert list(np.flatnonzero(mask)) == list(range(1 + j * w, 1 + (j + 1) * w))
        assert blocks.documents[blocks.doc_ids[b]].text == texts[d]
    assert blocks.n_tokens == len(want) * w and len(blocks.documents) == len(kept)


def test_li2024_cooccurrence_equals_the_reference_loop(tiny_lm):
    """Transcribed from the geometry paper's counting script (feature_cooccurrences_pile_all):
    tokenize with truncation to 1,024, one forward pass, acts = encode(resid) > threshold,
    drop position 0, for j in range(0, len, k): only if j + k <= len, any() over the chunk,
    histogram += outer(chunk_features, chunk_features)."""
    import torch
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    from atlas import pipeline
    from atlas.harvest import forward_batches
    from atlas.models import HookPoint, capture_residuals
    from tests.conftest import tiny_config
    from tests.test_harvest import QUALITY

    tok, hook, k, threshold = tiny_lm.tokenizer, HookPoint(2), 64, 0.5
    texts = [_words(n, s) for s, n in enumerate((30, 150, 260, 900, 2000, 70, 400))]
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=tiny_lm.d_model, d_sae=48, k=5,
                                metadata=SAEMetadata(hook_name=hook.name))).eval()
    # The reference loop.
    hist, n_chunks = np.zeros((48, 48), np.int64), 0
    for text in texts:
        ids = [start_token(tok), *tok(text, add_special_tokens=False)["input_ids"]][:1024]
        resid = capture_residuals(tiny_lm, torch.tensor([ids]), [hook])[hook.name]
        acts = (sae.encode(resid) > threshold).float()[0, 1:]
        for j in range(0, acts.shape[0], k):
            if j + k <= acts.shape[0]:
                chunk = acts[j:j + k].any(0)
                hist += torch.outer(chunk, chunk).long().numpy()
                n_chunks += 1
    # The atlas under the li2024 rule.
    blocks = tokenize_blocks(documents_for(texts), tok, tokens=10 ** 6, block_size=k,
                             rule="li2024")
    config = tiny_config(Path("unused.duckdb"), block_rule="li2024", block_size=k, threshold=threshold)
    planned = pipeline.AtlasSAE("random/L2", hook, "random", sae, quality=QUALITY)
    stats, _ = pipeline.harvest(config, [planned], forward_batches(tiny_lm, blocks, [hook],
                                                                   batch_blocks=4),
                                n_blocks=blocks.n_blocks)
    got = stats[planned.sae_id]
    assert blocks.n_blocks == n_chunks and got.n_blocks == n_chunks
    assert np.array_equal(got.cooccurrence.dense(), hist)
    assert np.array_equal(got.block_count, np.diag(hist))
