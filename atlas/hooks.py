"""Hook points of the model, as TransformerLens/SAELens name them (no torch needed: the
commands that only read the atlas import this, not the model code).

SAEs read the residual stream: 'blocks.L.hook_resid_pre' (block L's input) or
'blocks.L.hook_resid_post' (its output). Transcoders read the MLP's input and write its
output; their points, each under the names SAELens's releases use for it:

- 'blocks.L.ln2.hook_normalized' (also 'blocks.L.mlp.hook_in'): the MLP's input, after the
  block's pre-MLP norm with its weight (`where` 'mlp_in');
- 'blocks.L.hook_resid_mid' (also 'blocks.L.hook_mlp_in', TransformerLens's name for the same
  residual): the residual stream between attention and MLP, before that norm (`where` 'mid');
- 'blocks.L.hook_mlp_out' (also 'blocks.L.mlp.hook_out'): what the MLP adds to the residual
  stream, after the post-MLP norm where the model has one (Gemma 2 and 3) (`where` 'mlp_out').
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from atlas.errors import AtlasError

_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")
_ANY = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_post|hook_resid_mid|hook_mlp_in|"
                  r"ln2\.hook_normalized|mlp\.hook_in|hook_mlp_out|mlp\.hook_out)$")
_WHERE = {"hook_resid_pre": "pre", "hook_resid_post": "post", "hook_resid_mid": "mid",
          "hook_mlp_in": "mid", "ln2.hook_normalized": "mlp_in", "mlp.hook_in": "mlp_in",
          "hook_mlp_out": "mlp_out", "mlp.hook_out": "mlp_out"}
_NAME = {"pre": "hook_resid_pre", "post": "hook_resid_post", "mid": "hook_resid_mid",
         "mlp_in": "ln2.hook_normalized", "mlp_out": "hook_mlp_out"}


@dataclass(frozen=True)
class HookPoint:
    """A place in the model a SAE or transcoder reads or writes, named as TransformerLens/SAELens
    name it."""

    layer: int
    """Block index."""
    where: str = "post"
    """'post': the block's output; 'pre': its input; 'mid': the residual between attention and
    MLP; 'mlp_in': the MLP's (normalized) input; 'mlp_out': the MLP's output."""

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.{_NAME[self.where]}"

    @property
    def residual(self) -> bool:
        """Whether this is a point of the residual stream between blocks (pre / post)."""
        return self.where in ("pre", "post")

    @classmethod
    def parse(cls, name: str) -> HookPoint:
        """Parse 'blocks.L.hook_resid_post' / '..._pre'."""
        m = _HOOK.match(name)
        if not m:
            raise AtlasError(f"hook '{name}' is not a residual-stream hook; the atlas reads "
                             "'blocks.L.hook_resid_post' or 'blocks.L.hook_resid_pre'")
        return cls(int(m.group(1)), m.group(2))

    @classmethod
    def parse_any(cls, name: str) -> HookPoint:
        """Parse a residual hook, or a transcoder's MLP input or output hook."""
        m = _ANY.match(name)
        if not m:
            raise AtlasError(f"hook '{name}' is not one the atlas reads; it reads "
                             "'blocks.L.hook_resid_post' / '..._pre', and transcoders' "
                             "'blocks.L.ln2.hook_normalized' (or 'mlp.hook_in'), "
                             "'blocks.L.hook_mlp_in' (or 'hook_resid_mid') and "
                             "'blocks.L.hook_mlp_out' (or 'mlp.hook_out')")
        return cls(int(m.group(1)), _WHERE[m.group(2)])
