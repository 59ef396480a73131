import os
import subprocess
import sys
import textwrap

import pytest

from atlas import allocator

CHILD = """
import resource, sys
import numpy as np
from atlas import allocator
print(allocator.tune() if sys.argv[1] == "tune" else False)
a = np.ones(40 << 20, np.uint8); del a           # a 40 MB block, above glibc's 32 MB default
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    a = np.ones(40 << 20, np.uint8); del a
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str, env: dict[str, str] | None = None) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                         check=True, env={**os.environ, **(env or {})}).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_allocator_reuses_freed_blocks_instead_of_faulting_them_in_again():
    tuned, with_tuning = faults("tune")
    _, without = faults("plain")
    assert tuned == "True"
    # 10 x 40 MB freshly mapped faults thousands of pages in (fewer with transparent huge
    # pages); kept on the heap it is next to none
    assert without > 1_000
    assert with_tuning < without / 20


def test_a_user_s_own_threshold_is_kept(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert allocator.tune() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_hands_freed_heap_back_to_the_kernel():
    """Freed blocks held in the heap (below the raised mmap threshold) leave the process's
    resident memory on release."""
    code = textwrap.dedent("""
        import ctypes
        from atlas import allocator
        assert allocator.tune()
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        def rss():
            return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0])
        blocks = [libc.malloc(8 << 20) for _ in range(40)]       # 320 MiB on the heap
        for b in blocks:
            ctypes.memset(b, 1, 8 << 20)
        keep = libc.malloc(1 << 20)                              # pins the heap's top
        for b in blocks:
            libc.free(b)
        held = rss()
        assert allocator.release()
        print(held - rss())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items()
                              if k not in allocator.USER_SETTINGS})
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) > 200_000   # KiB returned
