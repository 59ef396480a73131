"""The explanations in a Neuronpedia export (`atlas export --format neuronpedia`)."""

from __future__ import annotations


def neuronpedia_explanations(cur, sae_id: str, lo: int, hi: int) -> dict[int, list[dict]]:
    """{feature: its explanations} for features lo..hi-1, as Neuronpedia's explanation records
    name them (description, explanationModelName, typeName), each with its scores (the
    atlas's addition: method, scorer, balanced accuracy and the baseline's); {} for an atlas
    without explanations."""
    have = cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = "
                       "'explanations'").fetchall()[0][0]
    if not have:
        return {}
    rows = cur.execute("""
        SELECT feature, explanation, explainer, template,
               coalesce(list({'method': method, 'scorer': scorer,
                              'balanced_accuracy': balanced_accuracy,
                              'baseline_balanced_accuracy': baseline_balanced_accuracy})
                        FILTER (method IS NOT NULL), []) AS scores
        FROM explanations LEFT JOIN explanation_scores
             USING (sae_id, feature, explainer, template)
        WHERE sae_id = ? AND feature >= ? AND feature < ?
        GROUP BY ALL ORDER BY feature, explainer""", [sae_id, lo, hi]).fetchall()
    out: dict[int, list[dict]] = {}
    for feature, text, explainer, template, scores in rows:
        out.setdefault(feature, []).append({"description": text,
                                            "explanationModelName": explainer,
                                            "typeName": template, "scores": scores})
    return out
