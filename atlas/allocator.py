"""The C allocator's settings for a long numeric run (glibc only; elsewhere nothing changes).

PyTorch allocates each layer's activations fresh on a CPU, and glibc hands blocks over 32 MB
(and, once freed, the heap's top above its trim threshold) back to the kernel, so the next
batch faults the same pages in again, zeroed: ~90k page faults per five default harvest
passes, ~8% of their wall time on 2 cores. Keeping blocks below 64 MiB on the heap and up to
256 MiB of freed heap in the process removes those faults; memory held beyond the live
tensors stays bounded by the trim threshold.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
"""glibc's `mallopt` parameters (malloc.h)."""
MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 256 << 20
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
"""Environment variables through which a user sets the same (theirs are kept)."""


def _glibc(name: str, argtypes: list, restype) -> Callable[..., int] | None:
    """glibc's function `name` with its C signature; None off Linux or off glibc (musl has
    no mallopt or malloc_trim)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = argtypes, restype
    return fn


def tune() -> bool:
    """Apply the settings once at a command's start; whether they were applied (False off
    glibc, or where the user set either threshold)."""
    if any(v in os.environ for v in USER_SETTINGS):
        return False
    mallopt = _glibc("mallopt", [ctypes.c_int, ctypes.c_int], ctypes.c_int)
    if mallopt is None:
        return False
    done = (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    log.debug("allocator thresholds %s", "set" if done else "refused")
    return done


def release() -> bool:
    """Hand the freed memory held by the C allocator (in every arena, holes included) back to
    the kernel, after a phase whose temporaries will not be allocated again soon; whether any
    was returned (False off glibc)."""
    malloc_trim = _glibc("malloc_trim", [ctypes.c_size_t], ctypes.c_int)
    return malloc_trim is not None and malloc_trim(0) == 1
