import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.errors import AtlasError
from atlas.index import FeatureIndex, blas_topk, gpu_count


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute(vectors, q, k):
    scores = unit(q) @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@settings(max_examples=25, deadline=None)
@given(st.integers(5, 300), st.integers(2, 40), st.integers(1, 12), st.integers(0, 10_000))
def test_exact_search_equals_numpy_brute_force(n, d, k, seed):
    rng = np.random.default_rng(seed)
    vectors = unit(rng.normal(size=(n, d)))
    q = rng.normal(size=(7, d))
    index = FeatureIndex.build(vectors, kind="flat")
    want_scores, want_ids = brute(vectors, q, k)
    for exact_batch in (q[:1], q):
        scores, ids = index.search(exact_batch, k)
        np.testing.assert_allclose(scores, want_scores[:len(exact_batch)], atol=1e-5)
        # Ties aside, the same ids: compare where scores are not tied.
        assert (ids == want_ids[:len(exact_batch)]).mean() > 0.95


def test_faiss_flat_path_and_blas_path_agree():
    rng = np.random.default_rng(0)
    vectors = unit(rng.normal(size=(2000, 64)))
    q = unit(rng.normal(size=(200, 64)))  # > BLAS_MAX_QUERIES: FAISS's flat scan
    index = FeatureIndex.build(vectors, kind="flat")
    s1, i1 = index.search(q, 10)
    s2, i2 = blas_topk(vectors, q, 10, index.ids)
    np.testing.assert_allclose(s1, s2, atol=1e-5)
    assert (i1 == i2).mean() > 0.99


def test_self_is_its_own_nearest_neighbour():
    rng = np.random.default_rng(1)
    vectors = unit(rng.normal(size=(500, 32)))
    _, ids = FeatureIndex.build(vectors).search(vectors[:50], 1)
    assert (ids[:, 0] == np.arange(50)).all()


def test_planted_analogy_is_found_first():
    rng = np.random.default_rng(2)
    vectors = unit(rng.normal(size=(1000, 48)))
    a, b, c, d = vectors[10], vectors[11], vectors[12], None
    d = unit((b - a + c)[None])[0]
    vectors[13] = d
    index = FeatureIndex.build(vectors)
    _, ids = index.search((b - a + c)[None], 4)
    assert [i for i in ids[0] if i not in (10, 11, 12)][0] == 13


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_report_recall_and_find_planted_clusters(kind):
    rng = np.random.default_rng(3)
    centres = unit(rng.normal(size=(40, 32)))
    vectors = unit(centres[rng.integers(0, 40, 4000)] + 0.15 * rng.normal(size=(4000, 32)))
    index = FeatureIndex.build(vectors, kind=kind)
    assert index.meta.kind == kind and 0.8 <= index.meta.recall_at_10 <= 1.0
    _, ids = index.search(vectors[:20], 1)
    assert (ids[:, 0] == np.arange(20)).mean() >= 0.9


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_save_load_round_trip(tmp_path, kind):
    rng = np.random.default_rng(4)
    vectors = unit(rng.normal(size=(600, 16)))
    ids = np.arange(600, dtype=np.int64) + 1000
    index = FeatureIndex.build(vectors, ids, sae_id="s", checksum="abc", kind=kind)
    index.save(tmp_path / "s.faiss")
    loaded = FeatureIndex.load(tmp_path / "s.faiss")
    assert loaded.meta == index.meta
    np.testing.assert_array_equal(loaded.ids, ids)
    np.testing.assert_allclose(loaded.vectors, vectors, atol=1e-6)
    q = vectors[:5]
    assert (loaded.search(q, 3)[1] == index.search(q, 3)[1]).all()


def test_corrupt_index_file_is_reported(tmp_path):
    (tmp_path / "x.faiss").write_bytes(b"garbage")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(AtlasError, match="rebuilt"):
        FeatureIndex.load(tmp_path / "x.faiss")


@pytest.mark.gpu
@pytest.mark.skipif(gpu_count() == 0, reason="faiss-gpu with a GPU is not present (CPU build)")
@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_gpu_indexes_answer_as_the_cpu_ones(kind, tmp_path):
    """Flat and IVF indexes built and searched on the GPU: the same neighbours as exact search
    on the CPU (IVF within its measured recall), and saved files are CPU indexes."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=(5000, 64)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    index = FeatureIndex.build(v, np.arange(5000) + 100, kind=kind)
    q = v[:200] + 0.01
    scores, ids = index.search(q, 10, exact=kind == "flat")
    assert index.gpu_index() is not None
    want_s, want_i = blas_topk(v, q / np.linalg.norm(q, axis=1, keepdims=True), 10,
                               np.arange(5000) + 100)
    if kind == "flat":
        assert (ids == want_i).mean() > 0.99
        np.testing.assert_allclose(scores, want_s, atol=1e-4)
    else:
        assert index.meta.params["trained_on"] == "gpu"
        hits = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, want_i)])
        assert hits >= min(index.meta.recall_at_10, 0.95) - 0.05
    index.save(tmp_path / "x.faiss")
    again = FeatureIndex.load(tmp_path / "x.faiss")
    assert not hasattr(again.index, "getDevice")
    _, cpu_ids = again.index.search(q / np.linalg.norm(q, axis=1, keepdims=True), 10)
    assert (cpu_ids == ids).mean() > 0.95


def test_without_a_gpu_large_batches_use_faiss_on_the_cpu():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(500, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    index = FeatureIndex.build(v, kind="flat")
    _, ids = index.search(v[:100], 1)
    assert (ids[:, 0] == np.arange(100)).all()
    if gpu_count() == 0:
        assert index.gpu_index() is None
