"""Crystals (small scale), per residual point: word-pair analogies, distractor removal, the
geometry paper's LDA experiment and the crystal quadruples found.

Files: `analysis.py` (settings and the runner's contract), `geometry.py` (the pure
computations), the .sql files (its tables and views), `queries.py` and `page.py` (its app
page)."""

ORDER = 30
"""Its place when several analyses run (cheap ones first)."""
