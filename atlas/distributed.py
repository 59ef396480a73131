"""A sharded harvest on any Prefect task runner: shard jobs, the work a shard task does, and the
choice of task runner.

The flow writes the corpus's blocks once as Parquet beside the database; each shard task reads
its own blocks, runs the model and every SAE over them and writes one Parquet partial per SAE
under a content-addressed name. A shard whose partials exist is skipped, so a killed build
resumes where it stopped. Workers need the database's folder (a shared volume on a cluster).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from atlas import shards
from atlas.artifacts import shards_dir
from atlas.config import BuildConfig
from atlas.corpus import Blocks
from atlas.errors import AtlasError
from atlas.harvest import forward_range
from atlas.models import HookPoint, LoadedModel, load_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SAESpec:
    """How a worker loads one SAE of the build, and what its result depends on."""

    sae_id: str
    hook: str
    path: str | None             # saved SAE (trained by the build or --sae-path)
    release: str | None          # or a published one: (release, id)
    published_id: str | None
    fingerprint: str             # hash of the SAE's weights
    measure_quality: bool        # loaded SAEs are evaluated on the held-out blocks


@dataclass(frozen=True)
class ShardJob:
    """One shard task's work: blocks [start, stop) with every SAE."""

    config: BuildConfig
    start: int
    stop: int
    n_blocks: int
    corpus_id: str
    corpus_path: str
    saes: tuple[SAESpec, ...]

    def key(self, spec: SAESpec) -> str:
        c = self.config
        return shards.shard_key({
            "model": c.model, "seed": c.seed, "device": c.device, "corpus": self.corpus_id,
            "start": self.start, "stop": self.stop, "n_blocks": self.n_blocks,
            "block_size": c.block_size, "batch_blocks": c.batch_blocks,
            "threshold": c.threshold, "n_examples": c.n_examples, "holdout": c.holdout,
            "decile_examples": c.decile_examples, "partial_format": shards.PARTIAL_FORMAT,
            "sae": spec.sae_id, "weights": spec.fingerprint, "quality": spec.measure_quality})

    def paths(self) -> dict[str, Path]:
        root = shards_dir(Path(self.config.db))
        return {s.sae_id: shards.partial_dir(root, s.sae_id, self.start, self.stop, self.key(s))
                for s in self.saes}


def weights_fingerprint(sae) -> str:
    """A hash of an SAE's parameters."""
    h = hashlib.sha256()
    for name, tensor in sorted(sae.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:20]


def write_corpus(config: BuildConfig, blocks: Blocks) -> Path:
    """The blocks' token ids and masks as Parquet (content-addressed by the corpus id), one row
    group per shard so that a shard task reads only its own blocks."""
    path = shards_dir(Path(config.db)) / f"corpus-{blocks.corpus_id}.parquet"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        t = blocks.block_size
        table = pa.table({
            "token_ids": pa.FixedSizeListArray.from_arrays(
                pa.array(blocks.token_ids.astype(np.int32).reshape(-1)), t),
            "mask": pa.FixedSizeListArray.from_arrays(pa.array(blocks.mask.reshape(-1)), t)})
        tmp = path.with_suffix(f".tmp-{threading.get_ident()}")
        pq.write_table(table, tmp, row_group_size=config.shard_blocks)
        tmp.rename(path)
    return path


def read_blocks(path: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and masks of blocks [start, stop), reading only the row groups they lie in."""
    file = pq.ParquetFile(path)
    sizes = [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)]
    ends = np.cumsum(sizes)
    groups = [i for i, end in enumerate(ends) if end > start and end - sizes[i] < stop]
    first = int(ends[groups[0]] - sizes[groups[0]])
    table = file.read_row_groups(groups).slice(start - first, stop - start)
    ids, mask = (table.column(c).combine_chunks() for c in ("token_ids", "mask"))
    n = table.num_rows
    return (ids.flatten().to_numpy().reshape(n, -1).astype(np.int64),
            mask.flatten().to_numpy(zero_copy_only=False).reshape(n, -1))


def shard_jobs(config: BuildConfig, planned, blocks: Blocks, corpus_path: Path) -> list[ShardJob]:
    specs = []
    for p in planned:
        specs.append(SAESpec(p.sae_id, p.hook.name, str(p.path) if p.path else None, p.release,
                             p.release_sae_id, weights_fingerprint(p.sae), p.quality is None))
    return [ShardJob(config, start, stop, blocks.n_blocks, blocks.corpus_id, str(corpus_path),
                     tuple(specs))
            for start, stop in shards.shard_ranges(blocks.n_blocks, config.shard_blocks)]


# Worker-local caches: a worker runs many shards with the same model and SAEs. Capturing
# residuals puts hooks on the model's blocks, so one forward pass at a time per process.
_lock = threading.Lock()
_forward_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _model(spec: str, device: str, dtype: str = "auto") -> LoadedModel:
    return load_model(spec, device=device, dtype=dtype)


@functools.lru_cache(maxsize=16)
def _sae(spec: SAESpec, device: str):
    from atlas.saes import load_published, load_saved

    if spec.path:
        sae = load_saved(Path(spec.path), device=device)
    elif spec.release and spec.published_id:
        sae = load_published(spec.release, spec.published_id, device=device)
    else:
        raise AtlasError(f"{spec.sae_id} names neither a folder nor a published SAE")
    if weights_fingerprint(sae) != spec.fingerprint:
        raise AtlasError(f"{spec.sae_id} on this worker differs from the one the build planned "
                         f"({spec.path or spec.release}); workers must see the same files")
    return sae


@torch.no_grad()
def run_shard(job: ShardJob, lm: LoadedModel | None = None, cache=None,
              loaded: dict | None = None) -> dict[str, str]:
    """Harvest one shard and write its partials; skipped when they exist already.

    `lm`, `cache` (the build's activation cache) and `loaded` (its SAEs by id) are used when the
    task runs in the build's own process; a worker loads the model and SAEs itself (once per
    process)."""
    from atlas.pipeline import AtlasSAE, harvest_partials, points
    from atlas.saes import hook_out_of

    paths = job.paths()
    if all(p.exists() for p in paths.values()):
        log.info("shard %d-%d already harvested; skipped", job.start, job.stop)
        return {k: str(v) for k, v in paths.items()}
    c = job.config
    if lm is None:
        with _lock:
            lm = _model(c.model, c.device, c.dtype)
    with _lock:
        objects = {s.sae_id: loaded[s.sae_id] if loaded else _sae(s, str(lm.device))
                   for s in job.saes}
        saes = [AtlasSAE(s.sae_id, HookPoint.parse_any(s.hook), "shard", objects[s.sae_id],
                         hook_out=hook_out_of(objects[s.sae_id])) for s in job.saes]
    measure = {s.sae_id for s in job.saes if s.measure_quality}
    if cache is not None:
        batches = cache.batches(c.batch_blocks, job.start, job.stop)
        parts = harvest_partials(c, saes, batches, start=job.start, stop=job.stop,
                                 n_blocks=job.n_blocks, measure=measure)
    else:
        ids, mask = read_blocks(job.corpus_path, job.start, job.stop)
        with _forward_lock:
            batches = forward_range(lm, ids, mask, points(saes),
                                    batch_blocks=c.batch_blocks, offset=job.start)
            parts = harvest_partials(c, saes, batches, start=job.start, stop=job.stop,
                                     n_blocks=job.n_blocks, measure=measure)
    for sae_id, part in parts.items():
        shards.write_partial(paths[sae_id], part)
    log.info("shard %d-%d harvested: %d tokens", job.start, job.stop,
             next(iter(parts.values())).n_tokens)
    return {k: str(v) for k, v in paths.items()}


def merge_shards(config: BuildConfig, planned, paths: list[dict[str, str]], n_blocks: int):
    """Statistics and quality of each SAE from its shards' Parquet partials."""
    from atlas.pipeline import merge_partials

    ordered = sorted(paths, key=lambda d: shards.read_meta(Path(next(iter(d.values()))))["start"])
    def read(sae_id: str):
        return (shards.read_partial(Path(d[sae_id])) for d in ordered)

    parts = {p.sae_id: read(p.sae_id) for p in planned}
    return merge_partials(config, planned, parts, n_blocks=n_blocks)


def task_runner(config: BuildConfig):
    """The Prefect task runner named by `config.runner`."""
    if config.runner == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=config.workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise AtlasError("--runner dask needs prefect-dask: pip install 'feature-atlas[dask]'"
                         ) from exc
    if config.runner == "dask":
        # Workers report their task runs to the flow's Prefect API (else each would start a
        # temporary server of its own and the shards would not show in the flow's UI).
        return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                              cluster_kwargs={"n_workers": config.workers,
                                              "threads_per_worker": 1, "processes": True,
                                              "env": {"PREFECT_API_URL": prefect_api_url()}})
    check_scheduler(config.runner)
    return DaskTaskRunner(address=config.runner)


def prefect_api_url() -> str:
    """The Prefect API this process uses: the configured one, or Prefect's temporary local
    server (started here if need be; the flow then uses the same one)."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if url:
        return str(url)
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    return server.api_url


def check_scheduler(address: str, timeout: float = 5.0) -> None:
    """Fail fast, with the fix, when nothing listens at a Dask scheduler address."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address)
    try:
        host, port = parts.hostname, parts.port or 8786
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except (OSError, ValueError, TypeError):
        raise AtlasError(f"no Dask scheduler answers at {address}; start one (`dask scheduler`, "
                         "or docker/compose.yaml) or use --runner dask for a local cluster"
                         ) from None


def in_process(config: BuildConfig) -> bool:
    """Whether shard tasks run in the build's own process (and may share its model)."""
    return config.runner == "threads"

