"""Every page of the app under Streamlit's AppTest, on the tiny atlas."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).parent.parent / "app" / "streamlit_app.py")


@pytest.fixture(autouse=True)
def release_cached_connections():
    """AppTest runs the app in this process; its cached read-only connection would keep the
    database open with another configuration than the other tests' connections."""
    yield
    import gc

    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    gc.collect()


@pytest.fixture
def app(tiny_atlas, monkeypatch):
    monkeypatch.setenv("ATLAS_DB", str(tiny_atlas[0].db))

    def open_page(page: str) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=120)
        at.query_params["page"] = page
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at
    return open_page


def test_no_stray_text_reaches_the_page():
    """Streamlit's magic writes any bare expression statement of the script onto the page;
    the app's only bare string is its module docstring."""
    import ast

    tree = ast.parse(Path(APP).read_text())
    bare = [n.lineno for n in tree.body[1:]
            if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)]
    assert bare == [], f"bare strings at lines {bare} would show on every page"


def test_overview_shows_model_and_sae_quality(app, tiny_atlas):
    at = app("Overview")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["model"] == "tiny-random-llama" and metrics["SAEs"] == "2"
    saes = at.dataframe[0].value
    assert list(saes["sae_id"]) == list(tiny_atlas[1].sae_ids)
    assert {"l0", "explained_variance", "dead_fraction"} <= set(saes.columns)
    assert any("FROM sae_overview" in c.value for c in at.code)


def test_the_app_lets_a_build_write_and_then_shows_what_it_wrote(atlas_copy, monkeypatch):
    from atlas import store

    db, ids = atlas_copy
    monkeypatch.setenv("ATLAS_DB", str(db))
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["page"] = "Overview"
    at.run()
    assert 99.5 not in list(at.dataframe[0].value["l0"])
    # between interactions the app holds no connection, so a writer can open the file
    con = store.connect(db)
    con.execute("UPDATE saes SET l0 = 99.5 WHERE sae_id = ?", [ids[0]])
    con.close()
    at.run()
    assert not at.exception
    assert 99.5 in list(at.dataframe[0].value["l0"])


def test_feature_page_by_id_and_by_token(app):
    at = app("Feature")
    assert at.subheader[0].value.startswith("#0")
    first = at.metric[0].value
    at.number_input[0].set_value(5).run()
    assert at.subheader[0].value.startswith("#5") and not at.exception
    next(r for r in at.radio if r.label == "find by").set_value("top token").run()
    assert not at.exception and len(at.dataframe) >= 1
    assert first is not None


def test_feature_affinity_selector_changes_the_table(app):
    at = app("Feature")
    select = next(s for s in at.selectbox if s.label == "affinity")
    before = [c.value for c in at.code]
    select.set_value("jaccard").run()
    after = [c.value for c in at.code]
    assert any("jaccard" in c for c in after) and before != after


def test_analogy_page(app):
    at = app("Analogy")
    assert len(at.dataframe[0].value) == 10
    at.slider[0].set_value(5).run()
    assert len(at.dataframe[0].value) == 5


def test_lobes_page_metrics_and_k_selector(app):
    at = app("Lobes")
    labels = [m.label for m in at.metric]
    assert labels == ["AMI lobes vs geometry", "lobe from decoder (accuracy)",
                      "largest lobe's share"]
    assert "random draws" in at.metric[1].delta
    before = [(m.value, m.delta) for m in at.metric]
    k_select = next(s for s in at.selectbox if s.label == "k")
    k_select.set_value(k_select.options[0]).run()
    after = [(m.value, m.delta) for m in at.metric]
    assert before != after and not at.exception


def test_crystals_page(app):
    at = app("Crystals")
    frames = [d.value for d in at.dataframe]
    assert "silhouette_heldout" in frames[0].columns
    assert "chosen" in frames[1].columns and frames[1]["chosen"].sum() == 1
    assert "top1_after" in frames[2].columns and "same_relation_after" in frames[3].columns
    assert not at.exception


def test_galaxy_page(app):
    at = app("Galaxy")
    assert any("FROM layer_spectra" in c.value for c in at.code)
    assert len(at.dataframe[0].value) == 2
    assert any("definition: li2024" in c.value for c in at.caption)
    assert at.radio[0].options == ["li2024", "atlas-kl5"]
    at.radio[0].set_value("atlas-kl5").run()
    assert not at.exception and any("atlas-kl5" in c.value for c in at.code)


def test_universality_and_absorption_pages_show_their_runs(full_atlas, monkeypatch):
    monkeypatch.setenv("ATLAS_DB", str(full_atlas))
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["page"] = "Universality"
    at.run()
    assert not at.exception and not at.info
    assert any("FROM universality" in c.value for c in at.code)
    assert len(at.dataframe[0].value) == 1          # the one pair of layers 1 and 3

    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["page"] = "Absorption"
    at.run()
    assert not at.exception and not at.error
    summary = at.dataframe[0].value
    assert len(summary) == 4 and set(summary.columns) >= {"mean_absorption_rate", "definition",
                                                          "mean_split_features", "evaluated"}
    assert at.radio[0].options == ["saebench", "atlas"]
    letters = at.dataframe[1].value
    assert set(letters["definition"]) == {"saebench"}
    at.radio[0].set_value("atlas").run()
    assert not at.exception and set(at.dataframe[1].value["definition"]) == {"atlas"}
    first = at.selectbox[0].value
    at.selectbox[0].set_value(at.selectbox[0].options[1]).run()
    assert not at.exception and at.selectbox[0].value != first
    assert any("FROM absorption WHERE sae_id" in c.value for c in at.code)
    assert set(letters["letter"]) <= set("abcdefghijklmnopqrstuvwxyz")


def test_sql_page_runs_and_refuses(app):
    at = app("SQL")
    assert len(at.dataframe) == 1
    at.text_area[0].set_value("SELECT count(*) AS n FROM features").run()
    assert at.dataframe[0].value["n"][0] == 192
    at.text_area[0].set_value("DROP TABLE features").run()
    assert at.error and "refused" in at.error[0].value


def test_sql_page_stops_a_runaway_query_and_caps_rows(app, monkeypatch):
    monkeypatch.setenv("ATLAS_SQL_TIMEOUT", "1")
    monkeypatch.setenv("ATLAS_SQL_MAX_ROWS", "50")
    at = app("SQL")
    at.text_area[0].set_value("SELECT count(*) FROM range(100000000) a, range(100000000) b")
    at.run()
    assert at.error and "1 s time limit" in at.error[0].value
    assert "ATLAS_SQL_TIMEOUT" in at.error[0].value
    at.text_area[0].set_value("SELECT * FROM range(1000)").run()
    assert not at.error and len(at.dataframe[0].value) == 50
    assert at.info and "first 50 rows" in at.info[0].value


def test_an_atlas_without_analyses_explains_how_to_run_them(tmp_path, monkeypatch):
    from atlas.builder import build
    from tests.conftest import tiny_config

    config = tiny_config(tmp_path / "bare.duckdb", quick=True)
    build(config)
    monkeypatch.setenv("ATLAS_DB", str(config.db))
    for page, command in (("Lobes", "atlas analyze --analyses lobes"),
                          ("Crystals", "atlas analyze --analyses crystals"),
                          ("Galaxy", "atlas analyze --analyses galaxy"),
                          ("Universality", "atlas compare"), ("Absorption", "atlas absorption")):
        at = AppTest.from_file(APP, default_timeout=120)
        at.query_params["page"] = page
        at.run()
        assert not at.exception
        assert at.info and command in at.info[0].value


def test_a_missing_database_is_an_error_message(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_DB", str(tmp_path / "none.duckdb"))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception and "does not exist" in at.error[0].value


def open_url(**params) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_a_feature_opens_by_url_with_its_logit_lens_histogram_and_deciles(tiny_atlas,
                                                                          monkeypatch):
    from atlas import store

    monkeypatch.setenv("ATLAS_DB", str(tiny_atlas[0].db))
    sae = tiny_atlas[1].sae_ids[1]
    at = open_url(page="Feature", sae=sae, feature="7")
    assert at.selectbox[0].value == sae and at.subheader[0].value.startswith("#7")
    con = store.connect(tiny_atlas[0].db, read_only=True)
    promoted = con.sql("SELECT token FROM feature_logits WHERE sae_id = ? AND feature = 7 AND "
                       "direction = 'top' ORDER BY rank", params=[sae]).df()["token"]
    deciles = con.sql("SELECT DISTINCT act_lo FROM decile_examples WHERE sae_id = ? AND "
                      "feature = 7", params=[sae]).df()
    con.close()
    tables = [d.value for d in at.dataframe]
    logit_tables = [t for t in tables if list(t.columns) == ["token", "value"]]
    assert len(logit_tables) == 2
    assert list(logit_tables[0]["token"]) == [repr(t) for t in promoted]
    assert (logit_tables[0]["value"] > logit_tables[1]["value"].max()).all()
    charts = at.get("vega_lite_chart")
    assert len(charts) >= 2   # activation histogram, density histogram
    sql = " ".join(c.value for c in at.code)
    assert "FROM activation_histograms" in sql and "FROM density_histogram" in sql
    assert "FROM decile_examples" in sql and "FROM feature_logits" in sql
    shown = [m.value for m in at.markdown if "% of activations" in m.value]
    assert len(shown) == len(deciles) > 0


def test_features_found_by_the_token_they_promote(app, tiny_atlas):
    at = app("Feature")
    next(r for r in at.radio if r.label == "find by").set_value("promoted token").run()
    sae = at.selectbox[0].value
    from atlas import store

    con = store.connect(tiny_atlas[0].db, read_only=True)
    token, feature = con.sql("SELECT token, feature FROM feature_logits WHERE sae_id = ? AND "
                             "direction = 'top' AND rank = 1 AND length(trim(token)) > 1 "
                             "ORDER BY value DESC LIMIT 1", params=[sae]).fetchall()[0]
    con.close()
    at.text_input[0].set_value(token).run()
    assert not at.exception
    found = at.dataframe[0].value
    assert feature in list(found["feature"]) and set(found["token"]) == {token}
    assert list(found["value"]) == sorted(found["value"], reverse=True)


def test_overview_shows_a_density_histogram_and_a_link_per_feature(app, tiny_atlas):
    at = app("Overview")
    assert any("FROM density_histogram" in c.value for c in at.code)
    listed = next(d.value for d in at.dataframe if "page" in d.value.columns)
    sae = at.selectbox[0].value
    assert listed["page"].iloc[0] == (f"?page=Feature&sae={sae.replace('/', '%2F')}"
                                      f"&feature={listed['feature'].iloc[0]}")
    assert list(listed["firing_count"]) == sorted(listed["firing_count"], reverse=True)
    assert len(at.get("vega_lite_chart")) == 1


def test_analogy_page_answers_words_from_the_stored_table(app, tiny_atlas):
    import json

    at = app("Analogy")
    next(r for r in at.radio if r.label == "over").set_value("words").run()
    assert not at.exception
    table = next(s for s in at.selectbox if s.label == "word table")
    side = next(tiny_atlas[0].db.with_name(tiny_atlas[0].db.name + ".words").glob("*.json"))
    vocab = json.loads(side.read_text())["words"]
    a, b, c = vocab[:3]
    for box, word in zip(at.text_input, (a, b, c)):
        box.set_value(word)
    at.run()
    assert not at.exception and table.value
    words = at.dataframe[0].value
    assert len(words) == 10 and not set(words["word"]) & {a, b, c}
    assert set(words["word"]) <= set(vocab)
    next(r for r in at.radio if r.label == "ask").set_value("neighbours").run()
    assert not at.exception and len(at.dataframe[0].value) == 10


def test_sigterm_to_atlas_app_stops_the_server_and_frees_its_port(tiny_atlas):
    """A supervisor stops `atlas app` with SIGTERM (to that process alone): the Streamlit
    server it started stops too, and the port is free again."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    from tests.appdriver import free_port, wait_healthy

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "atlas.cli", "app", "--db",
                             str(tiny_atlas[0].db), "--port", str(port), "--address",
                             "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, timeout=90)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) is not None
        deadline = time.time() + 15
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) != 0:
                    break           # nothing listens: the server went with `atlas app`
            assert time.time() < deadline, "the Streamlit server outlived `atlas app`"
            time.sleep(0.3)
    finally:
        if proc.poll() is None:
            proc.kill()
