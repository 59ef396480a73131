"""Word vectors and word analogies on the tiny model."""

import numpy as np
import pytest

from atlas.words import word_analogy, word_vectors


def test_word_analogy_reports_split_words(tiny_lm):
    result = word_analogy(tiny_lm, 2, "man", "woman", "kingfisher", k=3,
                                vocab=["queen", "river", "sea", "boy", "girl"])
    assert len(result.words) == 3 and all(-1 <= c <= 1 for _, c in result.words)
    assert any("kingfisher" in n and "tokens" in n for n in result.notes)
    assert {w for w, _ in result.words} <= {"queen", "river", "sea", "boy", "girl"}


@pytest.mark.parametrize("representation", ["bare", "bos", "eos", "li2024"])
def test_word_vectors_equal_a_single_forward(tiny_lm, representation):
    import torch

    from atlas.models import HookPoint, capture_residuals

    tok = tiny_lm.tokenizer
    wv = word_vectors(tiny_lm, 1, ["sea", "river"], representation=representation)
    spaced = tok(" river", add_special_tokens=False)["input_ids"]
    ids = {"bare": spaced, "bos": [tok.bos_token_id, *spaced],
           "eos": [tok.eos_token_id, *spaced],
           "li2024": [tok.bos_token_id, *tok("river", add_special_tokens=False)["input_ids"]],
           }[representation]
    want = capture_residuals(tiny_lm, torch.tensor([ids]), [HookPoint(1)])
    np.testing.assert_allclose(wv.vectors[1], want["blocks.1.hook_resid_post"][0, -1].numpy(),
                               atol=1e-4)
    assert "".join(wv.pieces[1]).strip() == "river"


def test_representations_differ_and_unknown_one_is_refused(tiny_lm):
    from atlas.errors import AtlasError

    got = {r: word_vectors(tiny_lm, 1, ["sea"], representation=r).vectors[0]
           for r in ("bare", "bos", "eos")}
    assert not np.allclose(got["bare"], got["bos"]) and not np.allclose(got["bos"], got["eos"])
    with pytest.raises(AtlasError, match="bare, bos, eos, li2024"):
        word_vectors(tiny_lm, 1, ["sea"], representation="sentence")


def test_word_vectors_read_the_hook_they_are_given(tiny_lm):
    """resid_pre of block L is resid_post of block L - 1, and differs from resid_post of L."""
    from atlas.models import HookPoint

    words = ["sea", "river"]
    pre = word_vectors(tiny_lm, HookPoint(2, "pre"), words).vectors
    np.testing.assert_allclose(pre, word_vectors(tiny_lm, 1, words).vectors, atol=1e-6)
    assert not np.allclose(pre, word_vectors(tiny_lm, HookPoint(2, "post"), words).vectors)


def test_stored_table_answers_as_the_model_does(tiny_lm, tmp_path):
    """An analogy from the stored word table equals one computed with the model, and neighbours
    of a word are ranked by centred cosine over the vocabulary (recomputed here)."""
    from atlas.models import HookPoint
    from atlas.words import table_analogy, table_neighbors, vocabulary, word_table

    table = word_table(tmp_path / "a.duckdb", tiny_lm.model_id, HookPoint(1), ["kingfisher"],
                       load_lm=lambda: tiny_lm)
    vocab = vocabulary(tiny_lm.tokenizer)
    a, b, c = vocab[:3]
    direct = word_analogy(tiny_lm, 1, a, b, c, k=5, vocab=vocab)
    stored = table_analogy(table, a, b, c, k=5)
    assert [w for w, _ in stored.words] == [w for w, _ in direct.words]
    np.testing.assert_allclose([s for _, s in stored.words], [s for _, s in direct.words],
                               atol=1e-5)
    near = table_neighbors(table, "kingfisher", k=4)
    assert any("kingfisher" in n for n in near.notes)
    vecs = word_vectors(tiny_lm, 1, vocab).vectors
    centred = vecs - vecs.mean(0)
    q = word_vectors(tiny_lm, 1, ["kingfisher"]).vectors[0] - vecs.mean(0)
    cos = centred @ q / np.linalg.norm(centred, axis=1) / np.linalg.norm(q)
    assert [w for w, _ in near.words] == [vocab[i] for i in np.argsort(-cos)[:4]]


def test_a_table_is_read_without_the_model_and_recomputed_when_damaged(tiny_lm, tmp_path,
                                                                       caplog):
    from atlas.artifacts import word_table_path
    from atlas.errors import AtlasError
    from atlas.models import HookPoint
    from atlas.words import word_table

    db = tmp_path / "a.duckdb"
    loads = []

    def load():
        loads.append(1)
        return tiny_lm

    first = word_table(db, tiny_lm.model_id, HookPoint(2), ["kingfisher"], load_lm=load)
    again = word_table(db, tiny_lm.model_id, HookPoint(2), ["kingfisher"], load_lm=load)
    assert len(loads) == 1 and again.words == first.words
    np.testing.assert_array_equal(again.vectors, first.vectors)
    with pytest.raises(AtlasError, match="atlas analogy"):
        word_table(db, tiny_lm.model_id, HookPoint(2), ["seaside"])   # no model to add it
    path = word_table_path(db, tiny_lm.model_id, "blocks.2.hook_resid_post", "bare")
    data = bytearray(path.read_bytes())
    data[-4:] = b"\x00\x00\x80\x7f"                                   # one value -> inf
    path.write_bytes(bytes(data))
    fixed = word_table(db, tiny_lm.model_id, HookPoint(2), ["kingfisher"], load_lm=load)
    assert len(loads) == 2 and "does not match its checksum" in caplog.text
    np.testing.assert_array_equal(fixed.vectors, first.vectors)
