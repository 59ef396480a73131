"""The queries behind the Universality page (`atlas.dashboard`'s conventions: each returns its SQL
with the result; values enter the SQL only through `literal`)."""

from __future__ import annotations

from atlas.dashboard import Shown, literal, run


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


EXAMPLES = {
    "Universality heat map": "SELECT layer_a, layer_b, definition, svcca, svcca_null, rsa "
                             "FROM universality",
}
"""Its entries in the SQL page's examples."""
