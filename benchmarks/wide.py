"""A wide SAE against a narrow one through the CLI: `atlas build --sae-path` over the same blocks.

    python benchmarks/wide.py                          # 16,384 vs 512 features, 128 blocks
    python benchmarks/wide.py --d-sae 65536 --blocks 64
    python benchmarks/wide.py --model ./small-model --layer 1 --d-sae 256 --baseline 16 \
        --blocks 4 --block-size 64 --k 4             # any model folder, in seconds

Saves two SAELens TopK SAEs with random weights (the harvest's cost does not depend on the
weights' values) at one layer of the model, runs `atlas build --sae-path X --quick` on a new
database for each in a child process (the harvest, store and index a researcher's own SAEs go
through; no training, no analyses), alternating narrow and wide --repeats times, and prints per
width: the build's step times, its wall time, the child's peak resident memory and the
size of the atlas's files (the database and the folders beside it); then the wide build's wall time against the narrow one's (goal <= 1.3x on 2
cores for 16,384 vs 512 over 128 blocks) and its peak memory (goal <= 1.5 GB per 16k SAE).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_RATIO, GOAL_GB = 1.3, 1.5


def save_sae(folder: Path, d_in: int, d_sae: int, k: int, layer: int) -> Path:
    """A SAELens TopK SAE with random weights, saved as SAELens saves it."""
    import torch
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    from atlas.models import HookPoint

    torch.manual_seed(d_sae)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k,
                                metadata=SAEMetadata(hook_name=HookPoint(layer).name)))
    path = folder / f"topk-{d_sae}"
    sae.save_model(path)
    return path


def run_build(db: Path, flags: list[str]) -> tuple[float, float, dict[str, float]]:
    """(wall seconds, peak RSS in GB, step seconds) of one `atlas build` in a child process."""
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c", "import sys; from atlas.cli import main; sys.exit(main())",
           "build", "--db", str(db), *flags]
    with tempfile.TemporaryFile("w+") as log_file:
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        log_file.seek(0)
        out = log_file.read()
    if child.returncode != 0:
        raise SystemExit(f"atlas build failed ({child.returncode}):\n{out[-3000:]}")
    return wall, usage.ru_maxrss * 1024 / 1e9, build_benchmark().stage_times(out)


def build_benchmark():
    """benchmarks/build.py, whose reading of the build's step times this shares."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_benchmark",
                                                  Path(__file__).with_name("build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--d-sae", type=int, default=16384)
    parser.add_argument("--baseline", type=int, default=512, help="the narrow SAE's width")
    parser.add_argument("--k", type=int, default=64, help="active features per token")
    parser.add_argument("--blocks", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("flags", nargs="*", help="more `atlas build` flags (after --)")
    args = parser.parse_args()
    if args.baseline >= args.d_sae:
        parser.error("--baseline must be narrower than --d-sae")

    # the model's width, read in a child: a parent holding the model would lend its resident
    # memory to every forked build's peak
    d_in = int(subprocess.run(
        [sys.executable, "-c", "import sys; from atlas.models import load_model; "
         "print(load_model(sys.argv[1], device='cpu').d_model)", args.model],
        capture_output=True, text=True, check=True).stdout.split()[-1])
    widths = (args.baseline, args.d_sae)
    runs: dict[int, list[tuple[float, float, dict[str, float]]]] = {w: [] for w in widths}
    with tempfile.TemporaryDirectory() as tmp:
        saes = {w: save_sae(Path(tmp), d_in, w, args.k, args.layer) for w in widths}
        for r in range(args.repeats):
            for w in widths:
                db = Path(tmp) / f"atlas-{w}-{r}.duckdb"
                flags = ["--model", args.model, "--sae-path", str(saes[w]), "--quick",
                         "--tokens", str(args.blocks * args.block_size),
                         "--block-size", str(args.block_size), *args.flags]
                wall, peak, steps = run_build(db, flags)
                size = sum(p.stat().st_size for p in Path(tmp).rglob("*")
                           if p.is_file() and p.relative_to(tmp).parts[0].startswith(db.name))
                runs[w].append((wall, peak, steps))
                print(f"d_sae {w:>6} run {r + 1}: wall {wall:7.1f} s, peak RSS {peak:5.2f} GB, "
                      f"atlas files {size / 2**20:7.1f} MiB", flush=True)
                for name, sec in steps.items():
                    print(f"    {name:<20} {sec:8.1f} s")
    narrow = statistics.median(w for w, _, _ in runs[args.baseline])
    wide = statistics.median(w for w, _, _ in runs[args.d_sae])
    peak = max(p for _, p, _ in runs[args.d_sae])
    print(f"wall ratio d_sae {args.d_sae} / {args.baseline}: {wide / narrow:.2f}x "
          f"({wide:.1f} s vs {narrow:.1f} s; goal <= {GOAL_RATIO}x)")
    base = max(p for _, p, _ in runs[args.baseline])
    print(f"peak RSS d_sae {args.d_sae}: {peak:.2f} GB, {peak - base:+.2f} GB over d_sae "
          f"{args.baseline} (goal <= {GOAL_GB} GB per 16k SAE)")


if __name__ == "__main__":
    main()
