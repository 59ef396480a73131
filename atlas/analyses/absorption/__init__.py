"""Absorption, per SAE: the first-letter task (Chanin et al.; SAEBench's metric by default).

Files: `analysis.py` (settings and the runner's contract), `geometry.py` (the pure
computations), the .sql files (its tables and views), `queries.py` and `page.py` (its app
page)."""

ORDER = 50
"""Its place when several analyses run (cheap ones first)."""
COMMAND = "absorption"
"""`atlas absorption` runs this analysis alone, its settings as unprefixed flags."""
