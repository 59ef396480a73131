"""Row-wise top-k selection, faster on a CPU than one `torch.topk` over wide rows."""

from __future__ import annotations

import math

import torch
from jaxtyping import Int


def ordered_int32(x: torch.Tensor) -> torch.Tensor:
    """float32 values as int32 keys in the same order: non-negative floats order as their bit
    patterns do; a negative one's magnitude bits are flipped, so larger magnitudes read lower
    (-0.0 reads just below +0.0)."""
    bits = x.view(torch.int32)
    return torch.bitwise_right_shift(bits, 31).bitwise_and_(0x7FFFFFFF).bitwise_xor_(bits)


def group_topk(keys: torch.Tensor, k: int) -> Int[torch.Tensor, "n k"]:
    """Columns of each row's k largest keys, in no particular order: the k largest among
    the k groups of g columns with the largest maxima (g the power of two nearest
    sqrt(columns / k), so that both stages' top-k are short) and the last columns that make
    no whole group.

    Group j holds the columns j, j + G, ..., j + (g - 1) G (G groups): its maximum is one
    elementwise maximum of g contiguous slices of the row, ~10x faster on a CPU than
    reducing runs of g neighbouring columns.

    Exact, up to which of equal keys is taken at the k-th place: let t be the k-th largest
    key. Fewer than k groups hold a key above t, so all of them are chosen and every key
    above t is a candidate; and either every group holding a key >= t is chosen, or the k
    chosen groups' maxima are k candidates >= t."""
    n, f = keys.shape
    g = 1 << max(0, round(math.log2(max(f / k, 1.0)) / 2))
    n_groups = f // g
    whole = n_groups * g
    if g < 2 or k * g >= whole:
        return keys.topk(k, dim=-1, sorted=False).indices
    groups = keys[:, :whole].unflatten(1, (g, n_groups)).amax(1)
    chosen = groups.topk(k, dim=-1, sorted=False).indices
    members = torch.arange(0, whole, n_groups, device=keys.device).unsqueeze(-1)
    columns = (chosen.unsqueeze(1) + members).reshape(n, -1)
    if whole < f:
        rest = torch.arange(whole, f, device=keys.device).expand(n, -1)
        columns = torch.cat([columns, rest], 1)
    best = keys.gather(1, columns).topk(k, dim=-1, sorted=False).indices
    return columns.gather(1, best)
