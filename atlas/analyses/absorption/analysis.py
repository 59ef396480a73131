"""Absorption, per SAE: the first-letter task (Chanin et al.). Letter probes on residuals,
each letter's main latents by k-sparse probing over the SAE's latents, and the rate at which
they stay silent on words their letter's probe reads while another latent carries the probe
direction.

Two definitions, chosen with `--definition` and recorded as the run's `definition`:

- `saebench` (default): SAEBench's metric (adamkarvonen/SAEBench, `sae_bench/evals/absorption/`).
  Vocabulary: every alphabetic token, with or without a leading space; each word is read at its
  last token in its own prompt (BOS, 10 random in-context examples from its side of an 80/20
  split, then "{word} has the first letter:"); a 26-way probe on raw residuals; main latents
  from an L1-regularised probe over the SAE's latents; shares = activation x decoder cosine with
  the probe; absorption re-measured in fresh prompts on the held-out words the probe gets right.
- `atlas`: whole words only (' word'), three fixed examples kept in the key/value cache (one
  token of forward pass per word), per-letter probes on standardised residuals, latents ranked
  by their mean-activation gap, and shares = activation x the decoder row's projection against
  the residual minus b_dec — shares of the reconstruction's own probe projection, which stay
  right when decoder rows are not unit norm.

The residuals of every hook the SAEs read come from the same passes, shared by all SAEs of a
run. Tables: `absorption_tasks`, `absorption_letters`, `absorbed_words`; views `absorption`,
`absorption_by_sae`, `absorbed_examples`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import torch

from atlas.analyses.runner import Inputs, Output, Subject
from atlas.errors import AtlasError
from atlas.analyses.absorption import geometry as ab
from atlas.models import HookPoint, LoadedModel, capture_residuals
from atlas.progress import Progress
from atlas.saes import check_width, hook_of, sae_input

NAME = "absorption"
DEFINITION = "saebench"
TABLES = ("absorption_tasks", "absorption_letters", "absorbed_words")
NEEDS_MODEL = True

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings(ab.AbsorptionSettings):
    """The first-letter task's vocabulary and split, and the metric's thresholds."""

    definition: Literal["saebench", "atlas"] = "saebench"
    """SAEBench's metric, or the atlas variant (see the module's description)."""

    words: int = 0
    """Vocabulary tokens to use, drawn evenly at random (0: all of them)."""

    icl_examples: int = 10
    """In-context examples in each word's prompt (saebench)."""

    min_letters: int = ab.SAEBENCH_MIN_LETTERS
    """Letters with probe F1 above --min-probe-f1 an SAE needs to be evaluated (saebench)."""

    test_fraction: float = 0.2
    """Share of the words held out for probe F1, k-sparse F1 and absorption."""

    batch_size: int = 64
    """Words per forward batch."""

    shared_examples: int = 1
    """Words whose prompts share one draw of in-context examples (saebench): the examples run
    once and stay in the key/value cache, and each word costs one token on top. Every prompt is
    still a uniform draw from its side of the split without the word; 1 draws per word, as
    SAEBench does."""

    def __post_init__(self) -> None:
        if self.words < 0 or self.max_k < 1 or not 0 < self.test_fraction < 1 or \
                self.icl_examples < 1 or self.min_letters < 1 or self.shared_examples < 1:
            raise AtlasError("--words must be >= 0, --max-k, --icl-examples, --min-letters and "
                             "--shared-examples >= 1, and --test-fraction in (0, 1)")


BUILD = {"words": 6000, "shared_examples": 32}
"""`atlas build` measures absorption on 6,000 vocabulary tokens drawn at random, groups of 32
words sharing their prompts' examples (both recorded in the run's params and its prompt);
`atlas absorption` uses every token, each in a prompt of its own."""


def definition(settings: Settings) -> str:
    """The definition a run with these settings computes."""
    return settings.definition


TEMPLATE = "{word} has the first letter:"
EXAMPLES = ("tartan", "mirth", "orbit")


@dataclass(frozen=True)
class Vocabulary:
    token_ids: np.ndarray     # one token per word
    words: list[str]
    labels: np.ndarray        # 0 = 'a' … 25 = 'z'


ALPHA = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def first_letter_vocabulary(tokenizer, *, n_words: int | None = None, seed: int = 0,
                            style: Literal["saebench", "atlas"] = "atlas") -> Vocabulary:
    """The tokenizer's alphabetic tokens, at most `n_words` of them drawn evenly at random.

    `saebench`: every token whose text, after one optional leading space, is one or more ASCII
    letters (SAEBench's `get_alpha_tokens`); `words` keep their leading space. `atlas`: whole
    words only (' word', two letters or more); `words` without the space."""
    special = set(tokenizer.all_special_ids)
    ids, words = [], []
    for tid in range(len(tokenizer)):
        if tid in special:
            continue
        text = tokenizer.decode([tid])
        if style == "saebench":
            bare = text[1:] if text.startswith(" ") else text
            if bare and all(c in ALPHA for c in bare):
                ids.append(tid)
                words.append(text)
            continue
        word = text[1:]
        if text.startswith(" ") and len(word) >= 2 and word.isascii() and word.isalpha():
            ids.append(tid)
            words.append(word)
    if not ids:
        raise AtlasError("the tokenizer has no alphabetic tokens; the first-letter task needs a "
                         "vocabulary of words")
    order = np.arange(len(ids))
    if n_words is not None and n_words < len(ids):
        order = np.sort(np.random.default_rng(seed).choice(len(ids), n_words, replace=False))
    return Vocabulary(token_ids=np.array([ids[i] for i in order]),
                      words=[words[i] for i in order],
                      labels=np.array([ord(words[i].strip()[0].lower()) - ord("a")
                                       for i in order]))


def icl_prompt(word: str, examples: list[str], template: str = TEMPLATE) -> str:
    """SAEBench's `create_icl_prompt` (separator prepended, as its calculator does): each
    example with its answer (' ' + its first letter, capitalised), one per line, then the word."""
    lines = [template.format(word=e) + " " + e.strip()[0].upper() for e in examples]
    return "\n" + "\n".join(lines) + "\n" + template.format(word=word)


def icl_prompts(words: list[str], pool: np.ndarray, n_examples: int,
                rng: np.random.Generator, all_words: list[str]) -> list[str]:
    """One prompt per word, its examples drawn without replacement from `all_words[pool]`,
    redrawn while they contain the word itself."""
    out = []
    for word in words:
        k = min(n_examples, len(pool) - 1)
        for _ in range(1000):
            picked = [all_words[i] for i in rng.choice(pool, k, replace=False)]
            if word not in picked:
                break
        out.append(icl_prompt(word, picked))
    return out


def icl_prefix(examples: list[str], template: str = TEMPLATE) -> str:
    """`icl_prompt` up to the word: the separator and the examples, one per line."""
    return icl_prompt("", examples, template)[:-len(template.format(word=""))]


def example_groups(members: np.ndarray, pool: np.ndarray, n_examples: int, group: int,
                   rng: np.random.Generator, all_words: list[str]
                   ) -> list[tuple[np.ndarray, str]]:
    """The words `members` in random groups of `group`, each with one prompt prefix whose
    examples are drawn without replacement from `all_words[pool]` minus the group's words."""
    order = rng.permutation(members)
    out = []
    for start in range(0, len(order), group):
        rows = order[start:start + group]
        candidates = np.setdiff1d(pool, rows)
        picked = rng.choice(candidates, min(n_examples, len(candidates)), replace=False)
        out.append((rows, icl_prefix([all_words[i] for i in picked])))
    return out


@torch.no_grad()
def grouped_residuals(lm: LoadedModel, groups: list[tuple[np.ndarray, str]],
                      token_ids: np.ndarray, n_rows: int, hooks: list[HookPoint], *,
                      progress: bool = True) -> dict[str, np.ndarray]:
    """Residual at each word of each group, read in its group's prompt: BOS and the prefix run
    once (stopping after the deepest hook), the key/value cache is repeated for the group's
    words, and each word is one more token: its own token id, which is what the word is. The
    template's tail after the word cannot change the word's residual (causal attention), so
    it is not run. Returns {hook name: (n_rows, d)}, row r for the word `token_ids[r]`."""
    from transformers import DynamicCache

    tok = lm.tokenizer
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    out = {h.name: np.zeros((n_rows, lm.d_model), dtype=np.float32) for h in hooks}
    bar = Progress("first-letter prompts", total=sum(len(r) for r, _ in groups), unit="word",
                   enabled=progress)
    for rows, prefix in groups:
        ids = ([bos] if bos is not None else []) + tok(prefix, add_special_tokens=False).input_ids
        cache = DynamicCache()
        capture_residuals(lm, torch.tensor([ids]), hooks, past_key_values=cache)
        cache.batch_repeat_interleave(len(rows))
        words = torch.as_tensor(token_ids[rows], dtype=torch.long).view(-1, 1)
        acts = capture_residuals(lm, words, hooks, past_key_values=cache)
        for name, x in acts.items():
            out[name][rows] = x[:, -1].float().cpu().numpy()
        bar.update(len(rows))
    bar.close()
    return out


@torch.no_grad()
def prompt_residuals(lm: LoadedModel, prompts: list[str], hooks: list[HookPoint], *,
                     template: str = TEMPLATE, batch_size: int = 64,
                     progress: bool = True) -> dict[str, np.ndarray]:
    """Residual at each prompt's word (the token before the template's tail, as SAEBench reads
    position -6 for its template), per hook: {hook name: (n_prompts, d)}. Each prompt starts
    with BOS; prompts of equal length run together, so nothing is padded."""
    tok = lm.tokenizer
    tail = len(tok(template.split("{word}", 1)[1], add_special_tokens=False).input_ids)
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    ids = [([bos] if bos is not None else []) + tok(p, add_special_tokens=False).input_ids
           for p in prompts]
    groups = defaultdict(list)
    for i, row in enumerate(ids):
        groups[len(row)].append(i)
    out = {h.name: np.zeros((len(prompts), lm.d_model), dtype=np.float32) for h in hooks}
    batches = [rows[j:j + batch_size] for rows in groups.values()
               for j in range(0, len(rows), batch_size)]
    bar = Progress("first-letter prompts", total=len(prompts), unit="prompt",
                   enabled=progress)
    for rows in batches:
        acts = capture_residuals(lm, torch.tensor([ids[i] for i in rows]), hooks)
        for name, x in acts.items():
            out[name][rows] = x[:, -1 - tail].float().cpu().numpy()
        bar.update(len(rows))
    bar.close()
    return out


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
    bar = Progress("first-letter words", total=n, unit="word",
                   enabled=progress)
    for start in range(0, n, width):
        batch = token_ids[start:start + width]
        padded = np.concatenate([batch, np.full(width - len(batch), batch[-1])])
        acts = capture_residuals(lm, torch.as_tensor(padded).view(width, 1), hooks,
                                 past_key_values=cache)
        cache.crop(-1)  # back to the examples alone
        for name, x in acts.items():
            out[name][start:start + len(batch)] = x[:len(batch), -1].float().cpu().numpy()
        bar.update(len(batch))
    bar.close()
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
                "full_absorption_rate": r.full_absorption_rate, "n_full": r.n_full,
                "probe_direction": np.asarray(r.probe, np.float64).tolist()}
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
                          ("full_absorption_rate", pa.float64()), ("n_full", pa.int32()),
                          ("probe_direction", pa.list_(pa.float64()))])
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
    """What every SAE of a run is scored on: the words, their split, and their residuals; for
    SAEBench's definition also each hook's residual probe and the held-out words it gets right,
    read again in fresh prompts."""

    vocab: Vocabulary
    train: np.ndarray
    resid: dict[str, np.ndarray]
    setup_seconds: float
    probes: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    absorbed: dict[str, np.ndarray] | None = None
    """Per hook: rows of held-out words whose probe score for their letter is above 0."""
    absorbed_resid: dict[str, np.ndarray] | None = None
    prompt: str = ""

    def saebench(self, hook: str) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]:
        """(probe, absorbed rows, their residuals) at a hook: SAEBench's inputs."""
        if self.probes is None or self.absorbed is None or self.absorbed_resid is None:
            raise ValueError("this task was prepared for the atlas's definition, not SAEBench's")
        return self.probes[hook], self.absorbed[hook], self.absorbed_resid[hook]


def subjects(inputs: Inputs, settings: Settings) -> list[Subject]:
    """One run per SAE. Transcoders are left out: the metric compares decoder rows with a
    probe of the space the SAE reads, and a transcoder's decoder writes another (its MLP
    output)."""
    transcoders = {r[0] for r in inputs.con.execute(
        "SELECT sae_id FROM saes WHERE hook_out IS NOT NULL AND sae_id IN (SELECT unnest(?))",
        [list(inputs.sae_ids)]).fetchall()}
    if transcoders:
        log.info("absorption leaves out the transcoders %s: their decoders write the MLP "
                 "output, not the space the probes read", ", ".join(sorted(transcoders)))
    return [Subject(s, (s,)) for s in inputs.sae_ids if s not in transcoders]


def prepare(inputs: Inputs, subjects: list[Subject], settings: Settings) -> Task:
    """The vocabulary, its split, and the residuals at every hook the SAEs read (one pass)."""
    lm = inputs.lm
    saes = inputs.saes([s.sae_ids[0] for s in subjects])
    for sid, sae in saes.items():
        check_width(sae, lm.d_model, sid)
    t0 = time.perf_counter()
    hooks = sorted({hook_of(sae) for sae in saes.values()}, key=lambda h: (h.layer, h.where))
    if settings.definition == "saebench":
        task = saebench_task(lm, hooks, settings)
    else:
        vocab = first_letter_vocabulary(lm.tokenizer, n_words=settings.words or None,
                                        seed=settings.seed)
        resid = word_residuals(lm, vocab.token_ids, hooks, batch_size=settings.batch_size)
        train = ab.split_words(vocab.labels, settings.test_fraction, seed=settings.seed)
        task = Task(vocab, train, resid, 0.0, prompt=prompt_prefix() + " {word}")
    setup = time.perf_counter() - t0
    log.info("first-letter task (%s): %d words (%d held out), residuals at %d hooks in %.1fs",
             settings.definition, len(task.vocab.words), int((~task.train).sum()), len(hooks),
             setup)
    return dataclasses.replace(task, setup_seconds=setup)


def saebench_task(lm: LoadedModel, hooks: list[HookPoint], settings: Settings) -> Task:
    """SAEBench's task: the vocabulary split 80/20 at random, each word in its own prompt with
    examples from its side of the split, one 26-way residual probe per hook, and the held-out
    words each probe gets right read again in prompts with examples from the whole vocabulary."""
    vocab = first_letter_vocabulary(lm.tokenizer, n_words=settings.words or None,
                                    seed=settings.seed, style="saebench")
    n = len(vocab.words)
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(n)
    n_train = int(n * (1 - settings.test_fraction))
    train = np.zeros(n, dtype=bool)
    train[order[:n_train]] = True
    pools = {True: np.flatnonzero(train), False: np.flatnonzero(~train)}
    shared = settings.shared_examples
    if shared > 1:
        groups = [g for pool in pools.values() for g in example_groups(
            pool, pool, settings.icl_examples, shared, rng, vocab.words)]
        resid = grouped_residuals(lm, groups, vocab.token_ids, n, hooks)
    else:
        prompts: list[str] = [""] * n
        for pool in pools.values():
            made = icl_prompts([vocab.words[i] for i in pool], pool, settings.icl_examples,
                               rng, vocab.words)
            for i, p in zip(pool, made):
                prompts[i] = p
        resid = prompt_residuals(lm, prompts, hooks, batch_size=settings.batch_size)
    probes, absorbed = {}, {}
    test = np.flatnonzero(~train)
    for h in hooks:
        x = resid[h.name]
        probes[h.name] = ab.train_multi_probe(x[train], vocab.labels[train], 26,
                                              ab.RESIDUAL_PROBE, seed=settings.seed)
        w, b = probes[h.name]
        own = (x[test] @ w.T + b)[np.arange(len(test)), vocab.labels[test]]
        absorbed[h.name] = test[own > 0]
    again = np.unique(np.concatenate(list(absorbed.values())))
    if shared > 1:
        groups = example_groups(again, np.arange(n), settings.icl_examples, shared, rng,
                                vocab.words)
        fresh_resid = {h: x[again] for h, x in grouped_residuals(
            lm, groups, vocab.token_ids, n, hooks).items()}
    else:
        fresh = icl_prompts([vocab.words[i] for i in again], np.arange(n),
                            settings.icl_examples, rng, vocab.words)
        fresh_resid = prompt_residuals(lm, fresh, hooks, batch_size=settings.batch_size)
    where = {int(r): j for j, r in enumerate(again)}
    absorbed_resid = {h: fresh_resid[h][[where[int(r)] for r in rows]]
                      for h, rows in absorbed.items()}
    prompt = icl_prompt("{word}", ["<example>"] * settings.icl_examples)
    if shared > 1:
        prompt += f"  [examples shared by groups of {shared} words]"
    return Task(vocab, train, resid, 0.0, probes, absorbed, absorbed_resid, prompt=prompt)


def compute(inputs: Inputs, subject: Subject, settings: Settings, task: Task) -> Output:
    """Probes, main latents and absorption of one SAE on the prepared task."""
    (sid,) = subject.sae_ids
    sae = inputs.saes([sid])[sid]
    hook = hook_of(sae).name
    x = task.resid[hook]
    decoder = sae.W_dec.detach().float().cpu().numpy()
    if settings.definition == "saebench":
        probe, absorbed, absorbed_resid = task.saebench(hook)
        result = ab.saebench_absorption(probe, x, task.vocab.labels, task.train,
                                        lambda r: sae_codes(sae, r), decoder,
                                        absorbed, absorbed_resid, settings)
    else:
        result = ab.absorption(x, task.vocab.labels, sae_codes(sae, x), decoder, task.train,
                               settings, offset=sae.b_dec.detach().float().cpu().numpy())
    tables = run_tables(sid, task.vocab, result)
    setup = {"sae_id": sid, "n_words": len(task.vocab.words), "n_train": int(task.train.sum()),
             "n_test": int((~task.train).sum()), "prompt": task.prompt,
             "setup_seconds": task.setup_seconds,
             "min_letters": settings.min_letters if settings.definition == "saebench" else 1}
    return Output({"absorption_tasks": pa.Table.from_pylist([setup]), **tables},
                  {"sae_id": sid, "definition": settings.definition})


def summarize(con, summary: dict) -> dict:
    """The stored run's means over letters, read from the view `absorption_by_sae`, so logs,
    the CLI and the app show one number."""
    cur = con.execute("SELECT letters_scored, evaluated, mean_probe_f1, mean_absorption_rate, "
                      "mean_full_absorption_rate, mean_split_features FROM absorption_by_sae "
                      "WHERE run_id = ?", [summary["run_id"]])
    row = cur.fetchone() or (0, False, None, None, None, None)
    return {**summary, **dict(zip([d[0] for d in cur.description], row))}


def describe(s: dict) -> str:
    verdict = "" if s["evaluated"] else " (too few to evaluate the SAE)"
    return (f"{s['letters_scored']} letters scored{verdict}, probe F1 "
            f"{_fmt(s['mean_probe_f1'])}, absorption {_fmt(s['mean_absorption_rate'])}, full "
            f"{_fmt(s['mean_full_absorption_rate'])}, split features "
            f"{_fmt(s['mean_split_features'])}")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
