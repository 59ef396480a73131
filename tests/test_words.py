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
