import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.saes import SAEQuality
from atlas.selection import group_topk
from atlas.harvest import (FeatureAccumulator, SparseCodes, cooccurrence, encode_sparse,
                           run_rank, sink_free, top_tokens, topk_codes)

QUALITY = SAEQuality(l0=0.0, explained_variance=0.0, dead_fraction=0.0, n_tokens=0)


def planted_batches(n_blocks=12, t=16, f=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    acts = torch.rand(n_blocks, t, f, generator=g) * 3
    acts[torch.rand(n_blocks, t, f, generator=g) < 0.7] = 0.0
    acts[:, :, 9] = 0.0  # a dead feature
    tokens = torch.randint(0, 20, (n_blocks, t), generator=g)
    mask = torch.rand(n_blocks, t, generator=g) > 0.1
    return acts, tokens, mask


def run(acts, tokens, mask, *, threshold=1.0, n_examples=4, batch=5):
    n_blocks, t, f = acts.shape
    acc = FeatureAccumulator(f, n_blocks, block_size=t, threshold=threshold,
                             n_examples=n_examples)
    for start in range(0, n_blocks, batch):
        sl = slice(start, start + batch)
        acc.update(start, SparseCodes.from_dense(acts[sl].reshape(-1, f)), tokens[sl], mask[sl])
    return acc.result()


def test_counts_equal_a_direct_numpy_recount():
    acts, tokens, mask = planted_batches()
    stats = run(acts, tokens, mask)
    a = acts.numpy() * mask.numpy()[..., None]
    fired = a > 1.0
    assert np.array_equal(stats.firing_count, fired.sum((0, 1)))
    assert np.array_equal(stats.block_count, fired.any(1).sum(0))
    np.testing.assert_allclose(stats.max_act, a.max((0, 1)), rtol=1e-6)
    with np.errstate(invalid="ignore"):
        mean = np.where(fired, a, 0).sum((0, 1)) / fired.sum((0, 1))
    np.testing.assert_allclose(stats.mean_act, mean, rtol=1e-6)
    assert np.isnan(stats.mean_act[9]) and stats.firing_count[9] == 0
    assert stats.n_tokens == int(mask.sum())


def test_top_examples_equal_a_sort():
    acts, tokens, mask = planted_batches()
    stats = run(acts, tokens, mask, n_examples=4)
    flat = (acts.numpy() * mask.numpy()[..., None]).reshape(-1, acts.shape[2])
    for f in range(9):
        want = np.sort(flat[:, f])[::-1][:4]
        np.testing.assert_allclose(stats.top_acts[:, f], want, rtol=1e-6)
        for r in range(4):
            b, p = stats.top_blocks[r, f], stats.top_positions[r, f]
            assert acts[b, p, f].item() == stats.top_acts[r, f]


def test_block_firings_and_token_counts():
    acts, tokens, mask = planted_batches()
    stats = run(acts, tokens, mask)
    a = acts.numpy() * mask.numpy()[..., None]
    blocks, feats, maxes = stats.block_firings
    bmax = a.max(1)
    want = set(zip(*np.nonzero(bmax > 1.0)))
    assert set(zip(blocks.tolist(), feats.tolist())) == want
    np.testing.assert_allclose(maxes, bmax[blocks, feats], rtol=1e-6)
    counter = Counter()
    for b, p, f in zip(*np.nonzero(a > 1.0)):
        counter[(f, int(tokens[b, p]))] += 1
    got = {(f, t): c for f, t, c in zip(*stats.token_counts)}
    assert got == dict(counter)
    tops = top_tokens(stats, n=2)
    for f in range(9):
        best = max(c for (ff, _), c in counter.items() if ff == f)
        assert tops[f][0][1] == best and len(tops[f]) <= 2
    assert tops[9] == []


def test_token_counts_folded_batch_by_batch_equal_one_count(monkeypatch):
    """Folding the (feature, token) keys into running counts every few entries gives the
    counts of one pass over all of them, and what is held stays at the distinct pairs."""
    import atlas.harvest as harvest

    acts, tokens, mask = planted_batches(n_blocks=30, seed=3)
    whole = run(acts, tokens, mask, batch=4).token_counts
    monkeypatch.setattr(harvest, "TOKEN_KEYS_PENDING", 8)
    n_blocks, t, f = acts.shape
    acc = FeatureAccumulator(f, n_blocks, block_size=t, threshold=1.0, n_examples=4)
    for start in range(0, n_blocks, 4):
        sl = slice(start, start + 4)
        acc.update(start, SparseCodes.from_dense(acts[sl].reshape(-1, f)), tokens[sl], mask[sl])
        held = acc._tokens
        assert held.n_pending <= max(8, len(held.keys)) + 4 * t * f
        assert len(held.keys) <= 9 * 20    # live features x vocabulary
    folded = acc.token_counts()
    for a, b in zip(whole, folded):
        assert np.array_equal(a, b) and b.dtype == np.int64


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 9), st.data(), st.sampled_from([1, 2, 3, 2048]),
       st.booleans())
def test_cooccurrence_equals_the_dense_product(n_blocks, d, data, chunk, sparse):
    fires = np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=d, max_size=d),
                                        min_size=n_blocks, max_size=n_blocks)))
    b, f = np.nonzero(fires)
    i, j, n = cooccurrence(b, f, n_blocks=n_blocks, d_sae=d, chunk=chunk,
                           dense_limit=0 if sparse else 1 << 25)  # both ways of counting
    dense = fires.astype(int).T @ fires.astype(int)
    want = {(a, c): dense[a, c] for a in range(d) for c in range(a + 1, d) if dense[a, c]}
    assert dict(zip(zip(i.tolist(), j.tolist()), n.tolist())) == want
    assert (i < j).all()


def test_sink_positions_are_left_out():
    acts = torch.ones(2, 8, 4)
    acts[0, 3] *= 1000.0
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[:, 0] = False
    kept = sink_free(acts, mask)
    assert not kept[0, 3] and kept.sum() == mask.sum() - 1


def test_sparse_topk_encoding_equals_sae_lens_encode():
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=16, d_sae=40, k=5, metadata=SAEMetadata()))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    x = torch.randn(30, 16)
    codes = encode_sparse(sae, x)
    dense = torch.zeros(30, 40)
    dense[codes.rows, codes.features] = codes.values
    torch.testing.assert_close(dense, sae.encode(x).detach())


def test_features_of_a_text_equal_the_sae_on_the_residual(tiny_atlas, tiny_lm):
    import duckdb
    import pytest
    import torch
    from sae_lens import SAE

    from atlas.harvest import features_of
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


def test_short_blocks_run_only_to_the_batch_s_last_counted_position(tiny_lm):
    """Document blocks: the forward pass stops at the longest block of the batch; every
    counted residual equals the one of a pass over the whole padded width."""
    import numpy as np
    import torch

    from atlas.corpus import documents_for, tokenize_blocks
    from atlas.harvest import forward_range
    from atlas.models import HookPoint, capture_residuals

    blocks = tokenize_blocks(documents_for(["A king and a queen walked.", "The sea. " * 3]),
                             tiny_lm.tokenizer, tokens=1000, block_size=64)
    assert blocks.lengths.max() < 64
    hook = HookPoint(2)
    (batch,) = forward_range(tiny_lm, blocks.token_ids, blocks.mask, [hook], batch_blocks=8)
    full = capture_residuals(tiny_lm, torch.from_numpy(blocks.token_ids), [hook])[hook.name]
    mask = torch.from_numpy(blocks.mask)
    assert batch.acts[hook.name].shape == full.shape
    np.testing.assert_allclose(batch.acts[hook.name][mask].numpy(), full[mask].numpy(),
                               atol=1e-5)
    assert not batch.acts[hook.name][:, int(blocks.lengths.max()):].any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_statistics_reduced_on_the_gpu_equal_the_cpu_ones():
    acts, tokens, mask = planted_batches(n_blocks=20, seed=5)
    on_cpu = run(acts, tokens, mask)
    on_gpu = run(acts.cuda(), tokens.cuda(), mask.cuda())
    for field in ("firing_count", "block_count", "top_blocks", "top_positions"):
        assert np.array_equal(getattr(on_cpu, field), getattr(on_gpu, field)), field
    for field in ("mean_act", "max_act", "top_acts"):
        np.testing.assert_allclose(getattr(on_cpu, field), getattr(on_gpu, field), rtol=1e-6)
    for a, b in zip(on_cpu.token_counts + on_cpu.block_firings,
                    on_gpu.token_counts + on_gpu.block_firings):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert np.array_equal(on_cpu.cooccurrence.dense(), on_gpu.cooccurrence.dense())
    assert np.array_equal(on_cpu.histogram, on_gpu.histogram)
    for a, b in zip(on_cpu.samples, on_gpu.samples):
        assert np.array_equal(a, b)


def test_firings_kept_per_feature_are_its_best_blocks():
    """Above the size where every firing is kept, each feature keeps its m blocks of highest
    activation (ties to the earlier block), while block counts stay exact."""
    acts, tokens, mask = planted_batches(n_blocks=20, seed=2)
    n_blocks, t, f = acts.shape
    acc = FeatureAccumulator(f, n_blocks, block_size=t, threshold=1.0, n_examples=4,
                             firings_top=3)
    for start in range(0, n_blocks, 3):
        sl = slice(start, start + 3)
        acc.update(start, SparseCodes.from_dense(acts[sl].reshape(-1, f)), tokens[sl], mask[sl])
    stats = acc.result()
    full = run(acts, tokens, mask)
    assert np.array_equal(stats.block_count, full.block_count)
    fb, ff, fa = full.block_firings
    want = set()
    for feature in range(f):
        sel = np.flatnonzero(ff == feature)
        order = sorted(sel, key=lambda x: (-fa[x], fb[x]))[:3]
        want |= {(int(fb[x]), feature) for x in order}
    b, fs, a = stats.block_firings
    assert set(zip(b.tolist(), fs.tolist())) == want
    assert list(zip(b, fs)) == sorted(zip(b, fs))


def splitmix64(x: int) -> int:
    """Steele, Lea & Flood's splitmix64 finaliser, on Python integers."""
    m = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def priority(feature: int, position: int) -> float:
    """The top 24 bits of splitmix64(position) XOR splitmix64(feature + 2^62), in [0, 1)."""
    return ((splitmix64(position) ^ splitmix64(feature + 2**62)) >> 40) / 2**24


def test_sample_priority_is_the_top_bits_of_two_splitmix64_mixes():
    from atlas.harvest import FEATURE_SALT, mix64, sample_priority

    feats = torch.tensor([0, 1, 7, 65_535, 3, 3])
    pos = torch.tensor([0, 0, 123_456, 2**39 - 1, 1, 2])
    got = sample_priority(mix64(feats + FEATURE_SALT), mix64(pos)).numpy()
    want = [priority(f, p) for f, p in zip(feats.tolist(), pos.tolist())]
    np.testing.assert_array_equal(got, np.float32(want))


def positive_entries(acts, mask):
    """(feature, global position, activation) of every positive, counted activation."""
    n_blocks, t, f = acts.shape
    a = (acts * mask[..., None]).reshape(-1, f).numpy()
    pos, feat = np.nonzero(a > 0)
    return feat, pos, a[pos, feat]


def test_histogram_counts_equal_numpy_on_the_log_grid():
    acts, tokens, mask = planted_batches()
    acts[0, :3, 0] = torch.tensor([1e-5, 2e4, 1.0])  # below, above and on an edge
    mask[0, :3] = True
    stats = run(acts, tokens, mask)
    feat, _, val = positive_entries(acts, mask)
    edges = 10.0 ** (np.arange(-30, 41) / 10)          # 10 per decade, 1e-3 .. 1e4
    want = np.zeros_like(stats.histogram)
    for f, v in zip(feat, val):
        want[f, np.searchsorted(edges.astype(np.float32), np.float32(v), side="right")] += 1
    assert np.array_equal(stats.histogram, want)
    assert stats.histogram[0, 0] >= 1 and stats.histogram[0, -1] == 1
    assert stats.histogram.sum() == len(val)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_activations_are_binned_as_their_float32_values(dtype):
    """Every positive finite 16-bit value lands in the bin numpy's search finds for it."""
    from atlas.harvest import HIST_EDGES, HistogramBins

    patterns = torch.arange(1, 1 << 15, dtype=torch.int32).to(torch.int16)
    values = patterns.view(dtype)
    values = values[torch.isfinite(values)]
    got = HistogramBins(torch.device("cpu"))(values).numpy()
    want = np.searchsorted(HIST_EDGES, values.float().numpy(), side="right")
    assert np.array_equal(got, want)
    assert got.min() == 0 and got.max() == len(HIST_EDGES)   # below and above the grid


def test_decile_examples_are_the_highest_priority_entries_of_each_decile():
    """Deciles by the middle of each bin's cumulative share; in each, the `per_decile`
    entries of highest priority (ties to the earlier position), found here by
    brute force over every positive activation."""
    from atlas.harvest import decile_examples

    acts, tokens, mask = planted_batches(n_blocks=20, seed=3)
    stats = run(acts, tokens, mask)
    got = decile_examples(stats.histogram, stats.samples, per_decile=2)
    feat, pos, val = positive_entries(acts, mask)
    edges = np.float32(10.0) ** (np.arange(-30, 41) / np.float32(10))
    bins = np.searchsorted(edges, val.astype(np.float32), side="right")
    prio = np.array([priority(int(f), int(p)) for f, p in zip(feat, pos)])
    n_checked = 0
    for f in range(9):
        counts = np.bincount(bins[feat == f], minlength=stats.histogram.shape[1])
        middle = (np.cumsum(counts) - counts / 2) / counts.sum()
        decile = np.minimum((10 * middle).astype(int), 9)[bins[feat == f]] + 1
        fp, fv, fprio = pos[feat == f], val[feat == f], prio[feat == f]
        for d in range(1, 11):
            sel = np.flatnonzero(decile == d)
            mine = got.feature == f
            rows = np.flatnonzero(mine & (got.decile == d))
            if not len(sel):
                assert not len(rows)
                continue
            best = sel[np.lexsort((fp[sel], -fprio[sel]))][:2]
            assert list(got.position[rows]) == list(fp[best])
            np.testing.assert_array_equal(got.act[rows], fv[best])
            assert np.all((got.act_lo[rows] <= fv[best]) & (fv[best] < got.act_hi[rows]))
            np.testing.assert_allclose(got.share[rows], len(sel) / (feat == f).sum())
            n_checked += 1
    assert n_checked > 30


def test_blocks_run_in_groups_of_similar_length_and_come_back_in_order(tiny_lm):
    """Blocks of many lengths: each window runs in length-sorted groups within the budget,
    and every counted residual equals the block's own pass; batches stay consecutive."""
    import numpy as np
    import torch

    from atlas.corpus import documents_for, tokenize_blocks
    from atlas.harvest import block_lengths, forward_range, length_groups
    from atlas.models import HookPoint, capture_residuals

    texts = [("word " * n).strip() + "." for n in (3, 40, 7, 60, 1, 25, 12, 50, 9, 33)]
    blocks = tokenize_blocks(documents_for(texts), tiny_lm.tokenizer, tokens=5000,
                             block_size=64)
    lengths = block_lengths(torch.from_numpy(blocks.mask)).numpy()
    assert len(set(lengths.tolist())) > 5
    groups = length_groups(lengths, budget=128)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))
    assert all(len(g) * lengths[g].max() <= 128 or len(g) == 1 for g in groups)
    hooks = [HookPoint(1), HookPoint(3)]
    batches = list(forward_range(tiny_lm, blocks.token_ids, blocks.mask, hooks,
                                 batch_blocks=2, window=6, offset=100))
    assert [b.start for b in batches] == list(range(100, 100 + len(lengths), 2))
    for b in batches:
        rows = slice(b.start - 100, b.start - 100 + len(b.token_ids))
        mask = torch.from_numpy(blocks.mask[rows])
        for h in hooks:
            alone = torch.cat([capture_residuals(tiny_lm, torch.from_numpy(
                blocks.token_ids[i:i + 1]), [h])[h.name] for i in range(rows.start, rows.stop)])
            np.testing.assert_allclose(b.acts[h.name][mask].numpy(), alone[mask].numpy(),
                                       rtol=1e-4, atol=1e-4)


def test_bfloat16_residuals_are_encoded_by_a_bfloat16_copy_and_counted_exactly():
    """`sae_dtype` auto: a bfloat16 model's residuals are encoded by a bfloat16 copy of each
    encoder; the counts equal a recount with that copy (and with float32 when asked), the
    SAE keeps its float32 weights, and the two encodings fire on nearly the same tokens."""
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    from atlas import pipeline
    from atlas.corpus import documents_for, tokenize_blocks
    from atlas.harvest import forward_batches
    from atlas.models import HookPoint, load_model
    from atlas.saes import encode_dtype, encoding_copy, sae_input
    from tests.conftest import tiny_config
    from tests.tiny import tiny_model_dir

    lm = load_model(str(tiny_model_dir()), device="cpu", dtype="bfloat16")
    hook = HookPoint(2)
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=lm.d_model, d_sae=96, k=6,
                                metadata=SAEMetadata(hook_name=hook.name))).eval()
    planned = pipeline.AtlasSAE("random/L2", hook, "random", sae)
    text = "The river flows to the sea and a king walks by the old stone bridge. " * 6
    blocks = tokenize_blocks(documents_for([text, text.upper()]), lm.tokenizer, tokens=2000,
                             block_size=32)
    batches = list(forward_batches(lm, blocks, [hook], batch_blocks=4))
    assert batches[0].acts[hook.name].dtype == torch.bfloat16
    fired, top = {}, {}
    for setting, dtype in (("auto", torch.bfloat16), ("float32", torch.float32)):
        assert encode_dtype(setting, torch.bfloat16, torch.float32) == dtype
        config = tiny_config(Path("unused.duckdb"), sae_dtype=setting, threshold=0.5,
                             block_size=32)
        stats, _ = pipeline.harvest(config, [dataclasses.replace(planned, quality=QUALITY)],
                                    iter(batches), n_blocks=blocks.n_blocks)
        copy = encoding_copy(sae, dtype)
        counts = np.zeros(96, np.int64)
        hits = []
        for b in batches:
            x = b.acts[hook.name][b.masks[hook.name]]
            codes = copy.encode(sae_input(copy, x.to(dtype))).float()
            counts += (codes > 0.5).sum(0).numpy()
            hits.append((codes > 0.5).numpy())
        assert np.array_equal(stats[planned.sae_id].firing_count, counts)
        fired[setting] = np.concatenate(hits)
        top[setting] = stats[planned.sae_id].max_act
    assert sae.W_dec.dtype == torch.float32
    agree = (fired["auto"] == fired["float32"]).mean()
    assert agree > 0.99, agree
    assert not np.array_equal(top["auto"], top["float32"])  # two encodings, not one
    np.testing.assert_allclose(top["auto"], top["float32"], rtol=0.05)


def test_a_row_that_is_a_prefix_of_the_next_is_read_from_the_longer_pass(tiny_lm):
    """li2024 rows of one document are prefixes of each other: only the longest runs, and
    every row's counted residuals equal a pass over that row alone."""
    from atlas.corpus import documents_for, tokenize_blocks
    from atlas.harvest import forward_range, prefix_roots
    from atlas.models import HookPoint, capture_residuals

    text = " ".join(["the river flows past the old stone bridge to the sea"] * 40)
    blocks = tokenize_blocks(documents_for([text, text.upper()]), tiny_lm.tokenizer,
                             tokens=10 ** 5, block_size=64, rule="li2024")
    ids = torch.from_numpy(blocks.token_ids)
    roots = prefix_roots(ids, blocks.block_lengths)
    assert len(set(roots.tolist())) == 2 < blocks.n_blocks      # one pass per document
    hook = HookPoint(2)
    got = torch.cat([b.acts[hook.name] for b in forward_range(
        tiny_lm, blocks.token_ids, blocks.mask, [hook], batch_blocks=4)])
    for i in range(blocks.n_blocks):
        n = int(blocks.block_lengths[i])
        alone = capture_residuals(tiny_lm, ids[i:i + 1, :n], [hook])[hook.name][0]
        m = torch.from_numpy(blocks.mask[i, :n])
        np.testing.assert_allclose(got[i, :n][m].numpy(), alone[m].numpy(), atol=1e-4)


def test_a_bfloat16_harvest_from_the_cache_equals_one_from_a_live_pass():
    """The activation cache keeps the model's dtype: harvesting its batches (a trained build)
    and harvesting a live pass (a resumed or loaded build) encode the same residuals the same
    way, so the counts are equal."""
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    from atlas import pipeline
    from atlas.corpus import documents_for, tokenize_blocks
    from atlas.harvest import forward_batches
    from atlas.models import HookPoint, load_model
    from tests.conftest import tiny_config
    from tests.tiny import tiny_model_dir

    lm = load_model(str(tiny_model_dir()), device="cpu", dtype="bfloat16")
    hook = HookPoint(2)
    torch.manual_seed(1)
    sae = TopKSAE(TopKSAEConfig(d_in=lm.d_model, d_sae=64, k=4,
                                metadata=SAEMetadata(hook_name=hook.name))).eval()
    planned = pipeline.AtlasSAE("random/L2", hook, "random", sae, quality=QUALITY)
    text = "A king and a queen walk by the river to the old stone bridge. " * 5
    blocks = tokenize_blocks(documents_for([text, text.lower(), text.upper()]), lm.tokenizer,
                             tokens=2000, block_size=32)
    config = tiny_config(Path("unused.duckdb"), block_size=32, threshold=0.5)
    cache = pipeline.cache_activations(lm, blocks, [hook], batch_blocks=4)
    assert cache.rows[hook.name].dtype == torch.bfloat16
    runs = [cache.batches(4), forward_batches(lm, blocks, [hook], batch_blocks=4)]
    cached, live = (pipeline.harvest(config, [planned], b, n_blocks=blocks.n_blocks)[0]
                    [planned.sae_id] for b in runs)
    assert np.array_equal(cached.firing_count, live.firing_count)
    assert np.array_equal(cached.histogram, live.histogram)
    np.testing.assert_array_equal(cached.max_act, live.max_act)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_codes_selected_by_their_bits_are_the_k_largest_positive_values(dtype):
    # distinct integers (exact in 16 bits), so the k largest are one set; the second row has
    # fewer than k positive values and the third none, whose places come back as non-positive
    g = torch.Generator().manual_seed(0)
    pre = torch.stack([torch.randperm(200, generator=g) - 100,
                       torch.randperm(200, generator=g) - 195,
                       -torch.randperm(200, generator=g) - 1]).to(dtype)
    values, indices = topk_codes(pre, 16)
    assert torch.equal(values, pre.gather(1, indices))
    for row, want in enumerate([set(range(84, 100)), {1, 2, 3, 4}, set()]):
        kept = {int(v) for v in values[row] if v > 0}
        assert kept == want
        # and the same columns a float32 top-k picks
        ref_v, ref_i = pre[row].float().topk(16)
        assert {int(i) for i, v in zip(indices[row], values[row]) if v > 0} == {
            int(i) for i, v in zip(ref_i, ref_v) if v > 0}


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.sampled_from([16, 64, 96, 100, 256, 1000, 1003]), st.integers(1, 40),
       st.integers(1, 50), st.integers(0, 2**31 - 1))
def test_group_topk_takes_the_k_largest_keys_with_ties(rows, width, k, spread, seed):
    # keys from a small range, so equal keys at the k-th place are the rule; the k keys
    # taken must be the k largest as a multiset (which of equal ones is free), from k
    # distinct columns
    k = min(k, width)
    g = torch.Generator().manual_seed(seed)
    keys = torch.randint(-spread, spread + 1, (rows, width), generator=g, dtype=torch.int16)
    columns = group_topk(keys, k)
    assert columns.shape == (rows, k)
    for row in range(rows):
        assert len(set(columns[row].tolist())) == k
        got = keys[row, columns[row]].sort().values
        assert torch.equal(got, keys[row].sort().values[-k:])


@given(st.lists(st.integers(0, 5), max_size=40))
def test_run_rank_is_the_place_within_each_run(values):
    f = torch.tensor(sorted(values), dtype=torch.int64)
    want = [i - sorted(values).index(v) for i, v in enumerate(sorted(values))]
    assert run_rank(f).tolist() == want
