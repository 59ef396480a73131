"""Absorption, per SAE: the first-letter task (Chanin et al.). Letter probes on residuals,
each letter's main latents by k-sparse probing over the SAE's latents, and the rate at which
they stay silent on words their letter's probe reads while another latent carries the probe
direction.

Words are the vocabulary's alphabetic tokens that start with a space (whole words). Each word is
read at its own token after a few in-context examples of the task; the examples are computed
once and kept in the model's key/value cache, so each word costs one token of forward pass. The
residuals of every hook the SAEs read come from the same pass, shared by all SAEs of a run.
Tables: `absorption_tasks`, `absorption_letters`, `absorbed_words`; views `absorption`,
`absorption_by_sae`, `absorbed_examples`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from atlas.analyses.runner import Inputs, Output, Subject
from atlas.errors import AtlasError
from atlas.geometry import absorption as ab
from atlas.models import HookPoint, LoadedModel, capture_residuals
from atlas.saes import check_width, hook_of, sae_input

NAME = "absorption"
DEFINITION = "atlas"
TABLES = ("absorption_tasks", "absorption_letters", "absorbed_words")
NEEDS_MODEL = True
ORDER = 50

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings(ab.AbsorptionSettings):
    """The first-letter task's vocabulary and split, and the metric's thresholds."""

    words: int = 6000
    """Whole-word vocabulary tokens to use, drawn evenly at random (0: all of them)."""

    test_fraction: float = 0.2
    """Share of the words held out for probe F1, k-sparse F1 and absorption."""

    batch_size: int = 64
    """Words per forward batch."""

    def __post_init__(self) -> None:
        if self.words < 0 or self.max_k < 1 or not 0 < self.test_fraction < 1:
            raise AtlasError("--words must be >= 0, --max-k >= 1 and --test-fraction in (0, 1)")


TEMPLATE = "{word} has the first letter:"
EXAMPLES = ("tartan", "mirth", "orbit")


@dataclass(frozen=True)
class Vocabulary:
    token_ids: np.ndarray     # one token per word
    words: list[str]
    labels: np.ndarray        # 0 = 'a' … 25 = 'z'


def first_letter_vocabulary(tokenizer, *, n_words: int | None = None,
                            seed: int = 0) -> Vocabulary:
    """The tokenizer's whole-word alphabetic tokens (' word', two letters or more), at most
    `n_words` of them drawn evenly at random."""
    special = set(tokenizer.all_special_ids)
    ids, words = [], []
    for tid in range(len(tokenizer)):
        if tid in special:
            continue
        text = tokenizer.decode([tid])
        word = text[1:]
        if text.startswith(" ") and len(word) >= 2 and word.isascii() and word.isalpha():
            ids.append(tid)
            words.append(word)
    if not ids:
        raise AtlasError("the tokenizer has no whole-word alphabetic tokens; the first-letter "
                         "task needs a vocabulary of words")
    order = np.arange(len(ids))
    if n_words is not None and n_words < len(ids):
        order = np.sort(np.random.default_rng(seed).choice(len(ids), n_words, replace=False))
    return Vocabulary(token_ids=np.array([ids[i] for i in order]),
                      words=[words[i] for i in order],
                      labels=np.array([ord(words[i][0].lower()) - ord("a") for i in order]))


def prompt_prefix(examples: tuple[str, ...] = EXAMPLES, template: str = TEMPLATE) -> str:
    """In-context examples of the task; each word follows a space, as the evaluated words do."""
    return "".join(" " + template.format(word=w) + f" {w[0].upper()}\n" for w in examples)


@torch.no_grad()
def word_residuals(lm: LoadedModel, token_ids: np.ndarray, hooks: list[HookPoint], *,
                   prefix: str | None = None, batch_size: int = 64,
                   progress: bool = True) -> dict[str, np.ndarray]:
    """Residual at each word's token after `prefix`, per hook: {hook name: (n_words, d)}.

    The prefix runs once per batch width and stays in the key/value cache; a batch of words is
    one token each on top of it."""
    from transformers import DynamicCache

    prefix_ids = lm.tokenizer(prefix if prefix is not None else prompt_prefix(),
                              add_special_tokens=False, return_tensors="pt").input_ids
    n = len(token_ids)
    width = min(batch_size, n)
    cache = DynamicCache()
    capture_residuals(lm, prefix_ids.expand(width, -1), hooks, past_key_values=cache)
    out = {h.name: np.zeros((n, lm.d_model), dtype=np.float32) for h in hooks}
    bar = {} if progress else {"disable": True}  # TQDM_DISABLE applies when progress is on
    for start in tqdm(range(0, n, width), desc="first-letter words", unit="batch", **bar):
        batch = token_ids[start:start + width]
        padded = np.concatenate([batch, np.full(width - len(batch), batch[-1])])
        acts = capture_residuals(lm, torch.as_tensor(padded).view(width, 1), hooks,
                                 past_key_values=cache)
        cache.crop(-1)  # back to the examples alone
        for name, x in acts.items():
            out[name][start:start + len(batch)] = x[:len(batch), -1].float().cpu().numpy()
    return out


@torch.no_grad()
def sae_codes(sae, resid: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Dense SAE activations of `resid`, in batches."""
    dev = next(sae.parameters()).device
    parts = [sae.encode(sae_input(sae, torch.as_tensor(resid[i:i + batch], device=dev)))
             .float().cpu().numpy()
             for i in range(0, len(resid), batch)]
    return np.concatenate(parts)


def run_tables(sae_id: str, vocab: Vocabulary,
               result: ab.AbsorptionResult) -> dict[str, pa.Table]:
    """The result as rows of `absorption_letters` and `absorbed_words`."""
    letters = [{"sae_id": sae_id, "letter": r.letter, "n_train": r.n_train,
                "n_test": r.n_test, "probe_f1": r.probe_f1, "probe_precision": r.probe_precision,
                "probe_recall": r.probe_recall, "f1_by_k": r.f1_by_k,
                "main_latents": r.main_latents, "main_cos": r.main_cos, "n_split": r.n_split,
                "n_true_positives": r.n_true_positives, "scored": r.scored,
                "absorption_rate": r.absorption_rate,
                "full_absorption_rate": r.full_absorption_rate, "n_full": r.n_full}
               for r in result.letters]
    words = [{"sae_id": sae_id, "letter": w.letter,
              "token_id": int(vocab.token_ids[w.word]), "word": vocab.words[w.word],
              "probe_projection": w.probe_projection, "main_activation": w.main_activation,
              "absorber": w.absorber, "absorber_activation": w.absorber_activation,
              "absorber_cos": w.absorber_cos, "absorber_share": w.absorber_share,
              "absorption_fraction": w.absorption_fraction, "full": w.full}
             for w in result.words]
    schema_l = pa.schema([("sae_id", pa.string()),
                          ("letter", pa.string()), ("n_train", pa.int32()),
                          ("n_test", pa.int32()), ("probe_f1", pa.float64()),
                          ("probe_precision", pa.float64()), ("probe_recall", pa.float64()),
                          ("f1_by_k", pa.list_(pa.float64())),
                          ("main_latents", pa.list_(pa.int32())),
                          ("main_cos", pa.list_(pa.float64())), ("n_split", pa.int32()),
                          ("n_true_positives", pa.int32()), ("scored", pa.bool_()),
                          ("absorption_rate", pa.float64()),
                          ("full_absorption_rate", pa.float64()), ("n_full", pa.int32())])
    schema_w = pa.schema([("sae_id", pa.string()),
                          ("letter", pa.string()), ("token_id", pa.int32()),
                          ("word", pa.string()), ("probe_projection", pa.float64()),
                          ("main_activation", pa.float64()), ("absorber", pa.int32()),
                          ("absorber_activation", pa.float64()),
                          ("absorber_cos", pa.float64()), ("absorber_share", pa.float64()),
                          ("absorption_fraction", pa.float64()), ("full", pa.bool_())])
    return {"absorption_letters": pa.Table.from_pylist(letters, schema=schema_l),
            "absorbed_words": pa.Table.from_pylist(words, schema=schema_w)}


@dataclass(frozen=True)
class Task:
    """What every SAE of a run is scored on: the words, their split, and their residuals."""

    vocab: Vocabulary
    train: np.ndarray
    resid: dict[str, np.ndarray]
    setup_seconds: float


def subjects(inputs: Inputs, settings: Settings) -> list[Subject]:
    """One run per SAE."""
    return [Subject(s, (s,)) for s in inputs.sae_ids]


def prepare(inputs: Inputs, subjects: list[Subject], settings: Settings) -> Task:
    """The vocabulary, its split, and the residuals at every hook the SAEs read (one pass)."""
    lm = inputs.lm
    saes = inputs.saes([s.sae_ids[0] for s in subjects])
    for sid, sae in saes.items():
        check_width(sae, lm.d_model, sid)
    t0 = time.perf_counter()
    vocab = first_letter_vocabulary(lm.tokenizer, n_words=settings.words or None,
                                    seed=settings.seed)
    hooks = sorted({hook_of(sae) for sae in saes.values()}, key=lambda h: (h.layer, h.where))
    resid = word_residuals(lm, vocab.token_ids, hooks, batch_size=settings.batch_size)
    train = ab.split_words(vocab.labels, settings.test_fraction, seed=settings.seed)
    setup = time.perf_counter() - t0
    log.info("first-letter task: %d words (%d held out), residuals at %d hooks in %.1fs",
             len(vocab.words), int((~train).sum()), len(hooks), setup)
    return Task(vocab, train, resid, setup)


def compute(inputs: Inputs, subject: Subject, settings: Settings, task: Task) -> Output:
    """Probes, main latents and absorption of one SAE on the prepared task."""
    (sid,) = subject.sae_ids
    sae = inputs.saes([sid])[sid]
    x = task.resid[hook_of(sae).name]
    result = ab.absorption(x, task.vocab.labels, sae_codes(sae, x),
                           sae.W_dec.detach().float().cpu().numpy(), task.train, settings,
                           offset=sae.b_dec.detach().float().cpu().numpy())
    tables = run_tables(sid, task.vocab, result)
    setup = {"sae_id": sid, "n_words": len(task.vocab.words), "n_train": int(task.train.sum()),
             "n_test": int((~task.train).sum()), "prompt": prompt_prefix() + " {word}",
             "setup_seconds": task.setup_seconds}
    return Output({"absorption_tasks": pa.Table.from_pylist([setup]), **tables},
                  {"sae_id": sid})


def summarize(con, summary: dict) -> dict:
    """The stored run's means over letters, read from the view `absorption_by_sae`, so logs,
    the CLI and the app show one number."""
    cur = con.execute("SELECT letters_scored, mean_probe_f1, mean_absorption_rate, "
                      "mean_full_absorption_rate, mean_n_split FROM absorption_by_sae "
                      "WHERE sae_id = ?", [summary["sae_id"]])
    row = cur.fetchone() or (0, None, None, None, None)
    return {**summary, **dict(zip([d[0] for d in cur.description], row))}


def describe(s: dict) -> str:
    return (f"{s['letters_scored']} letters scored, probe F1 {_fmt(s['mean_probe_f1'])}, "
            f"absorption {_fmt(s['mean_absorption_rate'])}, full "
            f"{_fmt(s['mean_full_absorption_rate'])}, splits {_fmt(s['mean_n_split'])}")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
