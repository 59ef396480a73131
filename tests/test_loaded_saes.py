"""Bring your own SAEs: SAEs saved by SAELens (every architecture it loads) and SAEs of a
published release build end to end, and their numbers equal an independent recount."""

from __future__ import annotations

import hashlib
import shutil

import duckdb
import numpy as np
import pytest
import torch
from helpers import ARCHITECTURES, SAVED_AS, random_sae, save_sae
from sae_lens import SAE

from atlas.cli import main
from atlas.models import HookPoint, capture_residuals
from atlas.saes import expand_sae_ids, sae_input
from tests.tiny import tiny_model_dir

D_SAE = 48
BLOCK = 64
THRESHOLD = 0.05  # matching pursuit's codes are projections of residuals of norm ~0.2
# The layer each architecture's SAE reads: all three hooked layers, post and pre.
HOOKS = {arch: ["blocks.1.hook_resid_post", "blocks.2.hook_resid_pre",
                "blocks.3.hook_resid_post"][i % 3] for i, arch in enumerate(ARCHITECTURES)}


def build_args(db, *extra) -> list[str]:
    return ["build", "--db", str(db), "--model", str(tiny_model_dir()), "--tokens",
            str(BLOCK * 40), "--block-size", str(BLOCK), "--batch-blocks", "8",
            "--shard-blocks", "16", "--n-examples", "4", "--threshold", str(THRESHOLD),
            "--analyses", "galaxy,lobes,crystals", "--dtype", "float32", *map(str, extra)]


def residual_norm(lm, hook: str) -> float:
    ids = torch.randint(10, 400, (2, BLOCK), generator=torch.Generator().manual_seed(0))
    return float(capture_residuals(lm, ids, [HookPoint.parse(hook)])[hook].norm(dim=-1).median())


@pytest.fixture(scope="module")
def saved(tiny_lm, tmp_path_factory) -> dict:
    """One SAE per architecture, saved as SAELens saves it."""
    root = tmp_path_factory.mktemp("saved-saes")
    return {arch: save_sae(random_sae(arch, d_in=tiny_lm.d_model, d_sae=D_SAE, hook=hook,
                                      input_norm=residual_norm(tiny_lm, hook), seed=i),
                           root / arch)
            for i, (arch, hook) in enumerate(HOOKS.items())}


@pytest.fixture(scope="module")
def loaded_atlas(saved, tmp_path_factory):
    """An atlas of every saved SAE at once (one forward pass), with the default analyses."""
    db = tmp_path_factory.mktemp("loaded") / "loaded.duckdb"
    paths = [x for p in saved.values() for x in ("--sae-path", p)]
    assert main(build_args(db, *paths)) == 0
    return db


def q(db, sql: str, params=()) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_a_saved_sae_of_every_architecture_builds(loaded_atlas, saved, arch):
    (row,) = q(loaded_atlas, "SELECT architecture, hook, path, release, l0, explained_variance, "
               "dead_fraction, quality_tokens FROM saes WHERE path = ?", [str(saved[arch])])
    assert row[0] == SAVED_AS.get(arch, arch) and row[1] == HOOKS[arch]
    assert row[3] is None and row[7] > 0 and 0 < row[4] <= D_SAE
    assert np.isfinite(row[5]) and 0 <= row[6] <= 1
    n_live = q(loaded_atlas, "SELECT count(*) FROM features f JOIN saes s USING (sae_id) "
               "WHERE s.path = ? AND firing_count > 0", [str(saved[arch])])[0][0]
    assert n_live > 0, "some features fire, so the counts below test something"


def test_block_counts_and_cooccurrence_equal_a_recount_from_block_firings(loaded_atlas):
    assert q(loaded_atlas, "SELECT count(DISTINCT sae_id) FROM block_firings")[0][0] == len(
        ARCHITECTURES)
    differ = q(loaded_atlas, """
        SELECT count(*) FROM features f FULL JOIN (
            SELECT sae_id, feature, count(*) AS n FROM block_firings GROUP BY ALL) r
        USING (sae_id, feature)
        WHERE coalesce(f.block_count, -1) <> coalesce(r.n, 0)""")[0][0]
    assert differ == 0
    recount = """SELECT a.sae_id, a.feature AS i, b.feature AS j, count(*) AS n_ij
                 FROM block_firings a JOIN block_firings b
                   ON a.sae_id = b.sae_id AND a.block_id = b.block_id AND a.feature < b.feature
                 GROUP BY ALL"""
    stored = "SELECT sae_id, i, j, n_ij FROM cooccurrence"
    assert q(loaded_atlas, f"SELECT count(*) FROM (({recount}) EXCEPT ALL ({stored}))")[0][0] == 0
    assert q(loaded_atlas, f"SELECT count(*) FROM (({stored}) EXCEPT ALL ({recount}))")[0][0] == 0


def _direct_codes(db, lm, sae_path: str):
    """Every block's SAE codes computed here: the model's residual at the SAE's hook, then
    SAELens's own `encode`; and the positions a harvest counts (no special token, not a
    block's first position; the tiny model has no attention sinks)."""
    sae = SAE.load_from_disk(sae_path)
    hook = HookPoint.parse(sae.cfg.metadata.hook_name)
    ids = torch.tensor([r[0] for r in q(db, "SELECT token_ids FROM blocks ORDER BY block_id")])
    with torch.no_grad():
        x = torch.cat([capture_residuals(lm, ids[s:s + 8], [hook])[hook.name]
                       for s in range(0, len(ids), 8)])
        codes = sae.encode(sae_input(sae, x))
    counted = ~torch.isin(ids, torch.tensor(sorted(lm.tokenizer.all_special_ids)))
    counted[:, 0] = False
    return codes, counted


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_firing_counts_and_examples_equal_a_direct_encoding(loaded_atlas, saved, tiny_lm, arch):
    codes, counted = _direct_codes(loaded_atlas, tiny_lm, str(saved[arch]))
    sid = q(loaded_atlas, "SELECT sae_id FROM saes WHERE path = ?", [str(saved[arch])])[0][0]
    stored = np.array([r[0] for r in q(loaded_atlas, "SELECT firing_count FROM features "
                                       "WHERE sae_id = ? ORDER BY feature", [sid])])
    direct = ((codes > THRESHOLD) & counted[..., None]).sum((0, 1)).numpy()
    np.testing.assert_array_equal(stored, direct)
    examples = q(loaded_atlas, "SELECT feature, block_id, position, act FROM examples "
                 "WHERE sae_id = ?", [sid])
    assert examples
    f, b, p, act = (np.array(c) for c in zip(*examples))
    np.testing.assert_allclose(act, codes[b, p, f].numpy(), rtol=1e-4, atol=1e-5)


def test_a_saved_atlas_sae_gives_the_quality_and_counts_of_its_training_build(tiny_atlas,
                                                                              tmp_path):
    """The user's first move: point a new build at an SAE a previous build saved. Held-out
    quality is measured the same way for a loaded SAE as for a trained one."""
    config, result = tiny_atlas
    sid = result.sae_ids[1]
    (path,) = q(config.db, "SELECT path FROM saes WHERE sae_id = ?", [sid])[0]
    db = tmp_path / "again.duckdb"
    argv = ["build", "--db", db, "--model", config.model, "--sae-path", path,
            "--tokens", config.tokens, "--block-size", config.block_size,
            "--batch-blocks", config.batch_blocks, "--n-examples", config.n_examples,
            "--threshold", config.threshold, "--analyses", "", "--dtype", config.dtype]
    assert main([str(a) for a in argv]) == 0
    cols = "l0, explained_variance, dead_fraction, quality_tokens"
    trained = q(config.db, f"SELECT {cols} FROM saes WHERE sae_id = ?", [sid])[0]
    (loaded,) = q(db, f"SELECT {cols} FROM saes")
    np.testing.assert_allclose(loaded, trained, rtol=1e-4)
    (new_id,) = q(db, "SELECT sae_id FROM saes")[0]
    counts = "SELECT feature, firing_count, block_count FROM features WHERE sae_id = ? ORDER BY 1"
    assert q(db, counts, [new_id]) == q(config.db, counts, [sid])


def _saved_at(tmp_path, name: str, **overrides) -> str:
    opts = dict(d_in=64, d_sae=16, hook="blocks.1.hook_resid_post", input_norm=1.0)
    opts.update(overrides)
    return str(save_sae(random_sae("topk", **opts), tmp_path / name))


def _table_digest(db) -> str:
    with duckdb.connect(str(db), read_only=True) as con:
        rows = [con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
                for t in ("models", "saes", "corpora", "blocks", "features", "cooccurrence")]
    return hashlib.sha1(repr(rows).encode()).hexdigest()


@pytest.mark.parametrize("overrides, needle", [
    ({"hook": "blocks.7.hook_resid_post"}, "reads blocks.7.hook_resid_post, but "
                                           "tiny-random-llama has layers 0..3"),
    ({"d_in": 32}, "d_in=32 but the model's residual stream has d_model=64"),
    ({"hook": "blocks.1.hook_mlp_out"}, "not a residual-stream hook"),
])
def test_an_sae_that_cannot_run_is_refused_before_the_forward_pass(atlas_copy, tmp_path,
                                                                   capsys, overrides, needle):
    db, _ = atlas_copy
    before = _table_digest(db)
    good = _saved_at(tmp_path, "good")
    bad = _saved_at(tmp_path, "bad", **overrides)
    assert main(build_args(db, "--sae-path", good, "--sae-path", bad)) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _table_digest(db) == before


def test_two_saes_stored_under_one_id_are_refused(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    one = _saved_at(tmp_path / "a", "sae")
    two = _saved_at(tmp_path, "sae", hook="blocks.2.hook_resid_post")
    assert main(build_args(tmp_path / "x.duckdb", "--sae-path", one, "--sae-path", two)) == 2
    assert "several SAEs would be stored as tiny-random-llama/sae" in capsys.readouterr().err


def test_sae_by_layer_resolves_through_the_layer_column(loaded_atlas, saved, capsys):
    assert main(["neighbors", "--db", str(loaded_atlas), "--sae", "L2", "0"]) == 2
    err = capsys.readouterr().err
    assert "matches several SAEs" in err and "llama/topk" in err and "llama/batchtopk" in err
    single = str(shutil.copy(loaded_atlas, loaded_atlas.with_name("one-per-layer.duckdb")))
    with duckdb.connect(single) as con:
        con.execute("DELETE FROM saes WHERE layer = 1 AND path <> ?", [str(saved["standard"])])
    assert main(["neighbors", "--db", single, "--sae", "L1", "0", "--json"]) == 0
    assert '"sae_id": "tiny-random-llama/standard"' in capsys.readouterr().out


def test_sae_ids_expand_over_layers_and_patterns_of_the_release():
    assert expand_sae_ids("gemma-scope-2b-pt-res-canonical",
                          ["layer_{layer}/width_16k/canonical"], [0, 12, 25]) == [
        "layer_0/width_16k/canonical", "layer_12/width_16k/canonical",
        "layer_25/width_16k/canonical"]
    got = expand_sae_ids("gpt2-small-res-jb", ["blocks.1?.hook_resid_pre",
                                               "blocks.10.hook_resid_pre"], [])
    assert got == ["blocks.10.hook_resid_pre", "blocks.11.hook_resid_pre"]
    from atlas.errors import AtlasError

    with pytest.raises(AtlasError, match="matches no SAE of release 'gpt2-small-res-jb'"):
        expand_sae_ids("gpt2-small-res-jb", ["layer_*/width_16k"], [])
