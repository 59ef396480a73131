"""Hook points of the residual stream, as TransformerLens/SAELens name them (no torch needed:
the commands that only read the atlas import this, not the model code)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from atlas.errors import AtlasError

_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")


@dataclass(frozen=True)
class HookPoint:
    """A place in the residual stream, named as TransformerLens/SAELens name it."""

    layer: int
    """Block index."""
    where: str = "post"
    """'post': the block's output; 'pre': its input."""

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_{self.where}"

    @classmethod
    def parse(cls, name: str) -> HookPoint:
        """Parse 'blocks.L.hook_resid_post' / '..._pre'."""
        m = _HOOK.match(name)
        if not m:
            raise AtlasError(f"hook '{name}' is not a residual-stream hook; the atlas reads "
                             "'blocks.L.hook_resid_post' or 'blocks.L.hook_resid_pre'")
        return cls(int(m.group(1)), m.group(2))
