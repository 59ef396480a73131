"""The device check's steps; `scripts/gpu_check.sh` sets up the environment and runs this.

    python scripts/gpu_check.py --out DIR [--size full|tiny] [--only STEP ...]

Each step runs in its own process under its own time limit, so a crash, a hang or an
out-of-memory error in one step costs only that step; the steps after it still run. After every
step `DIR/gpu_check.json` is written again whole (through a temporary file), so a run killed at
any point still returns what it finished:

    {"size": ..., "device": ..., "steps": [{"name", "status" ("ok" or why not), "seconds",
                                            figures...}, ...]}

Steps: the CUDA tests; a harvest on CUDA against the CPU harvest of the same SAEs on the same
residuals; FAISS on the GPU against the CPU; the Gemma-shaped build of 26 x 16k SAEs with its
projection to 12.8M tokens; one 65k SAE. `--size tiny` runs the same steps at a size a CPU
finishes in about a minute each (the rehearsal).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name, time limit in seconds (full size), what it checks
STEPS = [
    ("environment", 60, "python, torch, CUDA and the packages the atlas imports"),
    ("cuda_tests", 150, "the test suite's CUDA tests"),
    ("harvest_devices", 120, "harvest on CUDA equals the CPU harvest of the same residuals"),
    ("faiss_devices", 60, "FAISS flat and IVF on the GPU against the CPU"),
    ("gemma_26x16k", 150, "26 x 16k Gemma-shaped build, projected to 12.8M tokens"),
    ("gemma_65k", 90, "one 65k SAE"),
]

SIZES = {
    # harvest_devices: layers, d_model shrink, d_sae, blocks; gemma: blocks, layers, d_sae
    "full": {"harvest": dict(layers=4, shrink=False, d_sae=16384, blocks=32),
             "gemma_26": dict(layers=26, d_sae=16384, blocks=256),
             "gemma_65k": dict(layers=1, d_sae=65536, blocks=256),
             "faiss": dict(n=65536, d=2304)},
    "tiny": {"harvest": dict(layers=2, shrink=True, d_sae=256, blocks=8),
             "gemma_26": dict(layers=3, d_sae=512, blocks=8),
             "gemma_65k": dict(layers=1, d_sae=2048, blocks=8),
             "faiss": dict(n=4096, d=64)},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--only", nargs="*", help="run only these steps")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # a step's own process
    parser.add_argument("--limit-scale", type=float, default=1.0,
                        help="multiply every step's time limit")
    args = parser.parse_args()
    if args.step:
        figures = globals()[f"step_{args.step}"](args.size, args.out)
        print("GPU_CHECK_RESULT " + json.dumps(figures))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"size": args.size, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "steps": []}
    with open(args.out / "gpu_check.log", "a") as log:
        for name, limit, what in STEPS:
            if args.only and name not in args.only:
                continue
            result = run_step(name, limit * args.limit_scale, args, log)
            result["checks"] = what
            report["steps"].append(result)
            write_json(args.out / "gpu_check.json", report)
            print(f"{name}: {result['status']} ({result['seconds']:.1f}s)", flush=True)
    return 0 if all(s["status"].startswith("ok") for s in report["steps"]) else 1


def run_step(name: str, limit: float, args, log) -> dict:
    """One step in a process of its own under `limit` seconds: its figures, or why not."""
    t0 = time.perf_counter()
    cmd = [sys.executable, __file__, "--step", name, "--size", args.size, "--out",
           str(args.out)]
    log.write(f"\n===== {name} (limit {limit:.0f}s)\n")
    log.flush()
    try:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=limit, cwd=ROOT)
        output, code = done.stdout, done.returncode
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode()
        code = None
    log.write(output)
    log.flush()
    seconds = time.perf_counter() - t0
    figures = {}
    for line in output.splitlines():
        if line.startswith("GPU_CHECK_RESULT "):
            figures = json.loads(line.split(" ", 1)[1])
    if code is None:
        status = f"timed out after {limit:.0f}s"
    elif code != 0:
        tail = [x for x in output.strip().splitlines() if x.strip()][-1:] or ["no output"]
        status = f"failed (exit {code}): {tail[0][:300]}"
    else:
        status = figures.pop("status", "ok")
    own = {"name": name, "status": status, "seconds": round(seconds, 2)}
    return {**own, **{k: v for k, v in figures.items() if k not in own}}


def write_json(path: Path, report: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(path)


# ---------------------------------------------------------------- the steps (own processes)

def step_environment(size: str, out: Path) -> dict:
    import importlib

    import torch

    versions = {}
    for name in ("torch", "transformers", "sae_lens", "duckdb", "faiss", "numpy", "pyarrow",
                 "sklearn", "scipy"):
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as exc:  # a missing package is the finding
            versions[name] = f"missing: {type(exc).__name__}: {exc}"
    import atlas.pipeline  # noqa: F401  (the harvest's whole import graph)
    from atlas.index import gpu_count

    cuda = torch.cuda.is_available()
    figures = {"python": sys.version.split()[0], "versions": versions, "cuda": cuda,
               "faiss_gpus": gpu_count()}
    if cuda:
        figures["gpu"] = torch.cuda.get_device_name(0)
        figures["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory
                                          / 2**30, 1)
    missing = [k for k, v in versions.items() if str(v).startswith("missing")]
    if missing:
        figures["status"] = f"missing packages: {', '.join(missing)}"
    elif size == "full" and not cuda:
        figures["status"] = "torch sees no CUDA device"
    return figures


def step_cuda_tests(size: str, out: Path) -> dict:
    import torch

    tests = ["tests/test_harvest.py", "tests/test_blockgram.py", "tests/test_index.py",
             "tests/test_saes.py"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-k", "gpu or cuda or sparse_encoder", *tests],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    print(done.stdout)
    summary = [x for x in done.stdout.splitlines() if " in " in x and ("passed" in x
                                                                       or "skipped" in x)]
    figures = {"pytest": summary[-1].strip("= ") if summary else done.stdout[-300:],
               "exit": done.returncode}
    if done.returncode != 0:
        figures["status"] = f"tests failed: {figures['pytest']}"
    elif not torch.cuda.is_available():
        figures["status"] = "ok (no CUDA here: the CUDA tests were skipped)"
    return figures


def _blocks(n_blocks: int, tokenizer, block_size: int = 256):
    from atlas.corpus import documents_for, tokenize_blocks

    # the standard library's source is on every machine: the corpus needs no data package
    return tokenize_blocks(documents_for("code"), tokenizer, tokens=n_blocks * block_size,
                           block_size=block_size, rule="packed", name="code")


def _tokenizer():
    sys.path.insert(0, str(ROOT))
    from tests.tiny import tiny_tokenizer

    return tiny_tokenizer()


def step_harvest_devices(size: str, out: Path) -> dict:
    """The same SAEs on the same residuals (computed once), harvested with the codes on CUDA
    and on the CPU: counts must agree exactly, sums within float tolerance."""
    import dataclasses

    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gemma_scale import gemma_model, jumprelu_saes

    from atlas import pipeline
    from atlas.config import BuildConfig
    from atlas.harvest import forward_batches
    from atlas.models import HookPoint

    p = SIZES[size]["harvest"]
    gpu = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    cpu = torch.device("cpu")
    tok = _tokenizer()
    lm = gemma_model(p["layers"], gpu, torch.float32, tok, shrink=p["shrink"])
    blocks = _blocks(p["blocks"], tok)
    hooks = [HookPoint(layer) for layer in range(p["layers"])]
    batches = [dataclasses.replace(b, acts={k: v.cpu() for k, v in b.acts.items()},
                                   masks={k: v.cpu() for k, v in b.masks.items()})
               for b in forward_batches(lm, blocks, hooks, batch_blocks=4)]
    calibration = {h.name: batches[0].acts[h.name][batches[0].masks[h.name]] for h in hooks}
    saes = jumprelu_saes(lm, calibration, p["d_sae"], 60.0, 1.0, torch.float32)
    config = BuildConfig(tokens=blocks.n_tokens, block_size=256, block_rule="packed",
                         batch_blocks=4, shard_blocks=8, threshold=0.0, analyses=())

    def on(device):
        moved = [dataclasses.replace(s, sae=s.sae.to(device)) for s in saes]
        runs = (dataclasses.replace(b, acts={k: v.to(device) for k, v in b.acts.items()},
                                    masks={k: v.to(device) for k, v in b.masks.items()})
                for b in batches)
        t0 = time.perf_counter()
        stats, _ = pipeline.harvest(config, moved, runs, n_blocks=blocks.n_blocks)
        return stats, time.perf_counter() - t0

    on_gpu, t_gpu = on(gpu)
    on_cpu, t_cpu = on(cpu)
    worst = {"firing_count": 0, "block_count": 0, "cooccurrence": 0, "token_counts": 0}
    rel = {"mean_act": 0.0, "max_act": 0.0}
    for sid in on_cpu:
        a, b = on_gpu[sid], on_cpu[sid]
        for f in ("firing_count", "block_count"):
            worst[f] = max(worst[f], int(np.abs(getattr(a, f) - getattr(b, f)).max()))
        worst["cooccurrence"] = max(worst["cooccurrence"], int(np.abs(
            a.cooccurrence.dense() - b.cooccurrence.dense()).max()))
        same_pairs = (len(a.token_counts[2]) == len(b.token_counts[2])
                      and all(np.array_equal(x, y) for x, y in zip(a.token_counts,
                                                                   b.token_counts)))
        worst["token_counts"] = max(worst["token_counts"], 0 if same_pairs else 1)
        for f in rel:
            x, y = np.nan_to_num(getattr(a, f)), np.nan_to_num(getattr(b, f))
            rel[f] = max(rel[f], float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-6))))
    exact = all(v == 0 for v in worst.values())
    figures = {"device": str(gpu), "saes": len(saes), "d_sae": p["d_sae"],
               "tokens": blocks.n_tokens, "max_count_difference": worst,
               "max_relative_difference": rel, "seconds_device": round(t_gpu, 2),
               "seconds_cpu": round(t_cpu, 2)}
    if not exact or max(rel.values()) > 1e-4:
        figures["status"] = "CUDA and CPU harvests differ (see max_count_difference)"
    elif gpu.type == "cpu":
        figures["status"] = "ok (no CUDA here: CPU compared with CPU)"
    return figures


def step_faiss_devices(size: str, out: Path) -> dict:
    import numpy as np

    from atlas.index import FeatureIndex, blas_topk, gpu_count

    p = SIZES[size]["faiss"]
    rng = np.random.default_rng(0)
    v = rng.normal(size=(p["n"], p["d"])).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    q = v[:512] + 0.01 * rng.normal(size=(512, p["d"])).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    _, want = blas_topk(v, q, 10, np.arange(p["n"]))
    figures: dict = {"n": p["n"], "d": p["d"], "faiss_gpus": gpu_count()}
    for kind in ("flat", "ivf"):
        t0 = time.perf_counter()
        index = FeatureIndex.build(v, kind=kind)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, got = index.search(q, 10, exact=kind == "flat")
        searched = time.perf_counter() - t0
        agree = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)]))
        figures[kind] = {"build_s": round(built, 3), "search_512_s": round(searched, 4),
                         "agreement_with_exact": round(agree, 4),
                         "on_gpu": index.gpu_index() is not None,
                         "params": index.meta.params}
    if gpu_count() == 0:
        figures["status"] = ("ok (FAISS sees no GPU: this environment has the CPU build; the "
                             "GPU build, faiss-gpu, is a 135 MB wheel for CUDA 12 and cannot "
                             "travel: CPU figures only)")
    elif figures["flat"]["agreement_with_exact"] < 0.99:
        figures["status"] = "GPU flat search disagrees with exact search"
    return figures


def _gemma(size: str, which: str, out: Path) -> dict:
    p = SIZES[size][which]
    scratch = Path(tempfile.gettempdir()) / "atlas-gpu-check"
    tok_dir = scratch / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        _tokenizer().save_pretrained(tok_dir)
    result = scratch / f"{which}.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gemma_scale.py"),
           "--layers", str(p["layers"]), "--d-sae", str(p["d_sae"]),
           "--blocks", str(p["blocks"]), "--compare-d-sae", "0", "--tokenizer", str(tok_dir),
           "--corpus", "code", "--json", str(result)]
    if size == "tiny":
        cmd.append("--shrink")
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          cwd=ROOT)
    print(done.stdout)
    if done.returncode != 0:
        raise SystemExit(f"gemma_scale.py failed: {done.stdout.strip().splitlines()[-1:]}")
    figures = json.loads(result.read_text())
    result.unlink()
    figures["printed"] = [x for x in done.stdout.splitlines() if x.strip()][-14:]
    return figures


def step_gemma_26x16k(size: str, out: Path) -> dict:
    return _gemma(size, "gemma_26", out)


def step_gemma_65k(size: str, out: Path) -> dict:
    return _gemma(size, "gemma_65k", out)


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
