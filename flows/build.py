"""The build as a Prefect flow: each step of `atlas.pipeline` runs as one Prefect task, and the
harvest fans out as one task per shard on the flow's task runner.

Run it with `atlas build --prefect [--runner threads|dask|tcp://host:8786]`,
`python -m atlas.flows.build --db atlas.duckdb`, or as a deployment (docker/prefect.yaml).
Steps pass the model and activations in memory, so tasks opt out of Prefect's input hashing and
result caching (cache_policy NONE); shards are cached by their own content-addressed Parquet
partials instead. Shard and store steps retry; a retried or re-run shard rewrites the same
partial, and store steps replace whole harvests.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from prefect import flow, task
from prefect.cache_policies import NONE

from atlas import allocator, distributed
from atlas.builder import BuildResult, build
from atlas.config import BuildConfig

log = logging.getLogger(__name__)

IO_STEPS = {"store_corpus", "store_harvest", "index_saes"}


def as_task(fn: Callable) -> Callable:
    """A Prefect task running one pipeline step; only the I/O steps retry."""
    retries = 2 if fn.__name__ in IO_STEPS else 0
    return task(fn, name=fn.__name__, cache_policy=NONE, retries=retries,  # type: ignore[call-overload]
                retry_delay_seconds=1)


@task(name="harvest_shard", cache_policy=NONE, retries=2, retry_delay_seconds=1)
def harvest_shard(job: distributed.ShardJob, lm=None, cache=None,
                  loaded: dict | None = None) -> dict[str, str]:
    """Harvest one shard (or find it written already) and return its partials' paths."""
    return distributed.run_shard(job, lm, cache, loaded)


@task(name="merge_shards", cache_policy=NONE)
def merge_shards(config: BuildConfig, planned, paths: list[dict[str, str]], n_blocks: int):
    """Sum and reduce the shards' partials into each SAE's statistics."""
    return distributed.merge_shards(config, planned, paths, n_blocks)


def fan_out(config: BuildConfig, lm, planned, blocks, cache):
    """Submit one task per shard to the flow's task runner, then merge their partials."""
    corpus_path = distributed.write_corpus(config, blocks)
    jobs = distributed.shard_jobs(config, planned, blocks, corpus_path)
    local = distributed.in_process(config)
    log.info("harvest: %d shards of %d blocks on %s", len(jobs), config.shard_blocks,
             config.runner)
    # In the build's own process the shards share its model, activations and SAEs.
    shared = (lm, cache, {p.sae_id: p.sae for p in planned}) if local else (None, None, None)
    futures = [harvest_shard.submit(job, *shared) for job in jobs]
    paths = [f.result() for f in futures]
    return merge_shards(config, planned, paths, blocks.n_blocks)


@flow(name="atlas-build")
def build_flow(config: BuildConfig = BuildConfig()) -> BuildResult:  # noqa: B008 (frozen)
    """Harvest a model's SAE features into the DuckDB atlas (see `atlas.build`)."""
    return build(config, step=as_task, fan_out=fan_out)


def run_build_flow(config: BuildConfig) -> BuildResult:
    """Run the flow on the task runner that `config.runner` names."""
    return build_flow.with_options(task_runner=distributed.task_runner(config))(config)


@flow(name="atlas-build-deployment")
def deployed_build(config: BuildConfig = BuildConfig()) -> BuildResult:  # noqa: B008
    """The deployments' entry point: runs `atlas-build` as a subflow on the task runner that
    `config.runner` names (a deployment cannot choose its flow's task runner per run)."""
    allocator.tune()
    return run_build_flow(config)


if __name__ == "__main__":
    from atlas.cli import main

    sys.exit(main(["build", "--prefect", *sys.argv[1:]]))
