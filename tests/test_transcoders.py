"""Transcoders from SAELens (Transcoder, SkipTranscoder, JumpReLU and JumpReLUSkip transcoders),
saved by SAELens with small random weights and built with --sae-path: codes harvested at the
MLP's input, quality measured against the MLP's output, decoder rows and logit lens in the
output space, both hooks recorded; every number against an independent recomputation."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from sae_lens import SAE
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.transcoder import (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig,
                                      JumpReLUTranscoder, JumpReLUTranscoderConfig,
                                      SkipTranscoder, SkipTranscoderConfig, Transcoder,
                                      TranscoderConfig)

from atlas.cli import main
from atlas.config import BuildConfig
from atlas.hooks import HookPoint
from atlas.models import capture_residuals
from atlas.pipeline import held_out_blocks
from tests.tiny import tiny_model_dir

D_SAE = 48
BLOCK = 64
TOKENS = BLOCK * 40
THRESHOLD = 0.5
# class, config, the hooks it reads and writes (under each name SAELens's releases use)
KINDS = {
    "transcoder": (Transcoder, TranscoderConfig, "blocks.1.ln2.hook_normalized",
                   "blocks.1.hook_mlp_out"),
    "skip_transcoder": (SkipTranscoder, SkipTranscoderConfig, "blocks.2.mlp.hook_in",
                        "blocks.2.mlp.hook_out"),
    "jumprelu_transcoder": (JumpReLUTranscoder, JumpReLUTranscoderConfig,
                            "blocks.3.hook_mlp_in", "blocks.3.hook_mlp_out"),
    "jumprelu_skip_transcoder": (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig,
                                 "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"),
}
CANONICAL = {"blocks.2.mlp.hook_in": "blocks.2.ln2.hook_normalized",
             "blocks.2.mlp.hook_out": "blocks.2.hook_mlp_out",
             "blocks.3.hook_mlp_in": "blocks.3.hook_resid_mid"}


def q(db, sql: str, params=()) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def random_transcoder(kind: str, lm, seed: int):
    cls, cfg_cls, hook, hook_out = KINDS[kind]
    ids = torch.randint(10, 400, (2, BLOCK), generator=torch.Generator().manual_seed(0))
    point = HookPoint.parse_any(hook)
    norm = float(capture_residuals(lm, ids, [point])[point.name].norm(dim=-1).median())
    torch.manual_seed(seed)
    cfg = cfg_cls(d_in=lm.d_model, d_sae=D_SAE, d_out=lm.d_model, apply_b_dec_to_input=False,
                  metadata=SAEMetadata(hook_name=hook, hook_name_out=hook_out,
                                       model_name="tiny-random-llama"))
    sae = cls(cfg)
    with torch.no_grad():
        w_dec = torch.randn(D_SAE, lm.d_model)
        sae.W_dec.copy_(w_dec / w_dec.norm(dim=1, keepdim=True) * 0.05)
        sae.W_enc.copy_(torch.randn(lm.d_model, D_SAE) * (2.0 / norm))
        sae.b_dec.copy_(torch.randn(lm.d_model) * 0.01)
        if hasattr(sae, "threshold"):
            sae.threshold.fill_(0.3)
        if hasattr(sae, "W_skip"):
            sae.W_skip.copy_(torch.randn(lm.d_model, lm.d_model) * 0.01)
    return sae


@pytest.fixture(scope="module")
def saved(tiny_lm, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("transcoders")
    out = {}
    for i, kind in enumerate(KINDS):
        random_transcoder(kind, tiny_lm, seed=i).save_model(root / kind)
        out[kind] = root / kind
    return out


@pytest.fixture(scope="module")
def atlas(saved, tmp_path_factory):
    db = tmp_path_factory.mktemp("transcoder-atlas") / "tc.duckdb"
    paths = [x for p in saved.values() for x in ("--sae-path", str(p))]
    assert main(["build", "--db", str(db), "--model", str(tiny_model_dir()), "--tokens",
                 str(TOKENS), "--block-size", str(BLOCK), "--batch-blocks", "8",
                 "--n-examples", "4", "--threshold", str(THRESHOLD), "--dtype", "float32",
                 "--analyses", "galaxy,lobes,universality,absorption", *paths]) == 0
    return db


def _activations(db, lm, hooks: list[HookPoint]):
    ids = torch.tensor([r[0] for r in q(db, "SELECT token_ids FROM blocks ORDER BY block_id")])
    with torch.no_grad():
        parts = [capture_residuals(lm, ids[s:s + 8], hooks) for s in range(0, len(ids), 8)]
    acts = {h.name: torch.cat([p[h.name] for p in parts]) for h in hooks}
    counted = ~torch.isin(ids, torch.tensor(sorted(lm.tokenizer.all_special_ids)))
    counted[:, 0] = False
    return acts, counted


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_transcoder_records_both_hooks_and_counts_codes_at_its_input(atlas, saved, tiny_lm,
                                                                      kind):
    _, _, hook, hook_out = KINDS[kind]
    (sid, arch, stored_hook, stored_out) = q(
        atlas, "SELECT sae_id, architecture, hook, hook_out FROM saes WHERE path = ?",
        [str(saved[kind].resolve())])[0]
    assert arch == kind
    assert (stored_hook, stored_out) == (CANONICAL.get(hook, hook), CANONICAL.get(hook_out,
                                                                                  hook_out))
    sae = SAE.load_from_disk(saved[kind])
    point = HookPoint.parse_any(hook)
    acts, counted = _activations(atlas, tiny_lm, [point])
    with torch.no_grad():
        codes = sae.encode(acts[point.name])
    direct = ((codes > THRESHOLD) & counted[..., None]).sum((0, 1)).numpy()
    stored = np.array([r[0] for r in q(atlas, "SELECT firing_count FROM features WHERE "
                                       "sae_id = ? ORDER BY feature", [sid])])
    assert direct.sum() > 0
    np.testing.assert_array_equal(stored, direct)


@pytest.mark.parametrize("kind", list(KINDS))
def test_quality_is_measured_against_the_mlp_output(atlas, saved, tiny_lm, kind):
    """EV = 1 - sum |y - y_hat|^2 / sum |y - mean y|^2 over the held-out blocks' counted
    tokens, y the MLP output, y_hat = decode(encode(x)) (+ x W_skip^T for skip transcoders)."""
    _, _, hook, hook_out = KINDS[kind]
    sae = SAE.load_from_disk(saved[kind])
    x_at, y_at = HookPoint.parse_any(hook), HookPoint.parse_any(hook_out)
    acts, counted = _activations(atlas, tiny_lm, [x_at, y_at])
    n_blocks = counted.shape[0]
    held = torch.from_numpy(held_out_blocks(BuildConfig(tokens=TOKENS, block_size=BLOCK),
                                            n_blocks))
    keep = counted & held[:, None]
    x, y = acts[x_at.name][keep], acts[y_at.name][keep]
    with torch.no_grad():
        y_hat = sae.decode(sae.encode(x))
        if hasattr(sae, "W_skip"):
            y_hat = y_hat + x @ sae.W_skip.T
    y, y_hat = y.double(), y_hat.double()
    ev = 1 - float(((y - y_hat) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())
    (stored_ev, tokens) = q(atlas, "SELECT explained_variance, quality_tokens FROM saes WHERE "
                            "path = ?", [str(saved[kind].resolve())])[0]
    assert tokens == int(keep.sum())
    assert stored_ev == pytest.approx(ev, rel=1e-4, abs=1e-5)


def test_decoders_and_logit_lens_are_in_the_output_space(atlas, saved, tiny_lm):
    kind = "skip_transcoder"
    sae = SAE.load_from_disk(saved[kind])
    sid = q(atlas, "SELECT sae_id FROM saes WHERE path = ?", [str(saved[kind].resolve())])[0][0]
    stored = np.array([r[0] for r in q(atlas, "SELECT vector FROM decoders WHERE sae_id = ? "
                                       "ORDER BY feature", [sid])])
    w = sae.W_dec.detach().numpy()
    np.testing.assert_allclose(stored, w / np.linalg.norm(w, axis=1, keepdims=True), rtol=1e-5,
                               atol=1e-6)
    m = tiny_lm.model
    with torch.no_grad():
        effect = m.lm_head(sae.W_dec * m.model.norm.weight).numpy()
    effect = effect - effect.mean(1, keepdims=True)
    top = [r[0] for r in q(atlas, "SELECT token_id FROM feature_logits WHERE sae_id = ? AND "
                           "feature = 3 AND direction = 'top' ORDER BY rank", [sid])]
    assert top == list(np.argsort(-effect[3])[:10])


def test_analyses_keep_transcoders_in_their_space(atlas):
    runs = dict(q(atlas, "SELECT analysis, count(*) FROM analysis_runs GROUP BY 1"))
    assert runs.get("galaxy") == 4 and runs.get("lobes") == 4
    assert runs.get("universality") == 3  # adjacent transcoders, decoders in one space
    assert "absorption" not in runs  # its probes read the input space, decoders write another
    assert q(atlas, "SELECT count(*) FROM sae_overview WHERE hook_out LIKE '%hook_mlp_out'"
             )[0][0] == 4


def test_a_transcoder_that_writes_elsewhere_is_refused(tiny_lm, tmp_path, capsys):
    sae = random_transcoder("transcoder", tiny_lm, seed=0)
    sae.cfg.metadata.hook_name_out = "blocks.2.hook_mlp_out"
    sae.save_model(tmp_path / "bad")
    assert main(["build", "--db", str(tmp_path / "x.duckdb"), "--model", str(tiny_model_dir()),
                 "--sae-path", str(tmp_path / "bad"), "--tokens", str(TOKENS), "--block-size",
                 str(BLOCK)]) == 2
    err = capsys.readouterr().err
    assert "writes blocks.2.hook_mlp_out" in err and "blocks.1.hook_mlp_out" in err


def mwhanna_files(lm, layers: tuple[int, ...]) -> tuple[dict[str, bytes], dict]:
    """A transcoder release as `mwhanna/qwen3-4b-transcoders` stores it on the hub: one
    `layer_L.safetensors` per layer with W_enc as (d_sae, d_in) (SAELens's loader transposes
    it), and the training run's `wandb-config.yaml` and `config.yaml` it reads d_model and
    d_sae from."""
    import tempfile

    import yaml
    from safetensors.torch import save_file

    files = {"wandb-config.yaml": yaml.safe_dump({"d_model": {"value": lm.d_model},
                                                  "d_feature": {"value": D_SAE},
                                                  "batch_size": {"value": 4096}}).encode(),
             "config.yaml": yaml.safe_dump({"model_name": "Qwen/Qwen3-4B"}).encode()}
    saes = {}
    for layer in layers:
        sae = random_transcoder("transcoder", lm, seed=10 + layer)
        weights = {"W_enc": sae.W_enc.detach().T.contiguous(), "b_enc": sae.b_enc.detach(),
                   "W_dec": sae.W_dec.detach(), "b_dec": sae.b_dec.detach()}
        with tempfile.TemporaryDirectory() as tmp:
            path = f"{tmp}/w.safetensors"
            save_file(weights, path)
            files[f"layer_{layer}.safetensors"] = Path(path).read_bytes()
        saes[layer] = sae
    return files, saes


def test_a_published_transcoder_release_builds_from_the_hub_cache(tiny_lm, tmp_path):
    """`--sae-release mwhanna-qwen3-4b-transcoders --sae-id 'layer_{layer}'` through SAELens's
    own hub loader, offline, from a hub cache in the hub's layout: both hooks recorded, codes
    counted at the MLP's input equal a recount with the published encoder."""
    from helpers import atlas_offline, write_hub_repo

    release, repo, layers = "mwhanna-qwen3-4b-transcoders", "mwhanna/qwen3-4b-transcoders", (1, 2)
    cache = tmp_path / "hf" / "hub"
    files, saes = mwhanna_files(tiny_lm, layers)
    write_hub_repo(cache, repo, files)
    db = tmp_path / "hub-tc.duckdb"
    atlas_offline(cache, "build", "--db", str(db), "--model", str(tiny_model_dir()),
                  "--sae-release", release, "--sae-id", "layer_{layer}", "--layers", "1-2",
                  "--tokens", str(TOKENS), "--block-size", str(BLOCK), "--batch-blocks", "8",
                  "--n-examples", "4", "--threshold", str(THRESHOLD), "--dtype", "float32",
                  "--analyses", "galaxy")
    rows = q(db, "SELECT sae_id, architecture, hook, hook_out, release, release_sae_id, "
             "neuronpedia_id FROM saes ORDER BY layer")
    assert rows == [(f"{release}/layer_{i}", "transcoder", f"blocks.{i}.ln2.hook_normalized",
                     f"blocks.{i}.hook_mlp_out", release, f"layer_{i}",
                     f"qwen3-4b/{i}-transcoder-hp") for i in layers]
    points = {i: HookPoint.parse_any(f"blocks.{i}.mlp.hook_in") for i in layers}
    acts, counted = _activations(db, tiny_lm, list(points.values()))
    for i in layers:
        with torch.no_grad():
            codes = saes[i].encode(acts[points[i].name])
        direct = ((codes > THRESHOLD) & counted[..., None]).sum((0, 1)).numpy()
        stored = [r[0] for r in q(db, "SELECT firing_count FROM features WHERE sae_id = ? "
                                  "ORDER BY feature", [f"{release}/layer_{i}"])]
        assert direct.sum() > 0
        np.testing.assert_array_equal(stored, direct)
