"""Gemma scale: Gemma-2-2B's published configuration (random weights, built in code) with one
synthetic JumpReLU SAE per layer, harvested, stored and indexed stage by stage.

    python benchmarks/gemma_scale.py                    # CPU, reduced: 4 layers x 16k, 32 blocks
    python benchmarks/gemma_scale.py --layers 26 --blocks 2048 --compare-d-sae 0   # one GPU
    python benchmarks/gemma_scale.py --layers 1 --d-sae 65536 --blocks 2048 --compare-d-sae 0

The model is transformers' Gemma2 with the Gemma-2-2B configuration (2304 wide, 26 layers,
8 heads of 256, 4 KV heads, 9216 MLP, 256k vocabulary), truncated to --layers; the corpus is
the embedded one in 256-token packed blocks (token ids from SmolLM2's tokenizer: with random
weights any ids in the vocabulary do). Each SAE is a SAELens JumpReLU SAE with random unit
decoder directions whose thresholds are set on a calibration batch (a Gaussian fit of each
feature's pre-activation) so that firing rates follow a Zipf law summing to --l0 (Gemma
Scope's L0 is ~70).

Prints, in one run: bare forward tokens/s to the deepest layer, harvest tokens/s and their
ratio (goal >= 0.6 on a GPU); time per stage (forward, encode, statistics, co-occurrence,
result to host, DuckDB write, index); statistics + co-occurrence against the forward time
(goal <= 20% on the CPU at reduced size); peak host and GPU memory; DuckDB bytes per SAE;
partner-query latency; a whole 16k build against a --compare-d-sae one over the same blocks
(goal <= 1.5x); and the projection to --project-tokens (12.8M: 50k documents of 256 tokens;
goal <= 15 min for 26 x 16k on one H100 or H200).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from atlas import pipeline, store
from atlas.artifacts import cooccurrence_dir
from atlas.config import BuildConfig
from atlas.harvest import forward_batches
from atlas.models import HookPoint, LoadedModel, load_tokenizer, resolve_device
from atlas.pipeline import AtlasSAE

log = logging.getLogger("benchmark")

GEMMA_2_2B = {"hidden_size": 2304, "num_hidden_layers": 26, "intermediate_size": 9216,
              "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
              "vocab_size": 256000}
"""google/gemma-2-2b's config.json (the fields that set the cost of a forward pass)."""


def gemma_model(n_layers: int, device: torch.device, dtype: torch.dtype, tokenizer,
                shrink: bool = False) -> LoadedModel:
    """Gemma-2-2B's architecture with random weights, its first `n_layers` blocks.
    `shrink` (smoke tests only) makes every dimension tiny."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    sizes = dict(GEMMA_2_2B, num_hidden_layers=n_layers)
    if shrink:
        sizes.update(hidden_size=64, intermediate_size=128, num_attention_heads=2,
                     num_key_value_heads=1, head_dim=32, vocab_size=len(tokenizer))
    cfg = Gemma2Config(**sizes, attn_implementation="eager")
    torch.manual_seed(0)
    with torch.device(device):
        model = Gemma2ForCausalLM(cfg).to(dtype).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, model_id="gemma-2-2b-random",
                       source="random", n_layers=n_layers, d_model=cfg.hidden_size,
                       device=device, spec="", dtype=dtype)


def zipf_rates(d_sae: int, l0: float, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Firing rates proportional to 1/rank^exponent, summing to l0, in a random feature order."""
    rates = 1.0 / np.arange(1, d_sae + 1) ** exponent
    rates = np.minimum(rates * l0 / rates.sum(), 0.5)
    return rng.permutation(rates)


@torch.no_grad()
def jumprelu_saes(lm: LoadedModel, calibration: dict[str, torch.Tensor], d_sae: int, l0: float,
                  exponent: float, dtype: torch.dtype) -> list[AtlasSAE]:
    """One JumpReLU SAE per hook, thresholds set on the calibration residuals."""
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    out = []
    for name, x in calibration.items():
        hook = HookPoint.parse(name)
        gen = torch.Generator().manual_seed(hook.layer)
        rng = np.random.default_rng(hook.layer)
        cfg = JumpReLUSAEConfig(d_in=lm.d_model, d_sae=d_sae, dtype=str(dtype).split(".")[1],
                                device=str(lm.device), metadata=SAEMetadata(hook_name=name))
        sae = JumpReLUSAE(cfg).eval()
        w = torch.randn(lm.d_model, d_sae, generator=gen)
        w = w / w.norm(dim=0, keepdim=True)
        sae.W_enc.copy_(w)
        sae.W_dec.copy_(w.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        pre = (x.float().to(lm.device) @ w.to(lm.device))
        rates = torch.from_numpy(zipf_rates(d_sae, l0, exponent, rng)).float().to(lm.device)
        # a projection of the residual onto a random direction is close to Gaussian: its
        # threshold for a rate r is mean + std * Phi^-1(1 - r), rare features included
        z = torch.special.ndtri(1 - rates.double()).float()
        sae.threshold.copy_((pre.mean(0) + pre.std(0) * z).clamp(min=1e-6))
        out.append(AtlasSAE(f"gemma-random/L{hook.layer}/{d_sae}", hook, "random", sae))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Stages:
    """Seconds per stage (the device synchronised around each)."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, {}

    def time(self, stage: str, fn, *args, **kwargs):
        sync(self.device)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        sync(self.device)
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0
        return out


def instrumented_harvest(config: BuildConfig, lm: LoadedModel, saes: list[AtlasSAE], blocks,
                         stages: Stages) -> dict:
    """The harvest's own steps, each timed: forward, encode, statistics and the co-occurrence
    products (the counter's flushes, timed apart), and the statistics brought to the host."""
    accs = pipeline.accumulators(config, saes, blocks.n_blocks, shard_blocks=config.shard_blocks)
    wrapped: set[int] = set()

    def wrap(gram) -> None:
        if id(gram) in wrapped:
            return
        flush, alloc = gram.flush, gram._alloc
        gram.flush = lambda: stages.time("co-occurrence", flush)

        def timed_alloc():
            if gram.counts is not None:
                return alloc()
            t0 = time.perf_counter()
            out = stages.time("co-occurrence", alloc)
            stages.seconds["allocation"] = (stages.seconds.get("allocation", 0.0)
                                            + time.perf_counter() - t0)
            return out
        gram._alloc = timed_alloc
        wrapped.add(id(gram))

    for s in saes:   # the counter's first allocation (d^2/2 floats) is its cost
        accs[s.sae_id]._on(s.sae.W_dec.device)
        wrap(accs[s.sae_id].gram)


    batches = forward_batches(lm, blocks, [s.hook for s in saes],
                              batch_blocks=config.batch_blocks)
    encoders = pipeline.Encoders(config.sae_dtype)
    while True:
        batch = stages.time("forward", next, batches, None)
        if batch is None:
            break
        for s in saes:
            acts, mask = batch.acts[s.hook.name], batch.masks[s.hook.name]
            codes = stages.time("encode", pipeline.encode_batch, encoders(s, acts.dtype), acts,
                                mask)
            acc = accs[s.sae_id]
            before = stages.seconds.get("co-occurrence", 0.0)
            stages.time("statistics", acc.update, batch.start, codes, batch.token_ids,
                        batch.masks[s.hook.name], masked=True)
            wrap(acc.gram)
            stages.seconds["statistics"] -= stages.seconds.get("co-occurrence", 0.0) - before
    out = {}
    for sid, acc in accs.items():
        wrap(acc.gram)
        acc.gram.flush()
        out[sid] = stages.time("result to host", acc.result)
    return out


def build_once(config: BuildConfig, lm: LoadedModel, saes: list[AtlasSAE], blocks, db: Path,
               stages: Stages | None = None) -> dict:
    """Harvest, write and index the SAEs into a fresh atlas; seconds per step and sizes."""
    stages = stages or Stages(lm.device)
    t0 = time.perf_counter()
    batches = forward_batches(lm, blocks, [s.hook for s in saes],
                              batch_blocks=config.batch_blocks)
    stats, quality = stages.time("harvest", pipeline.harvest, config, saes, batches,
                                 n_blocks=blocks.n_blocks)
    config = dataclasses.replace(config, db=db)
    con = store.connect(db)
    store.write_model(con, model_id=lm.model_id, source=lm.source, n_layers=lm.n_layers,
                      d_model=lm.d_model, spec=lm.spec)
    pipeline.store_corpus(con, lm, blocks)
    con.execute("CHECKPOINT")
    base = db.stat().st_size
    for s in saes:
        stages.time("DuckDB write", pipeline.store_harvest, con, config, lm, s, blocks,
                    stats[s.sae_id], quality[s.sae_id])
    con.execute("CHECKPOINT")
    # the database's growth and the co-occurrence matrix files beside it ('matrix' form)
    size = db.stat().st_size - base + sum(
        p.stat().st_size for p in cooccurrence_dir(db).glob("*") if p.is_file())
    stages.time("index", pipeline.index_saes, con, config, [s.sae_id for s in saes])
    con.close()
    return {"seconds": time.perf_counter() - t0, "bytes_per_sae": size / len(saes),
            "stages": stages.seconds, "stats": stats}


def partner_latency(db: Path, sae_id: str, d_sae: int, n: int = 30) -> list[float]:
    from atlas import readonly

    rng = np.random.default_rng(0)
    out = []
    with readonly.open_readonly(db) as con:
        for f in rng.integers(0, d_sae, n):
            t0 = time.perf_counter()
            con.execute("SELECT partner, phi FROM partners(?, ?) ORDER BY phi DESC LIMIT 20",
                        [sae_id, int(f)]).fetchall()
            out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4, help="Gemma layers kept (26: all)")
    parser.add_argument("--d-sae", type=int, default=16384)
    parser.add_argument("--compare-d-sae", type=int, default=512,
                        help="also build with SAEs this wide over the same blocks (0: skip)")
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-blocks", type=int, default=8)
    parser.add_argument("--l0", type=float, default=70.0)
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"],
                        help="model and SAE precision (default: bfloat16 on CUDA)")
    parser.add_argument("--tokenizer", default="smollm2-135m",
                        help="a model (or tokenizer folder) whose tokenizer cuts the corpus")
    parser.add_argument("--corpus", default="default",
                        help="the corpus to cut ('code': the standard library's source, "
                             "present everywhere)")
    parser.add_argument("--project-tokens", type=float, default=12.8e6)
    parser.add_argument("--shrink", action="store_true", help="tiny dimensions (smoke test)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("TQDM_DISABLE", "1")

    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    tokenizer = load_tokenizer(args.tokenizer)
    lm = gemma_model(args.layers, device, dtype, tokenizer, shrink=args.shrink)
    config = BuildConfig(tokens=args.blocks * args.block_size, block_size=args.block_size,
                         block_rule="packed", batch_blocks=args.batch_blocks,
                         shard_blocks=args.batch_blocks * 8, device=device.type,
                         threshold=0.0, analyses=(), corpus=args.corpus)
    blocks = pipeline.corpus(config, lm)
    hooks = [HookPoint(layer) for layer in range(args.layers)]
    first = next(forward_batches(lm, blocks, hooks, batch_blocks=min(4, blocks.n_blocks)))
    calibration = {h.name: first.acts[h.name][first.masks[h.name]] for h in hooks}

    def saes_of(width: int) -> list[AtlasSAE]:
        return jumprelu_saes(lm, calibration, width, min(args.l0, width / 4), args.zipf, dtype)

    saes = saes_of(args.d_sae)
    n_tok = blocks.n_tokens
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def bare() -> None:
        for _ in forward_batches(lm, blocks, hooks, batch_blocks=config.batch_blocks):
            pass

    stages = Stages(device)
    stages.time("bare forward", bare)  # warm-up
    stages.seconds.clear()
    stages.time("bare forward", bare)
    instrumented_harvest(config, lm, saes, blocks, stages)
    with tempfile.TemporaryDirectory() as tmp:
        built = build_once(config, lm, saes, blocks, Path(tmp) / "atlas.duckdb", stages)
        latency = partner_latency(Path(tmp) / "atlas.duckdb", saes[0].sae_id, args.d_sae)
        with store.connect(Path(tmp) / "atlas.duckdb") as con:
            forms = con.execute("SELECT DISTINCT cooccurrence_storage, block_firings_kept "
                                "FROM harvests").fetchall()
    compare = None
    if args.compare_d_sae:
        small = saes_of(args.compare_d_sae)
        with tempfile.TemporaryDirectory() as tmp:
            compare = build_once(config, lm, small, blocks, Path(tmp) / "atlas.duckdb")
    peak_host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    peak_gpu = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None

    s = stages.seconds
    fwd = s["forward"]
    l0 = statistics.mean(float(st.firing_count.sum()) / st.n_tokens
                         for st in built["stats"].values())
    print(f"Gemma-2-2B configuration, random weights, {args.layers} layers"
          f"{' (shrunk)' if args.shrink else ''}, {dtype} on {device}; {len(saes)} JumpReLU "
          f"SAEs x {args.d_sae} features (measured L0 {l0:.1f}); {n_tok} tokens in "
          f"{blocks.n_blocks} blocks of {args.block_size}; {torch.get_num_threads()} threads")
    print(f"bare forward to layer {args.layers - 1}: {n_tok / s['bare forward']:10.0f} tok/s")
    print(f"harvest (forward + encode + statistics + co-occurrence): "
          f"{n_tok / s['harvest']:10.0f} tok/s")
    print(f"ratio harvest / bare forward: {s['bare forward'] / s['harvest']:.3f}  "
          f"(goal >= 0.6 on a GPU)")
    print("stages (instrumented pass, device synchronised):")
    for stage in ("forward", "encode", "statistics", "co-occurrence", "result to host",
                  "DuckDB write", "index"):
        print(f"  {stage:15s} {s.get(stage, 0.0):9.2f} s")
    share = (s["statistics"] + s["co-occurrence"]) / fwd
    print(f"statistics + co-occurrence = {share:.3f}x the forward time  (goal <= 0.20); "
          f"co-occurrence includes the counters' one-time allocation, "
          f"{s['allocation']:.2f} s: without it {share - s['allocation'] / fwd:.3f}x")
    print(f"storage: co-occurrence {forms[0][0]}, block firings {forms[0][1]}; "
          f"stored bytes per SAE (DuckDB and matrix file) {built['bytes_per_sae'] / 2**20:.1f} "
          "MiB  (goal <= 1536 MiB at 16k)")
    print(f"partners of one feature (top 20 by phi): median {statistics.median(latency) * 1e3:.1f}"
          f" ms, max {max(latency) * 1e3:.1f} ms  (goal < 100 ms)")
    print(f"peak host memory {peak_host:.2f} GiB" + (
        f", peak GPU memory {peak_gpu:.2f} GiB" if peak_gpu is not None else ""))
    per_token = s["harvest"] / n_tok
    fixed = s["DuckDB write"] + s["index"]
    projected = per_token * args.project_tokens + fixed
    print(f"projection to {args.project_tokens / 1e6:.1f}M tokens: harvest "
          f"{per_token * args.project_tokens / 60:.1f} min + write and index {fixed / 60:.1f} min"
          f" = {projected / 60:.1f} min for {len(saes)} layers (goal <= 15 min for 26 x 16k on "
          "one H100 or H200)")
    if compare is not None:
        ratio = built["seconds"] / compare["seconds"]
        print(f"build (harvest + write + index) with {args.d_sae} features: "
              f"{built['seconds']:.1f} s; with {args.compare_d_sae}: {compare['seconds']:.1f} s;"
              f" ratio {ratio:.2f}x  (goal <= 1.5)")
    if args.json:
        args.json.write_text(json.dumps({
            "stage_seconds": s, "tokens": n_tok, "l0": l0, "bytes_per_sae": built["bytes_per_sae"],
            "partner_latency_s": latency, "peak_host_gib": peak_host, "peak_gpu_gib": peak_gpu,
            "compare_seconds": compare and compare["seconds"], "build_seconds": built["seconds"],
            "projected_seconds": projected}, indent=1))


if __name__ == "__main__":
    main()
