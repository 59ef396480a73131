"""The queries behind the Absorption page (`atlas.dashboard`'s conventions: each returns its SQL
with the result; values enter the SQL only through `literal`)."""

from __future__ import annotations

from atlas.dashboard import Shown, literal, run


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


EXAMPLES = {
    "Absorption per SAE": "SELECT * FROM absorption_by_sae",
    "Most absorbed letters": "SELECT sae_id, letter, probe_f1, n_split, absorption_rate, "
                             "full_absorption_rate FROM absorption WHERE scored "
                             "ORDER BY absorption_rate DESC LIMIT 10",
}
"""Its entries in the SQL page's examples."""
