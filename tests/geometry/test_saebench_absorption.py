"""SAEBench's absorption (adamkarvonen/SAEBench, sae_bench/evals/absorption/): the per-word
formulas, the split rule and the aggregation against transcriptions of the reference, and the
whole metric on a planted SAE."""

import numpy as np
import pytest

from atlas.analyses.absorption import geometry as ab

S = ab.AbsorptionSettings()


def _reference_word(sae_acts, act_probe_proj, main_ids, cos_sims):
    """`FeatureAbsorptionCalculator.calculate_absorption`, one word, transcribed."""
    proj = sae_acts * cos_sims
    main_proj = proj[main_ids].sum()
    mask = np.ones(len(proj), bool)
    mask[main_ids] = False
    mask &= cos_sims >= 0.1
    mask &= proj > 0
    top3 = np.sort(proj[mask])[::-1][:3].sum()
    if main_proj >= act_probe_proj or top3 / act_probe_proj < 0.4:
        fraction = 0.0
    elif main_proj <= 0.0:
        fraction = 1.0
    else:
        absorbed = min(top3, act_probe_proj - main_proj)
        fraction = np.clip(absorbed / (absorbed + main_proj), 0.0, 1.0)
    top = np.argsort(-proj, kind="stable")[0]
    full = (all(sae_acts[main_ids] < 1e-8) and cos_sims[top] >= 0.025
            and not act_probe_proj < 0 and proj[top] / act_probe_proj >= 0.4)
    return fraction, full


def test_word_absorption_equals_the_reference_transcription():
    rng = np.random.default_rng(0)
    seen = set()
    for trial in range(400):
        m = 30
        acts = np.maximum(rng.normal(size=m), 0) * (rng.random(m) < 0.4)
        cos = rng.uniform(-0.3, 0.9, m)
        main = sorted(rng.choice(m, rng.integers(1, 3), replace=False).tolist())
        if trial % 3 == 0:
            acts[main] = 0
        pp = float(rng.uniform(-0.5, 3))
        want = _reference_word(acts, pp, main, cos)
        frac, full, top, share = ab.saebench_word(acts, pp, main, cos, S)
        assert frac == pytest.approx(want[0], abs=1e-6) and full == want[1]
        assert share == pytest.approx(acts[top] * cos[top] / pp, abs=1e-6)
        seen.add((0 < frac < 1, frac == 1, full))
    assert len(seen) >= 4  # partial, total and full absorption all occurred


def test_split_rule_equals_the_reference():
    """`add_feature_splits_to_metrics_df`: the k whose F1 last jumped by more than 0.03."""
    ranked = [5, 9, 2, 7]
    assert ab.saebench_splits([0.5, 0.52, 0.9, 0.95], ranked, 0.03) == [5]
    assert ab.saebench_splits([0.5, 0.6, 0.65, 0.66], ranked, 0.03) == [5, 9, 2]
    assert ab.saebench_splits([0.0, 0.0, 0.0, 0.0], ranked, 0.03) == [5]


def test_planted_absorption_is_found_by_the_saebench_metric():
    """Letters on orthogonal directions; one latent per letter; for 'a', a marker direction
    silences the letter's latent and lights an absorbing latent (decoder = letter + marker) on a
    few words. SAEBench's metric finds each letter's latent as its main latent and exactly the
    marked held-out words the probe reads as absorbed."""
    rng = np.random.default_rng(1)
    d, per = 40, 60
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    letters, marker = basis[:26], basis[26]
    # 'a' has many words and few marked ones, so the absorbing latent adds too little F1 to
    # count as a split (SAEBench's 0.03 jump).
    labels = np.concatenate([np.zeros(400, int), np.repeat(np.arange(1, 26), per)])
    marked = np.zeros(len(labels), bool)
    marked[np.flatnonzero(labels == 0)[::100]] = True
    resid = 3 * letters[labels] + 3 * marker * marked[:, None] + 0.05 * rng.normal(
        size=(len(labels), d))
    enc = np.vstack([letters, 2 * marker - 0.5 * letters[0]])
    enc[0] -= 2 * marker
    decoder = np.vstack([letters, (letters[0] + marker) / np.sqrt(2)])

    def encode(x):
        return np.maximum(np.asarray(x) @ enc.T, 0)

    train = np.zeros(len(labels), bool)
    train[np.random.default_rng(2).permutation(len(labels))[:int(0.8 * len(labels))]] = True
    marked[np.flatnonzero((labels == 0) & ~train)[:2]] = True  # two marked held-out words
    resid[marked] = 3 * letters[0] + 3 * marker + 0.05 * rng.normal(size=(marked.sum(), d))
    probe = ab.train_multi_probe(resid[train], labels[train], 26, ab.RESIDUAL_PROBE)
    test = np.flatnonzero(~train)
    own = (resid[test] @ probe[0].T + probe[1])[np.arange(len(test)), labels[test]]
    absorbed = test[own > 0]
    # SAEBench's L1 probe takes one step per 4,096 words and epoch; on 1,520 words that is 50
    # steps in all, too few to leave the initial weights: smaller batches, same objective.
    sparse = ab.ProbeTraining(batch_size=64, weight_decay=1e-6, l1=0.01)
    result = ab.saebench_absorption(probe, resid, labels, train, encode, decoder, absorbed,
                                    resid[absorbed], S, sparse)
    by_letter = {r.letter: r for r in result.letters}
    assert all(r.probe_f1 > 0.9 for r in result.letters)
    assert [by_letter[c].main_latents for c in "abcz"] == [[0], [1], [2], [25]]
    a = by_letter["a"]
    hit = {w.word for w in result.words if w.letter == "a" and w.full}
    assert hit == set(np.flatnonzero(marked & ~train & np.isin(np.arange(len(labels)),
                                                               absorbed)))
    assert len(hit) >= 2
    assert a.absorption_rate == pytest.approx(len(hit) / a.n_true_positives)
    assert all(r.absorption_rate == 0 for r in result.letters if r.letter != "a")
