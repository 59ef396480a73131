"""The one runner of every analysis: picks the subjects, computes each, and stores it as a run
that replaces the subject's previous run whole (one transaction), recording the parameters and
the definition in `analysis_runs`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import duckdb
import pyarrow as pa

from atlas import access, analyses, faults, store
from atlas.errors import AtlasError
from atlas.models import HookPoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Subject:
    """What one run of an analysis covers, and the key its run is stored under."""

    key: str
    """`analysis_runs.subject`: an sae_id, 'model_id/<hook>', or 'sae_a ~ sae_b'."""
    sae_ids: tuple[str, ...] = ()
    """The SAEs it reads."""
    hook: HookPoint | None = None
    """The residual point it reads, for per-hook analyses."""

    @property
    def point(self) -> HookPoint:
        """`hook`, for the per-hook analyses whose subjects always have one."""
        if self.hook is None:
            raise ValueError(f"subject {self.key} reads no single residual point")
        return self.hook


@dataclass(frozen=True)
class Output:
    """One subject's results: rows of the analysis's tables (the runner adds `run_id`) and a
    summary for logs and the CLI."""

    tables: Mapping[str, pa.Table]
    summary: Mapping[str, object]


Loader = Callable[[Sequence[str]], tuple[Any, dict]]
"""(sae_ids) -> (loaded model, {sae_id: SAE}): how analyses that run the model get it."""


@dataclass
class Inputs:
    """What analyses read: the atlas, the SAEs chosen, and the model and SAE objects, loaded on
    first use by `loader`.

    `atlas` is a writable connection (held throughout), or the atlas's path: then the runner
    opens the file per step (`step`), read-only while it computes and for writing only to store
    a run (`atlas.access`), so the app and `atlas sql` keep answering while analyses run."""

    atlas: duckdb.DuckDBPyConnection | Path
    sae_ids: tuple[str, ...]
    """The SAEs to analyse, ordered by layer."""
    loader: Loader | None = None
    models_loader: Callable[[Sequence[str]], dict[str, tuple[Any, dict]]] | None = None
    """(sae_ids) -> {model_id: (model, {sae_id: SAE})}: SAEs that may read different models."""
    _loaded: tuple[Any, dict] | None = field(default=None, repr=False)
    _open: duckdb.DuckDBPyConnection | None = field(default=None, repr=False)

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The connection of the step under way (the held connection, when one was given)."""
        if isinstance(self.atlas, duckdb.DuckDBPyConnection):
            return self.atlas
        if self._open is None:
            raise RuntimeError("the atlas is read inside a step of the runner (Inputs.step)")
        return self._open

    @contextmanager
    def step(self, *, write: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """The atlas for one step: read-only to compute, writable to store (a held connection
        serves both). A step inside a step reads through the outer one."""
        if isinstance(self.atlas, duckdb.DuckDBPyConnection):
            yield self.atlas
            return
        if self._open is not None:
            if write:
                raise RuntimeError("a write step cannot open inside another step")
            yield self._open
            return
        with (access.writing if write else access.reading)(self.atlas) as con:
            self._open = con
            try:
                yield con
            finally:
                self._open = None

    def _load(self) -> tuple[Any, dict]:
        if self._loaded is None:
            if self.loader is None:
                raise AtlasError("this analysis runs the model, and no model was given")
            self._loaded = self.loader(self.sae_ids)
        return self._loaded

    @property
    def lm(self):
        """The model the SAEs read."""
        return self._load()[0]

    def saes_available(self) -> dict:
        """Every SAE object the loader found (SAEs known only from their harvest are absent)."""
        return self._load()[1]

    def models(self, sae_ids: Sequence[str]) -> dict[str, tuple[Any, dict]]:
        """{model_id: (model, {sae_id: SAE})} for `sae_ids`, which may read several models
        (each loaded once); without a `models_loader`, the one model of `loader`."""
        if self.models_loader is None:
            lm = self.lm
            return {lm.model_id: (lm, self.saes(sae_ids))}
        found = self.models_loader(sae_ids)
        missing = set(sae_ids) - {s for _, saes in found.values() for s in saes}
        if missing:
            self.saes(sorted(missing))  # the clear error for an SAE that cannot be loaded
        return found

    def saes(self, sae_ids: Iterable[str]) -> dict:
        """The SAE objects of `sae_ids`, with a clear error for one that cannot be loaded."""
        loaded = self._load()[1]
        missing = [s for s in sae_ids if s not in loaded]
        if missing:
            raise AtlasError(f"{', '.join(missing)} cannot be loaded (no saved folder or "
                             "release); this analysis runs the SAE's encoder, so it needs SAEs "
                             "trained by atlas build or given with --sae-path / --sae-release")
        return {s: loaded[s] for s in sae_ids}


def make_run_id(analysis: str, subject: str) -> str:
    """A fresh run id (16 hex digits)."""
    return hashlib.sha1(f"{analysis}|{subject}|{time.time_ns()}".encode()).hexdigest()[:16]


def with_run_id(table: pa.Table, run_id: str) -> pa.Table:
    """`table` with a leading `run_id` column."""
    return table.add_column(0, "run_id", pa.array([run_id] * table.num_rows, pa.string()))


def params_json(settings: Any) -> str:
    """Settings as `analysis_runs.params` records them (and a re-run compares them)."""
    return json.dumps(dataclasses.asdict(settings), default=str)


def store_run(con: duckdb.DuckDBPyConnection, *, analysis: str, subject: str, definition: str,
              settings: object, seconds: float, tables: Mapping[str, pa.Table]) -> str:
    """Replace the subject's previous run of `analysis` under the same definition (its
    `analysis_runs` row and its rows in `tables`) by this one, in one transaction; runs of other
    definitions stay beside it. Returns the run id."""
    run_id = make_run_id(analysis, subject)
    old = [r[0] for r in con.execute("SELECT run_id FROM analysis_runs WHERE analysis = ? AND "
                                     "subject = ? AND definition = ?",
                                     [analysis, subject, definition]).fetchall()]
    params = params_json(settings)
    with store.transaction(con):
        for name in tables:
            con.execute(f"DELETE FROM {store.quote_identifier(name)} WHERE run_id IN "
                        "(SELECT unnest(?::VARCHAR[]))", [old])
        con.execute("DELETE FROM analysis_runs WHERE run_id IN (SELECT unnest(?::VARCHAR[]))",
                    [old])
        con.execute("INSERT INTO analysis_runs (run_id, analysis, subject, definition, params, "
                    "seconds, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [run_id, analysis, subject, definition, params, seconds, store.utc_now()])
        for name, table in tables.items():
            if table.num_rows:
                store.insert_table(con, name, with_run_id(table, run_id))
        faults.point("analysis")
    return run_id


def definition_of(analysis: ModuleType, settings: object) -> str:
    """The definition a run of `analysis` with `settings` computes: the module's
    `definition(settings)` where its settings choose one, else its `DEFINITION`."""
    choose = getattr(analysis, "definition", None)
    return choose(settings) if choose else analysis.DEFINITION


def is_current(con: duckdb.DuckDBPyConnection, analysis: ModuleType, subject: Subject,
               settings: object) -> bool:
    """Whether the subject's stored run has this definition and these settings and is newer
    than the harvests of its SAEs (a re-run build then has nothing to redo)."""
    params = params_json(settings)
    row = con.execute(
        "SELECT count(*) FROM analysis_runs r WHERE r.analysis = ? AND r.subject = ? AND "
        "r.definition = ? AND r.params = ? AND r.created_at >= (SELECT coalesce(max(created_at), "
        "TIMESTAMP '-infinity') FROM harvests WHERE sae_id IN (SELECT unnest(?::VARCHAR[])))",
        [analysis.NAME, subject.key, definition_of(analysis, settings), params,
         list(subject.sae_ids)]
    ).fetchone()
    return bool(row and row[0])


def run(inputs: Inputs, analysis: ModuleType, settings: object | None = None, *,
        skip_current: bool = False) -> list[dict]:
    """Run one analysis on every subject it finds in `inputs`; returns one summary per subject
    (with its run id and seconds). With `skip_current`, subjects whose stored run is current
    (`is_current`) are left as they are."""
    settings = settings if settings is not None else analysis.Settings()
    with inputs.step():
        subjects = analysis.subjects(inputs, settings)
        if skip_current:
            kept = [s for s in subjects if not is_current(inputs.con, analysis, s, settings)]
            if len(kept) < len(subjects):
                log.info("%s: %d of %d runs already stored with these settings; kept",
                         analysis.NAME, len(subjects) - len(kept), len(subjects))
            if not kept:
                return []
            subjects = kept
        if not subjects:
            log.warning("%s: nothing to analyse among %s", analysis.NAME,
                        ", ".join(inputs.sae_ids) or "no SAEs")
            return []
        prepare = getattr(analysis, "prepare", None)
        shared = prepare(inputs, subjects, settings) if prepare else None
    out = []
    for subject in subjects:
        t0 = time.perf_counter()
        with inputs.step():
            result = analysis.compute(inputs, subject, settings, shared)
        seconds = time.perf_counter() - t0
        unknown = set(result.tables) - set(analysis.TABLES)
        if unknown:
            raise ValueError(f"{analysis.NAME} wrote tables it does not declare: {unknown}")
        defn = definition_of(analysis, settings)
        with inputs.step(write=True) as con:
            run_id = store_run(con, analysis=analysis.NAME, subject=subject.key,
                               definition=defn, settings=settings, seconds=seconds,
                               tables=result.tables)
        summary = {"analysis": analysis.NAME, "subject": subject.key, "run_id": run_id,
                   **result.summary, "definition": defn, "seconds": seconds}
        if hasattr(analysis, "summarize"):  # figures read back from the stored run's views
            with inputs.step() as con:
                summary = analysis.summarize(con, summary)
        log.info("%s %s: %s (%.1fs)", analysis.NAME, subject.key, analysis.describe(summary),
                 seconds)
        out.append(summary)
    return out


def run_many(inputs: Inputs, names: Sequence[str],
             settings: Mapping[str, object] | None = None, *,
             keep_going: bool = False, skip_current: bool = False) -> dict[str, list[dict]]:
    """Run the named analyses in their run order; `settings` maps a name to its settings
    (default: the analysis's defaults). With `keep_going`, an analysis that cannot run is
    logged with its reason and the others still run (what a build does)."""
    wanted = set(names)
    for name in wanted:
        analyses.about(name)  # the clear error for an unknown name
    chosen = [analyses.module(n) for n in analyses.names() if n in wanted]
    settings = settings or {}
    out: dict[str, list[dict]] = {}
    for m in chosen:
        try:
            out[m.NAME] = run(inputs, m, settings.get(m.NAME), skip_current=skip_current)
        except AtlasError as exc:
            if not keep_going:
                raise
            log.warning("%s not run: %s (`atlas analyze --analyses %s` runs it later)",
                        m.NAME, exc, m.NAME)
            out[m.NAME] = []
    return out


def build_settings(analysis: ModuleType) -> Any:
    """The settings `atlas build` runs an analysis with: its defaults, changed by the module's
    optional `BUILD` mapping (recorded in the run's params like any setting)."""
    return dataclasses.replace(analysis.Settings(), **getattr(analysis, "BUILD", {}))


def with_seed(settings: Any, seed: int | None) -> Any:
    """`settings` with its `seed` field replaced (when it has one and a seed is given)."""
    if seed is None or "seed" not in {f.name for f in dataclasses.fields(settings)}:
        return settings
    return dataclasses.replace(settings, seed=seed)
