import os
import signal
import subprocess
import sys
import textwrap
import time

import duckdb
import numpy as np
import pytest
import torch
from sae_lens import SAE

from atlas import store
from atlas.errors import AtlasError
from atlas.harvest import sink_free
from atlas.models import capture_residuals


@pytest.fixture
def con(tiny_atlas):
    c = duckdb.connect(str(tiny_atlas[0].db), read_only=True)
    yield c
    c.close()


def test_schema_has_the_required_tables_and_migrations_are_idempotent(fresh_con):
    names = {r[0] for r in fresh_con.execute("SELECT table_name FROM information_schema.tables")
             .fetchall()}
    assert {"models", "saes", "harvests", "features", "decoders", "block_firings", "blocks",
            "cooccurrence", "examples", "atlas_migrations"} <= names
    assert store.migrate(fresh_con) == []
    applied = [r[0] for r in fresh_con.execute("SELECT name FROM atlas_migrations ORDER BY 1")
               .fetchall()]
    assert applied == [n for n, _ in store.sql_files()]


def test_cooccurrence_equals_a_sql_recount_from_block_firings(con, tiny_atlas):
    for sae_id in tiny_atlas[1].sae_ids:
        diff = con.execute("""
            WITH recount AS (
                SELECT a.feature AS i, b.feature AS j, count(*) AS n_ij
                FROM block_firings a JOIN block_firings b
                  ON a.sae_id = b.sae_id AND a.block_id = b.block_id AND a.feature < b.feature
                WHERE a.sae_id = $1 GROUP BY ALL)
            SELECT count(*) FROM (
                (SELECT i, j, n_ij FROM recount EXCEPT
                 SELECT i, j, n_ij FROM cooccurrence WHERE sae_id = $1)
                UNION ALL
                (SELECT i, j, n_ij FROM cooccurrence WHERE sae_id = $1 EXCEPT
                 SELECT i, j, n_ij FROM recount))""", [sae_id]).fetchone()[0]
        assert diff == 0
        n = con.execute("SELECT count(*) FROM cooccurrence WHERE sae_id = ?", [sae_id]).fetchone()
        assert n[0] > 0


def test_firing_counts_equal_an_independent_recount(con, tiny_atlas, tiny_lm):
    """Re-run the model and the saved SAE on the stored blocks and count in numpy."""
    config, result = tiny_atlas
    sae_id = result.sae_ids[0]
    path, hook = con.execute("SELECT path, hook FROM saes WHERE sae_id = ?", [sae_id]).fetchone()
    sae = SAE.load_from_disk(path)
    rows = con.execute("SELECT token_ids FROM blocks b JOIN harvests h ON b.corpus_id = h.corpus "
                       "WHERE h.sae_id = ? ORDER BY block_id", [sae_id]).fetchall()
    ids = torch.tensor([r[0] for r in rows])
    special = torch.tensor(tiny_lm.tokenizer.all_special_ids)
    base = ~torch.isin(ids, special)
    base[:, 0] = False
    counts = np.zeros(sae.cfg.d_sae, dtype=np.int64)
    blocks = np.zeros(sae.cfg.d_sae, dtype=np.int64)
    for start in range(0, len(ids), config.batch_blocks):
        batch = ids[start:start + config.batch_blocks]
        acts = capture_residuals(tiny_lm, batch, [sae_hook(hook)])[hook]
        mask = sink_free(acts, base[start:start + config.batch_blocks])
        fired = (sae.encode(acts) * mask.unsqueeze(-1) > config.threshold).numpy()
        counts += fired.sum((0, 1))
        blocks += fired.any(1).sum(0)
    stored = con.execute("SELECT firing_count, block_count FROM features WHERE sae_id = ? "
                         "ORDER BY feature", [sae_id]).fetchnumpy()
    assert np.array_equal(stored["firing_count"], counts)
    assert np.array_equal(stored["block_count"], blocks)
    assert counts.sum() > 0


def sae_hook(name):
    from atlas.models import HookPoint

    return HookPoint.parse(name)


def test_decoders_are_unit_rows_of_the_saved_sae(con, tiny_atlas):
    sae_id = tiny_atlas[1].sae_ids[1]
    path = con.execute("SELECT path FROM saes WHERE sae_id = ?", [sae_id]).fetchone()[0]
    w = SAE.load_from_disk(path).W_dec.detach().numpy()
    vecs = store.load_decoders(con, sae_id)
    np.testing.assert_allclose(vecs, w / np.linalg.norm(w, axis=1, keepdims=True), atol=1e-6)
    norms = con.execute("SELECT norm FROM decoders WHERE sae_id = ? ORDER BY feature",
                        [sae_id]).fetchnumpy()["norm"]
    np.testing.assert_allclose(norms, np.linalg.norm(w, axis=1), rtol=1e-5)


def test_examples_point_at_their_token(con, tiny_atlas, tiny_lm):
    rows = con.execute("""SELECT e.token, e.context, e.token_start, e.position, b.token_ids
                          FROM examples e JOIN harvests h USING (sae_id)
                          JOIN blocks b ON b.corpus_id = h.corpus AND b.block_id = e.block_id
                          LIMIT 50""").fetchall()
    assert rows
    for token, context, start, pos, ids in rows:
        assert context[start:start + len(token)] == token
        assert tiny_lm.tokenizer.decode([ids[pos]]) == token


def test_rerun_replaces_and_never_duplicates(tiny_atlas, tmp_path):
    from atlas.builder import build
    from tests.conftest import tiny_config

    config = tiny_config(tmp_path / "twice.duckdb")
    build(config)
    with duckdb.connect(str(config.db), read_only=True) as c:
        first = {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                 for t in ("saes", "harvests", "features", "cooccurrence", "examples", "blocks")}
    build(config)
    with duckdb.connect(str(config.db), read_only=True) as c:
        second = {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in first}
    assert first == second


KILLED_WRITER = textwrap.dedent("""
    import sys, time, duckdb
    from atlas import store
    con = store.connect(sys.argv[1])
    sae_id = sys.argv[2]
    row = con.execute("SELECT * FROM saes WHERE sae_id = ?", [sae_id]).fetchone()
    rec = store.SAERecord(*row)
    tables = {t: con.execute(f"SELECT * FROM {t} WHERE sae_id = ?", [sae_id]).to_arrow_table()
              for t in store.HARVEST_TABLES}
    h = con.execute("SELECT * FROM harvests WHERE sae_id = ?", [sae_id]).fetchone()
    harvest = dict(harvest_id="new", corpus=h[2], n_tokens=1, n_blocks=h[4], block_size=h[5],
                   threshold=h[6], config={})
    def stall(name):
        if name == "decoders":
            open(sys.argv[3], "w").write("halfway")
            time.sleep(600)
    store.write_harvest(con, rec, store.HarvestTables(harvest, **tables), on_table=stall)
""")


def test_a_kill_mid_write_loses_nothing(tiny_atlas, tmp_path):
    import shutil

    db = tmp_path / "kill.duckdb"
    shutil.copy(tiny_atlas[0].db, db)
    sae_id = tiny_atlas[1].sae_ids[0]
    with duckdb.connect(str(db), read_only=True) as c:
        before = {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("harvests", "features", "decoders", "examples")}
        hid = c.execute("SELECT harvest_id FROM harvests WHERE sae_id = ?", [sae_id]).fetchone()
    marker = tmp_path / "halfway"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(db), sae_id, str(marker)],
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None, "writer died before reaching the middle of its transaction"
        assert time.time() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with duckdb.connect(str(db), read_only=True) as c:
        after = {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in before}
        hid_after = c.execute("SELECT harvest_id FROM harvests WHERE sae_id = ?",
                              [sae_id]).fetchone()
    assert after == before and hid_after == hid


def test_a_file_that_is_not_duckdb_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.duckdb"
    bad.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(AtlasError, match="not a DuckDB database"):
        store.connect(bad)
    assert bad.read_text().startswith("these are my notes")
