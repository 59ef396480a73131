"""Universality, per pair of SAEs (Lan et al. 2024): features matched by activation correlation,
their decoder spaces compared by SVCCA and RSA against shuffled pairings.

Files: `analysis.py` (settings and the runner's contract), `geometry.py` (the pure
computations), the .sql files (its tables and views), `queries.py` and `page.py` (its app
page)."""

ORDER = 40
"""Its place when several analyses run (cheap ones first)."""
COMMAND = "compare"
"""`atlas compare` runs this analysis alone, its settings as unprefixed flags."""
MIN_SAES = 2
"""A build with fewer SAEs leaves it out (it compares pairs)."""
