"""The device check's step logic (scripts/gpu_check.py) at its tiny size, on the CPU: each step
in its own process, the JSON rewritten after every step, a step past its limit recorded as such
while the steps after it still run."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.py"


def _run(out: Path, *args: str) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--size", "tiny",
                           *args], capture_output=True, text=True, cwd=ROOT, timeout=600)
    return done.returncode, json.loads((out / "gpu_check.json").read_text())


def test_tiny_steps_run_and_agree_across_devices(tmp_path):
    code, report = _run(tmp_path, "--only", "environment", "harvest_devices", "faiss_devices")
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["environment", "harvest_devices", "faiss_devices"]
    assert steps["environment"]["status"] == "ok", steps["environment"]
    assert steps["environment"]["versions"]["sae_lens"][0].isdigit()
    harvest = steps["harvest_devices"]
    assert harvest["status"].startswith("ok"), harvest
    assert set(harvest["max_count_difference"].values()) == {0}
    assert harvest["tokens"] > 0 and harvest["saes"] == 2
    faiss = steps["faiss_devices"]
    assert faiss["flat"]["agreement_with_exact"] == 1.0
    assert 0.5 < faiss["ivf"]["agreement_with_exact"] <= 1.0
    # without a GPU (or a FAISS GPU build) a step passes saying what it could not compare
    assert faiss["status"] == "ok" or "CPU figures only" in faiss["status"], faiss
    assert code == 0, report
    assert (tmp_path / "gpu_check.log").read_text().count("=====") == 3


def test_a_step_past_its_limit_is_recorded_and_the_next_still_runs(tmp_path):
    code, report = _run(tmp_path, "--only", "environment", "faiss_devices",
                        "--limit-scale", "0.002")
    assert code == 1
    assert [s["name"] for s in report["steps"]] == ["environment", "faiss_devices"]
    for step in report["steps"]:
        assert step["status"].startswith("timed out after"), step
        assert step["seconds"] < 30
