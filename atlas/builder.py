"""`atlas.build(config)`: the whole build in one call.

The sequence of steps lives here once; `atlas.flows.build` (flows/build.py) runs the same
sequence with each step wrapped as a Prefect task (the `step` argument).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from atlas import access, pipeline
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
    stages: dict[str, float] = dataclasses.field(default_factory=dict)
    """Wall seconds per step (summed over its calls: `train` over every SAE), in order."""


class StageTimes(dict):
    """Wall seconds of each step of a build, summed over the step's calls."""

    def timed(self, fn: Callable) -> Callable:
        name = getattr(fn, "__name__", str(fn))

        @functools.wraps(fn)
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self[name] = self.get(name, 0.0) + time.perf_counter() - t0
        return run

    def describe(self) -> str:
        return ", ".join(f"{name} {seconds:.2f}s" for name, seconds in self.items())


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
    times = StageTimes()
    outer = step

    def timed_step(fn: Callable) -> Callable:
        return outer(times.timed(fn))

    # The atlas is open only for each write (one transaction) and each read of the build's own,
    # so the app and `atlas sql` keep answering from it while the model runs (atlas.access).
    pipeline.open_store(config)
    db = config.db
    lm = timed_step(pipeline.load)(config)
    planned = timed_step(pipeline.plan_saes)(config, lm)
    blocks = timed_step(pipeline.corpus)(config, lm, records)
    with access.writing(db) as con:
        if pipeline.corpus_stored(con, blocks):
            log.info("corpus %s is stored already; kept", blocks.corpus_id)
            # A second model with the same tokenizer reads the same corpus: record the model.
            pipeline.store_model(con, lm)
        else:
            timed_step(pipeline.store_corpus)(con, lm, blocks)
        # A build run again (after a crash, or unchanged) keeps what it committed: harvests
        # stored under the same build key, trained SAEs saved with it, current indexes and
        # analysis runs.
        done = pipeline.stored_harvests(con, config, blocks.corpus_id)
    if config.trains_saes:
        planned = [pipeline.load_trained(config, p, lm.device) for p in planned]
    todo = [p for p in planned if p.sae_id not in done]
    if done:
        log.info("harvests already stored by this build, kept: %s",
                 ", ".join(sorted(done & {p.sae_id for p in planned})))
    untrained = [p for p in planned if p.sae is None]
    cache = None
    if untrained:
        cache = timed_step(pipeline.cache_activations)(lm, blocks, [p.hook for p in planned],
                                                       batch_blocks=config.batch_blocks)
        trained = {p.sae_id: timed_step(pipeline.train)(config, lm, p, cache) for p in untrained}
        planned = [trained.get(p.sae_id, p) for p in planned]
        todo = [trained.get(p.sae_id, p) for p in todo]
    if todo:
        hooks = pipeline.points(todo)
        if fan_out is not None:
            stats, quality = fan_out(config, lm, todo, blocks, cache)
        else:
            batches = (cache.batches(config.batch_blocks) if cache is not None else
                       pipeline.forward_batches(lm, blocks, hooks,
                                                batch_blocks=config.batch_blocks))
            stats, quality = timed_step(pipeline.harvest)(config, todo, batches,
                                                          n_blocks=blocks.n_blocks,
                                                          block_tokens=blocks.mask.sum(1))
        del cache
        for p in todo:
            # each SAE's statistics are dropped once stored: host memory shrinks as they go
            with access.writing(db) as con:
                timed_step(pipeline.store_harvest)(con, config, lm, p, blocks,
                                                   stats.pop(p.sae_id), quality[p.sae_id])
    with access.reading(db) as con:
        timed_step(pipeline.index_saes)(con, config, [p.sae_id for p in planned])
    timed_step(pipeline.word_tables)(config, lm, planned)
    timed_step(pipeline.analyze)(config, lm, planned)
    seconds = time.perf_counter() - t0
    log.info("atlas %s built in %.0fs (%s)", config.db, seconds, times.describe())
    return BuildResult(str(config.db), lm.model_id, blocks.corpus_id,
                       tuple(p.sae_id for p in planned), blocks.n_tokens, seconds, dict(times))
