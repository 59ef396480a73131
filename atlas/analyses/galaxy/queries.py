"""The queries behind the galaxy page (`atlas.dashboard`'s conventions: each returns its SQL
with the result; values enter the SQL only through `literal`)."""

from __future__ import annotations

from atlas.dashboard import Shown, literal, run


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


EXAMPLES = {
    "Power-law slope per layer": "SELECT layer, slope, gaussian_slope, r2 FROM layer_spectra",
}
"""Its entries in the SQL page's examples."""
