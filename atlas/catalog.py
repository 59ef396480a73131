"""What an atlas holds and how to load it again: SAE names, the model its SAEs read, and the
SAE objects (from their saved folder or their SAELens release)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import duckdb

from atlas.errors import AtlasError

LOADABLE = "(path IS NOT NULL OR release IS NOT NULL)"
"""SQL condition on `saes`: the SAE can be loaded again (saved folder or published release)."""


def resolve_sae(con: duckdb.DuckDBPyConnection, text: str) -> str:
    """An SAE id from its full id, a unique substring, or 'L<layer>' when one SAE reads that
    layer (`saes.layer`)."""
    rows = con.execute("SELECT sae_id, layer FROM saes ORDER BY layer, sae_id").fetchall()
    ids = [r[0] for r in rows]
    if text in ids:
        return text
    m = re.fullmatch(r"[Ll](\d+)", text)
    found = ([i for i, layer in rows if layer == int(m.group(1))] if m
             else [i for i in ids if text in i])
    if len(found) == 1:
        return found[0]
    listing = ", ".join(found or ids) or "none (build the atlas first)"
    what = "matches several SAEs" if found else "matches no SAE"
    raise AtlasError(f"'{text}' {what} in this atlas; use one of: {listing}")


def sae_ids(con: duckdb.DuckDBPyConnection, names: Sequence[str] = (), *,
            loadable: bool = False) -> list[str]:
    """The SAEs `names` resolve to (default: every SAE of the atlas, loadable ones only when
    asked), ordered by layer."""
    if names:
        return [resolve_sae(con, n) for n in names]
    where = f"WHERE {LOADABLE}" if loadable else ""
    return [r[0] for r in con.execute(f"SELECT sae_id FROM saes {where} ORDER BY layer, sae_id")
            .fetchall()]


def model_of(con: duckdb.DuckDBPyConnection, sae_ids: Sequence[str] | None = None
             ) -> tuple[str, str | None] | None:
    """(model_id, spec) of the model the given SAEs read (they must share one; default: the
    atlas's first model), or None when the atlas records none."""
    if not sae_ids:
        return con.execute("SELECT model_id, spec FROM models ORDER BY model_id LIMIT 1").fetchone()
    models = {r[0] for r in con.execute(
        "SELECT DISTINCT model_id FROM saes WHERE sae_id IN (SELECT unnest(?))",
        [list(sae_ids)]).fetchall()}
    if len(models) > 1:
        raise AtlasError(f"the SAEs belong to different models ({', '.join(sorted(models))}); "
                         "choose SAEs of one model")
    return con.execute("SELECT model_id, spec FROM models WHERE model_id = ?",
                       [models.pop()]).fetchone() if models else None


def loadable_model(con: duckdb.DuckDBPyConnection,
                   sae_ids: Sequence[str] | None = None) -> tuple[str, str]:
    """`model_of`, with a clear error when there is no spec to load the model from."""
    row = model_of(con, sae_ids)
    if not row or not row[1]:
        raise AtlasError("the atlas records no loadable model; rebuild it with `atlas build`")
    return row[0], row[1]


def load_sae(con: duckdb.DuckDBPyConnection, sae_id: str, *, device: str = "cpu"):
    """One SAE of the atlas, from its folder or its release."""
    from atlas.saes import load_recorded

    row = con.execute("SELECT path, release, release_sae_id FROM saes WHERE sae_id = ?",
                      [sae_id]).fetchone()
    if row is None:
        raise AtlasError(f"no SAE '{sae_id}' in this atlas; `atlas info` lists the SAEs")
    return load_recorded(*row, device=device)


def model_and_saes(con: duckdb.DuckDBPyConnection, sae_ids: Sequence[str] | None = None):
    """The model the given SAEs read (see `model_of`) and those SAEs (default: every SAE of
    that model the atlas can load, from its folder or its release)."""
    from atlas.models import load_model
    from atlas.saes import load_recorded

    row = loadable_model(con, sae_ids)
    lm = load_model(row[1], device="auto")
    rows = con.execute(f"SELECT sae_id, path, release, release_sae_id FROM saes WHERE "
                       f"model_id = ? AND {LOADABLE} AND (? OR sae_id IN (SELECT unnest(?)))",
                       [row[0], not sae_ids, list(sae_ids or [])]).fetchall()
    return lm, {r[0]: load_recorded(*r[1:], device=str(lm.device)) for r in rows}


def models_and_saes(con: duckdb.DuckDBPyConnection, sae_ids: Sequence[str]
                    ) -> dict[str, tuple[object, dict]]:
    """{model_id: (model, {sae_id: SAE})} for SAEs that may read different models of the
    atlas (each model loaded once)."""
    rows = con.execute("SELECT sae_id, model_id FROM saes WHERE sae_id IN (SELECT unnest(?))",
                       [list(sae_ids)]).fetchall()
    by_model: dict[str, list[str]] = {}
    for sid, model in rows:
        by_model.setdefault(model, []).append(sid)
    out = {}
    for model, ids in sorted(by_model.items()):
        lm, saes = model_and_saes(con, ids)
        out[model] = (lm, saes)
    return out
