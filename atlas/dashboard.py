"""The queries behind the app's charts and tables.

Each function returns the SQL it ran (literal, so it can be pasted into the SQL page or
`atlas sql` as is) with its result. Values enter the SQL only through `literal`.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pandas as pd

from atlas.readonly import Limits, run_query
from atlas.store import quote_identifier

DASHBOARD_LIMITS = Limits(timeout_s=60.0, max_rows=None)
"""The app's own queries: every row, and a time limit well above what they take."""


@dataclass(frozen=True)
class Shown:
    """A query and its result."""

    sql: str
    frame: pd.DataFrame


def literal(value: object) -> str:
    """An SQL literal for a string, number or None."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def run(con: duckdb.DuckDBPyConnection, sql: str, limits: Limits = DASHBOARD_LIMITS) -> Shown:
    """Run one read-only query on its own cursor (safe across the app's threads)."""
    return Shown(sql.strip(), run_query(con, sql, limits=limits).table.to_pandas())


def has_rows(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether a table or view exists and holds rows."""
    with con.cursor() as cur:
        exists = cur.execute("SELECT count(*) FROM information_schema.tables WHERE "
                             "table_name = ?", [table]).fetchone()
        if not exists or not exists[0]:
            return False
        rows = cur.execute(f"SELECT count(*) > 0 FROM {quote_identifier(table)}").fetchone()
        return bool(rows and rows[0])


def definitions(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """The definitions (`analysis_runs.definition`) of the runs whose rows `table` holds."""
    with con.cursor() as cur:
        return [r[0] for r in cur.execute(
            f"SELECT DISTINCT definition FROM analysis_runs WHERE run_id IN (SELECT run_id "
            f"FROM {quote_identifier(table)}) ORDER BY 1").fetchall()]


def has_column(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    """Whether a table or view has a column (an atlas written before it was added lacks it
    until a writer brings its schema up to date)."""
    with con.cursor() as cur:
        row = cur.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = ? "
                          "AND column_name = ?", [table, column]).fetchone()
        return bool(row and row[0])


def overview(con) -> dict[str, Shown]:
    out = "hook_out, " if has_column(con, "sae_overview", "hook_out") else ""
    return {
        "models": run(con, "SELECT * FROM models ORDER BY model_id"),
        "corpora": run(con, "SELECT c.*, (SELECT count(*) FROM documents d WHERE d.corpus_id = "
                            "c.corpus_id) AS documents FROM corpora c"),
        "sources": run(con, "SELECT corpus_id, source, count(*) AS blocks FROM blocks "
                            "GROUP BY ALL ORDER BY ALL"),
        "saes": run(con, f"SELECT sae_id, layer, hook, {out}architecture, d_sae, k, "
                         "round(l0, 1) AS l0, "
                         "round(explained_variance, 3) AS explained_variance, "
                         "round(dead_fraction, 4) AS dead_fraction, live_features, n_tokens, "
                         "n_blocks, threshold, release, neuronpedia_id FROM sae_overview"),
        "config": run(con, "SELECT sae_id, config FROM harvests ORDER BY sae_id LIMIT 1"),
    }


def sae_ids(con) -> list[str]:
    return run(con, "SELECT sae_id FROM saes ORDER BY layer, sae_id").frame["sae_id"].tolist()


def sae_hooks(con) -> dict[str, str]:
    frame = run(con, "SELECT sae_id, hook FROM saes ORDER BY layer, sae_id").frame
    return dict(zip(frame["sae_id"], frame["hook"]))


def transcoders(con) -> dict[str, tuple[str, str]]:
    """{sae_id: (hook it reads, hook it writes)} of the atlas's transcoders."""
    if not has_column(con, "saes", "hook_out"):
        return {}
    frame = run(con, "SELECT sae_id, hook, hook_out FROM saes WHERE hook_out IS NOT NULL "
                     "ORDER BY layer, sae_id").frame
    return {s: (h, o) for s, h, o in zip(frame["sae_id"], frame["hook"], frame["hook_out"])}


def find_features(con, sae_id: str, token: str | None = None, text: str | None = None,
                  limit: int = 50) -> Shown:
    """Features whose top tokens include `token`, or whose examples contain `text`."""
    if token:
        where = (f"list_contains(list_transform(top_tokens, lambda t: trim(t)), "
                 f"{literal(token.strip())})")
    elif text:
        where = (f"feature IN (SELECT feature FROM examples WHERE sae_id = {literal(sae_id)} "
                 f"AND context ILIKE {literal('%' + text + '%')})")
    else:
        where = "TRUE"
    return run(con, f"""
SELECT feature, label, firing_count, block_count, round(max_act, 2) AS max_act
FROM features WHERE sae_id = {literal(sae_id)} AND {where}
ORDER BY firing_count DESC LIMIT {int(limit)}""")


def feature_card(con, sae_id: str, feature: int) -> Shown:
    return run(con, f"""
SELECT c.*, s.code_share
FROM feature_cards c LEFT JOIN feature_sources s USING (sae_id, feature)
WHERE c.sae_id = {literal(sae_id)} AND c.feature = {int(feature)}""")


def examples(con, sae_id: str, feature: int) -> Shown:
    return run(con, f"""
SELECT rank, round(act, 3) AS act, token, context, token_start, b.source
FROM examples e JOIN harvests h USING (sae_id)
JOIN blocks b ON b.corpus_id = h.corpus AND b.block_id = e.block_id
WHERE e.sae_id = {literal(sae_id)} AND e.feature = {int(feature)} ORDER BY rank""")


def find_by_logit(con, sae_id: str, token: str, direction: str = "top",
                  limit: int = 50) -> Shown:
    """Features that promote (direction 'top') or suppress ('bottom') a token: its exact
    spelling (' Paris') or, when nothing matches that, the token with spaces trimmed."""
    if direction not in ("top", "bottom"):
        raise ValueError(direction)
    order = "DESC" if direction == "top" else "ASC"
    return run(con, f"""
SELECT feature, label, token, rank, round(value, 4) AS value
FROM feature_logit_lens
WHERE sae_id = {literal(sae_id)} AND direction = {literal(direction)}
  AND (token = {literal(token)} OR (NOT EXISTS (SELECT 1 FROM feature_logits WHERE
       sae_id = {literal(sae_id)} AND token = {literal(token)})
       AND trim(token) = {literal(token.strip())}))
ORDER BY value {order}, feature LIMIT {int(limit)}""")


def feature_logits(con, sae_id: str, feature: int) -> Shown:
    """A feature's logit lens: its most promoted and most suppressed tokens."""
    return run(con, f"""
SELECT direction, rank, token, round(value, 4) AS value
FROM feature_logits WHERE sae_id = {literal(sae_id)} AND feature = {int(feature)}
ORDER BY direction DESC, rank""")


def activation_histogram(con, sae_id: str, feature: int) -> Shown:
    """A feature's positive activations per log-spaced bin."""
    return run(con, f"""
SELECT bin, act_lo, act_hi, count
FROM activation_histograms WHERE sae_id = {literal(sae_id)} AND feature = {int(feature)}
ORDER BY bin""")


def density_histogram(con, sae_id: str) -> Shown:
    """An SAE's features by log10 density (share of tokens with a positive activation)."""
    return run(con, f"""
SELECT log10_lo, log10_hi, n_features FROM density_histogram
WHERE sae_id = {literal(sae_id)} ORDER BY log10_lo NULLS FIRST""")


def feature_density(con, sae_id: str, feature: int) -> Shown:
    return run(con, f"""
SELECT active_count, density, log10_density, firing_rate FROM feature_density
WHERE sae_id = {literal(sae_id)} AND feature = {int(feature)}""")


def decile_examples(con, sae_id: str, feature: int) -> Shown:
    return run(con, f"""
SELECT decile, act_lo, act_hi, share, rank, round(act, 3) AS act, token, context,
       token_start, b.source
FROM decile_examples e JOIN harvests h USING (sae_id)
JOIN blocks b ON b.corpus_id = h.corpus AND b.block_id = e.block_id
WHERE e.sae_id = {literal(sae_id)} AND e.feature = {int(feature)}
ORDER BY decile DESC, rank""")


def feature_list(con, sae_id: str, order: str = "firing_count", limit: int = 200) -> Shown:
    """An SAE's features with their density and a link to each one's page."""
    if order not in ("firing_count", "feature", "max_act"):
        raise ValueError(order)
    direction = "" if order == "feature" else " DESC"
    return run(con, f"""
SELECT c.feature, c.label, d.density, c.firing_count, round(c.max_act, 2) AS max_act,
       '?page=Feature&sae=' || url_encode(c.sae_id) || '&feature=' || c.feature AS page
FROM feature_cards c JOIN feature_density d USING (sae_id, feature)
WHERE c.sae_id = {literal(sae_id)}
ORDER BY {order}{direction}, feature LIMIT {int(limit)}""")


def cooccurring(con, sae_id: str, feature: int, metric: str, limit: int = 15) -> Shown:
    if metric not in ("phi", "jaccard", "dice", "overlap", "smc"):
        raise ValueError(metric)
    return run(con, f"""
SELECT partner AS feature, label, n_ij, round({metric}, 4) AS {metric}
FROM partners({literal(sae_id)}, {int(feature)})
ORDER BY {metric} DESC NULLS LAST, partner LIMIT {int(limit)}""")


def view_names(con) -> list[str]:
    return run(con, "SELECT table_name FROM information_schema.tables WHERE table_type = 'VIEW' "
                    "ORDER BY 1").frame["table_name"].tolist()


EXAMPLE_QUERIES = {
    "SAE quality": "SELECT * FROM sae_overview",
    "Strongest co-firing pairs": "SELECT * FROM affinity ORDER BY phi DESC LIMIT 20",
    "Features that promote ' Paris'": "SELECT * FROM feature_logit_lens WHERE direction = "
                                      "'top' AND token = ' Paris' ORDER BY value DESC",
    "Density histogram": "SELECT * FROM density_histogram",
}
"""The SQL page's core examples; each analysis adds its own (`queries.EXAMPLES`)."""
