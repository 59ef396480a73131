"""Harvest throughput against a bare forward pass, in one run.

    python benchmarks/harvest.py                 # SmolLM2, default layers, 32 blocks
    python benchmarks/harvest.py --build         # also time the whole default `atlas build`
    python benchmarks/harvest.py --model ./small-model --layers 1,3 --blocks 4 \
        --block-size 64 --d-sae 64 --k 4         # any model folder, in seconds
    python benchmarks/harvest.py --block-rule packed   # full blocks across documents

Prints bare-forward tokens/s (the harvest's own pass without SAEs: stopping after the deepest
hooked layer, short document blocks run to each batch's longest; corpus tokens, padding left
out), harvest tokens/s
(forward + SAE encode + statistics for every layer, per-shard co-occurrence and the merge of
the shards), their ratio (goal >= 0.85) measured two ways: whole passes alternating, and
within each harvest batch by batch (every batch's bare forward timed just before the harvest
takes the same blocks: on a shared host whose speed drifts over seconds, this pairs times
taken moments apart), and the once-per-build cost of turning the statistics into DuckDB rows.
The SAEs are TopK SAEs of the default size with random weights unless --db names an atlas
whose trained SAEs should be used; the harvest's cost does not depend on the weights' values.
As in the default build, the SAEs carry the quality measured when they were trained, so the
harvest does not measure it again; --measure-quality times the path of SAEs a user brings
(held-out explained variance, L0 and dead fraction measured during the harvest).
Encoders run in --sae-dtype ('auto': bfloat16 where the model runs in bfloat16).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from atlas import allocator, pipeline
from atlas.config import BuildConfig
from atlas.harvest import forward_batches
from atlas.models import HookPoint
from atlas.pipeline import AtlasSAE
from atlas.saes import SAEQuality, load_saved

log = logging.getLogger("benchmark")


TRAINED = SAEQuality(l0=0.0, explained_variance=0.0, dead_fraction=0.0, n_tokens=0)
"""Stands for the quality a trained SAE carries from its training (its values are not read)."""


def random_saes(config: BuildConfig, d_model: int) -> list[AtlasSAE]:
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    out = []
    for layer in config.layers:
        hook = HookPoint(layer)
        torch.manual_seed(layer)
        sae = TopKSAE(TopKSAEConfig(d_in=d_model, d_sae=config.d_sae, k=config.k,
                                    metadata=SAEMetadata(hook_name=hook.name))).eval()
        out.append(AtlasSAE(f"random/L{layer}", hook, "random", sae))
    return out


def atlas_saes(db: Path) -> list[AtlasSAE]:
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT sae_id, hook, path FROM saes WHERE path IS NOT NULL "
                           "ORDER BY layer").fetchall()
    return [AtlasSAE(sid, HookPoint.parse(hook), "atlas", load_saved(Path(path)))
            for sid, hook, path in rows]


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(a, b, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of `a` and of `b`, run alternately `repeats` times each: a machine whose speed
    drifts (a shared host) slows both alike instead of biasing their ratio."""
    ta, tb = [], []
    for _ in range(repeats):
        for fn, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return ta, tb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--db", type=Path, help="take the SAEs from this atlas")
    parser.add_argument("--build", action="store_true", help="also time the default build")
    defaults = BuildConfig()
    parser.add_argument("--model", default=defaults.model)
    parser.add_argument("--layers", default=",".join(map(str, defaults.layers)))
    parser.add_argument("--d-sae", type=int, default=defaults.d_sae)
    parser.add_argument("--k", type=int, default=defaults.k)
    parser.add_argument("--block-size", type=int, default=defaults.block_size)
    parser.add_argument("--block-rule", choices=["document", "packed"],
                        default=defaults.block_rule)
    parser.add_argument("--dtype", default=defaults.dtype,
                        choices=["auto", "float32", "bfloat16", "float16"])
    parser.add_argument("--sae-dtype", default=defaults.sae_dtype,
                        choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--measure-quality", action="store_true",
                        help="measure each SAE's held-out quality during the harvest, as for "
                             "SAEs a user brings")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("TQDM_DISABLE", "1")
    allocator.tune()  # as `atlas build` runs

    scratch = tempfile.TemporaryDirectory()    # where wide SAEs' matrix files are written
    config = BuildConfig(db=Path(scratch.name) / "atlas.duckdb",
                         model=args.model, tokens=args.blocks * args.block_size,
                         layers=tuple(int(x) for x in args.layers.split(",")),
                         d_sae=args.d_sae, k=args.k, block_size=args.block_size,
                         block_rule=args.block_rule, dtype=args.dtype,
                         sae_dtype=args.sae_dtype)
    lm = pipeline.load(config)
    saes = atlas_saes(args.db) if args.db else random_saes(config, lm.d_model)
    if not args.measure_quality:
        saes = [dataclasses.replace(s, quality=TRAINED) for s in saes]
    hooks = [s.hook for s in saes]
    blocks = pipeline.corpus(config, lm)
    n_tok = blocks.n_tokens

    def bare():
        # the harvest's own pass (short blocks run to each batch's longest), without SAEs
        for _ in forward_batches(lm, blocks, hooks, batch_blocks=config.batch_blocks):
            pass

    results = {}

    def harvest():
        batches = forward_batches(lm, blocks, hooks, batch_blocks=config.batch_blocks)
        results["stats"], _ = pipeline.harvest(config, saes, batches, n_blocks=blocks.n_blocks,
                                               block_tokens=blocks.mask.sum(1))

    def rows():
        for s in saes:
            pipeline.harvest_tables(config, lm, s, blocks, results["stats"][s.sae_id])

    def batchwise() -> tuple[float, float]:
        # one harvest whose every batch is preceded by a bare forward of the same blocks:
        # (seconds in the bare forwards, seconds of the harvest without them)
        t_bare = 0.0
        plain = forward_batches(lm, blocks, hooks, batch_blocks=config.batch_blocks)

        def paced():
            nonlocal t_bare
            for batch in forward_batches(lm, blocks, hooks, batch_blocks=config.batch_blocks):
                t0 = time.perf_counter()
                next(plain)
                t_bare += time.perf_counter() - t0
                yield batch

        t0 = time.perf_counter()
        pipeline.harvest(config, saes, paced(), n_blocks=blocks.n_blocks,
                         block_tokens=blocks.mask.sum(1))
        return t_bare, time.perf_counter() - t0 - t_bare

    bare()  # warm-up
    bares, harvests = interleaved(bare, harvest, args.repeats)
    t_bare, t_harv = statistics.median(bares), statistics.median(harvests)
    pair_ratios = sorted(b / h for b, h in zip(bares, harvests))
    by_batch = sorted(b / h for b, h in (batchwise() for _ in range(args.repeats)))
    t_rows = timed(rows, 1)
    deepest = max(h.layer for h in hooks)
    print(f"model {lm.model_id}, {len(saes)} SAEs (d_sae {saes[0].sae.cfg.d_sae}) at layers "
          f"{[h.layer for h in hooks]}, {n_tok} corpus tokens in {blocks.n_blocks} {blocks.rule} "
          f"blocks, median of {args.repeats} alternating runs, "
          f"{torch.get_num_threads()} threads on {lm.device}, model in "
          f"{str(lm.dtype).removeprefix('torch.')}, encoders in {config.sae_dtype} "
          f"({'measuring' if args.measure_quality else 'not measuring'} quality)")
    print(f"bare forward to layer {deepest}: {n_tok / t_bare:8.0f} tok/s")
    print(f"harvest (forward + SAE encode + statistics): {n_tok / t_harv:8.0f} tok/s")
    print(f"ratio harvest / bare forward: {t_bare / t_harv:.3f}  (goal >= 0.85; runs "
          f"alternate, each pair's ratio {pair_ratios[0]:.3f}-{pair_ratios[-1]:.3f})")
    print(f"ratio with batches alternating (each batch's bare forward just before its "
          f"harvest, so a host whose speed drifts slows both alike): "
          f"{statistics.median(by_batch):.3f}  (median of {args.repeats} harvests, "
          f"{by_batch[0]:.3f}-{by_batch[-1]:.3f})")
    print(f"then, once per build: rows for DuckDB (labels, example contexts, Arrow tables) "
          f"{t_rows:.2f}s for {blocks.n_blocks} blocks = {t_rows / t_harv:.2f}x the harvest")
    if args.build:
        from atlas.builder import build

        with tempfile.TemporaryDirectory() as tmp:
            result = build(BuildConfig(db=Path(tmp) / "atlas.duckdb"))
        print(f"default `atlas build`: {result.seconds:.0f}s wall for {result.n_tokens} tokens "
              f"and {len(result.sae_ids)} SAEs (goal <= 600s)")


if __name__ == "__main__":
    main()
