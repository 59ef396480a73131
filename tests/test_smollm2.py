"""The real embedded model on a few blocks (slow: converting the GGUF takes ~25 s on CPU)."""

import logging

import duckdb
import pytest
import torch

from atlas.config import BuildConfig
from atlas.models import EMBEDDED, converted_dir, embedded_gguf, load_model, load_tokenizer
from atlas.tokens import decode_each

pytestmark = pytest.mark.slow

TEXTS = ["Hello world", "  def f(x):\n\treturn x**2  # ünïcödé 日本語",
         "<|im_start|>user\nhi<|im_end|>", ""]


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    """One converted-model cache for this module: the first test converts into it, the build
    test after it loads the converted copy."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATLAS_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def test_the_converted_copy_is_the_gguf_s_model_and_tokenizer(model_cache, caplog):
    caplog.set_level(logging.INFO, logger="atlas.models")
    folder = converted_dir(embedded_gguf())
    assert folder is not None and not folder.exists()
    gguf = load_model(EMBEDDED, device="cpu", dtype="float32")     # converted, then kept
    assert "dequantising GGUF" in caplog.text and (folder / "model.safetensors").is_file()
    caplog.clear()
    copy = load_model(EMBEDDED, device="cpu", dtype="float32")
    assert "converted copy" in caplog.text and "dequantising" not in caplog.text
    want, got = gguf.model.state_dict(), copy.model.state_dict()
    assert sorted(want) == sorted(got) and all(torch.equal(want[k], got[k]) for k in want)
    assert (copy.model_id, copy.source, copy.spec) == (gguf.model_id, gguf.source, gguf.spec)
    chat = [{"role": "user", "content": "Explain this feature."}]
    for tok in (copy.tokenizer, load_tokenizer(EMBEDDED)):
        assert [tok(t)["input_ids"] for t in TEXTS] == [gguf.tokenizer(t)["input_ids"]
                                                         for t in TEXTS]
        assert (tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
                == gguf.tokenizer.apply_chat_template(chat, tokenize=False,
                                                      add_generation_prompt=True))
        assert (tok.eos_token_id, tok.pad_token_id) == (gguf.tokenizer.eos_token_id,
                                                         gguf.tokenizer.pad_token_id)
        # the atlas's one-call decoding reads every token and text as transformers does
        seqs = [[i] for i in range(len(tok))] + [tok(t)["input_ids"] for t in TEXTS]
        assert decode_each(tok, seqs) == gguf.tokenizer.batch_decode(seqs)
    # a damaged copy is converted again, and replaced
    (folder / "config.json").write_text("{")
    caplog.clear()
    again = load_model(EMBEDDED, device="cpu", dtype="float32")
    assert "unreadable" in caplog.text and "dequantising GGUF" in caplog.text
    assert torch.equal(again.model.state_dict()["model.norm.weight"], want["model.norm.weight"])
    # a damaged tokenizer in the copy: the tokenizer is read from the GGUF instead (the model
    # load, which reads the copy's tokenizer through the same helper, converts again)
    saved = (folder / "tokenizer.json").read_bytes()
    (folder / "tokenizer.json").write_text("{")
    caplog.clear()
    tok = load_tokenizer(EMBEDDED)
    assert "converted tokenizer" in caplog.text and "unreadable" in caplog.text
    assert [tok(t)["input_ids"] for t in TEXTS] == [gguf.tokenizer(t)["input_ids"]
                                                     for t in TEXTS]
    (folder / "tokenizer.json").write_bytes(saved)
    caplog.clear()
    assert load_model(EMBEDDED, device="cpu").d_model == 576
    assert "converted copy" in caplog.text


def test_caching_off_converts_every_time(monkeypatch):
    monkeypatch.setenv("ATLAS_CACHE", "off")
    assert converted_dir(embedded_gguf()) is None


def test_smollm2_builds_an_atlas_on_a_few_blocks(model_cache, tmp_path):
    from atlas.builder import build

    config = BuildConfig(db=tmp_path / "smol.duckdb", layers=(3,), tokens=256 * 12, d_sae=256,
                         k=16, epochs=2, batch_blocks=4, n_examples=3)
    result = build(config)
    assert result.model_id == "smollm2-135m" and result.n_tokens == 256 * 12
    with duckdb.connect(str(config.db), read_only=True) as con:
        n_layers, d_model = con.execute("SELECT n_layers, d_model FROM models").fetchone()
        assert (n_layers, d_model) == (30, 576)
        d_in, l0 = con.execute("SELECT d_in, l0 FROM saes").fetchone()
        assert d_in == 576 and l0 <= 16
        sources = dict(con.execute("SELECT source, count(*) FROM blocks GROUP BY 1").fetchall())
        assert set(sources) == {"wiki", "code"}
        live = con.execute("SELECT count(*) FROM features WHERE firing_count > 0").fetchone()[0]
        assert live > 50
        labels = con.execute("SELECT label FROM features WHERE firing_count > 0").fetchall()
        assert any(label[0] for label in labels)
