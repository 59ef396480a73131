"""The queries behind the Lobes page and each Feature page's lobes (`atlas.dashboard`'s conventions: each returns its SQL
with the result; values enter the SQL only through `literal`)."""

from __future__ import annotations

from atlas.dashboard import Shown, literal, run


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


EXAMPLES = {
    "Most code-heavy lobes": "SELECT * FROM lobes WHERE k = 4 ORDER BY code_share DESC LIMIT 5",
    "Spatial modularity": "SELECT layer, metric, k, ami, ami_z, logreg_accuracy FROM "
                          "lobe_modularity",
}
"""Its entries in the SQL page's examples."""
