import logging
import shutil

import numpy as np
import pytest

from atlas import query, store
from atlas.artifacts import index_path
from atlas.catalog import resolve_sae
from atlas.errors import AtlasError
from atlas.index import open_index
from atlas.readonly import open_readonly


@pytest.fixture
def atlas_copy(tiny_atlas, tmp_path):
    """A private copy of the tiny atlas (tests here rewrite its index files)."""
    db = tmp_path / "q.duckdb"
    shutil.copy(tiny_atlas[0].db, db)
    return db, tiny_atlas[1].sae_ids


def test_build_writes_an_index_per_sae(tiny_atlas):
    for sae_id in tiny_atlas[1].sae_ids:
        assert index_path(tiny_atlas[0].db, sae_id).exists()


def test_neighbors_match_numpy_over_stored_decoders(atlas_copy):
    db, sae_ids = atlas_copy
    con = open_readonly(db)
    index = open_index(con, db, sae_ids[0])
    vectors = store.load_decoders(con, sae_ids[0])
    hits = query.neighbors(con, index, 7, k=5)
    cos = vectors @ vectors[7]
    cos[7] = -np.inf
    want = np.argsort(-cos)[:5]
    assert [h.feature for h in hits] == want.tolist()
    np.testing.assert_allclose([h.cosine for h in hits], cos[want], atol=1e-5)
    assert all(h.label is not None for h in hits)
    con.close()


def test_feature_analogy_excludes_inputs_and_matches_numpy(atlas_copy):
    db, sae_ids = atlas_copy
    con = open_readonly(db)
    index = open_index(con, db, sae_ids[0])
    v = store.load_decoders(con, sae_ids[0])
    hits = query.analogy(con, index, 1, 2, 3, k=3)
    q = v[2] - v[1] + v[3]
    cos = v @ (q / np.linalg.norm(q))
    cos[[1, 2, 3]] = -np.inf
    assert [h.feature for h in hits] == np.argsort(-cos)[:3].tolist()
    con.close()


def test_cross_layer_neighbours_search_the_other_sae(atlas_copy):
    db, sae_ids = atlas_copy
    con = open_readonly(db)
    a, b = (open_index(con, db, s) for s in sae_ids)
    hits = query.neighbors(con, a, 4, k=3, target=b)
    assert all(h.sae_id == sae_ids[1] for h in hits) and len(hits) == 3
    con.close()


def test_stale_or_corrupt_index_is_rebuilt_and_said(atlas_copy, caplog):
    db, sae_ids = atlas_copy
    con = open_readonly(db)
    path = index_path(db, sae_ids[0])
    fresh = open_index(con, db, sae_ids[0])
    # Stale: an index built from other vectors under the same name.
    from atlas.index import FeatureIndex

    FeatureIndex.build(np.eye(fresh.meta.d, dtype=np.float32)[:3], sae_id=sae_ids[0],
                       checksum="old").save(path)
    with caplog.at_level(logging.WARNING):
        rebuilt = open_index(con, db, sae_ids[0])
    assert "rebuilding" in caplog.text and rebuilt.meta.n == fresh.meta.n
    path.write_bytes(b"\x00broken")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = open_index(con, db, sae_ids[0])
    assert "unreadable" in caplog.text and again.meta.checksum == fresh.meta.checksum
    con.close()


def test_unknown_sae_and_feature_are_clear_errors(atlas_copy):
    db, sae_ids = atlas_copy
    con = open_readonly(db)
    with pytest.raises(AtlasError, match="matches no SAE.*use one of"):
        resolve_sae(con, "L99")
    assert resolve_sae(con, "L1") == sae_ids[0]
    index = open_index(con, db, sae_ids[0])
    with pytest.raises(AtlasError, match="feature 5000 does not exist"):
        query.neighbors(con, index, 5000)
    con.close()
