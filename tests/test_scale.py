"""Wide SAEs: co-occurrence stored one row per feature (in full, or each affinity's top
partners) answers the same partner queries and lobes as the pair table, and lobes on the
sparse top-partner graph agree with the dense ones."""

import duckdb
import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_mutual_info_score

from atlas import store
from atlas.analyses.lobes import spectral_labels
from atlas.blockgram import BlockGram, top_partners
from atlas.cli import main
from atlas.geometry import lobes as lb
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
    pairs, rows = cooccurrence_tables(sae_id, gram, block_count, n_blocks, storage)
    with store.transaction(con):
        con.execute("DELETE FROM cooccurrence WHERE sae_id = ?", [sae_id])
        store.insert_table(con, "cooccurrence", pairs)
        store.insert_table(con, "cooccurrence_rows", rows)
        con.execute("UPDATE harvests SET cooccurrence_storage = ? WHERE sae_id = ?",
                    [storage, sae_id])
    con.close()


@pytest.fixture
def stored_forms(tiny_atlas, tmp_path):
    import shutil

    sae_id = tiny_atlas[1].sae_ids[0]
    out = {}
    for storage in ("pairs", "rows", "top-8"):
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
        # the pair table recount, for the view the app reads
        for metric in ("phi", "jaccard", "dice", "overlap", "smc"):
            best = (f"SELECT {metric} FROM partners(?, ?) ORDER BY {metric} DESC, partner "
                    "LIMIT 8")
            top = [r[0] for r in cons["top-8"].execute(best, [sae_id, feature]).fetchall()]
            assert top == [r[0] for r in cons["pairs"].execute(best, [sae_id, feature])
                           .fetchall()], metric
    a = cons["pairs"].execute("SELECT i, j, n_ij FROM affinity WHERE sae_id = ? AND i = 5 "
                              "ORDER BY j", [sae_id]).fetchall()
    b = cons["pairs"].execute("SELECT 5, partner, n_ij FROM partners(?, 5) WHERE partner > 5 "
                              "ORDER BY partner", [sae_id]).fetchall()
    assert a == b
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
    assert labels["rows"] == labels["pairs"] and labels["top-8"]
