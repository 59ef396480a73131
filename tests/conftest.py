"""Shared fixtures: the tiny model, a small atlas built once per session, fresh connections."""

from __future__ import annotations

import os

# Tests never reach a hub: fail fast instead of retrying for ~40 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# Converted GGUF models go to a folder of this run's, removed at its end, not the user's cache.
if "ATLAS_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["ATLAS_CACHE"] = tempfile.mkdtemp(prefix="atlas-test-cache-")
    atexit.register(shutil.rmtree, os.environ["ATLAS_CACHE"], ignore_errors=True)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from atlas.config import BuildConfig  # noqa: E402
from atlas.models import load_model  # noqa: E402
from tests.tiny import tiny_model_dir  # noqa: E402


def tiny_config(db: Path, **overrides) -> BuildConfig:
    """A build of the tiny model on a small slice of the shipped corpus (seconds on CPU)."""
    base = dict(db=db, model=str(tiny_model_dir()), layers=(1, 3), tokens=64 * 96, d_sae=96, k=6,
                block_size=64, epochs=2, train_batch=256, n_examples=5, batch_blocks=16,
                threshold=0.5, dtype="float32")
    base.update(overrides)
    return BuildConfig(**base)


@pytest.fixture(scope="session")
def tiny_lm():
    # float32: the tests compare against float32 recomputations ('auto' is bfloat16 on CPUs
    # with bfloat16 instructions; test_models covers that choice).
    return load_model(str(tiny_model_dir()), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_atlas(tmp_path_factory) -> tuple[BuildConfig, object]:
    """A small atlas built once: (config, BuildResult)."""
    from atlas.builder import build

    config = tiny_config(tmp_path_factory.mktemp("atlas") / "tiny.duckdb")
    return config, build(config)


@pytest.fixture
def atlas_copy(tiny_atlas, tmp_path) -> tuple[Path, tuple[str, ...]]:
    """A writable copy of the tiny atlas and its SAE ids."""
    import shutil

    db = tmp_path / "copy.duckdb"
    shutil.copy(tiny_atlas[0].db, db)
    return db, tiny_atlas[1].sae_ids


@pytest.fixture(scope="session")
def full_atlas(tiny_atlas, tmp_path_factory) -> Path:
    """A copy of the tiny atlas with universality and absorption runs too (absorption under
    both definitions)."""
    import shutil

    from atlas.cli import main

    db = tmp_path_factory.mktemp("full") / "full.duckdb"
    shutil.copy(tiny_atlas[0].db, db)
    assert main(["compare", "--db", str(db), "--pairs", "all", "--blocks", "16",
                 "--permutations", "20"]) == 0
    assert main(["absorption", "--db", str(db), "--max-k", "4"]) == 0
    assert main(["absorption", "--db", str(db), "--max-k", "4", "--definition", "atlas"]) == 0
    return db


@pytest.fixture
def fresh_con(tmp_path):
    from atlas import store

    con = store.connect(tmp_path / "fresh.duckdb")
    yield con
    con.close()
