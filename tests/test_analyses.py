"""The analyses on the tiny atlas: SQL views against numpy on the same rows, idempotent reruns."""

import duckdb
import numpy as np
import pytest

from atlas.geometry.galaxy import power_law_fit
from atlas.geometry.lobes import affinity


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
    ent = con.execute("SELECT entropy_gap, entropy_stderr FROM clustering_entropy").fetchall()
    assert len(ent) == 2 and all(np.isfinite(e) and s >= 0 for e, s in ent)


def test_lobes_and_modularity(con, tiny_atlas):
    tests = con.execute("SELECT sae_id, k, ami, ami_null_std, ami_z, logreg_accuracy, chance "
                        "FROM lobe_modularity").fetchall()
    assert {t[1] for t in tests} == {2, 4, 8}
    for _, k, ami, std, z, acc, chance in tests:
        assert -1 <= ami <= 1 and std > 0 and chance == pytest.approx(1 / k)
    sizes = con.execute("SELECT sae_id, k, sum(n_features) FROM lobes GROUP BY 1, 2").fetchall()
    for sae_id, k, total in sizes:
        n = con.execute("SELECT count(*) FROM clusters WHERE sae_id = ? AND k = ? AND "
                        "method = 'cooccurrence'", [sae_id, k]).fetchone()[0]
        assert total == n
    shares = con.execute("SELECT code_share FROM lobes").fetchall()
    assert all(s[0] is None or 0 <= s[0] <= 1 for s in shares)


def test_crystal_quality_per_task_and_layer(con):
    rows = con.execute("SELECT layer, space, task, accuracy_before, accuracy_after "
                       "FROM crystal_quality").fetchall()
    from atlas.geometry.crystals import word_pair_tasks

    tasks = set(word_pair_tasks())
    assert {r[2] for r in rows} == tasks and {r[0] for r in rows} == {1, 3}
    assert {r[1] for r in rows} >= {"residual"} and len({r[1] for r in rows}) == 3
    assert con.execute("SELECT count(*) FROM crystals").fetchone()[0] > 0
    dis = con.execute("SELECT length_corr, token_corr FROM distractors").fetchall()
    assert all(0 <= a <= 1 and 0 <= b <= 1 for a, b in dis)


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
