import logging
import shutil

import numpy as np
import pytest

from atlas import query, store
from atlas.artifacts import index_path
from atlas.catalog import resolve_sae
from atlas.errors import AtlasError
from atlas.harvest import features_of
from atlas.index import open_index
from atlas.readonly import open_readonly
from atlas.words import word_analogy, word_vectors


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


def test_features_of_a_text_equal_the_sae_on_the_residual(tiny_atlas, tiny_lm):
    import duckdb
    import torch
    from sae_lens import SAE

    from atlas.models import HookPoint, capture_residuals

    with duckdb.connect(str(tiny_atlas[0].db), read_only=True) as con:
        path, hook = con.execute("SELECT path, hook FROM saes ORDER BY layer").fetchone()
    sae = SAE.load_from_disk(path)
    tokens = features_of(tiny_lm, sae, "The river flows to the sea", top=100)
    ids = tiny_lm.tokenizer("The river flows to the sea", add_special_tokens=False)["input_ids"]
    assert [t.token for t in tokens] == tiny_lm.tokenizer.batch_decode([[i] for i in ids])
    full = torch.tensor([[tiny_lm.tokenizer.eos_token_id, *ids]])
    acts = capture_residuals(tiny_lm, full, [HookPoint.parse(hook)])[hook][0, 1:]
    dense = sae.encode(acts).detach()
    for t in tokens:
        want = {int(f): float(dense[t.position, f]) for f in torch.nonzero(dense[t.position] > 0)}
        assert {f: pytest.approx(a, rel=1e-5) for f, a in t.features} == want


def test_word_analogy_reports_split_words(tiny_lm):
    result = word_analogy(tiny_lm, 2, "man", "woman", "kingfisher", k=3,
                                vocab=["queen", "river", "sea", "boy", "girl"])
    assert len(result.words) == 3 and all(-1 <= c <= 1 for _, c in result.words)
    assert any("kingfisher" in n and "tokens" in n for n in result.notes)
    assert {w for w, _ in result.words} <= {"queen", "river", "sea", "boy", "girl"}


def test_word_vectors_equal_a_single_forward(tiny_lm):
    import torch

    from atlas.models import HookPoint, capture_residuals

    wv = word_vectors(tiny_lm, 1, ["sea", "river"])
    ids = tiny_lm.tokenizer(" river", add_special_tokens=False)["input_ids"]
    full = torch.tensor([[tiny_lm.tokenizer.eos_token_id, *ids]])
    want = capture_residuals(tiny_lm, full, [HookPoint(1)])["blocks.1.hook_resid_post"][0, -1]
    np.testing.assert_allclose(wv.vectors[1], want.numpy(), atol=1e-4)
