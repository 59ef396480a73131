"""Galaxy (large scale), per SAE: the eigenvalue spectrum of the decoder point cloud against an
isotropic Gaussian's, clustering entropy, and the tail of pairwise decoder cosines.

Files: `analysis.py` (settings and the runner's contract), `geometry.py` (the pure
computations), the .sql files (its tables and views), `queries.py` and `page.py` (its app
page)."""

ORDER = 10
"""Its place when several analyses run (cheap ones first)."""
