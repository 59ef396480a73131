"""`atlas.build(config)`: the whole build in one call.

The sequence of steps lives here once; `atlas.flows.build` (flows/build.py) runs the same
sequence with each step wrapped as a Prefect task (the `step` argument).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from atlas import pipeline
from atlas.config import BuildConfig

log = logging.getLogger(__name__)

Step = Callable[[Callable], Callable]
FanOut = Callable[..., tuple[dict, dict]]


@dataclass(frozen=True)
class BuildResult:
    """What a build wrote."""

    db: str
    model_id: str
    corpus_id: str
    sae_ids: tuple[str, ...]
    n_tokens: int
    seconds: float


def _plain(fn: Callable) -> Callable:
    return fn


def build(config: BuildConfig, *, records: Iterable[object] | None = None,
          step: Step = _plain, fan_out: FanOut | None = None) -> BuildResult:
    """Harvest a model's SAE features into the DuckDB atlas at `config.db`.

    Args:
        config: what to build.
        records: optional in-memory corpus (a `datasets.Dataset`, strings, or dicts with
            'text') used instead of `config.corpus`.
        step: wraps each step before it runs (the Prefect flow makes each one a task).
        fan_out: harvests the shards elsewhere and merges them (the Prefect flow submits one
            task per shard to its task runner); by default the shards run here in order.
    """
    t0 = time.perf_counter()
    con = pipeline.open_store(config)
    try:
        lm = step(pipeline.load)(config)
        planned = step(pipeline.plan_saes)(config, lm)
        blocks = step(pipeline.corpus)(config, lm, records)
        step(pipeline.store_corpus)(con, lm, blocks)
        hooks = [p.hook for p in planned]
        cache = None
        if config.trains_saes:
            cache = step(pipeline.cache_activations)(lm, blocks, hooks,
                                                     batch_blocks=config.batch_blocks)
            planned = [step(pipeline.train)(config, lm, p, cache) for p in planned]
        if fan_out is not None:
            stats, quality = fan_out(config, lm, planned, blocks, cache)
        else:
            batches = (cache.batches(config.batch_blocks) if cache is not None else
                       pipeline.forward_batches(lm, blocks, hooks,
                                                batch_blocks=config.batch_blocks))
            stats, quality = step(pipeline.harvest)(config, planned, batches,
                                                    n_blocks=blocks.n_blocks,
                                                    total_tokens=int(blocks.token_ids.size))
        del cache
        for p in planned:
            step(pipeline.store_harvest)(con, config, lm, p, blocks, stats[p.sae_id],
                                         quality[p.sae_id])
        step(pipeline.index_saes)(con, config, [p.sae_id for p in planned])
        step(pipeline.analyze)(con, config, lm, planned)
    finally:
        con.close()
    seconds = time.perf_counter() - t0
    log.info("atlas %s built in %.0fs", config.db, seconds)
    return BuildResult(str(config.db), lm.model_id, blocks.corpus_id,
                       tuple(p.sae_id for p in planned), blocks.n_tokens, seconds)
