"""The build, step by step. `atlas.build` runs the steps in order; `atlas.flows.build`
(flows/build.py) runs each step as a Prefect task. Steps are plain functions of explicit
inputs."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import torch
from jaxtyping import Bool, Float
from sae_lens import SAE

from atlas import access, allocator, faults, shards, store
from atlas.architectures import architecture
from atlas.artifacts import cooccurrence_dir, safe_name, sae_path
from atlas.blockgram import (TOP_PARTNERS, BlockGram, MatrixWriter, storage_for,
                             top_partners)
from atlas.config import BuildConfig
from atlas.corpus import Blocks, documents_for, row_width, tokenize_blocks
from atlas.errors import AtlasError
from atlas.progress import Progress
from atlas.harvest import (ActivationBatch, FeatureAccumulator, FeatureStats, SparseCodes,
                           bin_edges, decile_examples, encode_sparse, firings_kept,
                           forward_batches, top_tokens)
from atlas.models import HookPoint, LoadedModel, cpu_has_bf16, load_model
from atlas.tokens import decode_each
from atlas.saes import (QualityPartial, SAEQuality, check_width, encode_dtype, encoding_copy,
                        evaluate, expand_sae_ids, hook_of, hook_out_of, load_published,
                        load_saved, merge_quality, neuronpedia_id, output_width, sae_input)

log = logging.getLogger(__name__)


@dataclass
class AtlasSAE:
    """An SAE in the build with the facts `saes` records."""

    sae_id: str
    hook: HookPoint
    source: str
    sae: SAE | None = None
    quality: SAEQuality | None = None
    path: Path | None = None
    release: str | None = None
    """SAELens release of a published SAE."""
    release_sae_id: str | None = None
    """Its id within the release."""
    neuronpedia_id: str | None = None
    """Its Neuronpedia id ('gpt2-small/8-res-jb'), when it has one."""
    hook_out: HookPoint | None = None
    """The hook a transcoder writes (the MLP's output); None for an SAE."""

    @property
    def points(self) -> tuple[HookPoint, ...]:
        """Where the harvest reads activations for it: its input, and a transcoder's output."""
        return (self.hook,) if self.hook_out is None else (self.hook, self.hook_out)

    @property
    def loaded(self) -> SAE:
        """The SAE itself (planned SAEs that a build trains have none until then)."""
        if self.sae is None:
            raise ValueError(f"{self.sae_id} has not been trained or loaded yet")
        return self.sae


@dataclass
class ActivationCache:
    """The counted residuals of every block at every hook (padding, start tokens and sinks
    left out), kept on the CPU for SAE training and the harvest that follows it."""

    rows: dict[str, torch.Tensor]
    """Per hook: (counted positions, d) in block order."""
    masks: dict[str, torch.Tensor]
    token_ids: torch.Tensor
    offsets: dict[str, torch.Tensor]
    """Per hook: the first row of each block (n_blocks + 1 entries)."""

    def residuals(self, name: str, first: int | np.ndarray = 0,
                  stop: int | None = None) -> torch.Tensor:
        """The counted residuals at hook `name` of the blocks [first, stop), or of the blocks
        a boolean array `first` marks (a copy)."""
        off = self.offsets[name]
        if isinstance(first, np.ndarray):
            per_block = torch.from_numpy(first).repeat_interleave(off[1:] - off[:-1])
            return self.rows[name][per_block]
        stop = len(self.token_ids) if stop is None else stop
        return self.rows[name][int(off[first]):int(off[stop])]

    def batches(self, batch_blocks: int, first: int = 0,
                stop: int | None = None) -> Iterator[ActivationBatch]:
        """Batches of the blocks [first, stop) (default: all), padded back to full blocks."""
        stop = len(self.token_ids) if stop is None else stop
        for start in range(first, stop, batch_blocks):
            end = min(start + batch_blocks, stop)
            acts = {}
            for name, mask in self.masks.items():
                m = mask[start:end]
                full = torch.zeros(m.shape + (self.rows[name].shape[1],),
                                   dtype=self.rows[name].dtype)
                full[m] = self.residuals(name, start, end)
                acts[name] = full
            yield ActivationBatch(start, self.token_ids[start:end], acts,
                                  {k: v[start:end] for k, v in self.masks.items()})


def open_store(config: BuildConfig) -> None:
    """Create or bring up to date the atlas first, so a bad --db fails before any slow work
    (the build opens it again for each write, `atlas.access`)."""
    config.db.parent.mkdir(parents=True, exist_ok=True)
    with access.writing(config.db):
        pass


def load(config: BuildConfig) -> LoadedModel:
    """Load the model named by the config."""
    t0 = time.perf_counter()
    lm = load_model(config.model, device=config.device, dtype=config.dtype)
    log.info("model %s: %d layers, d_model %d, on %s in %s (%.1fs)", lm.model_id,
             lm.n_layers, lm.d_model, lm.device, str(lm.dtype).removeprefix("torch."),
             time.perf_counter() - t0)
    return lm


def plan_saes(config: BuildConfig, lm: LoadedModel) -> list[AtlasSAE]:
    """The SAEs of this build: loaded ones (checked against the model) or ones to train.

    Every given SAE is loaded and checked (residual hook, a layer the model has, d_in equal to
    the model's width, distinct ids) before anything reads the corpus or runs the model.
    """
    if config.trains_saes:
        hooks = [HookPoint(layer) for layer in sorted(set(config.layers))]
        lm.check_hooks(hooks)
        suffix = f"-s{config.init_seed}" if config.init_seed else ""
        name = architecture(config.architecture).sae_name(config)
        return [AtlasSAE(f"{lm.model_id}/L{h.layer}/{name}{suffix}", h, "trained")
                for h in hooks]
    planned = []
    release = config.sae_release or ""  # BuildConfig requires a release with --sae-id
    ids = expand_sae_ids(release, config.sae_id, config.layers) if config.sae_id else []
    for sae_id in ids:
        sae = load_published(release, sae_id, device=str(lm.device))
        planned.append(AtlasSAE(f"{config.sae_release}/{sae_id}", _hook(sae, sae_id),
                                f"{config.sae_release}/{sae_id}", sae,
                                release=config.sae_release, release_sae_id=sae_id,
                                neuronpedia_id=neuronpedia_id(sae),
                                hook_out=_hook(sae, sae_id, hook_out_of)))
    for path in (p.resolve() for p in config.sae_path):
        sae = load_saved(path, device=str(lm.device))
        planned.append(AtlasSAE(f"{lm.model_id}/{path.name}", _hook(sae, str(path)), str(path),
                                sae, path=path, neuronpedia_id=neuronpedia_id(sae),
                                hook_out=_hook(sae, str(path), hook_out_of)))
    check_planned(planned, lm)
    return planned


def _hook(sae: SAE, what: str, read: Callable[[SAE], Any] = hook_of) -> Any:
    try:
        return read(sae)
    except AtlasError as exc:
        raise AtlasError(f"SAE {what}: {exc}") from None


def points(planned: Iterable[AtlasSAE]) -> list[HookPoint]:
    """Every hook the harvest of these SAEs reads (inputs, and transcoders' outputs), once."""
    return list(dict.fromkeys(h for p in planned for h in p.points))


def check_planned(planned: Sequence[AtlasSAE], lm: LoadedModel) -> None:
    """One clear error for SAEs that cannot run on this model, or that share an id."""
    ids = [p.sae_id for p in planned]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise AtlasError(f"several SAEs would be stored as {', '.join(twice)}; give each "
                         "--sae-path folder its own name")
    for p in planned:
        check_width(p.sae, lm.d_model, p.sae_id)
        if not 0 <= p.hook.layer < lm.n_layers:
            raise AtlasError(f"SAE {p.sae_id} reads {p.hook.name}, but {lm.model_id} has layers "
                             f"0..{lm.n_layers - 1}; load the model it was trained on (--model) "
                             "or leave this SAE out")
        trained_on = p.loaded.cfg.metadata.model_name
        if trained_on and trained_on.split("/")[-1].lower() != lm.model_id.split("/")[-1].lower():
            log.warning("%s was trained on %s; this build runs %s", p.sae_id, trained_on,
                        lm.model_id)


def corpus(config: BuildConfig, lm: LoadedModel, source: Iterable[object] | None = None
           ) -> Blocks:
    """Tokenise the corpus (config.corpus, or `source` records when given) into blocks."""
    groups = documents_for(config.corpus if source is None else source, seed=config.seed)
    return tokenize_blocks(groups, lm.tokenizer, tokens=config.tokens,
                           block_size=config.block_size, code_fraction=config.code_fraction,
                           rule=config.block_rule,
                           name=str(config.corpus if source is None else "records"))


def store_model(con, lm: LoadedModel) -> None:
    """Record the model (its row in `models`, replaced if present)."""
    store.write_model(con, model_id=lm.model_id, source=lm.source, n_layers=lm.n_layers,
                      d_model=lm.d_model, spec=lm.spec)


def store_corpus(con, lm: LoadedModel, blocks: Blocks) -> None:
    """Write the corpus's documents and blocks (replacing the same corpus)."""
    # Padding is left out of the text; a document block's start token too, and an li2024
    # block's context before its window.
    first = {"document": np.ones(blocks.n_blocks, np.int64),
             "li2024": blocks.block_lengths - (blocks.window or 0)}.get(
                 blocks.rule, np.zeros(blocks.n_blocks, np.int64))
    texts = decode_each(lm.tokenizer, [ids[a:n] for ids, a, n
                                       in zip(blocks.token_ids, first, blocks.block_lengths)])
    cid = blocks.corpus_id
    docs = pa.table({"corpus_id": [cid] * len(blocks.documents),
                     "doc_id": [d.doc_id for d in blocks.documents],
                     "source": [d.source for d in blocks.documents],
                     "title": [d.title for d in blocks.documents]})
    rows = pa.table({"corpus_id": [cid] * blocks.n_blocks,
                     "block_id": np.arange(blocks.n_blocks, dtype=np.int32),
                     "doc_id": blocks.doc_ids.astype(np.int32), "source": blocks.sources,
                     "text": texts, "token_ids": store.vectors_column(blocks.token_ids)
                     .cast(pa.list_(pa.int32())),
                     "n_tokens": blocks.block_lengths.astype(np.int32)})
    store_model(con, lm)
    store.write_corpus(con, corpus={"corpus_id": cid, "name": blocks.name,
                                    "model_id": lm.model_id, "n_blocks": blocks.n_blocks,
                                    "block_size": blocks.block_size,
                                    "n_tokens": blocks.n_tokens, "block_rule": blocks.rule},
                       documents=docs, blocks=rows)


def cache_activations(lm: LoadedModel, blocks: Blocks, hooks: Sequence[HookPoint], *,
                      batch_blocks: int) -> ActivationCache:
    """One forward pass over the corpus, keeping the counted residuals at every hook on the
    CPU in the model's dtype (only the positions that count: about half of a document corpus's
    padded blocks)."""
    # Filled in place: at most the corpus's counted positions per hook (fewer where sinks
    # are left out), so the cache never exists twice.
    # In the model's dtype: a bfloat16 model's residuals are bfloat16 values, which float32
    # would only widen (training reads them as float32); the harvest from the cache then sees
    # the residuals a live pass gives, and encodes them the same way (`sae_dtype`).
    rows = {h.name: torch.empty(int(blocks.mask.sum()), lm.d_model, dtype=lm.dtype)
            for h in hooks}
    filled = dict.fromkeys(rows, 0)
    masks = {h.name: torch.zeros(blocks.token_ids.shape, dtype=torch.bool) for h in hooks}
    progress = Progress("forward", total=blocks.n_tokens, unit="tok")
    for batch in forward_batches(lm, blocks, hooks, batch_blocks=batch_blocks):
        sl = slice(batch.start, batch.start + len(batch.token_ids))
        for name in rows:
            mask = batch.masks[name]
            got = batch.acts[name][mask].cpu()
            rows[name][filled[name]:filled[name] + len(got)] = got
            filled[name] += len(got)
            masks[name][sl] = mask.cpu()
        progress.update(int(blocks.mask[sl].sum()))
    progress.close()
    rows = {name: r[:filled[name]] for name, r in rows.items()}
    offsets = {name: torch.cat([torch.zeros(1, dtype=torch.long), m.sum(1).cumsum(0)])
               for name, m in masks.items()}
    return ActivationCache(rows, masks, torch.from_numpy(blocks.token_ids), offsets)


def held_out_blocks(config: BuildConfig, n_blocks: int) -> np.ndarray:
    """Which blocks are held out from SAE training to measure its quality: `holdout` of them,
    spread evenly over the corpus (block b when floor((b + 1) h) > floor(b h)), so the held-out
    tokens come from every source as the training tokens do; at least one block each way."""
    b = np.arange(n_blocks)
    held = np.floor((b + 1) * config.holdout) > np.floor(b * config.holdout)
    if not held.any():
        held[-1] = True
    if held.all():
        held[0] = False
    return held


def layer_seed(seed: int, layer: int) -> int:
    """A distinct training seed per layer: SAEs of different layers must not share their random
    initialisation, or decoder rows with the same index stay alike and inflate cross-layer
    similarity (universality)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{layer}".encode()).digest()[:4], "little")


def train(config: BuildConfig, lm: LoadedModel, planned: AtlasSAE,
          cache: ActivationCache) -> AtlasSAE:
    """Train an SAE of the build's architecture on the cached activations of the training
    blocks and save it."""
    held_blocks = held_out_blocks(config, len(cache.token_ids))
    name = planned.hook.name
    x = cache.residuals(name, ~held_blocks)
    arch = architecture(config.architecture)
    settings = arch.settings(config, layer_seed(config.init_seed, planned.hook.layer))
    t0 = time.perf_counter()
    sae = arch.train(x, settings, hook=planned.hook, model_name=lm.model_id, device=lm.device,
                     desc=f"train L{planned.hook.layer}").to(lm.device)
    held = cache.residuals(name, held_blocks)
    quality = evaluate(sae, held)
    path = sae_path(config.db, planned.sae_id)
    _save_trained(sae, path, {"build_key": build_key(config),
                              "quality": dataclasses.asdict(quality)})
    log.info("%s: %d tokens, %.1fs, held-out EV %.3f, L0 %.1f, dead %.1f%%", planned.sae_id,
             len(x), time.perf_counter() - t0, quality.explained_variance, quality.l0,
             100 * quality.dead_fraction)
    return dataclasses.replace(planned, sae=sae, quality=quality, path=path)


TRAINING_RECORD = "atlas_training.json"


def _save_trained(sae: SAE, path: Path, record: dict) -> None:
    """Save into a fresh folder and rename it into place, so a kill leaves either the old SAE,
    or none, or the whole new one with its training record."""
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    sae.save_model(tmp)
    (tmp / TRAINING_RECORD).write_text(json.dumps(record, indent=1))
    faults.point("train")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def accumulators(config: BuildConfig, saes: Sequence[AtlasSAE], n_blocks: int, *,
                 shard_blocks: int | None = None) -> dict[str, FeatureAccumulator]:
    """One accumulator per SAE (`block_firings` in full or per feature by `firings_kept`)."""
    return {s.sae_id: FeatureAccumulator(
        s.loaded.cfg.d_sae, n_blocks, block_size=row_width(config.block_rule, config.block_size),
        threshold=config.threshold,
        n_examples=config.n_examples, firings_top=firings_kept(s.loaded.cfg.d_sae, n_blocks),
        shard_blocks=shard_blocks, per_bin=config.decile_examples) for s in saes}


class Encoders:
    """Each SAE as the harvest encodes with it (`BuildConfig.sae_dtype`), made once on the first
    batch, when the residuals' dtype is known."""

    def __init__(self, setting: str):
        self.setting = setting
        self.saes: dict[str, SAE] = {}

    def __call__(self, s: AtlasSAE, residuals: torch.dtype) -> SAE:
        if s.sae_id not in self.saes:
            dtype = encode_dtype(self.setting, residuals, s.loaded.W_dec.dtype)
            self.saes[s.sae_id] = encoding_copy(s.sae, dtype)
        return self.saes[s.sae_id]


def harvest_batch(saes: Sequence[AtlasSAE], accs: dict[str, FeatureAccumulator],
                  quality: dict[str, QualityPartial], batch: ActivationBatch,
                  held: np.ndarray, encoders: Encoders) -> None:
    """Encode one batch with every SAE and add it to their accumulators (and to the held-out
    quality sums of the SAEs in `quality`, measured with the SAE's own weights; `held` marks
    the corpus's held-out blocks)."""
    rows = held[batch.start:batch.start + len(batch.token_ids)]
    for s in saes:
        acts = batch.acts[s.hook.name]
        accs[s.sae_id].update(batch.start, encode_batch(encoders(s, acts.dtype), acts,
                                                        batch.masks[s.hook.name]),
                              batch.token_ids, batch.masks[s.hook.name], masked=True)
        if s.sae_id in quality and rows.any():
            keep = batch.masks[s.hook.name].clone()
            keep[torch.from_numpy(~rows).to(keep.device)] = False
            target = None if s.hook_out is None else batch.acts[s.hook_out.name][keep]
            quality[s.sae_id].update(s.sae, acts[keep], target)


def encode_batch(sae: SAE, acts: Float[torch.Tensor, "b t d"],
                 mask: Bool[torch.Tensor, "b t"]) -> SparseCodes:
    """An SAE's sparse codes of a batch of residuals; rows index the batch's flattened tokens.
    Only the positions in `mask` are encoded (padding and sinks never count)."""
    rows = mask.reshape(-1).nonzero().squeeze(1)
    flat = sae_input(sae, acts.reshape(-1, acts.shape[-1]).index_select(0, rows).to(
        sae.W_dec.device, sae.W_dec.dtype))
    codes = encode_sparse(sae, flat)
    return SparseCodes(rows.to(codes.rows.device).index_select(0, codes.rows), codes.features,
                      codes.values)


@torch.no_grad()
def harvest(config: BuildConfig, saes: Sequence[AtlasSAE], batches: Iterator[ActivationBatch],
            *, n_blocks: int, block_tokens: np.ndarray | None = None
            ) -> tuple[dict[str, FeatureStats], dict[str, SAEQuality]]:
    """Encode every batch with every SAE into one accumulator per SAE; activation sums and
    held-out quality sums are added shard by shard (`config.shard_blocks` blocks), as a
    sharded build merges them, so that both give the same atlas.

    SAEs without a measured quality (loaded ones) are evaluated on the held-out blocks.
    `block_tokens` (each block's corpus tokens, padding left out) sizes the progress bar.
    """
    accs = accumulators(config, saes, n_blocks, shard_blocks=config.shard_blocks)
    measure = [s for s in saes if s.quality is None]
    parts: dict[str, list[QualityPartial]] = {s.sae_id: [] for s in measure}
    held = held_out_blocks(config, n_blocks)
    encoders = Encoders(config.sae_dtype)
    bar = Progress("harvest", total=None if block_tokens is None else int(block_tokens.sum()),
                   unit="tok")
    for _, shard in itertools.groupby(batches, key=lambda b: b.start // config.shard_blocks):
        quality = {s.sae_id: QualityPartial.empty(s.loaded.cfg.d_sae, output_width(s.loaded))
                   for s in measure}
        for batch in shard:
            harvest_batch(saes, accs, quality, batch, held, encoders)
            n = len(batch.token_ids)
            bar.update(batch.token_ids.numel() if block_tokens is None
                       else int(block_tokens[batch.start:batch.start + n].sum()))
        for sid, q in quality.items():
            parts[sid].append(q)
        faults.point("harvest")
    bar.close()
    stats = {sid: acc.result() for sid, acc in accs.items()}
    return stats, {s.sae_id: s.quality if s.quality is not None else merge_quality(
        parts[s.sae_id]) for s in saes}


@torch.no_grad()
def harvest_partials(config: BuildConfig, saes: Sequence[AtlasSAE],
                     batches: Iterable[ActivationBatch], *, start: int, stop: int,
                     n_blocks: int, on_batch=None, measure: set[str] | None = None,
                     ) -> dict[str, shards.Partial]:
    """Each SAE's partial harvest of the blocks [start, stop) from their batches, with the
    held-out quality sums of the SAEs in `measure` (default: those without a quality)."""
    if measure is None:
        measure = {s.sae_id for s in saes if s.quality is None}
    accs = accumulators(config, saes, n_blocks)
    quality = {s.sae_id: QualityPartial.empty(s.loaded.cfg.d_sae, output_width(s.loaded))
               for s in saes if s.sae_id in measure}
    held = held_out_blocks(config, n_blocks)
    encoders = Encoders(config.sae_dtype)
    for batch in batches:
        harvest_batch(saes, accs, quality, batch, held, encoders)
        if on_batch is not None:
            on_batch(batch.token_ids.numel())
    return {sid: shards.partial_of(acc, sid, start, stop, quality.get(sid))
            for sid, acc in accs.items()}


def merge_partials(config: BuildConfig, saes: Sequence[AtlasSAE],
                   parts: dict[str, Iterable[shards.Partial]], *, n_blocks: int
                   ) -> tuple[dict[str, FeatureStats], dict[str, SAEQuality]]:
    """Each SAE's statistics and quality from its shards' partials (folded one at a time, in
    block order: an iterable may read them lazily)."""
    stats, quality = {}, {}
    for s in saes:
        merger = shards.Merger(d_sae=s.loaded.cfg.d_sae, n_blocks=n_blocks,
                               block_size=row_width(config.block_rule, config.block_size),
                               n_examples=config.n_examples)
        qualities = []
        for p in parts[s.sae_id]:
            merger.add(p)
            if p.quality is not None:
                qualities.append(p.quality)
        stats[s.sae_id] = merger.result()
        quality[s.sae_id] = s.quality if s.quality is not None else merge_quality(qualities)
    return stats, quality


def harvest_tables(config: BuildConfig, lm: LoadedModel, planned: AtlasSAE, blocks: Blocks,
                   stats: FeatureStats) -> store.HarvestTables:
    """Turn one SAE's statistics into the rows of the harvest tables (writing a 'matrix'
    co-occurrence file beside the atlas). The logit lens (tensor work) runs in a second thread
    beside the tokenizer's decoding of examples and labels (Python work)."""
    with ThreadPoolExecutor(1, thread_name_prefix="logit-lens") as pool:
        lens_job = pool.submit(logit_lens_of, lm, planned.sae)
        return _harvest_tables(config, lm, planned, blocks, stats, lens_job)


def _harvest_tables(config: BuildConfig, lm: LoadedModel, planned: AtlasSAE, blocks: Blocks,
                    stats: FeatureStats, lens_job: Future) -> store.HarvestTables:
    sid = planned.sae_id
    d_sae = planned.loaded.cfg.d_sae
    labels = _token_labels(lm, stats)
    examples = _examples(lm, planned.sae_id, blocks, stats)
    deciles = _decile_examples(lm, sid, blocks, config, stats)
    unit = unit_decoders(planned.sae)
    norms = np.linalg.norm(planned.loaded.W_dec.detach().float().cpu().numpy(), axis=1)
    features = pa.table({
        "sae_id": [sid] * d_sae, "feature": np.arange(d_sae, dtype=np.int32),
        "firing_count": stats.firing_count, "block_count": stats.block_count.astype(np.int32),
        "mean_act": stats.mean_act, "max_act": stats.max_act.astype(np.float64),
        "top_tokens": [t for t, _ in labels], "top_token_counts": [c for _, c in labels],
        "label": [" · ".join(_visible(x) for x in t[:3]) for t, _ in labels]})
    decoders = pa.table({"sae_id": [sid] * d_sae, "feature": np.arange(d_sae, dtype=np.int32),
                         "norm": norms.astype(np.float32), "vector": store.vectors_column(unit)})
    b, f, a = stats.block_firings
    firings = pa.table({"sae_id": [sid] * len(b), "block_id": b.astype(np.int32),
                        "feature": f.astype(np.int32), "max_act": a})
    # the lens has overlapped the Python work above; tensor work beside tensor work would only
    # add the two's memory on the same cores
    lens = lens_job.result()
    allocator.release()  # the lens's temporaries (hundreds of MB at 16k features), freed
    storage = storage_for(d_sae)
    matrix_file = None
    if storage == "matrix":
        # a new name per write: the harvests row names it on commit, so a crash before the
        # commit leaves the previous harvest and its file as they were
        matrix_file = f"{safe_name(sid)}.{uuid.uuid4().hex[:12]}.npy"
        final = cooccurrence_dir(config.db) / matrix_file
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(matrix_file + ".partial")
    with open(partial, "wb") if matrix_file else contextlib.nullcontext() as out:
        cooc, rows = cooccurrence_tables(sid, stats.cooccurrence, stats.block_count,
                                         stats.n_blocks, storage, matrix=out)
    if matrix_file:
        partial.rename(final)
    harvest = {"harvest_id": hashlib.sha1(f"{sid}|{blocks.corpus_id}|{config.threshold}"
                                          .encode()).hexdigest()[:16],
               "corpus": blocks.corpus_id, "n_tokens": stats.n_tokens,
               "n_blocks": blocks.n_blocks, "block_size": blocks.block_size,
               "threshold": config.threshold,
               "config": {**_config_json(config),
                          "model_dtype": str(lm.dtype).removeprefix("torch."),
                          "encode_dtype": str(encode_dtype(
                              config.sae_dtype, lm.dtype, planned.loaded.W_dec.dtype,
                          )).removeprefix("torch.")},
               "build_key": build_key(config),
               "decoder_checksum": store.checksum(unit), "cooccurrence_storage": storage,
               "cooccurrence_file": matrix_file,
               "block_firings_kept": ("all" if stats.firings_top is None
                                      else f"top-{stats.firings_top}")}
    logit_rows, harvest["logit_lens"] = feature_logits(lm, sid, *lens)
    return store.HarvestTables(harvest, features, decoders, firings, cooc, examples, rows,
                               feature_logits=logit_rows,
                               activation_histograms=_histogram_table(sid, stats.histogram),
                               decile_examples=deciles)


def cooccurrence_tables(sae_id: str, gram: BlockGram, block_count: np.ndarray, n_blocks: int,
                        storage: str, *, matrix: BinaryIO | None = None
                        ) -> tuple[pa.Table, pa.Table | None]:
    """The `cooccurrence` rows ('pairs') or the `cooccurrence_rows` rows ('matrix', 'top-<m>':
    each feature's best partners) of one SAE's counts; 'matrix' also writes the full count
    matrix to `matrix` (.npy), in the same pass over the rows."""
    if storage == "pairs":
        i, j, n_ij = gram.pairs()
        return pa.table({"sae_id": [sae_id] * len(i), "i": i.astype(np.int32),
                         "j": j.astype(np.int32), "n_ij": n_ij.astype(np.int32)}), None
    if storage == "matrix":
        if matrix is None:
            raise ValueError("the 'matrix' form writes its counts to a file: pass `matrix`")
        writer, top = MatrixWriter(matrix, gram.d_sae, n_blocks), TOP_PARTNERS
    else:
        writer, top = None, int(storage.split("-")[1])
    n_i = torch.as_tensor(np.asarray(block_count), device=gram.device)
    batches = []
    for first, counts in gram.full_rows():
        if writer is not None:
            writer.write(counts)
        kept, values = top_partners(counts, first, n_i, n_blocks, top)
        n = len(counts)
        sizes = np.array([len(k) for k in kept])
        batches.append(pa.table({"sae_id": pa.array([sae_id] * n),
                                 "feature": np.arange(first, first + n, dtype=np.int32),
                                 "partners": _list_column(np.concatenate(kept), sizes),
                                 "counts": _list_column(np.concatenate(values), sizes)},
                                schema=store.COOCCURRENCE_ROWS_SCHEMA))
    empty = pa.table({"sae_id": pa.array([], pa.string()), "i": pa.array([], pa.int32()),
                      "j": pa.array([], pa.int32()), "n_ij": pa.array([], pa.int32())})
    return empty, (pa.concat_tables(batches) if batches
                   else store.COOCCURRENCE_ROWS_SCHEMA.empty_table())


def _list_column(values: np.ndarray, sizes: np.ndarray) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets),
                                    pa.array(np.asarray(values, dtype=np.int32)))


def store_harvest(con, config: BuildConfig, lm: LoadedModel, planned: AtlasSAE, blocks: Blocks,
                  stats: FeatureStats, quality: SAEQuality) -> None:
    """Write one SAE's harvest, replacing any earlier one whole. The co-occurrence counter is
    released once its rows and file are made, before the write (512 MiB at 16k features)."""
    tables = harvest_tables(config, lm, planned, blocks, stats)
    stats.cooccurrence.release()
    record = dataclasses.replace(sae_record(lm, planned, quality),
                                 decoder_checksum=tables.harvest["decoder_checksum"])
    store.write_harvest(con, record, tables)
    store.remove_unreferenced_matrices(con, cooccurrence_dir(config.db))
    log.info("stored %s: %d live features, %d co-occurring pairs, %d examples", planned.sae_id,
             int((stats.firing_count > 0).sum()), tables.cooccurrence.num_rows,
             tables.examples.num_rows)
    del tables
    allocator.release()


def index_saes(con, config: BuildConfig, sae_ids: Sequence[str]) -> list[dict]:
    """Build and persist the FAISS index of each SAE (exact below the size where approximate
    search pays off); returns each index's metadata."""
    from atlas.index import build_index

    from atlas.index import current_index

    out = []
    for sae_id in sae_ids:
        kept = current_index(con, config.db, sae_id)
        if kept is not None:
            log.info("index of %s is current; kept", sae_id)
            out.append(dataclasses.asdict(kept.meta))
            continue
        meta = build_index(con, config.db, sae_id).meta
        log.info("indexed %s: %s over %d vectors%s (%.1fs)", sae_id, meta.kind, meta.n,
                 "" if meta.recall_at_10 is None else f", recall@10 {meta.recall_at_10:.3f}",
                 meta.built_seconds)
        out.append(dataclasses.asdict(meta))
    return out


def word_tables(config: BuildConfig, lm: LoadedModel, planned: Sequence[AtlasSAE]) -> list[str]:
    """The analogy vocabulary's vectors at each SAE's hook, stored beside the atlas (kept when
    stored already), so word analogies answer without loading the model."""
    from atlas import words

    hooks = list(dict.fromkeys(p.hook for p in planned if p.hook.residual))
    return [t.hook for t in words.store_tables(config.db, lm, hooks)]


def analyze(config: BuildConfig, lm: LoadedModel, planned: Sequence[AtlasSAE]) -> dict:
    """Run the configured analyses (default settings, the build's seed) on the SAEs just
    harvested, with the model and SAEs already in memory; the atlas is open per step
    (`runner.Inputs`), so readers keep answering meanwhile."""
    from atlas import analyses
    from atlas.analyses import runner

    names = config.analyses_to_run
    if not names:
        return {}
    ids = tuple(p.sae_id for p in sorted(planned, key=lambda p: (p.hook.layer, p.sae_id)))
    loaded = {p.sae_id: p.sae for p in planned}
    inputs = runner.Inputs(config.db, ids, loader=lambda _ids: (lm, loaded))
    settings = {n: runner.with_seed(runner.build_settings(analyses.module(n)), config.seed)
                for n in names}
    names = tuple(n for n in names if analyses.min_saes(n) <= len(ids))  # pairwise ones need two
    return runner.run_many(inputs, names, settings, keep_going=True, skip_current=True)


def unit_decoders(sae: SAE) -> np.ndarray:
    """An SAE's decoder rows scaled to unit norm, as stored in `decoders` (float32)."""
    return store.unit_rows(sae.W_dec.detach().float().cpu().numpy())[0].astype(np.float32)


def sae_record(lm: LoadedModel, planned: AtlasSAE, quality: SAEQuality) -> store.SAERecord:
    """The `saes` row of an SAE."""
    cfg = planned.loaded.cfg
    return store.SAERecord(
        sae_id=planned.sae_id, model_id=lm.model_id, layer=planned.hook.layer,
        hook=planned.hook.name, d_in=cfg.d_in, d_sae=cfg.d_sae, architecture=cfg.architecture(),
        k=getattr(cfg, "k", None), source=planned.source,
        path=str(planned.path) if planned.path else None, l0=quality.l0,
        explained_variance=quality.explained_variance, dead_fraction=quality.dead_fraction,
        quality_tokens=quality.n_tokens, release=planned.release,
        release_sae_id=planned.release_sae_id, neuronpedia_id=planned.neuronpedia_id,
        hook_out=planned.hook_out.name if planned.hook_out else None)


def _token_labels(lm: LoadedModel, stats: FeatureStats) -> list[tuple[list[str], list[int]]]:
    tops = top_tokens(stats, n=5)
    vocab = sorted({t for top in tops for t, _ in top})
    text = dict(zip(vocab, decode_each(lm.tokenizer, [[t] for t in vocab])))
    return [([text[t] for t, _ in top], [c for _, c in top]) for top in tops]


def _visible(token: str) -> str:
    return token.strip() or repr(token)


def _examples(lm: LoadedModel, sae_id: str, blocks: Blocks, stats: FeatureStats) -> pa.Table:
    rank, feat = np.nonzero(stats.top_acts > 0)
    blk = stats.top_blocks[rank, feat]
    pos = stats.top_positions[rank, feat]
    token, context, start = _contexts(lm, blocks, blk, pos)
    return pa.table({
        "sae_id": [sae_id] * len(rank), "feature": feat.astype(np.int32),
        "rank": (rank + 1).astype(np.int32),
        "act": stats.top_acts[rank, feat].astype(np.float32),
        "block_id": blk.astype(np.int32), "position": pos.astype(np.int32), "token": token,
        "context": context, "token_start": start})


def _decile_examples(lm: LoadedModel, sae_id: str, blocks: Blocks, config: BuildConfig,
                     stats: FeatureStats) -> pa.Table | None:
    if stats.histogram is None or stats.samples is None:
        return None
    ex = decile_examples(stats.histogram, stats.samples, per_decile=config.decile_examples)
    blk, pos = ex.position // blocks.block_size, ex.position % blocks.block_size
    token, context, start = _contexts(lm, blocks, blk, pos)
    return pa.table({
        "sae_id": [sae_id] * len(blk), "feature": ex.feature.astype(np.int32),
        "decile": ex.decile.astype(np.int16), "act_lo": ex.act_lo, "act_hi": ex.act_hi,
        "share": ex.share, "rank": ex.rank.astype(np.int16), "act": ex.act.astype(np.float32),
        "block_id": blk.astype(np.int32), "position": pos.astype(np.int32), "token": token,
        "context": context, "token_start": start})


def _histogram_table(sae_id: str, histogram: np.ndarray | None) -> pa.Table | None:
    if histogram is None:
        return None
    feat, bins = np.nonzero(histogram)
    lo, hi = bin_edges(bins)
    return pa.table({"sae_id": [sae_id] * len(feat), "feature": feat.astype(np.int32),
                     "bin": bins.astype(np.int16), "act_lo": lo, "act_hi": hi,
                     "count": histogram[feat, bins].astype(np.int64)})


def logit_lens_of(lm: LoadedModel, sae: SAE):
    """(the logit lens of an SAE's features, the unembedding it was read from, seconds): tensor
    work only (atlas.logits), safe to run beside the tokenizer."""
    from atlas import logits

    t0 = time.perf_counter()
    unembed = logits.unembedding(lm)
    W_dec = sae.W_dec.detach()
    lens = logits.logit_lens(W_dec, unembed,
                             screen=W_dec.device.type == "cpu" and cpu_has_bf16())
    return lens, unembed, time.perf_counter() - t0


def feature_logits(lm: LoadedModel, sae_id: str, lens, unembed, seconds: float
                   ) -> tuple[pa.Table, str]:
    """`feature_logits` rows of an SAE from its logit lens (`logit_lens_of`) and how they were
    computed (stored in `harvests.logit_lens`)."""
    from atlas import logits

    table = logits.logit_table(sae_id, lens, lambda ids: decode_each(
        lm.tokenizer, [[i] for i in ids]))
    how = (f"{logits.DEFINITION}: W_dec @ W_U, "
           + (f"{unembed.norm} scale folded in" if unembed.norm else "no final norm scale")
           + ", centred over the vocabulary")
    log.info("logit lens of %s: %d features x %d tokens (%.1fs)", sae_id, len(lens.top_ids),
             unembed.W_U.shape[0], seconds)
    return table, how


def _contexts(lm: LoadedModel, blocks: Blocks, blk: np.ndarray, pos: np.ndarray, *,
              left: int = 12, right: int = 4) -> tuple[list[str], list[str], np.ndarray]:
    """(token, context, token start in context) of each (block, position)."""
    ids = blocks.token_ids
    # Each distinct token and each distinct (block, position) is decoded once: features of a
    # wide SAE share many top examples.
    spots, where = np.unique(blk.astype(np.int64) * ids.shape[1] + pos, return_inverse=True)
    sb, sp = spots // ids.shape[1], spots % ids.shape[1]
    ends = blocks.block_lengths
    tok = lm.tokenizer
    before = decode_each(tok, [ids[b, max(0, p - left):p] for b, p in zip(sb, sp)])
    after = decode_each(tok, [ids[b, p + 1:min(p + 1 + right, ends[b])]
                              for b, p in zip(sb, sp)])
    vocab, which = np.unique(ids[sb, sp], return_inverse=True)
    names = decode_each(tok, [[t] for t in vocab.tolist()])
    token_at = [names[w] for w in which.reshape(-1)]
    before = [before[w] for w in where.reshape(-1)]
    after = [after[w] for w in where.reshape(-1)]
    token = [token_at[w] for w in where.reshape(-1)]
    return (token, [x + y + z for x, y, z in zip(before, token, after)],
            np.asarray([len(x) for x in before], dtype=np.int32))


def _config_json(config: BuildConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


RESUME_IGNORES = ("db", "runner", "workers", "analyses", "quick", "batch_blocks",
                  "shard_blocks")
"""Settings that do not change what a harvest stores (where it goes, how the work is spread,
which analyses follow): a re-run that differs only in these keeps what is stored."""


BUILD_FORMAT = 2
"""Raised when the same settings would store something else: 2 holds out blocks spread over
the corpus (1 held out its tail) and trains with a sparse encoder gradient."""


def build_key(config: BuildConfig) -> str:
    """A digest of the settings that determine a harvest's content."""
    kept = {k: v for k, v in _config_json(config).items() if k not in RESUME_IGNORES}
    if kept.get("architecture") == "topk":
        del kept["architecture"]  # the one architecture of earlier builds: their keys hold
    kept["build_format"] = BUILD_FORMAT
    return hashlib.sha1(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def corpus_stored(con, blocks: Blocks) -> bool:
    """Whether this corpus (its id is a digest of its token ids) is stored whole."""
    row = con.execute("SELECT c.n_blocks, (SELECT count(*) FROM blocks b WHERE b.corpus_id = "
                      "c.corpus_id) FROM corpora c WHERE c.corpus_id = ?",
                      [blocks.corpus_id]).fetchone()
    return row is not None and row[0] == row[1] == blocks.n_blocks


def stored_harvests(con, config: BuildConfig, corpus_id: str) -> set[str]:
    """SAEs whose harvest of this corpus is stored under this build's key."""
    rows = con.execute("SELECT sae_id FROM harvests WHERE corpus = ? AND build_key = ?",
                       [corpus_id, build_key(config)]).fetchall()
    return {r[0] for r in rows}


def load_trained(config: BuildConfig, planned: AtlasSAE, device) -> AtlasSAE:
    """The SAE this build trains, loaded from disk when an earlier run of the same build saved
    it (its training record carries the build key); else `planned` unchanged."""
    path = sae_path(config.db, planned.sae_id)
    record = path / TRAINING_RECORD
    if not record.is_file():
        return planned
    try:
        saved = json.loads(record.read_text())
        if saved.get("build_key") != build_key(config):
            return planned
        sae = load_saved(path, device=str(device))
    except (OSError, ValueError, AtlasError) as exc:
        log.warning("%s: the saved SAE cannot be reused (%s); training it again",
                    planned.sae_id, exc)
        return planned
    log.info("%s: trained by an earlier run of this build; loaded from %s", planned.sae_id,
             path)
    return dataclasses.replace(planned, sae=sae, quality=SAEQuality(**saved["quality"]),
                               path=path)
