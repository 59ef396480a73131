"""The shared unit-norm helper."""

import numpy as np

from atlas.geometry.vectors import unit


def test_unit_scales_vectors_and_rows_and_keeps_zero_rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7))
    x[2] = 0
    u = unit(x)
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), [1, 1, 0, 1, 1], atol=1e-12)
    np.testing.assert_allclose(u[0], x[0] / np.sqrt((x[0] ** 2).sum()))
    np.testing.assert_allclose(unit(x[1]), u[1])
