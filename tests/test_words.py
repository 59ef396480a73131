"""Word vectors and word analogies on the tiny model."""

import numpy as np

from atlas.words import word_analogy, word_vectors


def test_word_analogy_reports_split_words(tiny_lm):
    result = word_analogy(tiny_lm, 2, "man", "woman", "kingfisher", k=3,
                                vocab=["queen", "river", "sea", "boy", "girl"])
    assert len(result.words) == 3 and all(-1 <= c <= 1 for _, c in result.words)
    assert any("kingfisher" in n and "tokens" in n for n in result.notes)
    assert {w for w, _ in result.words} <= {"queen", "river", "sea", "boy", "girl"}


def test_word_vectors_equal_a_single_forward(tiny_lm):
    import torch

    from atlas.models import HookPoint, capture_residuals

    wv = word_vectors(tiny_lm, 1, ["sea", "river"])
    ids = tiny_lm.tokenizer(" river", add_special_tokens=False)["input_ids"]
    full = torch.tensor([[tiny_lm.tokenizer.eos_token_id, *ids]])
    want = capture_residuals(tiny_lm, full, [HookPoint(1)])["blocks.1.hook_resid_post"][0, -1]
    np.testing.assert_allclose(wv.vectors[1], want.numpy(), atol=1e-4)


def test_word_vectors_read_the_hook_they_are_given(tiny_lm):
    """resid_pre of block L is resid_post of block L - 1, and differs from resid_post of L."""
    from atlas.models import HookPoint

    words = ["sea", "river"]
    pre = word_vectors(tiny_lm, HookPoint(2, "pre"), words).vectors
    np.testing.assert_allclose(pre, word_vectors(tiny_lm, 1, words).vectors, atol=1e-6)
    assert not np.allclose(pre, word_vectors(tiny_lm, HookPoint(2, "post"), words).vectors)
