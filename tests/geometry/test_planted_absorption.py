"""Absorption on planted data: a synthetic SAE where 'starts with s' is absorbed, on a known set
of short words, by token latents of those words; a clean SAE of the same data; and a letter
split over two latents."""

import numpy as np
import pytest

from atlas.analyses.absorption import geometry as ab

D = 64
LETTERS = {"a": 0, "b": 1, "s": 18, "t": 19}
PER_LETTER = 400
GROUP = 4            # short s-words per absorbing token latent


def _unit(v):
    return v / np.linalg.norm(v)


def planted(absorbed: bool, seed: int = 0):
    """Words of four letters, half of them 'short'. Residual = 3 * letter direction + short
    direction (if short) + a token direction (short s-words) + noise.

    Latents: one per letter (t split in two: short t and long t), 'short', and one token latent
    per group of short s-words. In the absorbed SAE the s latent is silent on short s-words and
    their token latent's decoder carries the s direction instead."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(D, D)))[0]
    letter_dir = {c: basis[i] for i, c in enumerate(LETTERS)}
    short_dir = basis[4]
    labels = np.repeat([LETTERS[c] for c in LETTERS], PER_LETTER)
    n = len(labels)
    short = rng.random(n) < 0.5
    s_short = np.flatnonzero((labels == LETTERS["s"]) & short)
    n_groups = int(np.ceil(len(s_short) / GROUP))
    token_dirs = np.array([_unit(v) for v in rng.normal(size=(n_groups, D))])
    group = np.full(n, -1)
    group[s_short] = np.arange(len(s_short)) // GROUP

    resid = np.zeros((n, D))
    for c, i in LETTERS.items():
        resid[labels == i] += 3 * letter_dir[c]
    resid[short] += short_dir
    resid[s_short] += token_dirs[group[s_short]]
    resid += rng.normal(scale=0.05, size=resid.shape)

    # latents: a, b, s, t_short, t_long, short, then token latents
    lat = {"a": 0, "b": 1, "s": 2, "t_short": 3, "t_long": 4, "short": 5}
    m = 6 + n_groups
    decoder = np.zeros((m, D))
    codes = np.zeros((n, m))
    for c in ("a", "b", "s"):
        decoder[lat[c]] = letter_dir[c]
        codes[labels == LETTERS[c], lat[c]] = 3
    decoder[lat["t_short"]] = decoder[lat["t_long"]] = letter_dir["t"]
    is_t = labels == LETTERS["t"]
    codes[is_t & short, lat["t_short"]] = 3
    codes[is_t & ~short, lat["t_long"]] = 3
    decoder[lat["short"]] = short_dir
    codes[short, lat["short"]] = 1
    if absorbed:
        full = 3 * letter_dir["s"] + short_dir + token_dirs
        decoder[6:] = full / np.linalg.norm(full, axis=1, keepdims=True)
        codes[s_short, lat["s"]] = 0
        codes[s_short, lat["short"]] = 0
        codes[s_short, 6 + group[s_short]] = np.linalg.norm(full[group[s_short]], axis=1)
    else:
        decoder[6:] = token_dirs
        codes[s_short, 6 + group[s_short]] = 1
    return resid, labels, codes, decoder, short, lat


@pytest.mark.parametrize("absorbed", [True, False])
def test_planted_absorption_rate(absorbed):
    resid, labels, codes, decoder, short, lat = planted(absorbed)
    train = ab.split_words(labels, 0.2, seed=0)
    out = ab.absorption(resid, labels, codes, decoder, train, offset=np.zeros(D))
    by = {r.letter: r for r in out.letters}
    assert set(by) == set(LETTERS)
    for r in by.values():
        assert r.probe_f1 > 0.95 and r.scored
    s = by["s"]
    assert s.main_latents == [lat["s"]] and s.n_split == 0
    # the known answer: the share of the s-words the probe gets right that are short
    tp = np.array([w.word for w in out.words if w.letter == "s"])
    assert len(tp) == s.n_true_positives > 0
    expected = short[tp].mean() if absorbed else 0.0
    assert 0.3 < short[tp].mean() < 0.7
    assert s.full_absorption_rate == pytest.approx(expected, abs=1e-9)
    assert s.absorption_rate == pytest.approx(expected, abs=0.02)
    absorbers = {w.absorber for w in out.words if w.letter == "s" and w.full}
    assert absorbers <= set(range(6, decoder.shape[0]))
    for c in ("a", "b", "t"):
        assert by[c].full_absorption_rate == 0 and by[c].absorption_rate < 0.02


def test_split_letter_has_two_main_latents():
    resid, labels, codes, decoder, _, lat = planted(False)
    train = ab.split_words(labels, 0.2, seed=0)
    t = {r.letter: r for r in ab.absorption(resid, labels, codes, decoder, train).letters}["t"]
    assert t.n_split == 1
    assert sorted(t.main_latents) == [lat["t_short"], lat["t_long"]]
    assert t.f1_by_k[1] - t.f1_by_k[0] > 0.03


def test_count_splits_follows_the_jump_rule():
    assert ab.count_splits([0.5, 0.6, 0.61, 0.9], 0.03) == 1
    assert ab.count_splits([0.9, 0.91, 0.95], 0.03) == 0
    assert ab.count_splits([0.2, 0.4, 0.6, 0.8], 0.03) == 3


def test_probe_f1_matches_sklearn_on_the_same_split():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    resid, labels, codes, decoder, *_ = planted(True, seed=3)
    resid = resid + np.random.default_rng(1).normal(scale=1.5, size=resid.shape)
    train = ab.split_words(labels, 0.2, seed=0)
    out = ab.absorption(resid, labels, codes, decoder, train)
    mu, sd = resid[train].mean(0), resid[train].std(0) + 1e-6
    z = (resid - mu) / sd
    for r in out.letters:
        y = labels == ord(r.letter) - ord("a")
        clf = LogisticRegression(class_weight="balanced", max_iter=1000).fit(z[train], y[train])
        assert r.probe_f1 == pytest.approx(f1_score(y[~train], clf.predict(z[~train])),
                                           abs=1e-9)


def test_split_words_is_stratified():
    labels = np.repeat(np.arange(5), [10, 2, 50, 1, 7])
    train = ab.split_words(labels, 0.2, seed=0)
    for letter, count in zip(range(5), [10, 2, 50, 1, 7]):
        held = (~train & (labels == letter)).sum()
        assert held == (0 if count == 1 else max(1, round(count * 0.2)))
