"""Build configuration: one frozen dataclass that both the Python API and the CLI use.

Each field's docstring is its ``--help`` text; ``atlas.cli`` derives the ``atlas build`` flags
from the fields, so the CLI and the Python API cannot drift apart.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Literal, get_args

from atlas.analyses import available
from atlas.analyses import names as analysis_names
from atlas.errors import AtlasError

Device = Literal["auto", "cpu", "cuda"]
BlockRule = Literal["document", "packed", "li2024"]
ModelDtype = Literal["auto", "float32", "bfloat16", "float16"]
SaeDtype = Literal["auto", "float32", "bfloat16"]

LI2024_CONTEXT = 1024
"""The li2024 block rule's context per document: its start token and up to 1,023 tokens (Li et
al.'s counting script truncates each document to 1,024 tokens)."""


@dataclass(frozen=True)
class BuildConfig:
    """Everything ``atlas build`` needs: model, corpus, SAEs and harvest settings."""

    db: Path = Path("atlas.duckdb")
    """DuckDB file the atlas is written to (created if missing; trained SAEs go beside it)."""

    model: str = "smollm2-135m"
    """Model: 'smollm2-135m' (embedded GGUF, offline), a .gguf file, a local Hugging Face
    directory, or a Hugging Face hub id (needs network)."""

    layers: tuple[int, ...] = (3, 7, 11, 15)
    """Layers whose residual stream (block output, 'blocks.L.hook_resid_post') is harvested."""

    tokens: int = 160_000
    """Corpus tokens to harvest (rounded down to whole blocks)."""

    architecture: Literal["topk", "batchtopk"] = "topk"
    """Architecture of the SAEs a build trains (atlas.architectures): 'topk' (TopK with an
    AuxK loss, saved as SAELens TopKSAE) or 'batchtopk' (BatchTopK, trained by SAELens's
    trainer and saved as SAELens saves it, a JumpReLU SAE). Both read --d-sae, --k, --epochs,
    --train-batch and --lr."""

    d_sae: int = 2048
    """Features per trained SAE."""

    k: int = 48
    """Active features per token of a trained SAE: exactly (topk), or on average over a batch
    (batchtopk)."""

    threshold: float = 1.0
    """A feature fires on a token when its activation is above this."""

    block_size: int = 256
    """Tokens per block; co-occurrence is counted over blocks."""

    block_rule: BlockRule = "document"
    """How the corpus is cut into blocks: 'document' (a block never spans two documents, as in
    the geometry paper, and runs as its own context; a document's last block is shorter),
    'packed' (documents joined by the end-of-text token and cut into full blocks, which may
    span two documents) or 'li2024' (the co-occurrence windows of Li et al.'s reference code:
    each document run once as one context of at most 1,024 tokens, its start token left out,
    blocks = the full --block-size windows inside it; shorter documents and remainders count
    nowhere)."""

    device: Device = "auto"
    """Where the model and SAEs run: 'auto' picks CUDA when present, else CPU."""

    dtype: ModelDtype = "auto"
    """The model's weights and activations: 'auto' is bfloat16 on CUDA and on CPUs with
    bfloat16 instructions (AVX512-BF16, AMX), float32 on other CPUs.
    The dtype used is recorded with every harvest (harvests.config.model_dtype)."""

    sae_dtype: SaeDtype = "auto"
    """The dtype the harvest encodes in: 'auto' is bfloat16 where the model runs in bfloat16
    (a bfloat16 copy of each encoder; products accumulate in float32) and each SAE's own dtype
    otherwise; 'float32' keeps every encoder in float32. Statistics are always summed in
    float32 or wider. Recorded with every harvest (harvests.config.encode_dtype)."""

    corpus: str = "default"
    """'default' (Wikipedia summaries + Python standard library), 'wiki', 'code', or a path
    to a text file, a directory of text files, a .jsonl or a .parquet file with a 'text' field."""

    code_fraction: float = 0.3
    """Share of the default corpus's tokens that come from Python source."""

    sae_release: str | None = None
    """SAELens release to load published SAEs from (the hub, or its local cache), e.g.
    'gemma-scope-2b-pt-res-canonical' or 'gpt2-small-res-jb'."""

    sae_id: tuple[str, ...] = ()
    """SAE ids within --sae-release (repeat the flag or separate by commas); their hook names
    set the layers. '{layer}' in an id stands for each of --layers
    ('layer_{layer}/width_16k/canonical'); '*' matches the ids SAELens lists for the release
    ('blocks.*.hook_resid_pre')."""

    sae_path: tuple[Path, ...] = ()
    """Directories of SAEs saved in SAELens format (SAE.save_model; repeat the flag or separate
    by commas); their hook names set the layers."""

    epochs: int = 2
    """Training passes over the cached activations, per trained SAE."""

    train_batch: int = 512
    """Tokens per SAE training step."""

    lr: float = 1e-3
    """Adam learning rate for SAE training."""

    holdout: float = 0.1
    """Share of blocks held out from SAE training and used to measure its quality."""

    batch_blocks: int = 8
    """Blocks per model forward pass."""

    n_examples: int = 20
    """Top activating examples kept per feature."""

    decile_examples: int = 3
    """Examples kept per feature from each decile of its positive activations (a uniform
    sample of the decile, chosen by a hash of feature and token position)."""

    shard_blocks: int = 64
    """Blocks per harvest shard (a multiple of --batch-blocks). Shards are the unit of work a
    Prefect build spreads over its task runner; every build merges shard partials."""

    runner: str = "threads"
    """Task runner of `atlas build --prefect`: 'threads' (Prefect's thread pool), 'dask' (a
    local Dask cluster of --workers processes), or a Dask scheduler address 'tcp://host:8786'."""

    workers: int = 2
    """Processes of the local Dask cluster (--runner dask), or threads of Prefect's pool
    (--runner threads)."""

    seed: int = 0
    """Seed for corpus sampling and SAE initialisation."""

    sae_seed: int | None = None
    """Seed for SAE initialisation and batch order only (default: --seed). A second build with
    another --sae-seed trains a second SAE per layer on the same corpus (universality)."""

    analyses: tuple[str, ...] = analysis_names()
    """Analyses to run after the harvest, each with its default settings (comma-separated;
    `atlas analyze` runs them later with other settings). Universality compares SAEs of
    adjacent layers."""

    quick: bool = False
    """Harvest and index only: skip the analyses (the app says which command fills each
    page)."""

    def __post_init__(self) -> None:
        _check(self.tokens >= self.block_size, f"--tokens {self.tokens} is smaller than one block "
               f"(--block-size {self.block_size}); raise --tokens or lower --block-size")
        _check(self.block_size >= 2, "--block-size must be at least 2 tokens")
        _one_of(self.block_rule, BlockRule, "--block-rule")
        _check(self.block_rule != "li2024" or self.block_size < LI2024_CONTEXT,
               f"--block-size {self.block_size} must be below the li2024 rule's context of "
               f"{LI2024_CONTEXT:,} tokens")
        _check(self.d_sae > 0 and 0 < self.k <= self.d_sae,
               f"--k {self.k} must be between 1 and --d-sae {self.d_sae}")
        _check(self.threshold >= 0, f"--threshold {self.threshold} must be >= 0")
        _check(0.0 <= self.code_fraction <= 1.0, "--code-fraction must lie in [0, 1]")
        _check(0.0 < self.holdout < 0.5, "--holdout must lie in (0, 0.5)")
        _check(all(layer >= 0 for layer in self.layers), "--layers must be non-negative")
        _check(bool(self.layers) or bool(self.sae_id) or bool(self.sae_path),
               "no layers to harvest: give --layers, --sae-id or --sae-path")
        _check(not (self.sae_id and not self.sae_release),
               "--sae-id needs --sae-release (the SAELens release it belongs to)")
        _check(not (self.sae_release and not self.sae_id),
               f"--sae-release {self.sae_release} needs --sae-id (one or more ids of the "
               "release, 'layer_{layer}/...' for each of --layers, or a pattern like "
               "'blocks.*.hook_resid_pre')")
        _check(min(self.epochs, self.train_batch, self.batch_blocks, self.n_examples,
                   self.decile_examples) > 0,
               "--epochs, --train-batch, --batch-blocks, --n-examples and --decile-examples "
               "must be positive")
        _one_of(self.device, Device, "--device")
        _one_of(self.dtype, ModelDtype, "--dtype")
        _one_of(self.sae_dtype, SaeDtype, "--sae-dtype")
        _check(self.shard_blocks > 0 and self.shard_blocks % self.batch_blocks == 0,
               f"--shard-blocks {self.shard_blocks} must be a positive multiple of "
               f"--batch-blocks {self.batch_blocks}")
        _check(self.runner in ("threads", "dask") or self.runner.startswith("tcp://"),
               f"--runner {self.runner!r}: use threads, dask, or a scheduler address "
               "tcp://host:port")
        _check(self.workers > 0, "--workers must be at least 1")
        _check(set(self.analyses) <= available(),
               f"--analyses {','.join(self.analyses)}: choose from "
               f"{', '.join(sorted(available()))}")

    @property
    def init_seed(self) -> int:
        """The seed SAE training uses."""
        return self.seed if self.sae_seed is None else self.sae_seed

    @property
    def analyses_to_run(self) -> tuple[str, ...]:
        """The analyses the build ends with (none with --quick)."""
        return () if self.quick else self.analyses

    @property
    def trains_saes(self) -> bool:
        """True when no SAEs are given, so one is trained per layer."""
        return not (self.sae_id or self.sae_path)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise AtlasError(message)


def _one_of(value: str, choices: object, flag: str) -> None:
    """One clear error unless `value` is one of a Literal type's values."""
    allowed = get_args(choices)
    _check(value in allowed, f"{flag} {value!r}: choose one of {', '.join(allowed)}")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (and of its dataclass bases), read
    from their source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not hasattr(klass, "__dataclass_fields__"):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def config_fields(cls: type = BuildConfig) -> list[tuple[str, object, str]]:
    """(name, default, help) for each field, in declaration order."""
    docs = field_docs(cls)
    return [(f.name, f.default, docs.get(f.name, "")) for f in fields(cls)]
