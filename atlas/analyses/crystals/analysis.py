"""Crystals (small scale), per residual hook the SAEs read.

- li2024, the paper's experiment: pair differences (object minus subject, words fed as the
  paper's script feeds them), one class per task, LDA silhouettes by number of components
  (`crystal_lda`), and the paper's two pictures (`crystal_differences`).
- atlas: which word representation to use, chosen on fitting pairs and reported on held-out
  pairs (`word_representations`); per task parallelogram quality and held-out analogy top-1 /
  top-5 before and after distractor removal (`crystal_tasks`), in the residual stream and in
  the code space of the hook's SAE; crystal quadruples found by matching pair differences, with
  how often they are pairs of one relation against chance (`crystals`, `distractors`).
Views: `crystal_quality`, `word_representation_quality`, `crystal_separation`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from atlas.analyses.runner import Inputs, Output, Subject
from atlas.analyses.crystals import geometry as cr
from atlas.models import HookPoint
from atlas.saes import sae_input

if TYPE_CHECKING:
    from atlas.words import WordVectors

NAME = "crystals"
DEFINITION = "li2024"
"""`crystal_lda` follows the paper; the analogy, distractor and search tables are the atlas's
(labeled `atlas` in their rows' `definition`)."""
TABLES = ("crystal_tasks", "crystals", "distractors", "crystal_points", "crystal_lda",
          "crystal_differences", "word_representations")
NEEDS_MODEL = True


@dataclass(frozen=True)
class Settings:
    """Parameters of the crystal analysis, recorded with every run."""

    representation: str = "auto"
    """How words are fed (bare, bos, eos, li2024), or 'auto': the best top-1 on the fitting
    pairs at this hook."""

    distractor_dims: int = -1
    """Distractor directions projected out; -1 chooses among 0..32 inside the fitting pairs."""

    max_crystals: int = 50
    """Crystal quadruples kept per space (smallest crystal error first)."""

    max_words: int = 240
    """Words entering the crystal search: the words of held-out pairs drawn at random (whole
    pairs, seeded) until this many."""

    seed: int = 0
    """Seed of the fitting / held-out split of each task's pairs and of the search sample."""


def subjects(inputs: Inputs, settings: Settings) -> list[Subject]:
    """One run per residual hook the chosen SAEs read ('blocks.L.hook_resid_post' is block
    L's output, '..._pre' its input); the hook's first SAE adds its code space."""
    rows = inputs.con.execute("SELECT s.sae_id, s.hook, s.model_id FROM saes s WHERE s.sae_id "
                              "IN (SELECT unnest(?)) AND s.hook_out IS NULL "  # residual hooks
                              "ORDER BY s.layer, s.hook, s.sae_id",
                              [list(inputs.sae_ids)]).fetchall()
    first: dict[tuple[str, str], str] = {}
    for sae_id, hook, model_id in rows:
        first.setdefault((model_id, hook), sae_id)
    return [Subject(f"{model_id}/{hook}", (sae_id,), HookPoint.parse(hook))
            for (model_id, hook), sae_id in first.items()]


def hidden_state(hook: HookPoint) -> int:
    """The index of this residual point in Hugging Face's `output_hidden_states` (what the
    paper's scripts call layer L): hidden_states[L] is block L's input."""
    return hook.layer + (1 if hook.where == "post" else 0)


def prepare(inputs: Inputs, subjects: list[Subject], settings: Settings
            ) -> dict[str, dict[str, WordVectors]]:
    """The task words at every subject's hook, one model pass per word representation:
    {representation: {hook name: WordVectors}}."""
    from atlas.words import REPRESENTATIONS, word_vectors_at

    words = cr.task_words(cr.word_pair_tasks())
    hooks = list({s.point.name: s.point for s in subjects}.values())
    return {r: word_vectors_at(inputs.lm, hooks, words, representation=r)
            for r in REPRESENTATIONS}


def compute(inputs: Inputs, subject: Subject, settings: Settings,
            shared: dict[str, dict[str, WordVectors]]) -> Output:
    """Crystals at one residual point: the paper's LDA experiment, the choice of word
    representation, and analogies, distractors and crystals in the residual stream and in the
    SAE's code space when it can be loaded."""
    lm, hook = inputs.lm, subject.point
    tasks = cr.word_pair_tasks()
    train, test = cr.split_pairs(tasks, seed=settings.seed)
    words = cr.task_words(tasks)
    base = {"model_id": lm.model_id, "layer": hook.layer, "hook": hook.name}
    readings = {r: by_hook[hook.name] for r, by_hook in shared.items()}
    as_dict = {r: dict(zip(words, wv.vectors.astype(np.float64))) for r, wv in readings.items()}

    lda_rows, diff_rows = _paper_experiment(as_dict["li2024"], tasks, test, base,
                                            hidden_state(hook))

    rep_rows, removals = [], {}
    for r, vectors in as_dict.items():
        fit_top1 = cr.mean_score(cr.analogy_scores(vectors, train, cr.task_words(train)))
        counts = {w: len(p) for w, p in zip(words, readings[r].pieces)}
        removal = removals[r] = cr.remove_distractors(vectors, train, test, token_counts=counts,
                                                      seed=settings.seed, n_dims=_dims(settings))
        rep_rows.append({**base, "definition": "atlas", "representation": r,
                         "fit_top1": fit_top1,
                         "distractor_dims": removal.n_dims,
                         "top1_before": cr.mean_score(removal.before),
                         "top5_before": cr.mean_score(removal.before, "top5"),
                         "top1_after": cr.mean_score(removal.after),
                         "top5_after": cr.mean_score(removal.after, "top5"),
                         "n_queries": sum(s.n_queries for s in removal.before.values())})
    chosen = settings.representation
    if chosen == "auto":
        chosen = max(rep_rows, key=lambda row: row["fit_top1"])["representation"]
    for row in rep_rows:
        row["chosen"] = row["representation"] == chosen

    wv = readings[chosen]
    spaces = {"residual": as_dict[chosen]}
    sae_id = subject.sae_ids[0]
    sae = inputs.saes_available().get(sae_id)
    if sae is not None:
        with torch.no_grad():
            x = sae_input(sae, torch.from_numpy(wv.vectors).to(sae.W_dec.device))
            codes = sae.encode(x).float().cpu().numpy()
        # Only features active on some task word carry information here.
        codes = codes[:, np.abs(codes).sum(0) > 0]
        spaces[sae_id] = dict(zip(words, codes.astype(np.float64)))
    token_counts = {w: len(p) for w, p in zip(words, wv.pieces)}

    task_rows, crystal_rows, distractor_rows, point_rows = [], [], [], []
    search_words = cr.sample_words(test, settings.max_words, seed=settings.seed)
    chance = cr.same_relation_chance(search_words, test)
    for space, vectors in spaces.items():
        # The residual space's removal is the chosen representation's, computed above.
        removal = removals[chosen] if space == "residual" else cr.remove_distractors(
            vectors, train, test, token_counts=token_counts, seed=settings.seed,
            n_dims=_dims(settings))
        cleaned = cr.project_out(vectors, removal.directions)
        row = {**base, "definition": "atlas", "space": space, "representation": chosen}
        for task, pairs in tasks.items():
            before = cr.task_layout(vectors, pairs)
            after = cr.task_layout(vectors, pairs, removal.directions)
            for n, (word, side) in enumerate((w, s) for p in pairs for w, s in zip(p, "ab")):
                point_rows.append({**row, "task": task, "pair": n // 2, "side": side,
                                   "word": word, "x_before": before[n, 0],
                                   "y_before": before[n, 1], "x_after": after[n, 0],
                                   "y_after": after[n, 1]})
            a = np.stack([vectors[p[0]] for p in pairs])
            b = np.stack([vectors[p[1]] for p in pairs])
            s0, s1 = removal.before[task], removal.after[task]
            task_rows.append({**row, "task": task, "n_pairs": len(pairs),
                              "parallelogram_quality": cr.parallelogram_quality(a, b),
                              "accuracy_before": s0.top1, "accuracy_after": s1.top1,
                              "top5_before": s0.top5, "top5_after": s1.top5,
                              "n_queries": s0.n_queries})
        rates = {}
        for stage, space_vectors in (("before", vectors), ("after", cleaned)):
            found = cr.find_crystals({w: space_vectors[w] for w in search_words},
                                     max_words=settings.max_words, limit=settings.max_crystals,
                                     seed=settings.seed)
            relations = [cr.crystal_relation(c, test) for c in found]
            rates[stage] = float(np.mean([r is not None for r in relations])) if found \
                else float("nan")
            for rank, (c, rel) in enumerate(zip(found, relations)):
                crystal_rows.append({**row, "stage": stage, "rank": rank, "a": c.a, "b": c.b,
                                     "c": c.c, "d": c.d, "crystal_error": c.crystal_error,
                                     "parallelogram_error": c.parallelogram_error,
                                     "trapezoid_error": c.trapezoid_error, "relation": rel})
        distractor_rows.append({**row, "distractor_dims": removal.n_dims,
                                "silhouette_before": removal.silhouette_before,
                                "silhouette_after": removal.silhouette_after,
                                "length_corr": removal.length_corr,
                                "token_corr": removal.token_corr,
                                "same_relation_before": rates["before"],
                                "same_relation_after": rates["after"],
                                "same_relation_chance": chance})
    tables = {"crystal_tasks": task_rows, "crystals": crystal_rows,
              "distractors": distractor_rows, "crystal_points": point_rows,
              "crystal_lda": lda_rows, "crystal_differences": diff_rows,
              "word_representations": rep_rows}
    summary = {"layer": hook.layer, "hook": hook.name, "spaces": list(spaces),
               "representation": chosen, "distractors": distractor_rows,
               "representations": rep_rows,
               "lda": [r for r in lda_rows if r["n_components"] in (0, max(
                   x["n_components"] for x in lda_rows))]}
    return Output({k: pa.Table.from_pylist(v) for k, v in tables.items()}, summary)


def _dims(settings: Settings) -> int | None:
    return None if settings.distractor_dims < 0 else settings.distractor_dims


def _paper_experiment(vectors, tasks, test, base, hidden) -> tuple[list[dict], list[dict]]:
    diffs, labels, names = cr.pair_differences(vectors, tasks)
    held = {(task, s, o) for task, pairs in test.items() for s, o in pairs}
    heldout = np.array([n in held for n in names])
    row = {**base, "definition": "li2024", "hidden_state": hidden, "representation": "li2024"}
    lda_rows = [{**row, "n_components": s.n_components, "silhouette": s.silhouette,
                 "silhouette_heldout": s.silhouette_heldout}
                for s in cr.lda_silhouettes(diffs, labels, heldout)]
    pca, lda = cr.lda_layout(diffs, labels)
    diff_rows = [{**row, "task": task, "subject": s, "object": o, "heldout": bool(h),
                  "x_pca": pca[n, 0], "y_pca": pca[n, 1], "x_lda": lda[n, 0],
                  "y_lda": lda[n, 1], "vector": diffs[n].tolist()}
                 for n, ((task, s, o), h) in enumerate(zip(names, heldout))]
    return lda_rows, diff_rows


def describe(s: dict) -> str:
    res = next((d for d in s["distractors"] if d["space"] == "residual"), None)
    rep = next((r for r in s["representations"] if r["chosen"]), None)
    if res is None or rep is None:
        return f"{len(s['spaces'])} spaces"
    lda = {r["n_components"]: r for r in s["lda"]}
    top = max(lda)
    return (f"words as {s['representation']}: held-out top-1 {rep['top1_before']:.2f} -> "
            f"{rep['top1_after']:.2f} after {rep['distractor_dims']} distractor directions; "
            f"crystals of one relation {res['same_relation_after']:.2f} "
            f"(chance {res['same_relation_chance']:.1e}); LDA-{top} held-out silhouette "
            f"{lda[top]['silhouette_heldout']:.2f} (raw {lda[0]['silhouette_heldout']:.2f})")
