"""Crystals (small scale), per harvested layer: parallelogram quality and analogy accuracy of
word-pair tasks before and after LDA distractor removal, and a search for crystal quadruples,
in the residual stream and in the code space of an SAE at that layer. Views:
`crystal_quality`, `crystal_points`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from atlas.analyses.runner import Inputs, Output, Subject
from atlas.geometry import crystals as cr
from atlas.models import HookPoint
from atlas.saes import sae_input

NAME = "crystals"
DEFINITION = "atlas"
TABLES = ("crystal_tasks", "crystals", "distractors", "crystal_points")
NEEDS_MODEL = True
ORDER = 30


@dataclass(frozen=True)
class Settings:
    """Parameters of the crystal analysis, recorded with every run."""

    n_clusters: int = 20
    """Clusters of pair difference vectors searched for crystals."""

    max_crystals: int = 50
    """Crystal quadruples kept per space (lowest parallelogram error first)."""

    seed: int = 0
    """Seed of clustering and of the held-out split of the distractor removal."""


def subjects(inputs: Inputs, settings: Settings) -> list[Subject]:
    """One run per residual hook the chosen SAEs read ('blocks.L.hook_resid_post' is block
    L's output, '..._pre' its input); the hook's first SAE adds its code space."""
    rows = inputs.con.execute("SELECT s.sae_id, s.hook, s.model_id FROM saes s WHERE s.sae_id "
                              "IN (SELECT unnest(?)) ORDER BY s.layer, s.hook, s.sae_id",
                              [list(inputs.sae_ids)]).fetchall()
    first: dict[tuple[str, str], str] = {}
    for sae_id, hook, model_id in rows:
        first.setdefault((model_id, hook), sae_id)
    return [Subject(f"{model_id}/{hook}", (sae_id,), HookPoint.parse(hook))
            for (model_id, hook), sae_id in first.items()]


def compute(inputs: Inputs, subject: Subject, settings: Settings, shared=None) -> Output:
    """Word-pair crystals at one layer: residual space, and the SAE's code space when it can be
    loaded."""
    from atlas.words import word_vectors

    lm, hook = inputs.lm, subject.hook
    layer = hook.layer
    tasks = cr.word_pair_tasks()
    words = sorted({w for pairs in tasks.values() for p in pairs for w in p})
    wv = word_vectors(lm, hook, words)
    spaces = {"residual": dict(zip(words, wv.vectors.astype(np.float64)))}
    sae_id = subject.sae_ids[0]
    sae = inputs.saes_available().get(sae_id)
    if sae is not None:
        with torch.no_grad():
            x = sae_input(sae, torch.from_numpy(wv.vectors).to(sae.W_dec.device))
            codes = sae.encode(x).float().cpu().numpy()
        # Only features active on some task word carry information here; dropping the rest
        # keeps LDA's covariance small (a few hundred dimensions instead of d_sae).
        codes = codes[:, np.abs(codes).sum(0) > 0]
        spaces[sae_id] = dict(zip(words, codes.astype(np.float64)))
    token_counts = {w: len(p) for w, p in zip(words, wv.pieces)}
    base = {"model_id": lm.model_id, "layer": layer, "hook": hook.name}
    task_rows, crystal_rows, distractor_rows, point_rows = [], [], [], []
    for space, vectors in spaces.items():
        removal = cr.remove_distractors(vectors, tasks, token_counts=token_counts,
                                        seed=settings.seed)
        for task, pairs in tasks.items():
            before = cr.task_layout(vectors, pairs)
            after = cr.task_layout(vectors, pairs, removal.projection)
            for n, (word, side) in enumerate((w, s) for p in pairs for w, s in zip(p, "ab")):
                point_rows.append({**base, "space": space, "task": task, "pair": n // 2,
                                   "side": side, "word": word, "x_before": before[n, 0],
                                   "y_before": before[n, 1], "x_after": after[n, 0],
                                   "y_after": after[n, 1]})
            a = np.stack([vectors[p[0]] for p in pairs])
            b = np.stack([vectors[p[1]] for p in pairs])
            task_rows.append({**base, "space": space, "task": task, "n_pairs": len(pairs),
                              "parallelogram_quality": cr.parallelogram_quality(a, b),
                              "accuracy_before": removal.accuracy_before[task],
                              "accuracy_after": removal.accuracy_after[task]})
        distractor_rows.append({**base, "space": space,
                                "silhouette_before": removal.silhouette_before,
                                "silhouette_after": removal.silhouette_after,
                                "length_corr": removal.length_corr,
                                "token_corr": removal.token_corr})
        found = cr.find_crystals(vectors, n_clusters=settings.n_clusters, seed=settings.seed)
        for c in found[:settings.max_crystals]:
            crystal_rows.append({**base, "space": space, "a": c.a, "b": c.b, "c": c.c,
                                 "d": c.d, "parallelogram_error": c.parallelogram_error,
                                 "trapezoid_error": c.trapezoid_error, "cluster": c.cluster})
    return Output({"crystal_tasks": pa.Table.from_pylist(task_rows),
                   "crystals": pa.Table.from_pylist(crystal_rows),
                   "distractors": pa.Table.from_pylist(distractor_rows),
                   "crystal_points": pa.Table.from_pylist(point_rows)},
                  {"layer": layer, "hook": hook.name, "spaces": list(spaces), "tasks": task_rows})


def describe(s: dict) -> str:
    res = [t for t in s["tasks"] if t["space"] == "residual"]
    mean = np.mean([t["accuracy_before"] for t in res]) if res else float("nan")
    return f"{len(s['spaces'])} spaces, residual analogy accuracy {mean:.2f}"
