"""Every benchmark in benchmarks/ runs its main path to its printed ratios at a tiny size, so a
benchmark cannot rot unnoticed. These are smoke runs: they check that the figures are printed
and are finite numbers, never how fast anything is."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.appdriver import chromium
from tests.helpers import run_cli
from tests.tiny import tiny_model_dir

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def run(script: str, *args: str) -> str:
    """`python benchmarks/<script> <args>` in a child process (forked with the atlas imported:
    the benchmark's own imports are not what this smoke test runs)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    done = run_cli(list(args), env=env, timeout=300, script=BENCHMARKS / script)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def ratios(text: str, pattern: str) -> list[float]:
    found = [float(x) for x in re.findall(pattern, text)]
    assert found, f"no figure matching {pattern!r} in:\n{text[-2000:]}"
    assert all(0 <= x < float("inf") for x in found), found
    return found


def test_every_benchmark_has_a_smoke_test():
    here = Path(__file__).read_text()
    for script in BENCHMARKS.glob("*.py"):
        assert f'"{script.name}"' in here, f"{script.name} has no smoke test"


def test_harvest_benchmark_prints_its_ratio():
    out = run("harvest.py", "--model", str(tiny_model_dir()), "--layers", "1,3", "--blocks", "8",
              "--block-size", "64", "--d-sae", "64", "--k", "4", "--repeats", "1")
    ratios(out, r"ratio harvest / bare forward: ([\d.]+)")
    ratios(out, r"ratio with batches alternating .*: ([\d.]+) ")
    ratios(out, r"bare forward to layer 3:\s+([\d.]+) tok/s")


def test_wide_benchmark_prints_its_ratio_and_memory():
    out = run("wide.py", "--model", str(tiny_model_dir()), "--layer", "1", "--d-sae", "64",
              "--baseline", "16", "--k", "4", "--blocks", "4", "--block-size", "64",
              "--", "--dtype", "float32")
    ratios(out, r"wall ratio d_sae 64 / 16: ([\d.]+)x")
    ratios(out, r"peak RSS d_sae 64: ([\d.]+) GB")
    for stage in ("harvest", "store_harvest"):
        assert len(ratios(out, rf"\n    {stage}\s+([\d.]+) s")) == 2


def test_build_benchmark_prints_stage_times_memory_and_quality():
    out = run("build.py", "--", "--model", str(tiny_model_dir()), "--layers", "1,3",
              "--tokens", str(64 * 64), "--block-size", "64", "--d-sae", "64", "--k", "4",
              "--epochs", "1", "--threshold", "0.5", "--analyses", "galaxy")
    for stage in ("load", "cache_activations", "train", "harvest", "store_harvest",
                  "analyze"):
        ratios(out, rf"\n  {stage}\s+([\d.]+) s")
    ratios(out, r"analysis galaxy\s+([\d.]+) s")
    ratios(out, r"x the build's own forward pass \(([\d.]+) s\)")
    ratios(out, r"peak RSS ([\d.]+) GiB")
    assert len(ratios(out, r"held-out EV ([\d.-]+)")) == 2


def test_query_benchmark_prints_its_ratios():
    out = run("query.py", "--sizes", "3000", "--d", "32", "--queries", "20", "--data", "random")
    ratios(out, r"= ([\d.]+)x BLAS pass")
    ratios(out, r"speed-up\s+([\d.]+)x over exact")
    ratios(out, r"recall@10 ([\d.]+)")


def test_scale_benchmark_prints_its_figures(tmp_path):
    out = run("scale.py", "--out", str(tmp_path / "scale"), "--saes", "2", "--width", "2048",
              "--d", "32", "--partners", "4", "--blocks", "200", "--spectrum-sample", "512")
    ratios(out, r"= ([\d.]+)x faster than the BLAS pass")
    ratios(out, r"peak RSS over the run ([\d.]+) GB")


@pytest.mark.usefixtures("tiny_atlas")
def test_absorption_benchmark_prints_its_ratios(atlas_copy):
    db, _ = atlas_copy
    out = run("absorption.py", "--db", str(db), "--words", "200")
    ratios(out, r"full prompts [\d.]+s; ratio ([\d.]+)x")
    ratios(out, r"per-SAE ratio ([\d.]+)x")
    ratios(out, r"saebench definition: set-up [\d.]+s \(([\d.]+)x")


@pytest.mark.skipif(chromium() is None or shutil.which("chromedriver") is None,
                    reason="Chromium/chromedriver are not installed here")
def test_load_benchmark_prints_its_ratio(full_atlas, tmp_path):
    db = tmp_path / "load.duckdb"   # its last phase rewrites the atlas
    shutil.copy(full_atlas, db)
    out = run("load.py", "--db", str(db), "--sessions", "2", "--rounds", "1",
              "--pages", "Overview", "--timeout", "1", "--writer-analyses", "galaxy")
    ratios(out, r"p95 loaded / baseline: ([\d.]+)x")
    assert re.search(r"heavy stopped [1-9]\d* times", out), out
    ratios(out, r"p95 during analyze / baseline: ([\d.]+)x")
    assert re.search(r"analyze runs committed, 0 failed; 0 page loads showed an error", out), out


def test_gemma_scale_benchmark_prints_its_figures(tmp_path):
    out = run("gemma_scale.py", "--shrink", "--layers", "2", "--d-sae", "256",
              "--compare-d-sae", "32", "--blocks", "8", "--block-size", "64",
              "--tokenizer", str(tiny_model_dir()), "--json", str(tmp_path / "g.json"))
    ratios(out, r"ratio harvest / bare forward: ([\d.]+)")
    ratios(out, r"statistics \+ co-occurrence = ([\d.]+)x the forward time")
    ratios(out, r"stored bytes per SAE \(DuckDB and matrix file\) ([\d.]+) MiB")
    ratios(out, r"median ([\d.]+) ms")
    ratios(out, r"ratio ([\d.]+)x  \(goal <= 1.5\)")
    ratios(out, r"= ([\d.]+) min for 2 layers")


def test_feature_page_benchmark_prints_its_ratios(tiny_atlas):
    out = run("feature_page.py", "--db", str(tiny_atlas[0].db), "--layer", "1",
              "--features", "1")
    ratios(out, r"second/first ratio ([\d.]+)x")
    ratios(out, r"second call / start-up ratio ([\d.]+)x")
    ratios(out, r"feature/overview ratio ([\d.]+)x")


def test_explain_benchmark_prints_its_rates_ratio_and_scores(tiny_atlas):
    out = run("explain.py", "--db", str(tiny_atlas[0].db), "--sae", tiny_atlas[1].sae_ids[0],
              "--features", "2", "--", "--explainer", str(tiny_model_dir()), "--max-tokens", "4",
              "--blocks", "4", "--held-out", "2", "--examples", "3", "--device", "cpu")
    ratios(out, r"= ([\d.]+) explanations/min")
    ratios(out, r"= ([\d.]+) scores/min")
    ratios(out, r"/ bare generation: ([\d.]+)")
    ratios(out, r"mean balanced accuracy ([\d.]+) vs")
    ratios(out, r"vs ([\d.]+) on other features' texts")
