"""The analyses, one module each, all run by one runner (`atlas.analyses.runner`).

An analysis module declares:

- ``NAME`` (the module's own name: the analysis's name in `analysis_runs`, the CLI and the
  build's ``--analyses``), ``DEFINITION`` (whose definition it computes, recorded with each
  run), ``TABLES`` (its result tables, each with a ``run_id`` column), ``NEEDS_MODEL``
  (whether it runs the model), and ``ORDER`` (its place when several run: cheap ones first);
- ``Settings``: a frozen dataclass with a docstring under each field (the CLI flags derive
  from it, as `atlas build`'s derive from `BuildConfig`);
- ``subjects(inputs, settings)``: what one run covers (an SAE, a layer, a pair of SAEs);
- ``compute(inputs, subject, settings, shared)``: the subject's result tables (without
  ``run_id``) and a summary, from pure functions in `atlas.geometry`; and optionally
  ``prepare(inputs, subjects, settings)``, work shared by all subjects (``shared``), and
  ``summarize(con, summary)``, figures read back from the stored run's views, and ``BUILD``,
  settings `atlas build` changes to stay within its time budget;
- ``describe(summary)``: the one-line summary logs and the CLI print.

The runner makes the run id, records parameters and definition, and replaces the subject's
previous run whole. Adding an analysis is one module here, one .sql file and one app page.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

_NOT_ANALYSES = {"runner"}


def available() -> frozenset[str]:
    """The analyses' names without importing them (each module is named after its analysis)."""
    return frozenset(m.name for m in pkgutil.iter_modules(__path__)
                     if not m.name.startswith("_") and m.name not in _NOT_ANALYSES)


def names() -> tuple[str, ...]:
    """Every analysis's name, in run order (cheap analyses first)."""
    return tuple(m.NAME for m in modules())


def modules() -> tuple[ModuleType, ...]:
    """Every analysis module, in run order."""
    found = [importlib.import_module(f"{__name__}.{name}") for name in available()]
    return tuple(sorted(found, key=lambda m: (m.ORDER, m.NAME)))


def module(name: str) -> ModuleType:
    """The analysis called `name`, with a clear error naming the choices."""
    from atlas.errors import AtlasError

    if name in available():
        return importlib.import_module(f"{__name__}.{name}")
    raise AtlasError(f"unknown analysis '{name}'; choose from {', '.join(names())}")
