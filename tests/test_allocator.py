import os
import subprocess
import sys

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
