"""Block co-occurrence counted as a tiled Gram matrix: equal to the dense product of the
firing indicators, however the blocks are buffered and the features tiled; top partners by
every affinity equal a brute-force ranking."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.blockgram import BlockGram, _best_columns, storage_for, top_partners
from atlas.analyses.lobes.geometry import METRICS, affinity
from atlas.harvest import FeatureAccumulator, SparseCodes, cooccurrence
from tests.test_harvest import planted_batches


def counted(fires: np.ndarray, *, flush: int, tile: int, step: int,
            device: str = "cpu") -> BlockGram:
    gram = BlockGram(fires.shape[1], device, flush_blocks=flush, tile=tile)
    for lo in range(0, len(fires), step):
        b, f = np.nonzero(fires[lo:lo + step])
        gram.add(torch.from_numpy(b), torch.from_numpy(f), len(fires[lo:lo + step]))
    return gram


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 11), st.integers(1, 8), st.integers(1, 5),
       st.integers(1, 7), st.integers(0, 2**31))
def test_gram_equals_the_dense_product(n_blocks, d, flush, tile, step, seed):
    fires = np.random.default_rng(seed).random((n_blocks, d)) < 0.4
    gram = counted(fires, flush=flush, tile=tile, step=step)
    want = fires.astype(np.int64).T @ fires.astype(np.int64)
    assert np.array_equal(gram.dense(), want)
    assert np.array_equal(gram.diagonal(), fires.sum(0))
    i, j, n = gram.pairs()
    assert (i < j).all() and np.array_equal(n, want[i, j])
    assert len(i) == np.count_nonzero(np.triu(want, 1))
    assert list(zip(i, j)) == sorted(zip(i, j))


def test_pairs_added_and_counters_merged_equal_one_count():
    rng = np.random.default_rng(1)
    fires = rng.random((40, 9)) < 0.3
    whole = counted(fires, flush=16, tile=4, step=5)
    first, second = counted(fires[:17], flush=8, tile=4, step=3), counted(fires[17:], flush=8,
                                                                         tile=4, step=3)
    first.merge(second)
    assert np.array_equal(first.dense(), whole.dense())
    rebuilt = BlockGram(9, tile=2)
    rebuilt.add_pairs(*counted(fires, flush=4, tile=3, step=2).pairs())
    d = np.arange(9)
    rebuilt.add_pairs(d, d, fires.sum(0))
    assert np.array_equal(rebuilt.dense(), whole.dense())


def test_the_accumulator_s_counts_equal_a_recount_from_its_block_firings():
    acts, tokens, mask = planted_batches(n_blocks=23, seed=4)
    n_blocks, t, f = acts.shape
    acc = FeatureAccumulator(f, n_blocks, block_size=t, threshold=1.0, n_examples=2)
    for start in range(0, n_blocks, 4):
        sl = slice(start, start + 4)
        acc.update(start, SparseCodes.from_dense(acts[sl].reshape(-1, f)), tokens[sl], mask[sl])
    stats = acc.result()
    b, fs, _ = stats.block_firings
    for a, c in zip(stats.cooccurrence.pairs(), cooccurrence(b, fs, n_blocks=n_blocks,
                                                             d_sae=f)):
        assert np.array_equal(a, c)
    assert np.array_equal(stats.cooccurrence.diagonal(), stats.block_count)


def test_top_partners_hold_each_affinity_s_best():
    rng = np.random.default_rng(3)
    fires = rng.random((300, 40)) < rng.uniform(0.02, 0.5, 40)
    counts = fires.astype(np.int64).T @ fires.astype(np.int64)
    n_i = np.diag(counts).copy()
    m = 4
    partners, values = top_partners(counts[10:25], 10, n_i, 300, m)
    for r, feature in enumerate(range(10, 25)):
        others = np.array([j for j in range(40) if j != feature and counts[feature, j] > 0])
        union = set()
        for metric in METRICS:
            score = affinity(counts[feature, others], n_i[feature], n_i[others], 300, metric)
            cut = np.sort(score)[::-1][min(m, len(score)) - 1]
            best = set(others[score > cut])          # strictly better than the m-th: all kept
            assert best <= set(partners[r].tolist()), metric
            union |= set(others[score >= cut])
        assert set(partners[r].tolist()) <= union
        assert np.array_equal(values[r], counts[feature, partners[r]])
        assert (np.diff(partners[r]) > 0).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.sampled_from([8, 100, 1000, 4096]), st.integers(1, 64),
       st.integers(0, 2**31))
def test_best_columns_take_the_highest_signed_scores(rows, width, m, seed):
    # negative, zero, minus zero, masked (-1e30) and repeated scores, as the affinities give
    m = min(m, width)
    rng = np.random.default_rng(seed)
    pool = np.array([-1e30, -5.5, -1.0, -0.0, 0.0, 0.25, 3.0, 1e12], np.float32)
    score = np.where(rng.random((rows, width)) < 0.5, rng.choice(pool, (rows, width)),
                     rng.normal(0, 100, (rows, width))).astype(np.float32)
    columns = _best_columns(torch.from_numpy(score), m).numpy()
    for r in range(rows):
        assert len(set(columns[r].tolist())) == m
        assert np.array_equal(np.sort(score[r, columns[r]]), np.sort(score[r])[-m:])


def test_storage_form_follows_the_width():
    assert [storage_for(d) for d in (2048, 4096, 4097, 16384, 16385, 65536)] == [
        "pairs", "pairs", "matrix", "matrix", "top-64", "top-64"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_half_precision_products_on_the_gpu_are_exact():
    fires = np.random.default_rng(0).random((5000, 300)) < 0.6
    on_gpu = counted(fires, flush=2048, tile=128, step=700, device="cuda")
    want = fires.astype(np.int64).T @ fires.astype(np.int64)
    assert np.array_equal(on_gpu.dense(), want)


def test_counts_widen_past_int16_and_stay_exact():
    fires = np.zeros((40_000, 3), dtype=bool)
    fires[:, 0] = True
    fires[::2, 1] = True
    fires[:5, 2] = True
    gram = counted(fires, flush=2048, tile=2, step=4000)
    want = fires.astype(np.int64).T @ fires.astype(np.int64)
    assert gram.counts is not None and gram.counts.dtype == torch.int32
    assert np.array_equal(gram.dense(), want)
    pairs = BlockGram(3, tile=1)
    pairs.add_pairs(*gram.pairs())
    pairs.add_pairs(np.arange(3), np.arange(3), gram.diagonal())
    assert np.array_equal(pairs.dense(), want)


def test_counters_of_other_tilings_merge_and_read_alike():
    fires = np.random.default_rng(5).random((50, 13)) < 0.35
    want = fires.astype(np.int64).T @ fires.astype(np.int64)
    first, second = counted(fires[:20], flush=7, tile=3, step=4), counted(fires[20:], flush=9,
                                                                         tile=5, step=6)
    first.merge(second)
    assert np.array_equal(first.dense(), want)
    # reading mirrors once; counting more afterwards is mirrored again on the next read
    third = counted(fires[:1], flush=2, tile=4, step=1)
    first.merge(third)
    want += fires[:1].astype(np.int64).T @ fires[:1].astype(np.int64)
    assert np.array_equal(first.dense(), want)
    rows = np.concatenate([r.numpy() for _, r in first.full_rows()])
    assert np.array_equal(rows, want)
