"""Questions people ask of an atlas's feature geometry: neighbours of a feature and analogies
over features, answered from an SAE's FAISS index (`atlas.index.open_index`).

Functions take an open DuckDB connection (read-only is enough) and return small frozen
dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np

from atlas.errors import AtlasError
from atlas.index import FeatureIndex


@dataclass(frozen=True)
class Hit:
    """One search result: a feature, its cosine to the query, and what it fires on."""

    sae_id: str
    feature: int
    cosine: float
    label: str
    top_tokens: tuple[str, ...]


def describe(con: duckdb.DuckDBPyConnection, sae_id: str, features: np.ndarray,
             cosines: np.ndarray) -> list[Hit]:
    """Hits with each feature's label and top tokens."""
    rows = con.execute("SELECT feature, label, top_tokens FROM features WHERE sae_id = ? AND "
                       "feature IN (SELECT unnest(?::INTEGER[]))",
                       [sae_id, [int(f) for f in features]]).fetchall()
    info = {f: (label, tuple(tops)) for f, label, tops in rows}
    return [Hit(sae_id, int(f), float(c), *info.get(int(f), ("", ())))
            for f, c in zip(features, cosines)]


def feature_vector(index: FeatureIndex, feature: int) -> np.ndarray:
    """The unit decoder vector of a feature, with a clear error for an unknown id."""
    where = np.nonzero(index.ids == feature)[0]
    if len(where) == 0:
        raise AtlasError(f"feature {feature} does not exist in {index.meta.sae_id} (ids "
                         f"{int(index.ids.min())}..{int(index.ids.max())})")
    return index.vectors[where[0]]


def neighbors(con: duckdb.DuckDBPyConnection, index: FeatureIndex, feature: int, k: int = 10, *,
              target: FeatureIndex | None = None) -> list[Hit]:
    """The k features whose decoder directions are closest to `feature`'s.

    Args:
        target: search another SAE's index (same d_in), e.g. another layer; the feature itself
            is only excluded when searching its own SAE.
    """
    q = feature_vector(index, feature)
    where = target or index
    _check_width(q, where)
    own = target is None or target.meta.sae_id == index.meta.sae_id
    scores, ids = where.search(q[None], k + int(own))
    keep = ids[0] != feature if own else np.ones(len(ids[0]), bool)
    return describe(con, where.meta.sae_id, ids[0][keep][:k], scores[0][keep][:k])


def analogy(con: duckdb.DuckDBPyConnection, index: FeatureIndex, a: int, b: int, c: int,
            k: int = 10) -> list[Hit]:
    """Features nearest to vec(b) - vec(a) + vec(c), the three inputs excluded."""
    q = feature_vector(index, b) - feature_vector(index, a) + feature_vector(index, c)
    scores, ids = index.search(q[None], k + 3)
    keep = ~np.isin(ids[0], [a, b, c])
    return describe(con, index.meta.sae_id, ids[0][keep][:k], scores[0][keep][:k])


def _check_width(q: np.ndarray, index: FeatureIndex) -> None:
    if len(q) != index.meta.d:
        raise AtlasError(f"vectors of width {len(q)} cannot be searched in "
                         f"{index.meta.sae_id} (d_in {index.meta.d}); pick an SAE of this model")
