"""The queries behind the Crystals page (`atlas.dashboard`'s conventions: each returns its SQL
with the result; values enter the SQL only through `literal`)."""

from __future__ import annotations

from atlas.dashboard import Shown, literal, run


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


EXAMPLES = {
    "Analogy quality": "SELECT * FROM crystal_quality",
    "Word representations": "SELECT * FROM word_representation_quality",
    "Crystal separation (li2024)": "SELECT * FROM crystal_separation",
}
"""Its entries in the SQL page's examples."""
