"""Explanations and scores per minute, and what the scores say, in one run.

    python benchmarks/explain.py --db atlas.duckdb                    # the embedded model, L7
    python benchmarks/explain.py --db atlas.duckdb --sae L3 --features 64
    python benchmarks/explain.py --db atlas.duckdb -- --explainer http://127.0.0.1:8000/v1 \\
        --explainer-model Qwen/Qwen2.5-7B-Instruct                     # any `atlas explain` flags

Runs `atlas explain` on a copy of the atlas (the original is left as it was) for --features
features of one SAE and prints: explanations per minute and scores per minute; the same
model's bare greedy generation of one prompt of the same length, the baseline, and the
explain step's seconds per feature against it as a ratio; the projection to explain and score
every feature of a 16k SAE at that rate; and the mean Delphi detection balanced accuracy of
each explainer against its baseline (the same explanations judged on other features' texts),
reported as it comes out, however weak the model is.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", type=Path, default=Path("atlas.duckdb"))
    parser.add_argument("--sae", default="L7")
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--model", default="", help="the explainer for the baseline (default: "
                        "the explain run's --explainer, else the embedded model)")
    parser.add_argument("rest", nargs="*", help="flags for `atlas explain`, after --")
    args = parser.parse_args()
    if not args.db.exists():
        raise SystemExit(f"{args.db} does not exist; build one with `atlas build --db {args.db}`")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "explain.duckdb"
        shutil.copy(args.db, db)
        cmd = [sys.executable, "-c", "import sys; from atlas.cli import main; sys.exit(main())",
               "explain", "--db", str(db), "--sae", args.sae, "--limit", str(args.features),
               "--json", *args.rest]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        summary = json.loads(done.stdout)
        seconds = _seconds(db, summary["sae_id"])
        spec = args.model or _explainer(args.rest)
        lm = None if spec.startswith("http") else _load(spec)
        prompt_tokens = _prompt_length(db, summary["sae_id"], lm) if lm else 0
    bare = _bare_generation(lm, prompt_tokens, _max_tokens(args.rest)) if lm else float("nan")
    n_llm = max([r["features"] for r in summary["explainers"]
                 if r["explainer"] != "top-tokens"], default=0)
    print(f"atlas explain on {summary['sae_id']}: {summary['explained']} explanations written, "
          f"{summary['scored']} scored, {wall:.1f} s wall (model loads included)")
    print(f"  explaining: {seconds['explain']:.2f} s per feature = "
          f"{60 / max(seconds['explain'], 1e-9):.1f} explanations/min")
    print(f"  scoring:    {seconds['score']:.2f} s per score = "
          f"{60 / max(seconds['score'], 1e-9):.1f} scores/min")
    print(f"  bare greedy generation, one {prompt_tokens}-token prompt: {bare:.2f} s; "
          f"ratio explain per feature (prompts batched by --batch) / bare generation: "
          f"{seconds['explain'] / bare:.2f}")
    methods = {r["method"] for r in summary["explainers"]} or {"-"}
    # its explanation, and each method's score of it and of the top-token explanation
    per_feature = seconds["explain"] + 2 * len(methods) * seconds["score"]
    print(f"  projection, every feature of a 16,384-feature SAE: "
          f"{16384 * per_feature / 3600:.1f} h at this rate ({n_llm} LLM explanations timed)")
    for row in summary["explainers"]:
        print(f"  {row['explainer']}, {row['method']} by {row['scorer']}: mean balanced accuracy "
              f"{_fmt(row['balanced_accuracy'])} vs {_fmt(row['baseline_balanced_accuracy'])} "
              f"on other features' texts ({row['features']} features; chance 0.5)")


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _seconds(db: Path, sae_id: str) -> dict[str, float]:
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        explain = con.execute("SELECT avg(seconds) FROM explanations WHERE sae_id = ? AND "
                              "explainer <> 'top-tokens'", [sae_id]).fetchone()
        score = con.execute("SELECT avg(seconds) FROM explanation_scores WHERE sae_id = ?",
                            [sae_id]).fetchone()
    return {"explain": float((explain or [0])[0] or 0), "score": float((score or [0])[0] or 0)}


def _max_tokens(rest: list[str]) -> int:
    return int(rest[rest.index("--max-tokens") + 1]) if "--max-tokens" in rest else 60


def _explainer(rest: list[str]) -> str:
    from atlas.artifacts import EMBEDDED_MODEL

    return rest[rest.index("--explainer") + 1] if "--explainer" in rest else EMBEDDED_MODEL


def _load(spec: str):
    from atlas.models import load_model

    return load_model(spec, device="auto")


def _prompt_length(db: Path, sae_id: str, lm) -> int:
    """The token count of the first explained feature's prompt, as `lm` reads it."""
    import duckdb

    from atlas.analyses.explanations import command, explain
    from atlas.analyses.explanations.backends import HuggingFace

    with duckdb.connect(str(db), read_only=True) as con:
        feature = con.execute("SELECT min(feature) FROM explanations WHERE sae_id = ?",
                              [sae_id]).fetchone()[0]
        f = command._read_features(con, sae_id, [feature], 10)[0]
    backend = HuggingFace(lm)
    text = backend._texts([explain.explain_prompt(f.top, f.promoted)])[0]
    return len(backend.tokenizer(text, add_special_tokens=False)["input_ids"])


def _bare_generation(lm, prompt_tokens: int, max_tokens: int) -> float:
    """Seconds of the explainer model's greedy generation of `max_tokens` after a prompt of
    `prompt_tokens` tokens (its start-of-text token repeated), one prompt, no atlas."""
    import torch

    bos = lm.tokenizer.bos_token_id or lm.tokenizer.eos_token_id
    ids = torch.full((1, prompt_tokens), bos, device=lm.device)
    with torch.inference_mode():
        lm.model.generate(ids[:, :8], max_new_tokens=2, do_sample=False)   # warm
        t = time.perf_counter()
        lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                          min_new_tokens=max_tokens, do_sample=False,
                          pad_token_id=lm.tokenizer.eos_token_id)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
