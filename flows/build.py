"""The build as a Prefect flow: each step of `atlas.pipeline` runs as one Prefect task.

Run it with `atlas build --prefect`, `python -m flows.build --db atlas.duckdb`, or deploy it.
Steps pass the model and activations in memory, so tasks opt out of Prefect's input hashing
and result caching (cache_policy NONE). Store steps replace whole harvests, so they retry safely.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from prefect import flow, task
from prefect.cache_policies import NONE

from atlas.builder import BuildResult, build
from atlas.config import BuildConfig

IO_STEPS = {"store_corpus", "store_harvest", "index_saes"}


def as_task(fn: Callable) -> Callable:
    """A Prefect task running one pipeline step; only the I/O steps retry."""
    retries = 2 if fn.__name__ in IO_STEPS else 0
    return task(fn, name=fn.__name__, cache_policy=NONE, retries=retries, retry_delay_seconds=1)


@flow(name="atlas-build")
def build_flow(config: BuildConfig = BuildConfig()) -> BuildResult:
    """Harvest a model's SAE features into the DuckDB atlas (see `atlas.build`)."""
    return build(config, step=as_task)


if __name__ == "__main__":
    from atlas.cli import main

    sys.exit(main(["build", "--prefect", *sys.argv[1:]]))
