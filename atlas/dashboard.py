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


def overview(con) -> dict[str, Shown]:
    return {
        "models": run(con, "SELECT * FROM models ORDER BY model_id"),
        "corpora": run(con, "SELECT c.*, (SELECT count(*) FROM documents d WHERE d.corpus_id = "
                            "c.corpus_id) AS documents FROM corpora c"),
        "sources": run(con, "SELECT corpus_id, source, count(*) AS blocks FROM blocks "
                            "GROUP BY ALL ORDER BY ALL"),
        "saes": run(con, "SELECT sae_id, layer, architecture, d_sae, k, round(l0, 1) AS l0, "
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


def feature_lobes(con, sae_id: str, feature: int) -> Shown:
    return run(con, f"""
SELECT method, metric, k, cluster FROM clusters
WHERE sae_id = {literal(sae_id)} AND feature = {int(feature)} ORDER BY method, metric, k""")


def lobe_map(con, sae_id: str, method: str, metric: str, k: int) -> Shown:
    return run(con, f"""
SELECT m.feature, m.x, m.y, c.cluster, f.label, f.firing_count
FROM feature_maps m
JOIN clusters c ON c.sae_id = m.sae_id AND c.feature = m.feature
JOIN features f ON f.sae_id = m.sae_id AND f.feature = m.feature
WHERE m.sae_id = {literal(sae_id)} AND c.method = {literal(method)}
  AND c.metric = {literal(metric)} AND c.k = {int(k)}""")


def lobe_choices(con, sae_id: str) -> Shown:
    return run(con, f"""
SELECT DISTINCT metric, k FROM clusters
WHERE sae_id = {literal(sae_id)} AND method = 'cooccurrence' ORDER BY metric, k""")


def lobe_tests(con, sae_id: str, metric: str, k: int) -> Shown:
    return run(con, f"""
SELECT ami, ami_null_mean, ami_null_std, ami_z, n_permutations, logreg_accuracy,
       logreg_random_accuracy, logreg_random_std, logreg_z, logreg_draws, chance, n_features
FROM lobe_modularity WHERE sae_id = {literal(sae_id)} AND metric = {literal(metric)}
  AND k = {int(k)}""")


def lobe_table(con, sae_id: str, metric: str, k: int) -> Shown:
    return run(con, f"""
SELECT cluster, n_features, round(code_share, 3) AS code_share, top_labels
FROM lobes WHERE sae_id = {literal(sae_id)} AND metric = {literal(metric)} AND k = {int(k)}
ORDER BY code_share DESC""")


def spectra(con) -> Shown:
    return run(con, """
SELECT s.layer, sp.sae_id, sp.cloud, sp.rank, sp.eigenvalue
FROM spectra sp JOIN saes s USING (sae_id) WHERE sp.eigenvalue > 0
ORDER BY s.layer, sp.cloud, sp.rank""")


def layer_spectra(con) -> Shown:
    return run(con, "SELECT layer, sae_id, slope, r2, gaussian_slope, rank_lo, rank_hi "
                    "FROM layer_spectra")


def entropy(con, definition: str = "li2024") -> Shown:
    return run(con, f"""
SELECT layer, sae_id, entropy_gap, error, error_kind FROM clustering_entropy
WHERE definition = {literal(definition)}""")


def tails(con) -> Shown:
    return run(con, "SELECT layer, sae_id, tail_mass, random_tail_mass, ratio FROM cosine_tails")


def crystal_layers(con) -> Shown:
    return run(con, "SELECT DISTINCT layer, hook, space FROM crystal_quality "
                    "ORDER BY layer, hook, space")


def crystal_quality(con, hook: str, space: str) -> Shown:
    return run(con, f"""
SELECT task, n_pairs, round(parallelogram_quality, 3) AS parallelogram_quality,
       round(top1_before, 3) AS top1_before, round(top5_before, 3) AS top5_before,
       round(top1_after, 3) AS top1_after, round(top5_after, 3) AS top5_after,
       round(removal_gain, 3) AS removal_gain
FROM crystal_quality WHERE hook = {literal(hook)} AND space = {literal(space)} ORDER BY task""")


def word_representations(con, hook: str) -> Shown:
    return run(con, f"""
SELECT representation, chosen, round(fit_top1, 3) AS fit_top1,
       round(top1_before, 3) AS top1_before, round(top5_before, 3) AS top5_before,
       distractor_dims, round(top1_after, 3) AS top1_after, round(top5_after, 3) AS top5_after
FROM word_representation_quality WHERE hook = {literal(hook)} ORDER BY representation""")


def crystal_separation(con, hook: str) -> Shown:
    return run(con, f"""
SELECT n_components, round(silhouette, 3) AS silhouette,
       round(silhouette_heldout, 3) AS silhouette_heldout
FROM crystal_separation WHERE hook = {literal(hook)} ORDER BY n_components""")


def crystal_differences(con, hook: str) -> Shown:
    return run(con, f"""
SELECT task, subject, object, heldout, x_pca, y_pca, x_lda, y_lda FROM crystal_differences
WHERE hook = {literal(hook)} ORDER BY task, subject""")


def crystal_points(con, hook: str, space: str, task: str) -> Shown:
    return run(con, f"""
SELECT word, side, pair, x_before, y_before, x_after, y_after FROM crystal_points
WHERE hook = {literal(hook)} AND space = {literal(space)} AND task = {literal(task)}
ORDER BY pair, side""")


def crystal_search(con, hook: str, space: str) -> Shown:
    return run(con, f"""
SELECT representation, distractor_dims, round(same_relation_before, 3) AS same_relation_before,
       round(same_relation_after, 3) AS same_relation_after, same_relation_chance,
       round(length_corr, 3) AS length_corr, round(token_corr, 3) AS token_corr
FROM crystal_search WHERE hook = {literal(hook)} AND space = {literal(space)}""")


def found_crystals(con, hook: str, space: str, limit: int = 20) -> Shown:
    return run(con, f"""
SELECT a, b, c, d, relation, round(crystal_error, 3) AS crystal_error,
       round(parallelogram_error, 3) AS parallelogram_error,
       round(trapezoid_error, 3) AS trapezoid_error
FROM crystals WHERE hook = {literal(hook)} AND space = {literal(space)} AND stage = 'after'
ORDER BY rank LIMIT {int(limit)}""")


def universality(con) -> Shown:
    return run(con, """
SELECT layer_a, layer_b, sae_a, sae_b, definition, model_a, model_b, n_matched, n_pairs,
       round(mean_corr, 3) AS mean_corr, round(svcca, 3) AS svcca, round(svcca_null, 3) AS svcca_null, round(svcca_p, 3) AS svcca_p,
       round(rsa, 3) AS rsa, round(rsa_null, 3) AS rsa_null, round(rsa_p, 3) AS rsa_p
FROM universality""")


def matched_pairs(con, sae_a: str, sae_b: str, limit: int = 50) -> Shown:
    return run(con, f"""
SELECT r.definition, m.feature_a, fa.label AS label_a, m.feature_b, fb.label AS label_b,
       round(m.corr, 3) AS corr
FROM matched_pairs m
JOIN analysis_runs r USING (run_id)
JOIN features fa ON fa.sae_id = m.sae_a AND fa.feature = m.feature_a
JOIN features fb ON fb.sae_id = m.sae_b AND fb.feature = m.feature_b
WHERE m.sae_a = {literal(sae_a)} AND m.sae_b = {literal(sae_b)} AND m.kept
ORDER BY r.definition DESC, m.corr DESC LIMIT {int(limit)}""")


def absorption_summary(con) -> Shown:
    return run(con, """
SELECT layer, sae_id, definition, letters_scored, evaluated,
       round(mean_probe_f1, 3) AS mean_probe_f1,
       round(mean_absorption_rate, 3) AS mean_absorption_rate,
       round(mean_full_absorption_rate, 3) AS mean_full_absorption_rate,
       round(mean_split_features, 2) AS mean_split_features
FROM absorption_by_sae""")


def absorption_letters(con, sae_id: str) -> Shown:
    return run(con, f"""
SELECT definition, letter, round(probe_f1, 3) AS probe_f1, n_main, round(absorption_rate, 3)
       AS absorption_rate, round(full_absorption_rate, 3) AS full_absorption_rate,
       n_true_positives, n_full, scored, main_latents, main_labels
FROM absorption WHERE sae_id = {literal(sae_id)} ORDER BY definition DESC, letter""")


def absorbed_examples(con, sae_id: str, letter: str, limit: int = 30) -> Shown:
    return run(con, f"""
SELECT definition, word, absorber, absorber_label, round(absorber_cos, 3) AS absorber_cos,
       round(absorber_share, 3) AS absorber_share,
       round(absorption_fraction, 3) AS absorption_fraction, "full",
       round(main_activation, 3) AS main_activation
FROM absorbed_examples WHERE sae_id = {literal(sae_id)} AND letter = {literal(letter)}
ORDER BY definition DESC, "full" DESC, absorption_fraction DESC LIMIT {int(limit)}""")


def view_names(con) -> list[str]:
    return run(con, "SELECT table_name FROM information_schema.tables WHERE table_type = 'VIEW' "
                    "ORDER BY 1").frame["table_name"].tolist()


EXAMPLE_QUERIES = {
    "SAE quality": "SELECT * FROM sae_overview",
    "Power-law slope per layer": "SELECT layer, slope, gaussian_slope, r2 FROM layer_spectra",
    "Most code-heavy lobes": "SELECT * FROM lobes WHERE k = 4 ORDER BY code_share DESC LIMIT 5",
    "Spatial modularity": "SELECT layer, metric, k, ami, ami_z, logreg_accuracy FROM "
                          "lobe_modularity",
    "Strongest co-firing pairs": "SELECT * FROM affinity ORDER BY phi DESC LIMIT 20",
    "Analogy quality": "SELECT * FROM crystal_quality",
    "Word representations": "SELECT * FROM word_representation_quality",
    "Crystal separation (li2024)": "SELECT * FROM crystal_separation",
    "Universality heat map": "SELECT layer_a, layer_b, definition, svcca, svcca_null, rsa "
                             "FROM universality",
    "Absorption per SAE": "SELECT * FROM absorption_by_sae",
    "Features that promote ' Paris'": "SELECT * FROM feature_logit_lens WHERE direction = "
                                      "'top' AND token = ' Paris' ORDER BY value DESC",
    "Density histogram": "SELECT * FROM density_histogram",
    "Most absorbed letters": "SELECT sae_id, letter, probe_f1, n_split, absorption_rate, "
                             "full_absorption_rate FROM absorption WHERE scored "
                             "ORDER BY absorption_rate DESC LIMIT 10",
}
