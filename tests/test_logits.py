"""Logit lens: the sae_vis definition (W_dec @ W_U through the final norm's scale, centred over
the vocabulary), transcribed here and compared; the stored lens of the tiny atlas against the
model's own lm_head."""

import re

import numpy as np
import torch

from atlas import logits


def lens_by_the_formula(W_dec, g, W_U, k):
    """effect = W_dec @ (g * W_U).T, minus its mean over the vocabulary; top/bottom k."""
    effect = W_dec @ (W_U * g).T
    effect = effect - effect.mean(1, keepdims=True)
    order = np.argsort(-effect, axis=1, kind="stable")
    return order[:, :k], order[:, ::-1][:, :k], effect


def test_logit_lens_equals_the_formula_in_chunks():
    rng = np.random.default_rng(0)
    W_dec, W_U = rng.normal(size=(37, 16)), rng.normal(size=(300, 16))
    g = rng.uniform(0.5, 2.0, 16)
    top, bottom, effect = lens_by_the_formula(W_dec, g, W_U, 5)
    got = logits.logit_lens(torch.tensor(W_dec, dtype=torch.float32),
                            logits.Unembedding(torch.tensor(W_U, dtype=torch.float32),
                                               torch.tensor(g, dtype=torch.float32), "norm"),
                            k=5, chunk=8)
    assert np.array_equal(got.top_ids, top) and np.array_equal(got.bottom_ids, bottom)
    np.testing.assert_allclose(got.top_values, np.take_along_axis(effect, top, 1), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(got.bottom_values, np.take_along_axis(effect, bottom, 1),
                               rtol=1e-4, atol=1e-5)


def test_the_bfloat16_screen_gives_the_float32_lens(caplog):
    """The screen's result equals the plain float32 lens, both where its bound proves the
    candidates hold the answer and where it does not (near-ties among 300 tokens force the
    fallback for the features pointing at them)."""
    rng = np.random.default_rng(1)
    d, vocab = 48, 3000
    W_U = rng.normal(size=(vocab, d))
    W_U[:300] = W_U[0] + 1e-4 * rng.normal(size=(300, d))    # 300 near-identical tokens
    W_U[300:330] *= 3.0                                        # long rows: computed exactly
    W_dec = rng.normal(size=(200, d))
    W_dec[:20] = W_U[0] - W_U.mean(0) + 0.01 * rng.normal(size=(20, d))
    unembed = logits.Unembedding(torch.tensor(W_U, dtype=torch.float32), None, None)
    dec = torch.tensor(W_dec, dtype=torch.float32)
    plain = logits.logit_lens(dec, unembed, chunk=64)
    with caplog.at_level("DEBUG", logger="atlas.logits"):
        screened = logits.logit_lens(dec, unembed, chunk=64, screen=True)
    redone = int(re.search(r"(\d+) of 200 features recomputed", caplog.text).group(1))
    assert 20 <= redone < 200
    for name in ("top_ids", "bottom_ids"):
        assert np.array_equal(getattr(screened, name), getattr(plain, name)), name
    for name in ("top_values", "bottom_values"):
        np.testing.assert_allclose(getattr(screened, name), getattr(plain, name), rtol=1e-5,
                                   atol=1e-5)


def test_final_norm_scale_of_llama_gemma_and_gpt2():
    """Llama's RMSNorm scales by its weight, Gemma's by 1 + weight, GPT-2's LayerNorm by its
    weight; each is read off the model's final norm."""
    from transformers import (GemmaConfig, GemmaForCausalLM, GPT2Config, GPT2LMHeadModel,
                              LlamaConfig, LlamaForCausalLM)

    torch.manual_seed(0)
    small = dict(vocab_size=50, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                 num_attention_heads=2, num_key_value_heads=1, head_dim=4)
    llama = LlamaForCausalLM(LlamaConfig(**small))
    gemma = GemmaForCausalLM(GemmaConfig(**small))
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=8, n_layer=1, n_head=2))
    for model, norm, want in ((llama, "model.norm", lambda w: w),
                              (gemma, "model.norm", lambda w: 1 + w),
                              (gpt2, "transformer.ln_f", lambda w: w)):
        name, module = logits.final_norm(model)
        assert name == norm
        with torch.no_grad():
            module.weight.uniform_(-0.5, 0.5)
        torch.testing.assert_close(logits.final_norm_scale(module, 8), want(module.weight),
                                   rtol=1e-5, atol=1e-6)


def test_stored_logit_lens_equals_the_model_s_lm_head(tiny_atlas, tiny_lm):
    from atlas import catalog, store

    con = store.connect(tiny_atlas[0].db, read_only=True)
    sae_id = tiny_atlas[1].sae_ids[0]
    sae = catalog.load_sae(con, sae_id)
    cur = con.cursor()
    rows = cur.sql("SELECT feature, direction, rank, token_id, token, value FROM "
                   "feature_logits WHERE sae_id = ? ORDER BY feature, direction, rank",
                   params=[sae_id]).df()
    with torch.no_grad():
        m = tiny_lm.model
        effect = m.lm_head(sae.W_dec * m.model.norm.weight).numpy()
    effect = effect - effect.mean(1, keepdims=True)
    for f in (0, 5, 40):
        mine = rows[rows.feature == f]
        top = mine[mine.direction == "top"]
        assert list(top.token_id) == list(np.argsort(-effect[f])[:10])
        np.testing.assert_allclose(top.value, np.sort(effect[f])[::-1][:10], rtol=1e-4,
                                   atol=1e-6)
        bottom = mine[mine.direction == "bottom"]
        assert list(bottom.token_id) == list(np.argsort(effect[f])[:10])
        assert list(top.token) == tiny_lm.tokenizer.batch_decode([[i] for i in top.token_id])
    assert cur.sql("SELECT count(*) FROM feature_logits WHERE sae_id = ?",
                   params=[sae_id]).fetchall()[0][0] == 20 * sae.cfg.d_sae
    con.close()
