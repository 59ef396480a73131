"""The queries behind the Explanations page and each Feature page's explanations
(`atlas.dashboard`'s conventions: each returns its SQL with the result; values enter the SQL
only through `literal`)."""

from __future__ import annotations

from atlas.dashboard import Shown, literal, run


def feature_explanations(con, sae_id: str, feature: int) -> Shown:
    return run(con, f"""
SELECT explanation, explainer, method, scorer,
       round(balanced_accuracy, 3) AS balanced_accuracy,
       round(baseline_balanced_accuracy, 3) AS baseline
FROM explained_features WHERE sae_id = {literal(sae_id)} AND feature = {int(feature)}
ORDER BY explainer = 'top-tokens', explainer, method""")


def search(con, text: str, limit: int = 50) -> Shown:
    return run(con, f"""
SELECT round(score, 3) AS score, sae_id, feature, explanation, explainer, label
FROM search_explanations({literal(text)}) LIMIT {int(limit)}""")


def quality(con) -> Shown:
    return run(con, """
SELECT sae_id, explainer, method, scorer, n_features,
       round(balanced_accuracy, 3) AS balanced_accuracy,
       round(baseline_balanced_accuracy, 3) AS baseline, round(margin, 3) AS margin, n_failed
FROM explanation_quality ORDER BY sae_id, explainer, method""")


def best(con, sae_id: str, limit: int = 200) -> Shown:
    return run(con, f"""
SELECT feature, any_value(explanation) AS explanation, explainer,
       round(avg(balanced_accuracy), 3) AS balanced_accuracy,
       round(avg(baseline_balanced_accuracy), 3) AS baseline, any_value(label) AS label
FROM explained_features WHERE sae_id = {literal(sae_id)} AND explainer <> 'top-tokens'
GROUP BY feature, explainer
ORDER BY balanced_accuracy DESC NULLS LAST, feature LIMIT {int(limit)}""")


def names(con, sae_id: str) -> Shown:
    """Each explained feature's best LLM explanation (highest detection score; unscored ones
    after the scored)."""
    return run(con, f"""
SELECT feature, arg_max(explanation, coalesce(balanced_accuracy, -1)) AS explanation
FROM explained_features WHERE sae_id = {literal(sae_id)} AND explainer <> 'top-tokens'
  AND explanation <> '' GROUP BY feature ORDER BY feature""")


def embedders(con) -> Shown:
    return run(con, "SELECT DISTINCT embedder FROM explanation_embeddings ORDER BY embedder")


EXAMPLES = {
    "Features about a topic (BM25)": "SELECT * FROM search_explanations('numbers digits') "
                                     "LIMIT 10",
    "Explanation quality vs baseline": "SELECT * FROM explanation_quality",
}
