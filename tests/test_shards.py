"""Shard partials: merged, they equal one pass over the whole corpus; Parquet round-trips them."""

import numpy as np
import pytest
import torch

from atlas import shards
from atlas.errors import AtlasError
from atlas.harvest import FeatureAccumulator, SparseCodes, cooccurrence
from atlas.saes import QualityPartial, merge_quality
from tests.test_harvest import planted_batches, run


def shard_partials(acts, tokens, mask, *, shard=4, batch=2, n_examples=4, quantise=True):
    n_blocks, t, f = acts.shape
    parts = []
    for start, stop in shards.shard_ranges(n_blocks, shard):
        acc = FeatureAccumulator(f, n_blocks, block_size=t, threshold=1.0,
                                 n_examples=n_examples)
        for b in range(start, stop, batch):
            sl = slice(b, min(b + batch, stop))
            acc.update(b, SparseCodes.from_dense(acts[sl].reshape(-1, f)), tokens[sl], mask[sl])
        parts.append(shards.partial_of(acc, "s", start, stop))
    return parts


def test_merged_shards_equal_one_pass():
    acts, tokens, mask = planted_batches(n_blocks=13)
    # values on a coarse grid so that sums are exact in any order, and with ties
    acts = torch.round(acts * 4) / 4
    whole = run(acts, tokens, mask, batch=2)
    merged = shards.merge(shard_partials(acts, tokens, mask), d_sae=10, n_blocks=13,
                          block_size=16, n_examples=4)
    for name in ("firing_count", "block_count", "max_act", "top_acts", "top_blocks",
                 "top_positions"):
        assert np.array_equal(getattr(merged, name), getattr(whole, name)), name
    np.testing.assert_array_equal(merged.mean_act, whole.mean_act)
    for a, b in zip(merged.block_firings + merged.token_counts,
                    whole.block_firings + whole.token_counts):
        assert np.array_equal(a, b)
    b, f, _ = whole.block_firings
    for a, c in zip(merged.cooccurrence.pairs(), cooccurrence(b, f, n_blocks=13, d_sae=10)):
        assert np.array_equal(a, c)
    assert merged.n_tokens == whole.n_tokens
    assert np.array_equal(merged.histogram, whole.histogram)
    for a, b in zip(merged.samples, whole.samples):
        assert np.array_equal(a, b)


def test_parquet_round_trip(tmp_path):
    acts, tokens, mask = planted_batches(n_blocks=8)
    part = shard_partials(acts, tokens, mask)[1]
    part.quality = QualityPartial(5, 1.5, 20.0, np.array([True, False] * 5),
                                         np.arange(3.0), 9.0)
    path = shards.write_partial(tmp_path / "p", part)
    back = shards.read_partial(path)
    for name in ("firing_count", "act_sum", "max_act"):
        assert np.array_equal(getattr(back, name), getattr(part, name))
    for name in ("top", "firings", "tokens", "cooc", "histogram", "samples"):
        for a, b in zip(getattr(back, name), getattr(part, name)):
            assert np.array_equal(a, b) and a.dtype == b.dtype
    assert (back.start, back.stop, back.n_tokens) == (part.start, part.stop, part.n_tokens)
    assert back.quality.n == 5 and np.array_equal(back.quality.ever, part.quality.ever)
    # a second writer of the same shard leaves the first one's files
    shards.write_partial(tmp_path / "p", part)
    assert not list(tmp_path.glob(".p.tmp-*"))


def test_merge_refuses_a_missing_shard():
    acts, tokens, mask = planted_batches(n_blocks=12)
    parts = shard_partials(acts, tokens, mask)
    with pytest.raises(AtlasError, match="do not cover blocks 0..12"):
        shards.merge(parts[:1] + parts[2:], d_sae=10, n_blocks=12, block_size=16, n_examples=4)


def test_merged_quality_equals_the_direct_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    parts = []
    for chunk in np.array_split(x, 3):
        parts.append(QualityPartial(len(chunk), float((chunk ** 2).sum() * 0.1),
                                           float(len(chunk) * 2), np.zeros(4, bool),
                                           chunk.sum(0), float((chunk ** 2).sum())))
    parts[1].ever[2] = True
    q = merge_quality(parts)
    total = ((x - x.mean(0)) ** 2).sum()
    assert q.explained_variance == pytest.approx(1 - 0.1 * (x ** 2).sum() / total)
    assert q.l0 == 2 and q.dead_fraction == 0.75 and q.n_tokens == 40


def test_a_shard_reads_only_its_blocks_back(tmp_path):
    from atlas.config import BuildConfig
    from atlas.corpus import Blocks
    from atlas.distributed import read_blocks, write_corpus

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 500, (37, 16))
    mask = rng.random((37, 16)) > 0.2
    blocks = Blocks("c0", "test", ids, np.zeros(37, int), ["wiki"] * 37, [], mask)
    config = BuildConfig(db=tmp_path / "a.duckdb", block_size=16, tokens=1000, batch_blocks=4,
                         shard_blocks=8)
    path = write_corpus(config, blocks)
    import pyarrow.parquet as pq

    assert pq.ParquetFile(path).num_row_groups == 5
    for start, stop in [(0, 8), (8, 16), (32, 37), (5, 21), (36, 37)]:
        got_ids, got_mask = read_blocks(str(path), start, stop)
        assert np.array_equal(got_ids, ids[start:stop])
        assert np.array_equal(got_mask, mask[start:stop])


def test_sums_by_key_agree_by_dense_counts_and_by_sorting():
    from atlas.shards import _sum_by_key

    rng = np.random.default_rng(0)
    keys = rng.integers(0, 5000, 20_000)
    counts = rng.integers(1, 4, 20_000)
    dense = _sum_by_key(keys, counts, n_keys=5000)
    sorted_ = _sum_by_key(keys, counts, n_keys=1 << 30)
    for a, b in zip(dense, sorted_):
        np.testing.assert_array_equal(a, b)
    want = {}
    for k, c in zip(keys.tolist(), counts.tolist()):
        want[k] = want.get(k, 0) + c
    assert dict(zip(dense[0].tolist(), dense[1].tolist())) == want
