"""Vector helpers every analysis shares."""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def unit(x: np.ndarray, *, eps: float = EPS) -> np.ndarray:
    """`x` scaled to unit norm along its last axis (a vector, or each row of a matrix); zero
    vectors stay zero."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)
