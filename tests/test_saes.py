import pytest
import torch
from sae_lens import SAE

from atlas.errors import AtlasError
from atlas.models import HookPoint
from atlas.saes import TrainSettings, check_width, evaluate, hook_of, load_saved, train_topk


def planted_activations(n=6000, d=32, n_atoms=64, k=3, scale=50.0, seed=0):
    """Sparse sums of known unit atoms, at a large norm like a real residual stream."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=g)
    atoms /= atoms.norm(dim=1, keepdim=True)
    idx = torch.stack([torch.randperm(n_atoms, generator=g)[:k] for _ in range(n)])
    coef = torch.rand(n, k, generator=g) + 0.5
    x = (coef.unsqueeze(-1) * atoms[idx]).sum(1) * scale
    return x, atoms


@pytest.fixture(scope="module")
def trained():
    x, atoms = planted_activations()
    sae = train_topk(x[:5000], TrainSettings(d_sae=96, k=3, epochs=8, batch_size=256, lr=3e-3),
                     hook=HookPoint(2), model_name="planted")
    return sae, x, atoms


def test_training_recovers_planted_atoms(trained):
    sae, x, atoms = trained
    quality = evaluate(sae, x[5000:])
    assert quality.explained_variance > 0.9
    assert quality.l0 <= 3
    unit = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    best = (atoms @ unit.T).max(1).values
    assert (best > 0.9).float().mean() > 0.8, "most planted atoms have a matching decoder row"


def test_saved_sae_loads_with_sae_lens_and_encodes_the_same(trained, tmp_path):
    sae, x, _ = trained
    sae.save_model(tmp_path / "sae")
    loaded = SAE.load_from_disk(tmp_path / "sae")
    assert loaded.cfg.architecture() == "topk" and loaded.cfg.k == 3
    torch.testing.assert_close(loaded.encode(x[:50]), sae.encode(x[:50]))
    assert hook_of(loaded) == HookPoint(2)
    assert load_saved(tmp_path / "sae").cfg.d_sae == 96


def test_folded_scale_keeps_activations_on_the_normalised_scale(trained):
    sae, x, _ = trained
    # Inputs have norm ~100 here; activations should be O(sqrt(d)), not O(100).
    acts = sae.encode(x[:500])
    active = acts[acts > 0]
    assert 0.5 < active.mean().item() < 20


def test_evaluate_matches_a_direct_computation(trained):
    sae, x, _ = trained
    held = x[5000:5300]
    with torch.no_grad():
        recon = sae.decode(sae.encode(held))
    ev = 1 - ((held - recon) ** 2).sum() / ((held - held.mean(0)) ** 2).sum()
    assert evaluate(sae, held, batch_size=64).explained_variance == pytest.approx(ev.item(),
                                                                                   rel=1e-4)


def test_width_mismatch_is_a_clear_error(trained):
    with pytest.raises(AtlasError, match="d_in=32.*d_model=576"):
        check_width(trained[0], 576, "planted")


def test_missing_sae_folder_is_a_clear_error(tmp_path):
    with pytest.raises(AtlasError, match="cfg.json is missing"):
        load_saved(tmp_path)


def test_sparse_encoder_backward_equals_dense_autograd():
    """The training step's encoder reads its output gradient as sparse (only TopK and AuxK
    latents carry one); its gradients equal autograd's through the dense product."""
    from atlas.saes import _Encoder

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 12, generator=gen)
    params = [torch.randn(12, 40, generator=gen, requires_grad=True),
              torch.randn(40, generator=gen, requires_grad=True),
              torch.randn(12, generator=gen, requires_grad=True)]

    def loss(pre):
        vals, idx = pre.topk(5, dim=1)
        aux, _ = pre.masked_fill(torch.arange(40) % 3 != 0, -torch.inf).topk(4, dim=1)
        return (vals.relu() * torch.arange(5.0)).sum() + aux.relu().pow(2).sum()

    w, b, b_dec = params
    dense = torch.autograd.grad(loss((x - b_dec) @ w + b), params)
    sparse = torch.autograd.grad(loss(_Encoder.apply(x, w, b, b_dec)), params)
    for want, got in zip(dense, sparse):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_held_out_blocks_are_spread_over_the_corpus():
    """10% of the blocks, one in every ten, so held-out tokens come from every source."""
    import numpy as np

    from atlas.config import BuildConfig
    from atlas.pipeline import held_out_blocks

    held = held_out_blocks(BuildConfig(holdout=0.1), 1278)
    assert held.sum() == 127
    gaps = np.diff(np.flatnonzero(held))
    assert set(gaps.tolist()) == {10}
    assert held_out_blocks(BuildConfig(holdout=0.1), 3).tolist() == [False, False, True]
    tiny = held_out_blocks(BuildConfig(holdout=0.3), 2)
    assert tiny.sum() == 1


def test_pre_topk_codes_are_the_encoder_before_its_top_k_selection():
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    from atlas.saes import pre_topk_codes

    torch.manual_seed(0)
    topk = TopKSAE(TopKSAEConfig(d_in=16, d_sae=64, k=4, dtype="float32", device="cpu"))
    for p in topk.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(50, 16)
    with torch.no_grad():
        pre, post = pre_topk_codes(topk, x), topk.encode(x)
        # written out: ReLU((x - b_dec) @ W_enc + b_enc), SAELens's TopK input
        want = torch.relu((x - topk.b_dec) @ topk.W_enc + topk.b_enc)
    torch.testing.assert_close(pre, want)
    assert ((pre > 0).sum(1) > 4).all() and ((post > 0).sum(1) <= 4).all()
    # the TopK codes are the pre-activations' k largest, the rest zero
    top = pre.topk(4, dim=1)
    torch.testing.assert_close(post.gather(1, top.indices), top.values)
    standard = StandardSAE(StandardSAEConfig(d_in=16, d_sae=64, dtype="float32", device="cpu"))
    with torch.no_grad():
        torch.testing.assert_close(pre_topk_codes(standard, x), standard.encode(x))


def test_the_topk_architecture_trains_what_train_topk_trains():
    """The build trains through the architecture registry: 'topk' turns the build's flags into
    TrainSettings, names the SAEs as before, and its SAE equals `train_topk`'s on the same
    activations and seed; an unknown name is one clear error naming the choices."""
    from atlas.architectures import ARCHITECTURES, architecture
    from atlas.config import BuildConfig

    config = BuildConfig(d_sae=96, k=3, epochs=2, train_batch=256, lr=3e-3)
    arch = architecture(config.architecture)
    assert arch is ARCHITECTURES["topk"] and arch.sae_name(config) == "topk96-k3"
    settings = arch.settings(config, seed=7)
    assert settings == TrainSettings(d_sae=96, k=3, epochs=2, batch_size=256, lr=3e-3, seed=7)
    x, _ = planted_activations(n=2000)
    got = arch.train(x, settings, hook=HookPoint(2), model_name="planted", device="cpu",
                     desc="test")
    want = train_topk(x, settings, hook=HookPoint(2), model_name="planted")
    for name, value in want.state_dict().items():
        assert torch.equal(got.state_dict()[name], value), name
    with pytest.raises(AtlasError, match="no SAE architecture 'jumprelu' to train; choose one "
                                         "of topk"):
        architecture("jumprelu")


def test_naming_the_default_architecture_keeps_earlier_build_keys():
    """Builds from before `architecture` existed resume: the default leaves the key as the
    digest of the other settings was."""
    import dataclasses
    import hashlib
    import json

    from atlas.config import BuildConfig
    from atlas.pipeline import BUILD_FORMAT, RESUME_IGNORES, build_key

    config = BuildConfig()
    before = {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(config), default=str))
              .items() if k not in RESUME_IGNORES and k != "architecture"}
    before["build_format"] = BUILD_FORMAT
    assert build_key(config) == hashlib.sha1(json.dumps(before, sort_keys=True).encode()
                                             ).hexdigest()[:16]


def test_the_batchtopk_architecture_trains_through_sae_lens_s_trainer(tmp_path):
    """'batchtopk' trains SAELens's BatchTopKTrainingSAE with SAELens's SAETrainer and returns
    what SAELens saves for inference: a JumpReLU SAE whose threshold is the one batch threshold
    learnt, reading raw activations (the input-norm scale folded in). On planted sparse data it
    reconstructs well at about k active latents, finds the planted atoms, is seeded, and leaves
    the caller's random state alone."""
    from sae_lens import SAE, JumpReLUSAE

    from atlas.architectures import architecture
    from atlas.config import BuildConfig

    config = BuildConfig(architecture="batchtopk", d_sae=96, k=3, epochs=12, train_batch=256,
                         lr=3e-3)
    arch = architecture("batchtopk")
    assert arch.sae_name(config) == "batchtopk96-k3"
    x, atoms = planted_activations()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    sae = arch.train(x[:5000], arch.settings(config, seed=7), hook=HookPoint(2),
                     model_name="planted", device="cpu", desc="test")
    assert torch.equal(torch.get_rng_state(), state)
    assert isinstance(sae, JumpReLUSAE) and sae.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    threshold = sae.threshold.detach()
    assert float(threshold.min()) == float(threshold.max()) > 0
    quality = evaluate(sae, x[5000:])
    assert quality.explained_variance > 0.7, quality
    assert 1.5 <= quality.l0 <= 6, quality
    cos = (torch.nn.functional.normalize(sae.W_dec, dim=1) @ atoms.T).max(0).values
    assert (cos > 0.9).float().mean() > 0.5
    again = arch.train(x[:5000], arch.settings(config, seed=7), hook=HookPoint(2),
                       model_name="planted", device="cpu", desc="test")
    assert torch.equal(again.W_dec, sae.W_dec)
    sae.save_model(tmp_path / "saved")
    assert isinstance(SAE.load_from_disk(tmp_path / "saved"), JumpReLUSAE)


def test_a_build_trains_batchtopk_saes_and_a_rerun_reuses_them(tmp_path, caplog):
    """`atlas build --architecture batchtopk`: SAEs named after their architecture, stored as
    the JumpReLU SAEs SAELens saves, harvested like any SAE (about k active latents per token),
    reloaded from <db>.saes/ by a re-run of the same build instead of trained again."""
    import logging

    import duckdb
    from sae_lens import SAE, JumpReLUSAE

    from atlas.builder import build
    from tests.conftest import tiny_config

    # enough steps (~500) for the batch threshold's running average to settle
    config = tiny_config(tmp_path / "btk.duckdb", architecture="batchtopk", quick=True,
                         epochs=20)
    result = build(config)
    assert all(s.endswith("batchtopk96-k6") for s in result.sae_ids), result.sae_ids
    con = duckdb.connect(str(config.db), read_only=True)
    rows = con.execute("SELECT sae_id, architecture, l0, path FROM saes ORDER BY layer").fetchall()
    con.close()
    assert [r[1] for r in rows] == ["jumprelu", "jumprelu"]
    assert all(2 <= r[2] <= 18 for r in rows), rows
    assert isinstance(SAE.load_from_disk(rows[0][3]), JumpReLUSAE)
    with caplog.at_level(logging.INFO):
        build(config)
    assert "trained by an earlier run of this build" in caplog.text
