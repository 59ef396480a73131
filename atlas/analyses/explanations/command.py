"""`atlas explain`: write, store and score explanations of an SAE's features.

For each chosen feature not yet explained by the explainer: its top stored examples (firing
token marked) and logit lens go to the explainer LLM (`explain.explain_prompt`); the answer's
explanation is stored with the explainer, the template, the examples shown and the time, one
short write per batch of features, so a killed run resumes where it stopped. The top-token
explainer ("tokens: X, Y, Z") is stored beside it. Then each explanation without a score is
scored (Delphi's detection and fuzzing): held-out activating texts (decile examples not shown
to the explainer) and as many corpus texts on which the feature is zero (found by encoding
`--blocks` corpus blocks with the atlas's model and SAE), judged by the scorer LLM given only
the explanation, as they are (detection) or with a token marked (fuzzing: the firing token,
or a random one of a zero text); and the same explanation on another feature's texts, the
baseline."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from atlas import access, catalog, faults
from atlas.analyses.explanations import explain as ex
from atlas.analyses.explanations.backends import Backend, Embedder, backend
from atlas.artifacts import EMBEDDED_MODEL
from atlas.errors import AtlasError
from atlas.progress import Progress
from atlas.export import WINDOW
from atlas.store import transaction, utc_now

log = logging.getLogger(__name__)

DEFINITION = "delphi"
TABLES = ("explanations", "explanation_scores", "explanation_terms", "explanation_embeddings")
LEFT, RIGHT = WINDOW
"""Tokens of a non-activating text around its middle token (the stored examples' window)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, default=Path("atlas.duckdb"))
    p.add_argument("--sae", default="", help="the SAE (id, unique part, or L<layer>); with "
                   "--search: only its features (default: every SAE's)")
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
    p.add_argument("--scoring", default="detection,fuzzing",
                   help="Delphi's scorers to run: detection (does the feature fire on this "
                   "text?), fuzzing (is the marked token one it fires on?)")
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
    p.add_argument("--embedder", default="",
                   help="a transformers text model (folder or hub id) that embeds every stored "
                   "explanation of the SAE, for --search by meaning")
    p.add_argument("--search", default="",
                   help="search the stored explanations instead of explaining: by their words "
                   "(BM25), and by meaning with --embedder (nearest by FAISS)")
    p.add_argument("--top", type=int, default=10, help="results per --search")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


@dataclasses.dataclass
class Feature:
    """What the atlas holds of one feature for explaining and scoring it."""

    feature: int
    top: list[ex.Example]
    deciles: list[ex.Example]
    promoted: list[str]
    negatives: list[str] = dataclasses.field(default_factory=list)
    """Corpus texts on which the feature is zero at every token."""
    decoys: list[str] = dataclasses.field(default_factory=list)
    """The same texts with one random token marked as if the feature fired on it."""

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
    methods = _methods(args.scoring)
    with access.writing(args.db):  # brings an older atlas's schema up to date
        pass
    if args.search:
        return _search(args)
    if not args.sae:
        raise AtlasError("name the SAE whose features to explain: --sae (id, unique part, or "
                         "L<layer>)")
    with access.reading(args.db) as con:
        sae_id = catalog.resolve_sae(con, args.sae)
        feats = _chosen(con, sae_id, args)
        features = _read_features(con, sae_id, feats, args.examples)
    load = _loader(args.device)
    explainer = backend(args.explainer, args.explainer_model, load=load, batch=args.batch)
    t0 = time.perf_counter()
    written = explain_features(args.db, sae_id, features, explainer, max_tokens=args.max_tokens,
                               batch=args.batch)
    scored = 0
    if not args.no_score:
        scorer = (explainer if not args.scorer or (args.scorer, args.scorer_model)
                  == (args.explainer, args.explainer_model)
                  else backend(args.scorer, args.scorer_model, load=load, batch=args.batch))
        _find_negatives(args, sae_id, features, load)
        scored = score_features(args.db, sae_id, features, [explainer.name, ex.TOP_TOKENS],
                                scorer, n=args.held_out, batch=args.batch, methods=methods)
    embedded = 0
    if args.embedder:
        embedded = embed_explanations(args.db, sae_id, Embedder(args.embedder,
                                                                device=args.device))
    summary = _summary(args.db, sae_id, [f.feature for f in features])
    summary.update(explained=written, scored=scored, embedded=embedded,
                   seconds=round(time.perf_counter() - t0, 1))
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"{sae_id}: {written} explanations written, {scored} scored in "
              f"{summary['seconds']}s")
        for row in summary["explainers"]:
            print(f"  {row['explainer']} ({row['method']}, scored by {row['scorer']}): "
                  f"{row['features']} features, balanced accuracy "
                  f"{_num(row['balanced_accuracy'])} (another feature's texts: "
                  f"{_num(row['baseline_balanced_accuracy'])})")
    return 0


def _loader(device: str) -> Callable[[str], Any]:
    """Load each model once per run: the atlas's own model, read for the non-activating texts,
    is often the explainer and the scorer too (the embedded default)."""
    from atlas.models import load_model

    loaded: dict[str, Any] = {}

    def load(spec: str):
        if spec not in loaded:
            log.info("loading the model %s", spec)
            loaded[spec] = load_model(spec, device=device)
        return loaded[spec]

    return load


def _methods(text: str) -> tuple[str, ...]:
    names = {"detection": ex.DETECTION, "fuzzing": ex.FUZZING}
    chosen = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in chosen if t not in names]
    if bad or not chosen:
        raise AtlasError(f"--scoring {text}: choose from detection, fuzzing (comma-separated)")
    return tuple(names[t] for t in chosen)


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
    with access.writing(db) as con, transaction(con):
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


def _find_negatives(args: argparse.Namespace, sae_id: str, features: list[Feature],
                    load: Callable[[str], Any]) -> None:
    """For each feature, up to --held-out corpus texts on which it is zero at every token:
    windows of --blocks random blocks, encoded with the atlas's model (`load`ed) and SAE."""
    from atlas.models import capture_residuals
    from atlas.saes import hook_of, sae_input

    with access.reading(args.db) as con:
        spec = catalog.loadable_model(con, [sae_id])[1]
        n_blocks = con.execute("SELECT count(*) FROM blocks").fetchall()[0][0]
        rng = np.random.default_rng(args.seed)
        chosen = sorted(rng.choice(n_blocks, size=min(args.blocks, n_blocks), replace=False)
                        .tolist())
        rows = con.execute("SELECT block_id, token_ids, n_tokens FROM blocks WHERE "
                           "list_contains(?, block_id) ORDER BY block_id", [chosen]).fetchall()
        lm = load(spec)
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
        f.negatives, f.decoys = [], []
        for b, start in quiet[pick]:
            key = (int(b), int(start))
            window = ids[b, start:start + width].tolist()
            if key not in texts:
                texts[key] = lm.tokenizer.decode(window)
            f.negatives.append(texts[key])
            pieces = lm.tokenizer.batch_decode([[t] for t in window])
            f.decoys.append(ex.mark(pieces, int(rng.integers(0, width))))


def score_features(db: Path, sae_id: str, features: Sequence[Feature], explainers: list[str],
                   scorer: Backend, *, n: int, batch: int,
                   methods: Sequence[str] = ex.METHODS) -> int:
    """Score each stored explanation of the features by `explainers` with each method not yet
    run by `scorer`: on its feature's held-out texts, and (the baseline) on the next
    feature's. Returns the number of scores written."""
    by_feature = {f.feature: f for f in features}
    order = list(by_feature)
    # the baseline's texts: the next feature's (in the run's order, wrapping around)
    baseline = {a: by_feature[b] for a, b in zip(order, order[1:] + order[:1])}
    with access.reading(db) as con:
        stored = con.execute(
            "SELECT e.feature, e.explainer, e.template, e.explanation, m.method "
            "FROM explanations e, unnest(?::VARCHAR[]) m(method) "
            "WHERE e.sae_id = ? AND list_contains(?, e.feature) AND list_contains(?, "
            "e.explainer) AND NOT EXISTS (SELECT 1 FROM explanation_scores s WHERE "
            "s.sae_id = e.sae_id AND s.feature = e.feature AND s.explainer = e.explainer AND "
            "s.template = e.template AND s.scorer = ? AND s.method = m.method) "
            "ORDER BY e.feature, e.explainer, m.method",
            [list(methods), sae_id, order, explainers, scorer.name]).fetchall()
    progress = Progress(f"scoring {sae_id}", total=len(stored), unit="score")
    for s in range(0, len(stored), batch):
        rows = []
        for feature, explainer, template, text, method in stored[s:s + batch]:
            t = time.perf_counter()
            f = by_feature[feature]
            other = baseline[feature]
            own = _judge(scorer, text, f, n, method)
            base = _judge(scorer, text, other, n, method) if other is not f else None
            rows.append([sae_id, feature, explainer, template, scorer.name, method,
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


def _judge(scorer: Backend, explanation: str, f: Feature, n: int,
           method: str = ex.DETECTION) -> ex.Score:
    """One explanation judged on a feature's held-out texts. Detection: activating texts as
    they are, and texts on which the feature is zero. Fuzzing (Delphi's default fuzzing):
    activating texts with the firing token marked, and the zero texts with one random token
    marked (Delphi marks as many as the activating texts have firing tokens: one here)."""
    held = f.held_out(n)
    if method == ex.FUZZING:
        positives, negatives = [e.marked() for e in held], f.decoys[:n]
        prompt = ex.fuzzing_prompt
    else:
        positives, negatives = [e.context for e in held], f.negatives[:n]
        prompt = ex.detection_prompt
    texts = positives + negatives
    truth = [True] * len(positives) + [False] * len(negatives)
    return ex.detection_score(scorer.judge([prompt(explanation, t) for t in texts]), truth)


def _summary(db: Path, sae_id: str, feats: list[int]) -> dict:
    with access.reading(db) as con:
        rows = con.execute(
            "SELECT explainer, method, scorer, count(*), avg(balanced_accuracy), "
            "avg(baseline_balanced_accuracy) FROM explanation_scores WHERE sae_id = ? AND "
            "list_contains(?, feature) GROUP BY ALL ORDER BY explainer, method",
            [sae_id, feats]).fetchall()
    return {"sae_id": sae_id, "explainers": [
        {"explainer": e, "method": m, "scorer": s, "features": n, "balanced_accuracy": a,
         "baseline_balanced_accuracy": b} for e, m, s, n, a, b in rows]}


def embed_explanations(db: Path, sae_id: str, embedder: Embedder, *, batch: int = 64) -> int:
    """Embed the SAE's stored explanations that `embedder` has not embedded; stored per batch."""
    with access.reading(db) as con:
        todo = con.execute(
            "SELECT feature, explainer, template, explanation FROM explanations e WHERE "
            "sae_id = ? AND explanation <> '' AND NOT EXISTS (SELECT 1 FROM "
            "explanation_embeddings m WHERE m.sae_id = e.sae_id AND m.feature = e.feature AND "
            "m.explainer = e.explainer AND m.template = e.template AND m.embedder = ?) "
            "ORDER BY feature, explainer", [sae_id, embedder.name]).fetchall()
    progress = Progress(f"embedding explanations of {sae_id}", total=len(todo),
                        unit="explanation")
    for s in range(0, len(todo), batch):
        part = todo[s:s + batch]
        vectors = embedder.embed([r[3] for r in part])
        with access.writing(db) as con:
            con.executemany("INSERT OR REPLACE INTO explanation_embeddings VALUES "
                            "(?, ?, ?, ?, ?, ?)", [[sae_id, *r[:3], embedder.name, v.tolist()]
                                                   for r, v in zip(part, vectors)])
        progress.update(len(part))
    progress.close()
    return len(todo)


def search_by_meaning(con, query: str, embedder: Embedder, k: int,
                      sae_id: str | None = None) -> list[dict]:
    """The `k` stored explanations nearest `query` in `embedder`'s space (cosine: FAISS inner
    product over unit vectors), best first."""
    import faiss

    rows = con.execute(
        "SELECT m.sae_id, m.feature, m.explainer, e.explanation, m.vector FROM "
        "explanation_embeddings m JOIN explanations e USING (sae_id, feature, explainer, "
        "template) WHERE m.embedder = ? AND (? IS NULL OR m.sae_id = ?) ORDER BY ALL",
        [embedder.name, sae_id, sae_id]).fetchall()
    if not rows:
        raise AtlasError(f"no explanation is embedded by {embedder.name}; run `atlas explain "
                         f"--sae <SAE> --embedder {embedder.name.removeprefix('hf:')}` first")
    vectors = np.asarray([r[4] for r in rows], dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    scores, found = index.search(embedder.embed([query]), min(k, len(rows)))
    return [{"score": float(sc), "sae_id": rows[i][0], "feature": rows[i][1],
             "explainer": rows[i][2], "explanation": rows[i][3]}
            for sc, i in zip(scores[0], found[0]) if i >= 0]


def _search(args: argparse.Namespace) -> int:
    embedder = Embedder(args.embedder, device=args.device) if args.embedder else None
    with access.reading(args.db) as con:
        sae_id = catalog.resolve_sae(con, args.sae) if args.sae else None
        words = [dict(zip(("score", "sae_id", "feature", "explainer", "explanation"), r))
                 for r in con.execute(
                     "SELECT score, sae_id, feature, explainer, explanation FROM "
                     "search_explanations(?) WHERE ? IS NULL OR sae_id = ? LIMIT ?",
                     [args.search, sae_id, sae_id, args.top]).fetchall()]
        meaning = (search_by_meaning(con, args.search, embedder, args.top, sae_id)
                   if embedder else [])
    if args.json:
        print(json.dumps({"words": words, "meaning": meaning}, indent=1))
        return 0
    sections = [("by words (BM25)", words)]
    if embedder:
        sections.append((f"by meaning ({embedder.name})", meaning))
    for title, hits in sections:
        print(f"{title}:" if hits else f"{title}: nothing")
        for h in hits:
            print(f"  {h['score']:7.3f}  {h['sae_id']} #{h['feature']}  {h['explanation']}  "
                  f"({h['explainer']})")
    return 0
