"""Models and published SAEs from the Hugging Face hub, offline: a hub cache written in the
hub's own layout holds a small random model with SmolLM2's tokenizer and SAEs in the file
layout of SAELens's `gpt2-small-res-jb` release. `atlas build` runs as a user runs it (the
console script, `HF_HUB_CACHE` and `HF_HUB_OFFLINE=1` set), and SAELens and transformers load
everything through their own hub code, unchanged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from helpers import atlas_offline, folder_files, write_hub_repo
from safetensors.torch import save_file

from atlas.cli import main
from atlas.models import HookPoint, capture_residuals, embedded_gguf, load_model

MODEL_REPO = "atlas-tests/tiny-smollm2"
RELEASE, SAE_REPO = "gpt2-small-res-jb", "jbloom/GPT2-Small-SAEs-Reformatted"
LAYERS = (1, 2)
D_SAE = 32
BLOCK = 64


@pytest.fixture(scope="module")
def tiny_smollm2(tmp_path_factory) -> Path:
    """A 4-layer random Llama (d_model 64) with SmolLM2-135M's tokenizer, saved with
    `save_pretrained`."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = embedded_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "tiny-smollm2"
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def jb_sae_files(layer: int, seed: int) -> tuple[dict[str, bytes], dict[str, torch.Tensor]]:
    """One SAE of gpt2-small-res-jb as the release stores it: a pre-6.0 SAELens cfg.json,
    sae_weights.safetensors and sparsity.safetensors in a folder named after the hook."""
    hook = f"blocks.{layer}.hook_resid_pre"
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(D_SAE, 64, generator=g)
    weights = {"W_enc": torch.randn(64, D_SAE, generator=g) * 8.0,
               "W_dec": w_dec / w_dec.norm(dim=1, keepdim=True),
               "b_enc": torch.randn(D_SAE, generator=g) * 0.1,
               "b_dec": torch.randn(64, generator=g) * 0.02}
    cfg = {"model_name": "gpt2-small", "hook_point": hook, "hook_point_layer": layer,
           "hook_point_head_index": None, "d_in": 64, "d_sae": D_SAE, "dtype": "torch.float32",
           "device": "cpu", "context_size": 128, "prepend_bos": True,
           "dataset_path": "Skylion007/openwebtext", "lr": 4e-4, "l1_coefficient": 8e-5}
    tmp = {}
    for name, tensors in (("sae_weights", weights), ("sparsity", {"sparsity": torch.zeros(D_SAE)})):
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"atlas-{os.getpid()}-{name}.safetensors"
        save_file(tensors, path)
        tmp[name] = path.read_bytes()
        path.unlink()
    files = {f"{hook}/cfg.json": json.dumps(cfg).encode(),
             f"{hook}/sae_weights.safetensors": tmp["sae_weights"],
             f"{hook}/sparsity.safetensors": tmp["sparsity"]}
    return files, weights


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny_smollm2) -> tuple[Path, dict]:
    cache = tmp_path_factory.mktemp("hf") / "hub"
    write_hub_repo(cache, MODEL_REPO, folder_files(tiny_smollm2))
    files, weights = {}, {}
    for layer in LAYERS:
        f, weights[layer] = jb_sae_files(layer, seed=layer)
        files.update(f)
    write_hub_repo(cache, SAE_REPO, files)
    return cache, weights


@pytest.fixture(scope="module")
def hub_atlas(hub_cache, tmp_path_factory) -> Path:
    """`atlas build` of the hub model with two published SAEs ('{layer}' over --layers 1-2)."""
    db = tmp_path_factory.mktemp("hub-atlas") / "hub.duckdb"
    atlas_offline(hub_cache[0], "build", "--db", str(db), "--model", MODEL_REPO,
                  "--sae-release", RELEASE, "--sae-id", "blocks.{layer}.hook_resid_pre",
                  "--layers", "1-2", "--tokens", str(BLOCK * 24), "--block-size", str(BLOCK),
                  "--batch-blocks", "8", "--shard-blocks", "8", "--n-examples", "4",
                  "--analyses", "galaxy", "--dtype", "float32")
    return db


def test_later_commands_reload_published_saes_from_their_release(hub_atlas, hub_cache):
    out = atlas_offline(hub_cache[0], "features", "--db", str(hub_atlas), "--sae", "L2",
                        "def main(): return 0", "--json")
    assert [t["token"] for t in json.loads(out)][:2] == ["def", " main"]
    out = atlas_offline(hub_cache[0], "compare", "--db", str(hub_atlas), "--sae", "L1,L2",
                        "--blocks", "8", "--permutations", "5")
    assert f"{RELEASE}/blocks.1.hook_resid_pre ~ {RELEASE}/blocks.2.hook_resid_pre" in out


def q(db, sql: str, params=()) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def test_published_saes_are_recorded_with_release_id_and_neuronpedia_id(hub_atlas):
    rows = q(hub_atlas, "SELECT sae_id, layer, hook, architecture, release, release_sae_id, "
             "neuronpedia_id, l0, explained_variance, quality_tokens FROM saes ORDER BY layer")
    assert [r[:7] for r in rows] == [
        (f"{RELEASE}/blocks.{i}.hook_resid_pre", i, f"blocks.{i}.hook_resid_pre", "standard",
         RELEASE, f"blocks.{i}.hook_resid_pre", f"gpt2-small/{i}-res-jb") for i in LAYERS]
    assert all(r[7] > 0 and np.isfinite(r[8]) and r[9] > 0 for r in rows), "held-out quality"
    assert q(hub_atlas, "SELECT model_id, source FROM models") == [(MODEL_REPO,
                                                                    f"hf:{MODEL_REPO}")]
    urls = q(hub_atlas, "SELECT feature, neuronpedia_url FROM feature_cards WHERE layer = 1 "
             "ORDER BY feature LIMIT 3")
    assert urls == [(f, f"https://www.neuronpedia.org/gpt2-small/1-res-jb/{f}")
                    for f in range(3)]


def test_the_hub_model_tokenises_with_smollm2s_tokenizer(hub_atlas, tiny_smollm2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_smollm2)
    rows = q(hub_atlas, "SELECT text, token_ids, n_tokens FROM blocks ORDER BY block_id LIMIT 4")
    assert max(max(ids) for _, ids, _ in rows) > 1000
    # document blocks: a start token, then the text's tokens, then padding
    assert [text for text, _, _ in rows] == tok.batch_decode([ids[1:n] for _, ids, n in rows])


def test_examples_equal_the_published_encoder_on_centred_residuals(hub_atlas, hub_cache,
                                                                   tiny_smollm2):
    """gpt2-small-res-jb was trained on TransformerLens's GPT-2 with centred writing weights
    (SAELens records `center_writing_weights: true`): its input is the residual minus its mean
    over d_model. Here the standard SAE's encoder, written out:
    f = relu((x - mean(x) - b_dec) @ W_enc + b_enc)."""
    _, weights = hub_cache
    lm = load_model(str(tiny_smollm2), device="cpu", dtype="float32")
    for layer in LAYERS:
        w = weights[layer]
        ex = q(hub_atlas, "SELECT e.feature, e.block_id, e.position, e.act, b.token_ids "
               "FROM examples e JOIN blocks b USING (block_id) WHERE e.sae_id = ?",
               [f"{RELEASE}/blocks.{layer}.hook_resid_pre"])
        assert len(ex) > 10
        feat, blk, pos, act, ids = zip(*ex)
        hook = HookPoint(layer, "pre")
        x = capture_residuals(lm, torch.tensor(ids), [hook])[hook.name]
        x = x[torch.arange(len(ex)), torch.tensor(pos)]
        centred = torch.relu((x - x.mean(-1, keepdim=True) - w["b_dec"]) @ w["W_enc"]
                             + w["b_enc"])
        raw = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
        pick = (torch.arange(len(ex)), torch.tensor(feat))
        np.testing.assert_allclose(act, centred[pick].numpy(), rtol=1e-4, atol=1e-5)
        assert not np.allclose(act, raw[pick].numpy(), rtol=1e-3), "centring changes the codes"


def test_a_local_model_directory_builds_and_reloads(tiny_smollm2, tmp_path, capsys):
    db = tmp_path / "local.duckdb"
    assert main(["build", "--db", str(db), "--model", str(tiny_smollm2), "--layers", "1",
                 "--tokens", str(BLOCK * 16), "--block-size", str(BLOCK), "--d-sae", "32",
                 "--k", "4", "--epochs", "1", "--batch-blocks", "8", "--shard-blocks", "8",
                 "--analyses", ""]) == 0
    assert q(db, "SELECT model_id, source, spec FROM models") == [
        ("tiny-smollm2", str(tiny_smollm2), str(tiny_smollm2.resolve()))]
    capsys.readouterr()
    assert main(["features", "--db", str(db), "--sae", "L1", "def main(): return 0",
                 "--json"]) == 0
    tokens = json.loads(capsys.readouterr().out)
    assert [t["token"] for t in tokens][:3] == ["def", " main", "():"]


def test_the_feature_page_links_a_published_feature_to_neuronpedia(hub_atlas, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ATLAS_DB", str(hub_atlas))
    app = str(Path(__file__).parent.parent / "app" / "streamlit_app.py")
    at = AppTest.from_file(app, default_timeout=120)
    at.query_params["page"] = "Feature"
    try:
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        links = [e.proto.url for e in at.get("link_button")]
        assert links == ["https://www.neuronpedia.org/gpt2-small/1-res-jb/0"]
    finally:  # AppTest ran the app in this process: drop its cached connections
        import streamlit as st

        st.cache_resource.clear()
        st.cache_data.clear()
