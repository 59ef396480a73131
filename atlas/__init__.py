"""Feature Atlas: a DuckDB atlas of a language model's sparse-autoencoder features."""

from atlas.config import BuildConfig
from atlas.errors import AtlasError


def build(config: BuildConfig, **kwargs):
    """Build an atlas (see `atlas.builder.build`); imported lazily to keep `import atlas` light."""
    from atlas.builder import build as _build

    return _build(config, **kwargs)


__all__ = ["AtlasError", "BuildConfig", "build"]
