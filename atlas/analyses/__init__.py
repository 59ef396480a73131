"""The analyses, one folder each, all run by one runner (`atlas.analyses.runner`).

An analysis is the folder `atlas/analyses/<name>/`; its name is the analysis's name in
`analysis_runs`, the CLI and the build's ``--analyses``. The folder holds everything that is the
analysis's own:

- ``__init__.py``: what the analysis is (its docstring) and what this registry reads without
  importing its computation: ``ORDER`` (its place when several run: cheap ones first) and,
  optionally, ``COMMAND`` (a command of its own, such as `atlas compare`) and ``MIN_SAES`` (the
  SAEs a build needs for a run; default 1);
- ``analysis.py``: the contract the runner calls. ``NAME``, ``DEFINITION`` (whose definition it
  computes, recorded with each run), ``TABLES`` (its result tables, each with a ``run_id``
  column), ``NEEDS_MODEL``; ``Settings``, a frozen dataclass with a docstring under each field
  (the CLI flags derive from it); ``subjects(inputs, settings)``, what one run covers (an SAE, a
  residual point, a pair of SAEs); ``compute(inputs, subject, settings, shared)``, the subject's
  result tables (without ``run_id``) and a summary; ``describe(summary)``, the one-line summary
  logs and the CLI print; and optionally ``prepare`` (work shared by all subjects),
  ``summarize`` (figures read back from the stored run's views), ``definition(settings)`` and
  ``BUILD`` (settings `atlas build` changes to stay within its time budget);
- ``geometry.py``: its pure computations (arrays in, arrays and numbers out; no I/O);
- ``NNN_<name>.sql``: its tables in their current shape, and ``1NN_<name>_views.sql``: its views.
  The store applies them with the core's files (`atlas/sql/`), all in name order; a later change
  to a table goes in a new numbered file (060-099);
- ``queries.py``: the SQL behind its app page (each function returns its SQL with the result,
  as `atlas.dashboard`'s do) and ``EXAMPLES``, its entries on the SQL page;
- ``page.py``: its app page, ``TITLE`` and ``render(db)``, and optionally
  ``feature_section(db, sae, feature)``, what the page adds to every Feature page.

A folder whose ``__init__`` says ``RUNNER = False`` is an analysis with a command of its own
instead of the runner's contract (explanations: long, resumable, an LLM's work): its
``command.py`` gives ``HELP``, ``add_arguments(parser)`` and ``run(args)``; it has its schema,
views, queries and page like the others, and `atlas analyze` and the build do not run it.

The store, the CLI, the app's pages and the README's table list (`scripts/readme.py`) find the
analyses here, so adding or removing one touches its folder (plus its tests and a README
section).
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib import resources
from types import ModuleType

from atlas.errors import AtlasError


def folders() -> frozenset[str]:
    """Every analysis folder's name (runner analyses and those with a command of their own)."""
    return frozenset(m.name for m in pkgutil.iter_modules(__path__)
                     if m.ispkg and not m.name.startswith("_"))


def available() -> frozenset[str]:
    """The names of the analyses the runner runs (`atlas analyze`, the build's --analyses)."""
    return frozenset(n for n in folders() if _runs(n))


def _runs(name: str) -> bool:
    return bool(getattr(importlib.import_module(f"{__name__}.{name}"), "RUNNER", True))


def about(name: str) -> ModuleType:
    """The analysis's folder (its `__init__`: docstring, ORDER, COMMAND, MIN_SAES), without its
    computation."""
    if name not in folders():
        raise AtlasError(f"unknown analysis '{name}'; choose from {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}")


def names() -> tuple[str, ...]:
    """Every runner analysis's name, in run order (cheap analyses first)."""
    return tuple(sorted(available(), key=lambda n: (about(n).ORDER, n)))


def all_names() -> tuple[str, ...]:
    """Every analysis folder's name, in order: the runner's analyses, then those with a
    command of their own."""
    return tuple(sorted(folders(), key=lambda n: (about(n).ORDER, n)))


def module(name: str) -> ModuleType:
    """The analysis called `name` (its `analysis` module, the runner's contract), with a clear
    error naming the choices."""
    if name not in available():
        raise AtlasError(f"unknown analysis '{name}'; choose from {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}.analysis")


def modules() -> tuple[ModuleType, ...]:
    """Every analysis module, in run order."""
    return tuple(module(n) for n in names())


def commands() -> dict[str, str]:
    """{command: analysis} of the runner's analyses that have a command of their own."""
    return {about(n).COMMAND: n for n in names() if getattr(about(n), "COMMAND", None)}


def own_commands() -> dict[str, str]:
    """{command: analysis} of the analyses outside the runner (their `command.py`)."""
    return {about(n).COMMAND: n for n in all_names() if n not in available()}


def command(name: str) -> ModuleType:
    """The `command.py` of an analysis outside the runner."""
    return importlib.import_module(f"{__name__}.{name}.command")


def min_saes(name: str) -> int:
    """The SAEs a run of the analysis needs (a pairwise analysis: 2)."""
    return int(getattr(about(name), "MIN_SAES", 1))


def sql_files() -> list[tuple[str, str]]:
    """(name, text) of every analysis's schema and view files."""
    return [(f.name, f.read_text()) for n in sorted(folders())
            for f in resources.files(f"{__name__}.{n}").iterdir() if f.name.endswith(".sql")]


def pages() -> tuple[ModuleType, ...]:
    """Every analysis's app page module, in order."""
    return tuple(importlib.import_module(f"{__name__}.{n}.page") for n in all_names())


def queries(name: str) -> ModuleType:
    """The analysis's app queries (`queries.py`: its page's SQL and its SQL-page EXAMPLES)."""
    about(name)
    return importlib.import_module(f"{__name__}.{name}.queries")
