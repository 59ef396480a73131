"""DuckDB store: schema migrations, writing a harvest in one transaction, reading it back.

Store functions take an explicit `duckdb.DuckDBPyConnection`; nothing here uses DuckDB's
module-level default connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from atlas import analyses, faults
from atlas.artifacts import cooccurrence_dir
from atlas.errors import AtlasBusy, AtlasError
from atlas.geometry.vectors import unit

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "atlas_migrations"
SCHEMA_VERSION = 1
"""000_core.sql and each analysis's schema file (010-050, in its folder) are version 1's tables
in their current shape; later changes go in new numbered files (060-099), views in 100+."""
BEFORE_V1 = "001_schema.sql"
"""The first migration of the atlases written before version 1 (they hold it applied)."""


RETIRED = frozenset({"110_analysis_views.sql"})
"""View files of earlier releases whose views now live in other files (re-created there): an
atlas that has them applied is not newer than this version."""


def sql_files() -> list[tuple[str, str]]:
    """(name, text) of the schema and view files, the core's (`atlas/sql/`) and each analysis's
    (`atlas/analyses/<name>/`), in the order they apply."""
    folder = resources.files("atlas.sql")
    files = [(f.name, f.read_text()) for f in folder.iterdir() if f.name.endswith(".sql")]
    files += analyses.sql_files()
    names = [name for name, _ in files]
    if len(set(names)) < len(names):
        raise ValueError(f"two schema files share a name: {sorted(names)}")
    return sorted(files)


def quote_identifier(name: str) -> str:
    """Quote an SQL identifier (the one place identifiers enter SQL text)."""
    return '"' + name.replace('"', '""') + '"'


def connect(path: Path | str, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the atlas database; a writable connection brings its schema up to date.

    Raises:
        AtlasError: the file is not a DuckDB database, or (read-only) holds no atlas.
    """
    path = Path(path)
    if read_only and not path.exists():
        raise AtlasError(f"{path} does not exist; build an atlas first with "
                         f"`atlas build --db {path}`")
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as exc:
        if "lock" in str(exc).splitlines()[0].lower():
            raise AtlasBusy(f"{path} is held by another process ({str(exc).splitlines()[0]}); "
                            "run this again when that has finished") from None
        raise AtlasError(f"{path} is not a DuckDB database ({str(exc).splitlines()[0]}); "
                         "pass another --db path, or move that file away") from None
    if read_only:
        _check_schema(con, path)
    else:
        migrate(con, path)
    return con


def migrate(con: duckdb.DuckDBPyConnection, path: Path | None = None) -> list[str]:
    """Apply the .sql files not yet applied (views re-apply when their text changed); an atlas
    written before schema version 1 (`path`, named in the error) is refused unchanged."""
    con.execute(f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (name VARCHAR PRIMARY KEY, "
                "checksum VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)")
    done = dict(con.execute(f"SELECT name, checksum FROM {MIGRATIONS_TABLE}").fetchall())
    _refuse_before_v1(done, con, path)
    _refuse_newer(done)
    applied = []
    for name, text in sql_files():
        checksum = hashlib.sha256(text.encode()).hexdigest()
        if done.get(name) == checksum:
            continue
        if name in done and "CREATE OR REPLACE" not in text:
            raise AtlasError(f"schema file {name} changed after it was applied to this database; "
                             "add the change as a new numbered .sql file instead")
        with transaction(con):
            con.execute(text)
            con.execute(f"INSERT OR REPLACE INTO {MIGRATIONS_TABLE} VALUES (?, ?, ?)",
                        [name, checksum, utc_now()])
        applied.append(name)
        log.info("applied %s", name)
    return applied


def _check_schema(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables")
              .fetchall()}
    if MIGRATIONS_TABLE not in tables:
        raise AtlasError(f"{path} is a DuckDB file but holds no atlas; build one with "
                         f"`atlas build --db {path}`")
    done = dict(con.execute(f"SELECT name, checksum FROM {MIGRATIONS_TABLE}").fetchall())
    _refuse_before_v1(done, con, path)
    newer = _newer(done)
    if newer:
        log.warning("%s was written by a newer version of the atlas (schema %s); reading it "
                    "may miss what that version added: upgrade the atlas package", path,
                    ", ".join(newer))


def _refuse_before_v1(done: dict[str, str], con: duckdb.DuckDBPyConnection,
                      path: Path | None = None) -> None:
    if BEFORE_V1 not in done:
        return
    path = path or database_path(con) or Path("atlas.duckdb")
    con.close()
    raise AtlasError(
        f"{path} was written by an earlier version of the atlas (before schema version "
        f"{SCHEMA_VERSION}), which this version neither reads nor extends; nothing was changed. "
        f"Move it aside and rebuild it: `atlas build --db {path}` with the settings it was "
        "built with (its harvests.config); its trained SAEs in "
        f"{path}.saes/ load back with --sae-path")


def check_version(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Refuse (closing `con`) an atlas written before schema version 1."""
    done = dict(con.execute(f"SELECT name, checksum FROM {MIGRATIONS_TABLE}").fetchall())
    _refuse_before_v1(done, con, path)


def _newer(done: dict[str, str]) -> list[str]:
    known = {name for name, _ in sql_files()} | RETIRED
    return sorted(n for n in done if n not in known)


def _refuse_newer(done: dict[str, str]) -> None:
    newer = _newer(done)
    if newer:
        raise AtlasError(f"this atlas was written by a newer version of the atlas (schema "
                         f"{', '.join(newer)}, unknown here); upgrade the atlas package "
                         "(pip install -U) to write to it, or pass another --db; nothing was "
                         "changed")


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class SAERecord:
    """A row of `saes`."""

    sae_id: str
    model_id: str
    layer: int
    hook: str
    d_in: int
    d_sae: int
    architecture: str
    k: int | None
    source: str
    path: str | None
    l0: float | None
    explained_variance: float | None
    dead_fraction: float | None
    quality_tokens: int | None
    decoder_checksum: str | None = None
    """sha1 of the stored unit decoder matrix (float32, row-major): what an index was built from."""
    release: str | None = None
    """SAELens release of a published SAE."""
    release_sae_id: str | None = None
    """The SAE's id within its release."""
    neuronpedia_id: str | None = None
    """The SAE's Neuronpedia id, when it has one (its features' pages are
    https://www.neuronpedia.org/<neuronpedia_id>/<feature>)."""
    hook_out: str | None = None
    """The hook a transcoder writes (the MLP's output; its decoder rows live there); None for
    an SAE."""


@dataclass(frozen=True)
class HarvestTables:
    """Everything one SAE's harvest writes, as Arrow tables keyed by column name."""

    harvest: dict
    features: pa.Table
    decoders: pa.Table
    block_firings: pa.Table
    cooccurrence: pa.Table
    examples: pa.Table
    cooccurrence_rows: pa.Table | None = None
    """Co-occurrence of wide SAEs, one row per feature (`cooccurrence` is empty then)."""
    feature_logits: pa.Table | None = None
    activation_histograms: pa.Table | None = None
    decile_examples: pa.Table | None = None


HARVEST_TABLES = ("features", "decoders", "block_firings", "cooccurrence", "cooccurrence_rows",
                  "examples", "feature_logits", "activation_histograms", "decile_examples")
COOCCURRENCE_ROWS_SCHEMA = pa.schema([("sae_id", pa.string()), ("feature", pa.int32()),
                                      ("partners", pa.list_(pa.int32())),
                                      ("counts", pa.list_(pa.int32()))])


def write_model(con: duckdb.DuckDBPyConnection, *, model_id: str, source: str, n_layers: int,
                d_model: int, spec: str) -> None:
    """Insert or replace a `models` row (`spec` is what `load_model` takes to reload it)."""
    con.execute("INSERT OR REPLACE INTO models (model_id, source, n_layers, d_model, spec) "
                "VALUES (?, ?, ?, ?, ?)", [model_id, source, n_layers, d_model, spec])


def write_corpus(con: duckdb.DuckDBPyConnection, *, corpus: dict, documents: pa.Table,
                 blocks: pa.Table) -> None:
    """Replace a corpus (its row, documents and blocks) in one transaction."""
    cid = corpus["corpus_id"]
    with transaction(con):
        for table in ("blocks", "documents", "corpora"):
            con.execute(f"DELETE FROM {table} WHERE corpus_id = ?", [cid])
        con.execute("INSERT INTO corpora (corpus_id, name, model_id, n_blocks, block_size, "
                    "n_tokens, block_rule) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [cid, corpus["name"], corpus["model_id"], corpus["n_blocks"],
                     corpus["block_size"], corpus["n_tokens"],
                     corpus.get("block_rule", "packed")])
        insert_table(con, "documents", documents)
        insert_table(con, "blocks", blocks)
        faults.point("store_corpus")


def write_harvest(con: duckdb.DuckDBPyConnection, sae: SAERecord, tables: HarvestTables, *,
                  on_table: Callable[[str], None] | None = None) -> None:
    """Replace everything stored for one SAE with a new harvest, in one transaction.

    A crash or kill before COMMIT leaves the previous harvest exactly as it was.

    Args:
        on_table: called with each table's name after it is written (progress reporting).
    """
    with transaction(con):
        con.execute("DELETE FROM harvests WHERE sae_id = ?", [sae.sae_id])
        for table in HARVEST_TABLES:
            con.execute(f"DELETE FROM {table} WHERE sae_id = ?", [sae.sae_id])
        cols = list(sae.__dict__)
        con.execute(f"INSERT OR REPLACE INTO saes ({', '.join(cols)}) "
                    f"VALUES ({', '.join('?' * len(cols))})", list(sae.__dict__.values()))
        h = tables.harvest
        con.execute("INSERT INTO harvests (harvest_id, sae_id, corpus, n_tokens, n_blocks, "
                    "block_size, threshold, config, created_at, build_key, "
                    "cooccurrence_storage, block_firings_kept, decoder_dtype, logit_lens, "
                    "cooccurrence_file) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [h["harvest_id"], sae.sae_id, h["corpus"], h["n_tokens"], h["n_blocks"],
                     h["block_size"], h["threshold"], json.dumps(h["config"]), utc_now(),
                     h.get("build_key"), h.get("cooccurrence_storage", "pairs"),
                     h.get("block_firings_kept", "all"), "float32", h.get("logit_lens"),
                     h.get("cooccurrence_file")])
        for table in HARVEST_TABLES:
            data = getattr(tables, table)
            if data is None:
                continue
            insert_table(con, table, data)
            if on_table:
                on_table(table)
        faults.point("store_harvest")


def remove_unreferenced_matrices(con: duckdb.DuckDBPyConnection, folder: Path) -> list[str]:
    """Delete the co-occurrence matrix files in `folder` that no harvest names (replaced by a
    later harvest, or left by a write that did not commit); returns their names."""
    if not folder.is_dir():
        return []
    named = {r[0] for r in con.execute("SELECT cooccurrence_file FROM harvests WHERE "
                                       "cooccurrence_file IS NOT NULL").fetchall()}
    removed = []
    for path in folder.iterdir():
        if path.name not in named and path.is_file():
            path.unlink()
            removed.append(path.name)
    if removed:
        log.debug("removed %d co-occurrence files no harvest names", len(removed))
    return removed


def matrix_path(con: duckdb.DuckDBPyConnection, sae_id: str) -> Path | None:
    """The co-occurrence matrix file of an SAE stored in the 'matrix' form (None otherwise)."""
    row = con.execute("SELECT cooccurrence_file FROM harvests WHERE sae_id = ?",
                      [sae_id]).fetchone()
    if not row or not row[0]:
        return None
    db = database_path(con)
    if db is None:
        raise AtlasError("this connection has no database file open")
    return cooccurrence_dir(db) / row[0]


def database_path(con: duckdb.DuckDBPyConnection) -> Path | None:
    """The file of the database `con` has open (None in memory)."""
    row = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = "
                      "current_database()").fetchone()
    return Path(row[0]) if row and row[0] else None


class transaction:
    """Context manager: BEGIN, then COMMIT on success or ROLLBACK on any exception."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con

    def __enter__(self):
        self.con.execute("BEGIN TRANSACTION")

    def __exit__(self, exc_type, *_):
        self.con.execute("ROLLBACK" if exc_type else "COMMIT")
        return False


def insert_table(con: duckdb.DuckDBPyConnection, table: str, data: pa.Table) -> None:
    con.register("_atlas_rows", data)
    try:
        cols = ", ".join(quote_identifier(c) for c in data.column_names)
        con.execute(f"INSERT INTO {quote_identifier(table)} ({cols}) "
                    f"SELECT {cols} FROM _atlas_rows")
    finally:
        # an aborted transaction refuses even this; the rollback cleans up
        with contextlib.suppress(duckdb.Error):
            con.unregister("_atlas_rows")


def unit_rows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows scaled to unit norm, and the original norms."""
    return unit(matrix), np.linalg.norm(matrix, axis=1)


def vectors_column(matrix: np.ndarray) -> pa.Array:
    """A float32 matrix as an Arrow list column (one list per row, no copy per row)."""
    flat = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, matrix.size + 1, matrix.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


def checksum(matrix: np.ndarray) -> str:
    """sha1 of a float32 matrix's bytes (row-major)."""
    return hashlib.sha1(np.ascontiguousarray(matrix, dtype=np.float32).tobytes()).hexdigest()


def load_decoders(con: duckdb.DuckDBPyConnection, sae_id: str) -> np.ndarray:
    """Unit decoder vectors of an SAE as a (d_sae, d_in) float32 matrix, ordered by feature.

    Rows are placed by feature id as they stream out of DuckDB (no ORDER BY over the vectors,
    no intermediate copy of the whole matrix)."""
    with con.cursor() as cur:  # a cursor, so results pending on `con` stay untouched
        table = cur.sql("SELECT feature, vector FROM decoders WHERE sae_id = ?",
                        params=[sae_id]).to_arrow_table()
    n = table.num_rows
    if n == 0:
        raise AtlasError(f"no SAE '{sae_id}' in this atlas; `atlas info` lists the SAEs")
    feats = table.column("feature").to_numpy()
    if feats.min() != 0 or feats.max() != n - 1:
        raise AtlasError(f"the decoders of {sae_id} are incomplete ({n} rows); rebuild it")
    out: np.ndarray | None = None
    row = 0
    for chunk in table.column("vector").chunks:
        if not len(chunk):
            continue
        flat = chunk.flatten().to_numpy()
        if out is None:
            out = np.empty((n, len(flat) // len(chunk)), np.float32)
        out[feats[row:row + len(chunk)]] = flat.reshape(len(chunk), -1)
        row += len(chunk)
    assert out is not None  # n > 0 rows came in non-empty chunks
    return out
