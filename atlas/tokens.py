"""Token ids to text, as the model's tokenizer reads them (no torch: the app imports this)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def decode_each(tokenizer, sequences: Iterable[Sequence[int] | np.ndarray]) -> list[str]:
    """Each sequence of token ids decoded as `tokenizer.batch_decode` would decode it.

    A fast tokenizer that cleans up no spaces decodes the whole list in one call of its Rust
    backend: `batch_decode` first walks every id of every sequence in Python to convert it,
    ~3 s for the 400k ids of a 16k SAE's example contexts on 2 cores."""
    seqs = [s.tolist() if hasattr(s, "tolist") else list(s) for s in sequences]
    if getattr(tokenizer, "is_fast", False) and not tokenizer.clean_up_tokenization_spaces:
        return tokenizer.backend_tokenizer.decode_batch(seqs, skip_special_tokens=False)
    return tokenizer.batch_decode(seqs)
