"""The whole `atlas build`, stage by stage, with its peak memory, in one run.

    python benchmarks/build.py                      # the embedded default (every analysis)
    python benchmarks/build.py -- --tokens 40000    # any `atlas build` flags after --
    python benchmarks/build.py --keep ./b.duckdb    # keep the atlas it built

Runs `atlas build` in a child process on a new database and prints: wall seconds of every
build step (load, corpus, forward pass into the activation cache, SAE training, harvest, store,
index, word tables, analyses) and of every analysis (from `analysis_runs`); the whole build
against its own forward pass (the one pass over the corpus a build cannot skip) as a ratio;
the child's peak resident memory; and each trained SAE's held-out explained variance and dead
fraction. Goals for the default on 2 cores: <= 600 s, <= 4 GiB, EV >= 0.78, dead <= 1%.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_SECONDS, GOAL_GIB, GOAL_EV, GOAL_DEAD = 600, 4.0, 0.78, 0.01


def stage_times(log_text: str) -> dict[str, float]:
    """The step times of the build's last line ('atlas X built in Ns (step 1.0s, ...)')."""
    found = re.findall(r"built in \d+s \((.*)\)", log_text)
    if not found:
        raise SystemExit("the build did not finish:\n" + log_text[-3000:])
    return {name: float(sec) for name, sec in re.findall(r"(\w+) ([\d.]+)s", found[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", type=Path, help="build this database and keep it")
    parser.add_argument("flags", nargs="*", help="`atlas build` flags (after --)")
    args = parser.parse_args()
    env = {**os.environ, "TQDM_DISABLE": os.environ.get("TQDM_DISABLE", "1")}
    with tempfile.TemporaryDirectory() as tmp:
        db = args.keep or Path(tmp) / "atlas.duckdb"
        cmd = [sys.executable, "-c", "import sys; from atlas.cli import main; "
               "sys.exit(main())", "build", "--db", str(db), *args.flags]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"atlas build failed ({done.returncode}):\n{done.stdout[-3000:]}")
        # ru_maxrss of waited-for children, in KiB on Linux
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
        stages = stage_times(done.stdout)
        import duckdb

        with duckdb.connect(str(db), read_only=True) as con:
            analyses = con.execute("SELECT analysis, sum(seconds), count(*) FROM analysis_runs "
                                   "GROUP BY analysis ORDER BY min(created_at)").fetchall()
            saes = con.execute("SELECT sae_id, explained_variance, dead_fraction FROM saes "
                               "ORDER BY layer").fetchall()
            tokens, dtype = con.execute("SELECT max(n_tokens), max(config->>'model_dtype') "
                                        "FROM harvests").fetchone()

    print(f"atlas build {' '.join(args.flags) or '(defaults)'}: {tokens} tokens, "
          f"{len(saes)} SAEs, {os.cpu_count()} cores, model in {dtype}")
    for name, seconds in stages.items():
        print(f"  {name:<20} {seconds:8.1f} s")
    for name, seconds, runs in analyses:
        print(f"    analysis {name:<14} {seconds:8.1f} s  ({runs} runs)")
    if analyses and "analyze" in stages:
        rest = stages["analyze"] - sum(seconds for _, seconds, _ in analyses)
        print(f"    shared passes, writes {rest:8.1f} s  (each analysis's one-off work before its "
              "runs: model passes, probes, correlations; storing results)")
    forward = stages.get("cache_activations") or stages.get("harvest") or 0.0
    against = (f"{wall / forward:.2f}x the build's own forward pass ({forward:.2f} s)"
               if forward > 0 else "the forward pass took under 0.01 s")
    print(f"wall {wall:.1f} s (goal <= {GOAL_SECONDS} s): {against}")
    print(f"peak RSS {peak_gib:.2f} GiB (goal <= {GOAL_GIB:g} GiB)")
    for sid, ev, dead in saes:
        print(f"  {sid}: held-out EV {ev:.3f} (goal >= {GOAL_EV}), dead {dead:.2%} "
              f"(goal <= {GOAL_DEAD:.0%})")


if __name__ == "__main__":
    main()
