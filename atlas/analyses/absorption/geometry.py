"""Feature absorption on the first-letter task (Chanin et al., "A is for Absorption").

Inputs are arrays: the residual activation at each word's token, the word's first letter, the
SAE's codes at those activations and its decoder. Per letter:

1. a logistic-regression probe on the residuals (one letter against the rest, trained on the
   training words, F1 on the held-out words);
2. the SAE's main latents for the letter by k-sparse probing: latents ranked by how much more
   they fire on the letter's words, a probe on the top k for k = 1..K; k grows while the held-out
   F1 jumps by more than `f1_jump`, and every latent added that way is a split of the letter;
3. on held-out words of the letter that the probe gets right, absorption: the main latents stay
   silent and other latents carry the probe direction instead. Per word, the absorption fraction
   is the share of the probe projection carried by up to three non-main latents aligned with the
   probe (partial absorption counts); full absorption is one latent, aligned with the probe,
   carrying at least `share` of it while every main latent is silent.

Rates are per letter: the mean absorption fraction and the share of fully absorbed words.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from jaxtyping import Bool, Float, Int
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from atlas.geometry.vectors import unit

LETTERS = "abcdefghijklmnopqrstuvwxyz"
EPS = 1e-8


@dataclass(frozen=True)
class AbsorptionSettings:
    """Thresholds (the published metric's defaults) and probe settings, recorded with a run."""

    max_k: int = 10
    """k-sparse probes over the SAE's latents for k = 1..max_k."""

    f1_jump: float = 0.03
    """A latent counts as a split when adding it raises the k-sparse probe's F1 by more."""

    full_cos: float = 0.025
    """Full absorption: the absorbing latent's decoder cosine with the probe is at least this."""

    fraction_cos: float = 0.1
    """Absorption fraction: decoder cosine with the probe of each counted absorbing latent."""

    share: float = 0.4
    """Absorbing latents must carry this share of the probe projection."""

    max_absorbers: int = 3
    """Latents that may share the absorption of one word."""

    min_probe_f1: float = 0.6
    """Letters whose residual probe is weaker are reported but not scored."""

    min_words: int = 5
    """Held-out words of a letter needed to score it."""

    probe_c: float = 1.0
    """Inverse L2 strength of the residual probes."""

    seed: int = 0
    """Seed of the word split and the probes."""


@dataclass
class LetterResult:
    letter: str
    n_train: int                 # training words starting with the letter
    n_test: int                  # held-out words starting with the letter
    probe_f1: float
    probe_precision: float
    probe_recall: float
    probe: Float[np.ndarray, " d"]        # unit probe direction
    f1_by_k: list[float]                  # k-sparse probe F1 for k = 1..max_k
    ranked: list[int]                     # latents in k-sparse order (first max_k)
    main_latents: list[int]               # the first 1 + n_split of `ranked`
    main_cos: list[float]                 # their decoder cosine with the probe
    n_split: int
    n_true_positives: int                 # held-out letter words the probe gets right
    scored: bool                          # probe good enough and enough words
    absorption_rate: float | None
    full_absorption_rate: float | None
    n_full: int


@dataclass
class WordResult:
    letter: str
    word: int                    # index into the input rows
    probe_projection: float
    main_activation: float       # sum of the main latents' activations
    absorber: int                # latent with the largest projection on the probe
    absorber_activation: float
    absorber_cos: float
    absorber_share: float        # its projection / the residual's probe projection
    absorption_fraction: float
    full: bool


@dataclass
class AbsorptionResult:
    letters: list[LetterResult] = field(default_factory=list)
    words: list[WordResult] = field(default_factory=list)


def split_words(labels: Int[np.ndarray, " n"], test_fraction: float = 0.2, *,
                seed: int = 0) -> Bool[np.ndarray, " n"]:
    """Training mask, stratified by letter (every letter keeps words on both sides when it
    has at least two)."""
    rng = np.random.default_rng(seed)
    train = np.ones(len(labels), dtype=bool)
    for letter in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == letter))
        n_test = round(len(rows) * test_fraction)
        if len(rows) >= 2:
            n_test = min(max(n_test, 1), len(rows) - 1)
        train[rows[:n_test]] = False
    return train


def fit_probe(x: Float[np.ndarray, "n d"], y: Bool[np.ndarray, " n"], *, c: float = 1.0,
              seed: int = 0) -> tuple[np.ndarray, float]:
    """A balanced logistic-regression probe: (weights, intercept)."""
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=1000, random_state=seed)
    model.fit(x, y.astype(np.int64))
    return model.coef_[0].astype(np.float64), float(model.intercept_[0])


def rank_latents(codes: Float[np.ndarray, "n m"], y: Bool[np.ndarray, " n"],
                 top: int) -> Int[np.ndarray, " top"]:
    """Latents by mean activation on the letter's words minus on the rest (those that fire
    *for* the letter come first)."""
    gap = codes[y].mean(0) - codes[~y].mean(0)
    order = np.argsort(-gap, kind="stable")
    return order[:top]


def k_sparse_f1(codes_train, y_train, codes_test, y_test, ranked: np.ndarray,
                *, seed: int = 0) -> list[float]:
    """Held-out F1 of a probe on the top-k ranked latents, k = 1..len(ranked)."""
    scores = []
    for k in range(1, len(ranked) + 1):
        cols = ranked[:k]
        xtr, xte = codes_train[:, cols], codes_test[:, cols]
        if y_train.all() or not y_train.any():
            scores.append(0.0)
            continue
        model = LogisticRegression(class_weight="balanced", max_iter=500, random_state=seed)
        model.fit(xtr, y_train.astype(np.int64))
        scores.append(float(f1_score(y_test, model.decision_function(xte) > 0,
                                     zero_division=0.0)))
    return scores


def count_splits(f1_by_k: list[float], jump: float) -> int:
    """Latents added while F1 keeps rising by more than `jump`: the main latents are the first
    1 + this many."""
    best, n = -np.inf, 0
    for k, score in enumerate(f1_by_k, start=1):
        if score > best + jump:
            best, n = score, k
        else:
            break
    return max(n - 1, 0)


def absorption_fraction(proj: Float[np.ndarray, " m"], probe_projection: float, main: list[int],
                        cos: Float[np.ndarray, " m"], s: AbsorptionSettings) -> float:
    """The share of a nonzero probe projection carried by up to `max_absorbers` non-main
    latents with cosine >= `fraction_cos` instead of the main latents (0 when the main latents
    carry it all or the absorbers carry less than `share`), given each latent's projection."""
    main_proj = float(proj[main].sum())
    others = np.ones(len(proj), dtype=bool)
    others[main] = False
    candidates = np.sort(proj[others & (cos >= s.fraction_cos) & (proj > 0)])[::-1]
    absorbed = float(candidates[:s.max_absorbers].sum())
    if main_proj >= probe_projection or absorbed / probe_projection < s.share:
        return 0.0
    if main_proj <= 0:
        return 1.0
    taken = min(absorbed, probe_projection - main_proj)
    return float(np.clip(taken / (taken + main_proj), 0.0, 1.0))


def word_absorption(acts: Float[np.ndarray, " m"], probe_projection: float,
                    main: list[int], along: Float[np.ndarray, " m"], cos: Float[np.ndarray, " m"],
                    s: AbsorptionSettings) -> tuple[float, bool, int, float]:
    """(absorption fraction, full absorption, top-projecting latent, its share) for one word.

    `along` is each decoder row's projection on the unit probe direction (so a latent adds
    activation * along to the reconstruction's probe projection); `cos` the rows' cosines."""
    proj = acts * along
    fraction = (0.0 if probe_projection <= 0 else
                absorption_fraction(proj, probe_projection, main, cos, s))
    top = int(np.argmax(proj))
    top_share = float(proj[top] / probe_projection) if probe_projection > 0 else 0.0
    full = bool(probe_projection > 0 and np.all(acts[main] < EPS) and cos[top] >= s.full_cos
                and top_share >= s.share)
    return fraction, full, top, top_share


def absorption(resid: Float[np.ndarray, "n d"], labels: Int[np.ndarray, " n"],
               codes: Float[np.ndarray, "n m"], decoder: Float[np.ndarray, "m d"],
               train: Bool[np.ndarray, " n"], settings: AbsorptionSettings = AbsorptionSettings(),
               *, offset: Float[np.ndarray, " d"] | None = None) -> AbsorptionResult:
    """Probe F1, main latents, splits and absorption rates per letter present in `labels`
    (0 = 'a' … 25 = 'z'), plus the per-word results of the scored letters' true positives.

    The SAE accounts for `resid - offset` (its decoder bias; the training mean if None), so the
    probe projection compared with the latents' is measured from there."""
    s = settings
    resid = np.asarray(resid, dtype=np.float64)
    codes = np.asarray(codes, dtype=np.float64)
    unit_dec = unit(decoder, eps=EPS)
    # Probes see standardised residuals; their weights are mapped back to a direction in the
    # residual space so that cosines with decoder rows mean what they say.
    mu, sd = resid[train].mean(0), resid[train].std(0) + 1e-6
    z = (resid - mu) / sd
    test = ~train
    centred = resid - (resid[train].mean(0) if offset is None else np.asarray(offset, float))
    decoder = np.asarray(decoder, dtype=np.float64)
    out = AbsorptionResult()
    for li in np.unique(labels):
        y = labels == li
        if y[train].sum() < 1 or y[test].sum() < 1 or (~y[train]).sum() < 1:
            continue
        w, b = fit_probe(z[train], y[train], c=s.probe_c, seed=s.seed)
        pred = z[test] @ w + b > 0
        f1 = float(f1_score(y[test], pred, zero_division=0.0))
        tp = test & y & (z @ w + b > 0)
        prec = float(pred[y[test]].sum() / max(pred.sum(), 1))
        rec = float(pred[y[test]].mean())
        direction = w / sd
        direction /= max(np.linalg.norm(direction), EPS)
        ranked = rank_latents(codes[train], y[train], s.max_k)
        f1_by_k = k_sparse_f1(codes[train], y[train], codes[test], y[test], ranked, seed=s.seed)
        n_split = count_splits(f1_by_k, s.f1_jump)
        main = [int(i) for i in ranked[:1 + n_split]]
        cos = unit_dec @ direction
        along = decoder @ direction
        scored = f1 >= s.min_probe_f1 and int(y[test].sum()) >= s.min_words and tp.any()
        fractions, n_full = [], 0
        if scored:
            for row in np.flatnonzero(tp):
                pp = float(centred[row] @ direction)
                frac, full, top, share = word_absorption(codes[row], pp, main, along, cos, s)
                fractions.append(frac)
                n_full += full
                out.words.append(WordResult(
                    letter=LETTERS[li], word=int(row), probe_projection=pp,
                    main_activation=float(codes[row, main].sum()), absorber=top,
                    absorber_activation=float(codes[row, top]), absorber_cos=float(cos[top]),
                    absorber_share=share, absorption_fraction=frac, full=full))
        out.letters.append(LetterResult(
            letter=LETTERS[li], n_train=int(y[train].sum()), n_test=int(y[test].sum()),
            probe_f1=f1, probe_precision=prec, probe_recall=rec, probe=direction,
            f1_by_k=f1_by_k, ranked=[int(i) for i in ranked], main_latents=main,
            main_cos=[float(cos[i]) for i in main], n_split=n_split,
            n_true_positives=int(tp.sum()), scored=bool(scored),
            absorption_rate=float(np.mean(fractions)) if scored else None,
            full_absorption_rate=n_full / len(fractions) if scored else None, n_full=n_full))
    return out


# SAEBench's definition (adamkarvonen/SAEBench, sae_bench/evals/absorption/), the default.
#
# Differences from the atlas variant above: the residual probe is one 26-way one-vs-rest linear
# probe on raw residuals (trained with Adam, not per letter on standardised residuals); the main
# latents come from an L1-regularised probe over all latents (top-k weights, then a logistic
# regression on those k), not from a mean-activation ranking; a latent's share of the probe
# projection is activation x cosine(decoder row, probe), against the raw residual's projection
# (the atlas variant uses the decoder row as stored and subtracts b_dec); letters count when their
# probe F1 > 0.6, and an SAE is evaluated only with at least 20 such letters.

SAEBENCH_MIN_LETTERS = 20
"""Letters with probe F1 above `min_probe_f1` an SAE needs before SAEBench evaluates it."""


@dataclass(frozen=True)
class ProbeTraining:
    """How SAEBench trains its linear probes (BCE with per-class positive weights, Adam, learning
    rate decayed exponentially from `lr` to `end_lr` over the epochs)."""

    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-2
    end_lr: float = 1e-5
    weight_decay: float = 1e-4
    l1: float = 0.0
    """L1 penalty: l1 x the mean over probes of the sum of |weights| (k-sparse probes: 0.01)."""


RESIDUAL_PROBE = ProbeTraining()
"""The 26-way residual probe (SAEBench's `train_linear_probe_for_task` via
`train_and_save_probes`: batch 64, 50 epochs, lr 0.01, weight decay 1e-4)."""
SPARSE_PROBE = ProbeTraining(batch_size=4096, weight_decay=1e-6, l1=0.01)
"""The L1 probe over SAE latents (`train_sparse_multi_probe`: batch 4096, 50 epochs, lr 0.01,
weight decay 1e-6, L1 0.01)."""


def train_multi_probe(x, labels: Int[np.ndarray, " n"], n_classes: int, training: ProbeTraining,
                      *, seed: int = 0, encode=None) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest logistic probes for every class at once: (weights (classes, d), biases).

    `x` is a float tensor or array (n, d_in); `encode` maps a batch of it to the probe's inputs
    (SAE latents), so latents need not be held for every word at once."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.nn.functional.one_hot(torch.as_tensor(labels), n_classes).float()
    pos = y.sum(0)
    pos_weight = (len(y) - pos) / pos.clamp(min=1)
    with torch.no_grad():
        d = (encode(x[:1]) if encode else x[:1]).shape[-1]
    probe = torch.nn.Linear(d, n_classes)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probe.reset_parameters()
    opt = torch.optim.Adam(probe.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    gamma = np.exp(np.log(training.end_lr / training.lr) / training.epochs)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    for _ in range(training.epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), training.batch_size):
            rows = order[start:start + training.batch_size]
            xb = x[rows]
            if encode is not None:
                with torch.no_grad():
                    xb = encode(xb)
            opt.zero_grad()
            loss = loss_fn(probe(xb), y[rows])
            if training.l1:
                loss = loss + training.l1 * probe.weight.abs().sum(-1).mean()
            loss.backward()
            opt.step()
        sched.step()
    return (probe.weight.detach().double().numpy(), probe.bias.detach().double().numpy())


def saebench_splits(f1_by_k: list[float], ranked: list[int], jump: float) -> list[int]:
    """SAEBench's `add_feature_splits_to_metrics_df`: the latents of the last k whose F1 rose
    by more than `jump` over the best before it, stopping at the first k that does not."""
    best, feats = -100.0, []
    for k, score in enumerate(f1_by_k, start=1):
        if score > best + jump:
            best, feats = score, ranked[:k]
        else:
            break
    return [int(f) for f in feats]


def saebench_word(acts: Float[np.ndarray, " m"], probe_projection: float, main: list[int],
                  cos: Float[np.ndarray, " m"], s: AbsorptionSettings
                  ) -> tuple[float, bool, int, float]:
    """SAEBench's `FeatureAbsorptionCalculator.calculate_absorption` for one word: (absorption
    fraction, full absorption, top-projecting latent, its share of the probe projection).

    A latent's probe projection is its activation x its decoder row's cosine with the probe;
    `probe_projection` is the raw residual's projection on the unit probe."""
    proj = acts * cos
    if probe_projection == 0:  # SAEBench divides by it; no projection, nothing absorbed
        return 0.0, False, int(np.argmax(proj)), 0.0
    fraction = absorption_fraction(proj, probe_projection, main, cos, s)
    top = int(np.argmax(proj))
    share = float(proj[top] / probe_projection)
    full = bool(np.all(acts[main] < EPS) and cos[top] >= s.full_cos and probe_projection >= 0
                and share >= s.share)
    return fraction, full, top, share


def saebench_f1(y: Bool[np.ndarray, " n"], scores: Float[np.ndarray, " n"]) -> tuple[float, ...]:
    """(F1, precision, recall) of `scores > 0` against `y`."""
    from sklearn.metrics import precision_score, recall_score

    pred = scores > 0
    return (float(f1_score(y, pred, zero_division=0.0)),
            float(precision_score(y, pred, zero_division=0.0)),
            float(recall_score(y, pred, zero_division=0.0)))


def saebench_k_sparse(codes_train, y_train, codes_test, y_test, weights: np.ndarray, max_k: int
                      ) -> tuple[list[int], list[float]]:
    """Latents by the L1 probe's weight for the letter (largest first, not by magnitude), and the
    held-out F1 of a balanced logistic regression on the top k of them, k = 1..max_k."""
    ranked = [int(i) for i in np.argsort(-weights, kind="stable")[:max_k]]
    f1s = []
    for k in range(1, max_k + 1):
        cols = ranked[:k]
        model = LogisticRegression(max_iter=500, class_weight="balanced")
        model.fit(codes_train[:, cols], y_train.astype(np.int64))
        f1s.append(float(f1_score(y_test, model.decision_function(codes_test[:, cols]) > 0,
                                  zero_division=0.0)))
    return ranked, f1s


def saebench_absorption(probe: tuple[np.ndarray, np.ndarray], resid: Float[np.ndarray, "n d"],
                        labels: Int[np.ndarray, " n"], train: Bool[np.ndarray, " n"], encode,
                        decoder: Float[np.ndarray, "m d"], absorbed: Int[np.ndarray, " t"],
                        absorbed_resid: Float[np.ndarray, "t d"],
                        settings: AbsorptionSettings = AbsorptionSettings(),
                        sparse_training: ProbeTraining = SPARSE_PROBE) -> AbsorptionResult:
    """SAEBench's absorption of one SAE, per letter present in `labels`.

    `probe` is the 26-way residual probe (weights, biases) trained on `resid[train]`; `encode`
    maps residuals (n, d) to the SAE's latents; `absorbed` are the rows (held-out words the
    probe scores above 0 for their own letter) whose residuals in fresh prompts are
    `absorbed_resid` — the words absorption is measured on."""
    s = settings
    w, b = probe
    test = ~train
    latents_train = encode(resid[train])
    latents_test = encode(resid[test])
    sparse_w, _ = train_multi_probe(latents_train, labels[train], 26, sparse_training,
                                    seed=s.seed)
    scores = resid[test] @ w.T + b
    unit_dec = unit(np.asarray(decoder, np.float64), eps=EPS)
    abs_latents = encode(absorbed_resid) if len(absorbed) else np.zeros((0, len(decoder)))
    out = AbsorptionResult()
    for li in np.unique(labels):
        y_test = labels[test] == li
        f1, prec, rec = saebench_f1(y_test, scores[:, li])
        ranked, f1_by_k = saebench_k_sparse(latents_train, labels[train] == li, latents_test,
                                            y_test, sparse_w[li], s.max_k)
        main = saebench_splits(f1_by_k, ranked, s.f1_jump)
        direction = w[li] / max(np.linalg.norm(w[li]), EPS)
        cos = unit_dec @ direction
        mine = np.flatnonzero(labels[absorbed] == li)
        fractions, n_full = [], 0
        for j in mine:
            pp = float(absorbed_resid[j] @ direction)
            frac, full, top, share = saebench_word(abs_latents[j], pp, main, cos, s)
            fractions.append(frac)
            n_full += full
            out.words.append(WordResult(
                letter=LETTERS[li], word=int(absorbed[j]), probe_projection=pp,
                main_activation=float(abs_latents[j, main].sum()), absorber=top,
                absorber_activation=float(abs_latents[j, top]), absorber_cos=float(cos[top]),
                absorber_share=share, absorption_fraction=frac, full=full))
        scored = f1 > s.min_probe_f1 and len(mine) > 0
        n_tp = len(mine)
        out.letters.append(LetterResult(
            letter=LETTERS[li], n_train=int((labels[train] == li).sum()),
            n_test=int(y_test.sum()), probe_f1=f1, probe_precision=prec, probe_recall=rec,
            probe=direction, f1_by_k=f1_by_k, ranked=ranked, main_latents=main,
            main_cos=[float(cos[i]) for i in main], n_split=max(len(main) - 1, 0),
            n_true_positives=n_tp, scored=bool(scored),
            absorption_rate=float(np.sum(fractions)) / n_tp if n_tp else None,
            full_absorption_rate=n_full / n_tp if n_tp else None, n_full=n_full))
    return out
