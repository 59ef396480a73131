"""The analyses on the tiny atlas: SQL views against numpy on the same rows, idempotent reruns."""

import duckdb
import numpy as np
import pytest

from atlas.analyses.galaxy.geometry import power_law_fit
from atlas.analyses.lobes.geometry import affinity


@pytest.fixture
def con(tiny_atlas):
    c = duckdb.connect(str(tiny_atlas[0].db), read_only=True)
    yield c
    c.close()


def test_layer_spectra_view_equals_a_numpy_fit(con, tiny_atlas):
    rows = con.execute("SELECT sae_id, slope, intercept, r2, rank_lo, rank_hi, gaussian_slope "
                       "FROM layer_spectra").fetchall()
    assert len(rows) == len(tiny_atlas[1].sae_ids)
    for sae_id, slope, intercept, r2, lo, hi, gslope in rows:
        eig = con.execute("SELECT eigenvalue FROM spectra WHERE sae_id = ? AND cloud = 'decoder' "
                          "ORDER BY rank", [sae_id]).fetchnumpy()["eigenvalue"]
        fit = power_law_fit(eig, ranks=(lo, hi))
        assert slope == pytest.approx(fit.slope, rel=1e-6)
        assert intercept == pytest.approx(fit.intercept, rel=1e-6)
        assert r2 == pytest.approx(fit.r2, rel=1e-6)
        assert gslope is not None


def test_spectrum_equals_numpy_eigenvalues_of_the_stored_decoders(con, tiny_atlas):
    from atlas import store

    sae_id = tiny_atlas[1].sae_ids[0]
    v = store.load_decoders(con, sae_id).astype(np.float64)
    want = np.sort(np.linalg.eigvalsh(np.cov(v, rowvar=False)))[::-1]
    got = con.execute("SELECT eigenvalue FROM spectra WHERE sae_id = ? AND cloud = 'decoder' "
                      "ORDER BY rank", [sae_id]).fetchnumpy()["eigenvalue"]
    np.testing.assert_allclose(got, want[:len(got)], rtol=1e-6, atol=1e-12)


def test_affinity_view_equals_numpy(con):
    rows = con.execute("SELECT n_ij, n_i, n_j, n, jaccard, dice, overlap, smc, phi "
                       "FROM affinity ORDER BY sae_id, i, j LIMIT 500").fetchnumpy()
    for metric in ("jaccard", "dice", "overlap", "smc", "phi"):
        want = affinity(rows["n_ij"], rows["n_i"], rows["n_j"], rows["n"][0], metric)
        got = np.nan_to_num(rows[metric].astype(float))
        np.testing.assert_allclose(got, want, atol=1e-9)


def test_cosine_tails_and_entropy_views(con, tiny_atlas):
    tails = con.execute("SELECT layer, tail_mass, random_tail_mass, ratio FROM cosine_tails "
                        "ORDER BY layer").fetchall()
    assert [t[0] for t in tails] == [1, 3]
    for _, mass, rand, ratio in tails:
        assert 0 <= mass <= 1 and 0 < rand <= 1 and ratio == pytest.approx(mass / rand)
    ent = con.execute("SELECT definition, entropy_gap, error FROM clustering_entropy").fetchall()
    assert sorted(d for d, _, _ in ent) == ["atlas-kl5"] * 2 + ["li2024"] * 2
    assert all(np.isfinite(e) and s >= 0 for _, e, s in ent)


def test_lobes_and_modularity(con, tiny_atlas):
    tests = con.execute("SELECT sae_id, k, ami, ami_null_std, ami_z, logreg_accuracy, chance, "
                        "logreg_random_std, logreg_draws, logreg_definition "
                        "FROM lobe_modularity").fetchall()
    assert {t[1] for t in tests} == {2, 4, 8}
    for _, k, ami, std, _z, acc, chance, rstd, draws, definition in tests:
        assert -1 <= ami <= 1 and std > 0 and 1 / k <= chance <= 1 and 0 <= acc <= 1
        # the paper's test in the build too: 100 draws, balanced accuracy (chance 1 / lobes)
        assert draws == 100 and rstd > 0 and definition == "li2024"
        assert chance in {1 / n for n in range(1, k + 1)}
    # every result names the co-occurrence windows it counted: the build's document blocks
    n_blocks = con.execute("SELECT n_blocks FROM corpora").fetchone()[0]
    rules = con.execute("SELECT DISTINCT window_rule FROM lobe_modularity").fetchall()
    assert rules == [(f"document: each block its own context (start token + up to 63 tokens "
                      f"of one document, short last blocks counted; {n_blocks} blocks)",)]
    sizes = con.execute("SELECT sae_id, k, sum(n_features) FROM lobes GROUP BY 1, 2").fetchall()
    for sae_id, k, total in sizes:
        n = con.execute("SELECT count(*) FROM clusters WHERE sae_id = ? AND k = ? AND "
                        "method = 'cooccurrence'", [sae_id, k]).fetchone()[0]
        assert total == n
    shares = con.execute("SELECT code_share FROM lobes").fetchall()
    assert all(s[0] is None or 0 <= s[0] <= 1 for s in shares)


def test_crystal_quality_per_task_and_layer(con):
    rows = con.execute("SELECT layer, space, task, top1_before, top1_after, hook, top5_before, "
                       "top5_after, definition FROM crystal_quality").fetchall()
    from atlas.analyses.crystals.geometry import word_pair_tasks

    tasks = set(word_pair_tasks())
    assert {r[2] for r in rows} == tasks and {r[0] for r in rows} == {1, 3}
    assert {r[5] for r in rows} == {"blocks.1.hook_resid_post", "blocks.3.hook_resid_post"}
    assert {r[1] for r in rows} >= {"residual"} and len({r[1] for r in rows}) == 3
    assert all(0 <= r[3] <= r[6] <= 1 and 0 <= r[4] <= r[7] <= 1 for r in rows)
    assert {r[8] for r in rows} == {"atlas"}
    assert con.execute("SELECT count(*) FROM crystals").fetchone()[0] > 0
    dis = con.execute("SELECT length_corr, token_corr, same_relation_before, "
                      "same_relation_after, same_relation_chance FROM crystal_search").fetchall()
    assert all(x is None or 0 <= x <= 1 for row in dis for x in row)


def test_crystal_lda_and_word_representations(con):
    """li2024's experiment per hook (hidden_states index = L + 1 for resid_post L), and one
    chosen representation per hook among the four compared."""
    lda = con.execute("SELECT hook, hidden_state, n_components, silhouette, silhouette_heldout, "
                      "definition FROM crystal_separation").fetchall()
    assert {(h, s) for h, s, *_ in lda} == {("blocks.1.hook_resid_post", 2),
                                           ("blocks.3.hook_resid_post", 4)}
    assert {r[2] for r in lda} == set(range(0, 12)) - {1}
    assert all(-1 <= r[3] <= 1 and -1 <= r[4] <= 1 and r[5] == "li2024" for r in lda)
    from atlas.analyses.crystals.geometry import word_pair_tasks

    n_pairs = sum(len(p) for p in word_pair_tasks().values())
    counts = con.execute("SELECT hook, count(*), sum(heldout::INT) FROM crystal_differences "
                         "GROUP BY hook").fetchall()
    assert all(n == n_pairs and 0 < h < n for _, n, h in counts)
    reps = con.execute("SELECT hook, representation, chosen, fit_top1 FROM "
                       "word_representation_quality").fetchall()
    for hook in {r[0] for r in reps}:
        mine = [r for r in reps if r[0] == hook]
        assert {r[1] for r in mine} == {"bare", "bos", "eos", "li2024"}
        chosen = [r for r in mine if r[2]]
        assert len(chosen) == 1 and chosen[0][3] == max(r[3] for r in mine)
    used = con.execute("SELECT DISTINCT hook, representation FROM crystal_tasks").fetchall()
    assert {(h, r) for h, r in used} == {(r[0], r[1]) for r in reps if r[2]}


def test_crystal_silhouettes_recompute_from_the_stored_difference_vectors(con):
    """The stored pair differences alone give the stored silhouettes: raw (Euclidean, classes =
    tasks) and after the paper's LDA fitted on every pair."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.metrics import silhouette_score

    for hook, want0, want_top, top in con.execute(
            "SELECT hook, max(silhouette) FILTER (WHERE n_components = 0), "
            "arg_max(silhouette, n_components), max(n_components) "
            "FROM crystal_separation GROUP BY hook").fetchall():
        rows = con.execute("SELECT task, vector FROM crystal_differences WHERE hook = ? "
                           "ORDER BY rowid", [hook]).fetchall()
        labels = np.array([t for t, _ in rows])
        diffs = np.array([v for _, v in rows], dtype=np.float64)
        assert diffs.shape[1] == con.execute("SELECT d_model FROM models").fetchone()[0]
        assert abs(silhouette_score(diffs, labels) - want0) < 1e-9
        lda = LinearDiscriminantAnalysis(n_components=top).fit_transform(diffs, labels)
        assert abs(silhouette_score(lda, labels) - want_top) < 1e-6


def test_rerunning_analyses_replaces_results(tiny_atlas, tmp_path):
    import shutil

    from atlas.cli import main

    db = tmp_path / "again.duckdb"
    shutil.copy(tiny_atlas[0].db, db)
    tables = ("spectra", "galaxy_stats", "clusters", "lobe_tests", "analysis_runs")
    with duckdb.connect(str(db), read_only=True) as c:
        before = {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
    assert main(["analyze", "--db", str(db), "--analyses", "galaxy,lobes"]) == 0
    with duckdb.connect(str(db), read_only=True) as c:
        after = {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
    assert after == before


def test_unknown_metric_is_a_clear_error(tiny_atlas, capsys):
    from atlas.cli import main

    assert main(["analyze", "--db", str(tiny_atlas[0].db), "--lobes-metrics", "cosine"]) == 2
    assert "unknown --metrics" in capsys.readouterr().err


def test_every_analysis_follows_the_template(fresh_con):
    """One folder per analysis: its name, a documented frozen Settings, declared tables that
    exist with a run_id column, and the functions the runner calls."""
    import dataclasses

    from atlas import analyses
    from atlas.config import field_docs

    assert set(analyses.names()) == {"galaxy", "lobes", "crystals", "universality",
                                     "absorption"} == analyses.available()
    for m in analyses.modules():
        assert m.__name__ == f"atlas.analyses.{m.NAME}.analysis" and m.DEFINITION
        assert m.Settings.__dataclass_params__.frozen
        docs = field_docs(m.Settings)
        assert all(docs.get(f.name) for f in dataclasses.fields(m.Settings)), m.NAME
        for table in m.TABLES:
            cols = [r[0] for r in fresh_con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                [table]).fetchall()]
            assert "run_id" in cols, (m.NAME, table)
        assert all(callable(getattr(m, f)) for f in ("subjects", "compute", "describe"))


def test_every_run_is_recorded_with_its_definition_and_settings(con, tiny_atlas):
    import json

    rows = con.execute("SELECT analysis, subject, definition, params FROM analysis_runs "
                       "ORDER BY analysis, subject").fetchall()
    by = {}
    for analysis, subject, definition, params in rows:
        by.setdefault(analysis, []).append(subject)
        want = {"galaxy": "li2024", "lobes": "li2024", "crystals": "li2024",
                "universality": "lan2024", "absorption": "saebench"}[analysis]
        assert definition == want and "seed" in json.loads(params)
    a, b = tiny_atlas[1].sae_ids
    assert by == {"absorption": [a, b],
                  "crystals": ["tiny-random-llama/blocks.1.hook_resid_post",
                               "tiny-random-llama/blocks.3.hook_resid_post"],
                  "galaxy": [a, b], "lobes": [a, b], "universality": [f"{a} ~ {b}"]}
    # every result row belongs to a recorded run
    from atlas import analyses

    for m in analyses.modules():
        for table in m.TABLES:
            orphans = con.execute(f"SELECT count(*) FROM {table} WHERE run_id NOT IN "
                                  "(SELECT run_id FROM analysis_runs)").fetchone()[0]
            assert orphans == 0, table
