"""Wide SAEs: co-occurrence stored as a matrix file beside the atlas with each affinity's top
partners in SQL, as top partners only, or (atlases of schema version 1) one full row per
feature, answers the same partner queries and lobes as the pair table, and lobes on the
sparse top-partner graph agree with the dense ones."""

import hashlib

import duckdb
import numpy as np
import pyarrow as pa
import pytest
import torch
from sklearn.metrics import adjusted_mutual_info_score

from atlas import store
from atlas.artifacts import cooccurrence_dir
from atlas.analyses.lobes.analysis import spectral_labels
from atlas.blockgram import BlockGram, read_matrix, top_partners
from atlas.cli import main
from atlas.analyses.lobes import geometry as lb
from atlas.pipeline import cooccurrence_tables


def test_sparse_lobes_agree_with_dense_ones_on_a_4k_sae():
    """4,096 features in 8 planted lobes (features fire 8x more often in blocks of their
    topic, base rates log-uniform in 0.2%-3%), 2,000 blocks: spectral lobes on the top-64
    partner graph agree with the dense affinity's (AMI >= 0.9), and both find the plant."""
    rng = np.random.default_rng(0)
    d, k, n = 4096, 8, 2000
    lobe = np.repeat(np.arange(k), d // k)
    base = np.exp(rng.uniform(np.log(0.002), np.log(0.03), d))
    topic = rng.integers(0, k, n)
    fires = rng.random((n, d)) < np.minimum(base * np.where(lobe == topic[:, None], 8.0, 1.0),
                                            0.9)
    gram = BlockGram(d)
    b, f = np.nonzero(fires)
    gram.add(torch.from_numpy(b), torch.from_numpy(f), n)
    counts = gram.dense()
    n_i = np.diag(counts).copy()
    dense = spectral_labels(lb.affinity_matrix(counts.astype(float), n_i.astype(float), n,
                                               metric="phi"), [k], 0)[k]
    partners, values = [], []
    for first, rows in gram.row_tiles():
        p, v = top_partners(rows, first, n_i, n, 64)
        partners += p
        values += v
    sparse = spectral_labels(lb.knn_affinity(partners, values, n_i.astype(float), n,
                                             metric="phi", k=64), [k], 0)[k]
    assert adjusted_mutual_info_score(dense, sparse) >= 0.9
    assert adjusted_mutual_info_score(lobe, dense) >= 0.9
    assert adjusted_mutual_info_score(lobe, sparse) >= 0.85


def restore(db, sae_id: str, storage: str) -> None:
    """Store one SAE's co-occurrence again in another form, recounted from its block firings."""
    con = store.connect(db)
    n_blocks, = con.execute("SELECT n_blocks FROM harvests WHERE sae_id = ?", [sae_id]).fetchone()
    d_sae, = con.execute("SELECT d_sae FROM saes WHERE sae_id = ?", [sae_id]).fetchone()
    fired = con.execute("SELECT block_id, feature FROM block_firings WHERE sae_id = ?",
                        [sae_id]).fetchnumpy()
    gram = BlockGram(d_sae, tile=40)
    gram.add(torch.from_numpy(fired["block_id"].astype(np.int64)),
             torch.from_numpy(fired["feature"].astype(np.int64)), n_blocks)
    block_count = con.execute("SELECT block_count FROM features WHERE sae_id = ? ORDER BY "
                              "feature", [sae_id]).fetchnumpy()["block_count"]
    assert np.array_equal(gram.diagonal(), block_count)
    name = None
    if storage == "matrix":
        name = f"{sae_id.replace('/', '_')}.test.npy"
        cooccurrence_dir(db).mkdir(exist_ok=True)
        with open(cooccurrence_dir(db) / name, "wb") as out:
            pairs, rows = cooccurrence_tables(sae_id, gram, block_count, n_blocks, storage,
                                              matrix=out)
    elif storage == "rows":   # schema version 1: every count, partners NULL
        dense = gram.dense()
        pairs = cooccurrence_tables(sae_id, gram, block_count, n_blocks, "pairs")[0].slice(0, 0)
        rows = pa.table({"sae_id": [sae_id] * d_sae, "feature": np.arange(d_sae, dtype=np.int32),
                         "partners": pa.nulls(d_sae, pa.list_(pa.int32())),
                         "counts": [r.astype(np.int32) for r in dense]},
                        schema=store.COOCCURRENCE_ROWS_SCHEMA)
    else:
        pairs, rows = cooccurrence_tables(sae_id, gram, block_count, n_blocks, storage)
    with store.transaction(con):
        con.execute("DELETE FROM cooccurrence WHERE sae_id = ?", [sae_id])
        store.insert_table(con, "cooccurrence", pairs)
        store.insert_table(con, "cooccurrence_rows", rows)
        con.execute("UPDATE harvests SET cooccurrence_storage = ?, cooccurrence_file = ? "
                    "WHERE sae_id = ?", [storage, name, sae_id])
    con.close()


@pytest.fixture
def stored_forms(tiny_atlas, tmp_path):
    import shutil

    sae_id = tiny_atlas[1].sae_ids[0]
    out = {}
    for storage in ("pairs", "matrix", "rows", "top-8"):
        db = tmp_path / f"{storage}.duckdb"
        shutil.copy(tiny_atlas[0].db, db)
        if storage != "pairs":
            restore(db, sae_id, storage)
        out[storage] = db
    return sae_id, out


def test_every_storage_form_answers_partner_queries_alike(stored_forms):
    sae_id, dbs = stored_forms
    cons = {s: duckdb.connect(str(db), read_only=True) for s, db in dbs.items()}
    full = "SELECT * FROM partners(?, ?) ORDER BY partner"
    for feature in (0, 5, 17, 40):
        want = cons["pairs"].execute(full, [sae_id, feature]).fetchall()
        assert want and cons["rows"].execute(full, [sae_id, feature]).fetchall() == want
        # the 'matrix' form's SQL rows are its top partners: every one exact
        assert set(cons["matrix"].execute(full, [sae_id, feature]).fetchall()) <= set(want)
        # the pair table recount, for the view the app reads
        for metric in ("phi", "jaccard", "dice", "overlap", "smc"):
            best = (f"SELECT {metric} FROM partners(?, ?) ORDER BY {metric} DESC, partner "
                    "LIMIT 8")
            top = [r[0] for r in cons["pairs"].execute(best, [sae_id, feature]).fetchall()]
            for form in ("top-8", "matrix"):
                assert [r[0] for r in cons[form].execute(best, [sae_id, feature])
                        .fetchall()] == top, (form, metric)
    a = cons["pairs"].execute("SELECT i, j, n_ij FROM affinity WHERE sae_id = ? AND i = 5 "
                              "ORDER BY j", [sae_id]).fetchall()
    b = cons["pairs"].execute("SELECT 5, partner, n_ij FROM partners(?, 5) WHERE partner > 5 "
                              "ORDER BY partner", [sae_id]).fetchall()
    assert a == b
    # the matrix file holds every count: the pair table's, and block counts on the diagonal
    pairs = cons["pairs"].execute("SELECT i, j, n_ij FROM cooccurrence WHERE sae_id = ?",
                                  [sae_id]).fetchnumpy()
    matrix = read_matrix(store.matrix_path(cons["matrix"], sae_id))
    n_i = cons["pairs"].execute("SELECT block_count FROM features WHERE sae_id = ? ORDER BY "
                                "feature", [sae_id]).fetchnumpy()["block_count"]
    want = lb.cooccurrence_counts(pairs["i"], pairs["j"], pairs["n_ij"], len(n_i))
    np.fill_diagonal(want, n_i)
    assert matrix.dtype == np.uint16 and np.array_equal(matrix, want)
    for con in cons.values():
        con.close()


def test_lobes_read_every_storage_form(stored_forms):
    sae_id, dbs = stored_forms
    labels = {}
    for storage, db in dbs.items():
        assert main(["analyze", "--db", str(db), "--analyses", "lobes", "--sae", sae_id,
                     "--lobes-ks", "2,4", "--lobes-random-draws", "2",
                     "--lobes-n-permutations", "5"]) == 0
        with duckdb.connect(str(db), read_only=True) as con:
            labels[storage] = con.execute(
                "SELECT metric, k, feature, cluster FROM clusters WHERE sae_id = ? AND method = "
                "'cooccurrence' ORDER BY ALL", [sae_id]).fetchall()
            graphs = {r[0] for r in con.execute("SELECT graph FROM lobe_tests WHERE sae_id = ?",
                                                [sae_id]).fetchall()}
        assert graphs == {"knn-8" if storage == "top-8" else "dense"}
    assert labels["rows"] == labels["pairs"] == labels["matrix"] and labels["top-8"]


def test_a_matrix_harvest_writes_its_file_and_a_failed_rewrite_keeps_it(tiny_atlas, tmp_path,
                                                                        monkeypatch):
    """A build whose SAE is stored in the 'matrix' form (the width limits lowered so the tiny
    SAE takes it) writes the count matrix beside the atlas, equal to a recount of its block
    firings; a rewrite that fails before its commit leaves the harvest and the file it names
    as they were, and the next rewrite removes the file the failed one left."""
    from atlas import blockgram

    monkeypatch.setattr(blockgram, "PAIRS_MAX_FEATURES", 8)
    config = tiny_atlas[0]
    saved = next(p for p in (config.db.parent / (config.db.name + ".saes")).iterdir())
    db = tmp_path / "matrix.duckdb"
    argv = ["build", "--db", str(db), "--model", config.model, "--sae-path", str(saved),
            "--tokens", str(config.tokens), "--block-size", str(config.block_size),
            "--dtype", "float32", "--threshold", str(config.threshold), "--quick"]

    def stored():
        with duckdb.connect(str(db), read_only=True) as con:
            sae_id, storage, name, n_blocks = con.execute(
                "SELECT sae_id, cooccurrence_storage, cooccurrence_file, n_blocks "
                "FROM harvests").fetchone()
            fired = con.execute("SELECT block_id, feature FROM block_firings").fetchnumpy()
            d_sae, = con.execute("SELECT d_sae FROM saes").fetchone()
            top = con.execute("SELECT count(*) FROM cooccurrence_rows").fetchone()[0]
        assert storage == "matrix" and top == d_sae
        fires = np.zeros((n_blocks, d_sae), np.int64)
        fires[fired["block_id"], fired["feature"]] = 1
        matrix = read_matrix(cooccurrence_dir(db) / name)
        assert np.array_equal(matrix, fires.T @ fires)
        return name, hashlib.sha1(np.ascontiguousarray(matrix)).hexdigest()

    assert main(argv) == 0
    first = stored()

    def fail(con, table, data, _insert=store.insert_table):
        if table == "decile_examples":
            raise RuntimeError("disk full")
        _insert(con, table, data)

    with monkeypatch.context() as m:
        m.setattr(store, "insert_table", fail)
        with pytest.raises(RuntimeError, match="disk full"):
            main(argv + ["--n-examples", "7"])      # a changed setting: harvested again
    assert stored() == first
    assert len(list(cooccurrence_dir(db).iterdir())) == 2    # the failed write's file is left
    assert main(argv + ["--n-examples", "7"]) == 0
    second = stored()
    assert second[0] != first[0] and second[1] == first[1]
    assert [p.name for p in cooccurrence_dir(db).iterdir()] == [second[0]]
