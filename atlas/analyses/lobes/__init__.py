"""Lobes (intermediate scale), per SAE: spectral clusters of the co-occurrence affinity against
clusters of decoder geometry, and how well the decoder vector predicts the lobe.

Files: `analysis.py` (settings and the runner's contract), `geometry.py` (the pure
computations), the .sql files (its tables and views), `queries.py` and `page.py` (its app
page)."""

ORDER = 20
"""Its place when several analyses run (cheap ones first)."""
