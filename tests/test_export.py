"""Exports read back: Parquet of a table and a view, Neuronpedia batch JSON of an SAE."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from atlas.cli import main

BATCH_KEYS = {"model_id", "layer", "sae_set", "features", "settings"}
FEATURE_KEYS = {  # SAEDashboard's NeuronpediaDashboardFeature.to_dict, plus explanations
    "feature_index", "neuron_alignment_indices", "neuron_alignment_values",
    "neuron_alignment_l1", "correlated_neurons_indices", "correlated_neurons_l1",
    "correlated_neurons_pearson", "correlated_features_indices", "correlated_features_l1",
    "correlated_features_pearson", "neg_str", "neg_values", "pos_str", "pos_values",
    "frac_nonzero", "freq_hist_data_bar_values", "freq_hist_data_bar_heights",
    "logits_hist_data_bar_heights", "logits_hist_data_bar_values", "num_tokens_for_dashboard",
    "activations", "explanations"}
ACTIVATION_KEYS = {"bin_min", "bin_max", "bin_contains", "tokens", "values"}


@pytest.mark.parametrize("table", ["features", "feature_density"])
def test_parquet_export_reads_back_equal(tiny_atlas, tmp_path, table):
    from atlas import store

    out = tmp_path / f"{table}.parquet"
    assert main(["export", "--db", str(tiny_atlas[0].db), "--table", table, "--out",
                 str(out)]) == 0
    con = store.connect(tiny_atlas[0].db, read_only=True)
    want = con.sql(f"SELECT * FROM {table} ORDER BY sae_id, feature").df()
    con.close()
    got = pq.read_table(out).to_pandas().sort_values(["sae_id", "feature"])
    assert list(got.columns) == list(want.columns) and len(got) == len(want) > 0
    for col in want.columns:
        a, b = got[col].reset_index(drop=True), want[col].reset_index(drop=True)
        if a.dtype.kind == "f":
            np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
        else:
            assert a.astype(str).tolist() == b.astype(str).tolist(), col


def test_neuronpedia_export_holds_the_stored_features(tiny_atlas, tmp_path, capsys):
    from atlas import store

    sae_id = tiny_atlas[1].sae_ids[0]
    out = tmp_path / "np"
    assert main(["export", "--db", str(tiny_atlas[0].db), "--format", "neuronpedia", "--sae",
                 sae_id, "--out", str(out), "--batch-size", "40"]) == 0
    files = sorted(out.glob("batch-*.json"))
    assert [f.name for f in files] == ["batch-0.json", "batch-1.json", "batch-2.json"]
    batches = [json.loads(f.read_text()) for f in files]
    features = [f for b in batches for f in b["features"]]
    assert all(set(b) == BATCH_KEYS for b in batches)
    assert [f["feature_index"] for f in features] == list(range(96))
    con = store.connect(tiny_atlas[0].db, read_only=True)
    logits = con.sql("SELECT feature, direction, token, value FROM feature_logits WHERE "
                     "sae_id = ? ORDER BY feature, rank", params=[sae_id]).df()
    density = con.sql("SELECT feature, active_count, density FROM feature_density WHERE "
                      "sae_id = ?", params=[sae_id]).df().set_index("feature")
    top = con.sql("SELECT feature, act, token FROM examples WHERE sae_id = ? ORDER BY "
                  "feature, rank", params=[sae_id]).df()
    n_deciles = con.sql("SELECT feature, count(*) AS n FROM decile_examples WHERE sae_id = ? "
                        "GROUP BY 1", params=[sae_id]).df().set_index("feature")["n"]
    con.close()
    for f in features:
        i = f["feature_index"]
        assert set(f) == FEATURE_KEYS and f["explanations"] == []
        mine = logits[logits.feature == i]
        assert f["pos_str"] == list(mine[mine.direction == "top"].token)
        np.testing.assert_allclose(f["neg_values"], mine[mine.direction == "bottom"].value,
                                   atol=5e-4)
        assert sum(f["freq_hist_data_bar_heights"]) == density.loc[i, "active_count"]
        assert f["frac_nonzero"] == pytest.approx(density.loc[i, "density"])
        acts = f["activations"]
        assert all(set(a) == ACTIVATION_KEYS for a in acts)
        examples = top[top.feature == i]
        assert len(acts) == len(examples) + n_deciles.get(i, 0)
        for a, (_, ex) in zip(acts, examples.iterrows()):
            at = int(np.argmax(a["values"]))
            assert a["values"][at] == pytest.approx(ex.act, abs=1e-3)
            assert a["tokens"][at] == ex.token and a["bin_min"] == -1
        for a in acts[len(examples):]:
            assert a["bin_min"] - 1e-3 <= max(a["values"]) <= a["bin_max"] + 1e-3
            assert 0 < a["bin_contains"] <= 1


def test_export_without_what_to_export_is_one_clear_error(tiny_atlas, tmp_path, capsys):
    db = str(tiny_atlas[0].db)
    assert main(["export", "--db", db, "--out", str(tmp_path / "x")]) == 2
    assert "--format neuronpedia --sae ID, or --table NAME" in capsys.readouterr().err
    assert main(["export", "--db", db, "--table", "nope", "--out",
                 str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err
    assert "'nope' is not a table or view" in err and "feature_cards" in err
    assert not (tmp_path / "x.parquet").exists()
