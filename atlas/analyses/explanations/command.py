"""`atlas explain`: write, store and score explanations of an SAE's features.

For each chosen feature not yet explained by the explainer: its top stored examples (firing
token marked) and logit lens go to the explainer LLM (`explain.explain_prompt`); the answer's
explanation is stored with the explainer, the template, the examples shown and the time, one
short write per batch of features, so a killed run resumes where it stopped. The top-token
explainer ("tokens: X, Y, Z") is stored beside it. Then each explanation without a score is
scored (Delphi's detection): held-out activating texts (decile examples not shown to the
explainer) and as many corpus texts on which the feature is zero (found by encoding
`--blocks` corpus blocks with the atlas's model and SAE), judged by the scorer LLM given only
the explanation; and the same explanation on another feature's texts, the baseline."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from collections.abc import Sequence

import numpy as np
import torch

from atlas import access, catalog, faults
from atlas.analyses.explanations import explain as ex
from atlas.analyses.explanations.backends import Backend, backend
from atlas.artifacts import EMBEDDED_MODEL
from atlas.errors import AtlasError
from atlas.progress import Progress
from atlas.store import utc_now

log = logging.getLogger(__name__)

DEFINITION = ex.DETECTION
TABLES = ("explanations", "explanation_scores", "explanation_terms")
LEFT, RIGHT = 12, 4
"""Tokens of a non-activating text around its middle token (the stored examples' window)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, default=Path("atlas.duckdb"))
    p.add_argument("--sae", required=True, help="the SAE (id, unique part, or L<layer>)")
    p.add_argument("--features", default="",
                   help="comma-separated features to explain (default: the --limit features "
                   "that fire most)")
    p.add_argument("--limit", type=int, default=20,
                   help="features to explain when --features is not given")
    p.add_argument("--explainer", default=EMBEDDED_MODEL,
                   help="the explainer: a model `atlas build --model` takes (the embedded "
                   "SmolLM2-135M-Instruct, a folder, a hub id), or the base URL of an "
                   "OpenAI-compatible endpoint (http://127.0.0.1:8000/v1; key from "
                   "$OPENAI_API_KEY)")
    p.add_argument("--explainer-model", default="", help="the model an endpoint serves")
    p.add_argument("--scorer", default="", help="the scorer, as --explainer (default: the "
                   "explainer)")
    p.add_argument("--scorer-model", default="", help="the model the scorer endpoint serves")
    p.add_argument("--no-score", action="store_true", help="explain only")
    p.add_argument("--examples", type=int, default=10,
                   help="top examples shown to the explainer")
    p.add_argument("--held-out", type=int, default=5,
                   help="held-out texts per class (activating, not) the scorer judges")
    p.add_argument("--blocks", type=int, default=32,
                   help="corpus blocks encoded to find texts on which a feature is zero")
    p.add_argument("--max-tokens", type=int, default=60, help="tokens an explanation may take")
    p.add_argument("--batch", type=int, default=8, help="prompts per batch (local models)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


@dataclasses.dataclass
class Feature:
    """What the atlas holds of one feature for explaining and scoring it."""

    feature: int
    top: list[ex.Example]
    deciles: list[ex.Example]
    promoted: list[str]
    negatives: list[str] = dataclasses.field(default_factory=list)

    def held_out(self, n: int) -> list[ex.Example]:
        """Up to `n` decile examples not shown to the explainer, spread over the deciles."""
        shown = {(e.block_id, e.position) for e in self.top}
        rest = [e for e in self.deciles if (e.block_id, e.position) not in shown]
        if len(rest) <= n:
            return rest
        pick = np.linspace(0, len(rest) - 1, n).round().astype(int)
        return [rest[i] for i in pick]


def run(args: argparse.Namespace) -> int:
    if args.limit < 1 or args.examples < 1 or args.held_out < 1 or args.blocks < 1:
        raise AtlasError("--limit, --examples, --held-out and --blocks must be >= 1")
    with access.writing(args.db):  # brings an older atlas's schema up to date
        pass
    with access.reading(args.db) as con:
        sae_id = catalog.resolve_sae(con, args.sae)
        feats = _chosen(con, sae_id, args)
        features = _read_features(con, sae_id, feats, args.examples)
    explainer = backend(args.explainer, args.explainer_model, device=args.device,
                        batch=args.batch)
    t0 = time.perf_counter()
    written = explain_features(args.db, sae_id, features, explainer, max_tokens=args.max_tokens,
                               batch=args.batch)
    scored = 0
    if not args.no_score:
        scorer = (explainer if not args.scorer or (args.scorer, args.scorer_model)
                  == (args.explainer, args.explainer_model)
                  else backend(args.scorer, args.scorer_model, device=args.device,
                               batch=args.batch))
        _find_negatives(args, sae_id, features)
        scored = score_features(args.db, sae_id, features, [explainer.name, ex.TOP_TOKENS],
                                scorer, n=args.held_out, batch=args.batch)
    summary = _summary(args.db, sae_id, [f.feature for f in features])
    summary.update(explained=written, scored=scored, seconds=round(time.perf_counter() - t0, 1))
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"{sae_id}: {written} explanations written, {scored} scored in "
              f"{summary['seconds']}s")
        for row in summary["explainers"]:
            print(f"  {row['explainer']} (scored by {row['scorer']}): {row['features']} "
                  f"features, balanced accuracy "
                  f"{_num(row['balanced_accuracy'])} (another feature's texts: "
                  f"{_num(row['baseline_balanced_accuracy'])})")
    return 0


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _chosen(con, sae_id: str, args: argparse.Namespace) -> list[int]:
    d_sae = con.execute("SELECT d_sae FROM saes WHERE sae_id = ?", [sae_id]).fetchone()[0]
    if args.features:
        try:
            feats = [int(f) for f in args.features.split(",") if f.strip()]
        except ValueError:
            raise AtlasError(f"--features {args.features}: give feature numbers, like "
                             "3,17,256") from None
        bad = [f for f in feats if not 0 <= f < d_sae]
        if bad:
            raise AtlasError(f"--features: {bad} are not features of {sae_id} (0-{d_sae - 1})")
        return feats
    return [r[0] for r in con.execute(
        "SELECT feature FROM features WHERE sae_id = ? AND firing_count > 0 "
        "ORDER BY firing_count DESC, feature LIMIT ?", [sae_id, args.limit]).fetchall()]


def _read_features(con, sae_id: str, feats: Sequence[int], n_top: int) -> list[Feature]:
    def examples(table: str, extra: str = "") -> dict[int, list[ex.Example]]:
        rows = con.execute(
            f"SELECT feature, block_id, position, context, token_start, token, act FROM {table} "
            f"WHERE sae_id = ? AND list_contains(?, feature) {extra} ORDER BY feature, "
            f"{'decile, ' if table == 'decile_examples' else ''}rank",
            [sae_id, list(feats)]).fetchall()
        out: dict[int, list[ex.Example]] = {}
        for f, *rest in rows:
            out.setdefault(f, []).append(ex.Example(*rest))
        return out

    top = examples("examples", f"AND rank <= {int(n_top)}")
    deciles = examples("decile_examples")
    promoted: dict[int, list[str]] = {}
    for f, tok in con.execute("SELECT feature, token FROM feature_logits WHERE sae_id = ? AND "
                              "list_contains(?, feature) AND direction = 'top' AND rank <= 5 "
                              "ORDER BY feature, rank", [sae_id, list(feats)]).fetchall():
        promoted.setdefault(f, []).append(tok)
    out = [Feature(f, top.get(f, []), deciles.get(f, []), promoted.get(f, [])) for f in feats]
    missing = [f.feature for f in out if not f.top]
    if missing:
        log.warning("features %s have no stored examples (they never fired); skipped", missing)
    return [f for f in out if f.top]


def _stored(db: Path, sql: str, params: list) -> set[tuple]:
    with access.reading(db) as con:
        return set(con.execute(sql, params).fetchall())


def explain_features(db: Path, sae_id: str, features: Sequence[Feature], explainer: Backend, *,
                     max_tokens: int, batch: int) -> int:
    """Explain each feature not yet explained by `explainer` (and by the top-token rule),
    storing each batch as it finishes; the number of explanations written."""
    done = _stored(db, "SELECT feature, explainer FROM explanations WHERE sae_id = ?", [sae_id])
    rows = [(f, ex.TOP_TOKENS, ex.TOP_TOKENS_TEMPLATE, ex.top_tokens_explanation(f.top), 0.0)
            for f in features if (f.feature, ex.TOP_TOKENS) not in done]
    _write_explanations(db, sae_id, rows)
    todo = [f for f in features if (f.feature, explainer.name) not in done]
    progress = Progress(f"explaining {sae_id}", total=len(todo), unit="feature")
    written = len(rows)
    for s in range(0, len(todo), batch):
        part = todo[s:s + batch]
        t = time.perf_counter()
        answers = explainer.generate([ex.explain_prompt(f.top, f.promoted) for f in part],
                                     max_tokens)
        seconds = (time.perf_counter() - t) / len(part)
        _write_explanations(db, sae_id, [(f, explainer.name, ex.TEMPLATE,
                                          ex.parse_explanation(a), seconds)
                                         for f, a in zip(part, answers)], crash_point=s > 0)
        written += len(part)
        progress.update(len(part))
    progress.close()
    return written


def _write_explanations(db: Path, sae_id: str, rows: list[tuple], *,
                        crash_point: bool = False) -> None:
    if not rows:
        return
    now = utc_now()
    with access.writing(db) as con:
        con.execute("BEGIN")
        for f, explainer, template, text, seconds in rows:
            key = [sae_id, f.feature, explainer, template]
            con.execute("DELETE FROM explanation_terms WHERE sae_id = ? AND feature = ? AND "
                        "explainer = ? AND template = ?", key)
            con.execute("INSERT OR REPLACE INTO explanations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [*key, text, [{"block_id": e.block_id, "position": e.position}
                                      for e in f.top], seconds, now])
            terms = ex.term_rows(text)
            if terms:
                con.executemany("INSERT INTO explanation_terms VALUES (?, ?, ?, ?, ?, ?, ?)",
                                [[*key, *t] for t in terms])
        if crash_point:
            faults.point("explain")   # a crash test's stop inside a later batch's write
        con.execute("COMMIT")


def _find_negatives(args: argparse.Namespace, sae_id: str, features: list[Feature]) -> None:
    """For each feature, up to --held-out corpus texts on which it is zero at every token:
    windows of --blocks random blocks, encoded with the atlas's model and SAE."""
    from atlas.models import capture_residuals, load_model
    from atlas.saes import hook_of, sae_input

    with access.reading(args.db) as con:
        spec = catalog.loadable_model(con, [sae_id])[1]
        n_blocks = con.execute("SELECT count(*) FROM blocks").fetchall()[0][0]
        rng = np.random.default_rng(args.seed)
        chosen = sorted(rng.choice(n_blocks, size=min(args.blocks, n_blocks), replace=False)
                        .tolist())
        rows = con.execute("SELECT block_id, token_ids, n_tokens FROM blocks WHERE "
                           "list_contains(?, block_id) ORDER BY block_id", [chosen]).fetchall()
        lm = load_model(spec, device=args.device)
        sae = catalog.load_sae(con, sae_id, device=str(lm.device))
    ids = torch.tensor([r[1] for r in rows])
    lengths = np.array([r[2] for r in rows])
    cols = torch.tensor([f.feature for f in features], device=sae.W_dec.device)
    hook = hook_of(sae)
    codes = []
    with torch.inference_mode():
        for s in range(0, len(ids), 8):
            acts = capture_residuals(lm, ids[s:s + 8].to(lm.device), [hook])[hook.name]
            x = sae_input(sae, acts.to(sae.W_dec.device, sae.W_dec.dtype))
            codes.append(sae.encode(x)[..., cols].float().cpu())
    fired = (torch.cat(codes) > 0).numpy()               # (blocks, tokens, features)
    # a window [p - LEFT, p + RIGHT] is quiet when the feature is zero on all of its tokens
    width = LEFT + RIGHT + 1
    windows = np.asarray(np.lib.stride_tricks.sliding_window_view(fired, width, axis=1).any(-1))
    texts: dict[tuple[int, int], str] = {}
    for j, f in enumerate(features):
        quiet = np.argwhere(~windows[:, :, j])
        quiet = quiet[quiet[:, 1] + width <= lengths[quiet[:, 0]]]
        pick = rng.permutation(len(quiet))[:args.held_out]
        f.negatives = []
        for b, start in quiet[pick]:
            key = (int(b), int(start))
            if key not in texts:
                texts[key] = lm.tokenizer.decode(ids[b, start:start + width].tolist())
            f.negatives.append(texts[key])


def score_features(db: Path, sae_id: str, features: Sequence[Feature], explainers: list[str],
                   scorer: Backend, *, n: int, batch: int) -> int:
    """Score each stored explanation of the features by `explainers` not yet scored by
    `scorer`: on its feature's held-out texts, and (the baseline) on the next feature's."""
    by_feature = {f.feature: f for f in features}
    order = [f.feature for f in features]
    with access.reading(db) as con:
        stored = con.execute(
            "SELECT e.feature, e.explainer, e.template, e.explanation FROM explanations e "
            "WHERE e.sae_id = ? AND list_contains(?, e.feature) AND list_contains(?, "
            "e.explainer) AND NOT EXISTS (SELECT 1 FROM explanation_scores s WHERE "
            "s.sae_id = e.sae_id AND s.feature = e.feature AND s.explainer = e.explainer AND "
            "s.template = e.template AND s.scorer = ? AND s.method = ?) ORDER BY e.feature, "
            "e.explainer", [sae_id, order, explainers, scorer.name, ex.DETECTION]).fetchall()
    progress = Progress(f"scoring {sae_id}", total=len(stored), unit="explanation")
    for s in range(0, len(stored), batch):
        rows = []
        for feature, explainer, template, text in stored[s:s + batch]:
            t = time.perf_counter()
            f = by_feature[feature]
            other = by_feature[order[(order.index(feature) + 1) % len(order)]]
            own = _judge(scorer, text, f, n)
            base = _judge(scorer, text, other, n) if other is not f else None
            rows.append([sae_id, feature, explainer, template, scorer.name, ex.DETECTION,
                         own.n_activating, own.n_non_activating, own.n_failed, own.accuracy,
                         own.balanced_accuracy, None if base is None else other.feature,
                         None if base is None else base.accuracy,
                         None if base is None else base.balanced_accuracy,
                         time.perf_counter() - t, utc_now()])
        with access.writing(db) as con:
            con.executemany("INSERT OR REPLACE INTO explanation_scores VALUES "
                            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        progress.update(len(rows))
    progress.close()
    return len(stored)


def _judge(scorer: Backend, explanation: str, f: Feature, n: int) -> ex.Score:
    positives = [e.context for e in f.held_out(n)]
    texts = positives + f.negatives[:n]
    truth = [True] * len(positives) + [False] * (len(texts) - len(positives))
    probs = scorer.judge([ex.detection_prompt(explanation, t) for t in texts])
    return ex.detection_score(probs, truth)


def _summary(db: Path, sae_id: str, feats: list[int]) -> dict:
    with access.reading(db) as con:
        rows = con.execute(
            "SELECT explainer, scorer, count(*), avg(balanced_accuracy), "
            "avg(baseline_balanced_accuracy) FROM explanation_scores WHERE sae_id = ? AND "
            "list_contains(?, feature) GROUP BY ALL ORDER BY explainer",
            [sae_id, feats]).fetchall()
    return {"sae_id": sae_id, "method": ex.DETECTION, "explainers": [
        {"explainer": e, "scorer": s, "features": n, "balanced_accuracy": a,
         "baseline_balanced_accuracy": b} for e, s, n, a, b in rows]}
