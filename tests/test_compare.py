"""Universality on the tiny atlas: an SAE against itself, and two layers."""

import duckdb
import numpy as np
import pytest

from atlas.cli import main


def test_an_sae_matched_with_itself_is_the_identity(atlas_copy, tiny_lm):
    from atlas import catalog, store
    from atlas.analyses import runner
    from atlas.analyses.universality import analysis as universality

    db, ids = atlas_copy
    con = store.connect(db)
    saes = {ids[1]: catalog.load_sae(con, ids[1])}
    inputs = runner.Inputs(con, (ids[1],), loader=lambda _: (tiny_lm, saes))
    settings = universality.Settings(blocks=16, permutations=20)
    subject = runner.Subject("self", (ids[1], ids[1]))
    shared = universality.prepare(inputs, [subject], settings)
    out = universality.compute(inputs, subject, settings, shared)
    row = out.summary
    pairs = out.tables["matched_pairs"].to_pydict()
    pairs = {k: np.asarray(v) for k, v in pairs.items()}
    live = pairs["corr"] > 0.5
    assert live.sum() > 0 and (pairs["feature_a"][live] == pairs["feature_b"][live]).all()
    assert row["rsa"] == pytest.approx(1.0) and row["rsa_p"] <= 0.05
    con.close()


def test_compare_all_pairs_fills_the_universality_view(atlas_copy, capsys):
    db, ids = atlas_copy
    assert main(["compare", "--db", str(db), "--pairs", "all", "--blocks", "16",
                 "--permutations", "20"]) == 0
    assert "SVCCA" in capsys.readouterr().out
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT layer_a, layer_b, n_pairs, svcca, svcca_null, rsa, rsa_null "
                           "FROM universality").fetchall()
        assert [(r[0], r[1]) for r in rows] == [(1, 3)]
        n = con.execute("SELECT count(*) FROM matched_pairs WHERE kept").fetchone()[0]
        assert n == rows[0][2] and np.isfinite(rows[0][3])
        # The scores are recomputable from what the atlas stores: the kept pairs and the
        # stored decoder rows give the stored SVCCA and RSA.
        from atlas import store
        from atlas.analyses.universality import geometry as un

        sae_a, sae_b = con.execute("SELECT sae_a, sae_b FROM universality_scores").fetchone()
        fa, fb = con.execute("SELECT list(feature_a ORDER BY feature_b), list(feature_b ORDER "
                             "BY feature_b) FROM matched_pairs WHERE kept").fetchone()
        x = store.load_decoders(con, sae_a)[fa].astype(np.float64)
        y = store.load_decoders(con, sae_b)[fb].astype(np.float64)
        assert abs(un.svcca(x, y, rule="lan2024") - rows[0][3]) < 1e-9
        assert abs(un.rsa(x, y) - rows[0][5]) < 1e-9
    # A re-run replaces the pair's results.
    assert main(["compare", "--db", str(db), "--sae", "L1,L3", "--blocks", "16",
                 "--permutations", "20"]) == 0
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM universality_scores").fetchone()[0] == 1
        assert con.execute("SELECT count(*) FROM analysis_runs WHERE analysis = "
                           "'universality'").fetchone()[0] == 1


def test_compare_needs_two_saes(atlas_copy, capsys):
    db, _ = atlas_copy
    assert main(["compare", "--db", str(db), "--sae", "L1"]) == 2
    assert "compares two SAEs" in capsys.readouterr().err


def test_universality_page_shows_a_compared_atlas(atlas_copy, monkeypatch):
    import gc

    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from tests.test_app import APP

    db, _ = atlas_copy
    assert main(["compare", "--db", str(db), "--pairs", "all", "--blocks", "8",
                 "--permutations", "10"]) == 0
    monkeypatch.setenv("ATLAS_DB", str(db))
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["page"] = "Universality"
    at.run()
    assert not at.exception and len(at.dataframe) == 2
    assert at.dataframe[0].value["n_pairs"][0] > 0
    st.cache_resource.clear()
    gc.collect()


def test_a_second_sae_seed_trains_on_the_same_corpus(tmp_path):
    from atlas.builder import build
    from tests.conftest import tiny_config

    first = build(tiny_config(tmp_path / "seeds.duckdb", layers=(2,), analyses=()))
    second = build(tiny_config(tmp_path / "seeds.duckdb", layers=(2,), analyses=(), sae_seed=1))
    assert first.corpus_id == second.corpus_id
    assert second.sae_ids == (first.sae_ids[0] + "-s1",)
    assert main(["compare", "--db", str(tmp_path / "seeds.duckdb"), "--sae", first.sae_ids[0],
                 "--sae", second.sae_ids[0], "--blocks", "16", "--permutations", "20"]) == 0
    with duckdb.connect(str(tmp_path / "seeds.duckdb"), read_only=True) as con:
        n_saes = con.execute("SELECT count(*) FROM saes").fetchone()[0]
        n_corpora = con.execute("SELECT count(*) FROM corpora").fetchone()[0]
        rsa, rsa_null, std = con.execute("SELECT rsa, rsa_null, rsa_null_std FROM universality"
                                         ).fetchone()
    # The tiny random model's SAEs carry little shared structure; the scores' science is
    # checked on planted data (tests/geometry/test_universality.py). Here: it ran and stored.
    assert n_saes == 2 and n_corpora == 1
    assert np.isfinite([rsa, rsa_null, std]).all() and std > 0


def test_saes_of_different_layers_do_not_share_their_initialisation(tiny_atlas):
    """Same-index decoder rows of two layers' SAEs must not be alike by construction."""
    from atlas import store

    with duckdb.connect(str(tiny_atlas[0].db), read_only=True) as con:
        a, b = (store.load_decoders(con, s) for s in tiny_atlas[1].sae_ids)
    same_index = np.sum(a * b, axis=1).mean()
    assert abs(same_index) < 0.15


def test_one_pass_for_several_pairs_equals_one_pass_per_pair(tiny_atlas, tiny_lm):
    from atlas import catalog
    from atlas.analyses.universality.analysis import activation_correlations
    from atlas.readonly import open_readonly

    a, b = tiny_atlas[1].sae_ids
    con = open_readonly(tiny_atlas[0].db)
    models = {tiny_lm.model_id: (tiny_lm, {s: catalog.load_sae(con, s) for s in (a, b)})}
    together = activation_correlations(con, models, [(a, b), (b, b)], n_blocks=8)
    alone = activation_correlations(con, models, [(a, b)], n_blocks=8)
    own = activation_correlations(con, models, [(b, b)], n_blocks=8)
    con.close()
    np.testing.assert_allclose(together.corr[a, b], alone.corr[a, b], atol=1e-9)
    np.testing.assert_allclose(together.corr[b, b], own.corr[b, b], atol=1e-9)
    assert together.n_tokens == {(a, b): alone.n_tokens[a, b], (b, b): own.n_tokens[b, b]}
    assert together.top[b] == own.top[b] and together.top[a] == alone.top[a]


@pytest.fixture(scope="module")
def two_models(tiny_atlas, tmp_path_factory):
    """The tiny atlas plus, in the same file, two random models sharing SmolLM2's tokenizer and
    an exact copy of the first under another name: (db, {name: sae_id})."""
    import shutil

    from atlas.builder import build
    from tests.conftest import tiny_config
    from tests.tiny import smol_model_dir

    db = tmp_path_factory.mktemp("models") / "models.duckdb"
    shutil.copy(tiny_atlas[0].db, db)
    first = smol_model_dir(seed=0)
    twin = db.parent / "tiny-smol-twin"
    shutil.copytree(first, twin)
    ids = {"tiny": tiny_atlas[1].sae_ids[0]}
    for name, model in (("first", first), ("second", smol_model_dir(seed=1)), ("twin", twin)):
        ids[name] = build(tiny_config(db, model=str(model), layers=(1,), analyses=(),
                                      tokens=64 * 48)).sae_ids[0]
    return db, ids


def test_saes_of_two_models_sharing_a_tokenizer_are_compared_on_the_same_tokens(two_models):
    """A model and its exact copy under another name: two models to the atlas, the same
    features, so every live feature is matched to itself; two different random models also
    compare, on the same token ids."""
    db, ids = two_models
    for other in ("twin", "second"):
        assert main(["compare", "--db", str(db), "--sae", ids["first"], "--sae", ids[other],
                     "--blocks", "16", "--permutations", "20"]) == 0
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT sae_b, model_a, model_b, n_tokens, n_matched, definition "
                           "FROM universality WHERE sae_a = ? ORDER BY sae_b",
                           [ids["first"]]).fetchall()
        assert {r[1] for r in rows} == {"tiny-smol-tokenizer-s0"}
        assert {r[2] for r in rows} == {"tiny-smol-twin", "tiny-smol-tokenizer-s1"}
        assert len({r[3] for r in rows}) == 1 and rows[0][3] > 0  # the same tokens
        assert {r[5] for r in rows} == {"lan2024"}
        a, b, corr = map(np.asarray, zip(*con.execute(
            "SELECT feature_a, feature_b, corr FROM matched_pairs WHERE sae_b = ?",
            [ids["twin"]]).fetchall()))
    live = corr > 0.5
    assert live.sum() > 10 and (a[live] == b[live]).all()
    np.testing.assert_allclose(corr[live], 1.0, atol=1e-5)


def test_models_with_different_tokenizers_are_not_compared(two_models, capsys):
    db, ids = two_models
    assert main(["compare", "--db", str(db), "--sae", ids["tiny"], "--sae", ids["first"],
                 "--blocks", "4"]) == 2
    err = capsys.readouterr().err
    assert "different tokenizers" in err and "share a tokenizer" in err
