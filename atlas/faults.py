"""Named points inside the build's commits where a crash test can stop it.

With ATLAS_STOP_AT=<point> in the environment, the build writes the point's name to the file
ATLAS_STOP_MARKER names (when set) on reaching it and then waits there to be killed, so a test
can SIGKILL it mid-transaction, mid-harvest or mid-write and check what a re-run makes of the
atlas. Unset (always, outside such tests), a point costs one dictionary lookup.

Points of the build: store_corpus, train, harvest, store_harvest, index, analysis (POINTS);
of `atlas explain`: explain (inside the write of its second batch of explanations).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

POINTS = ("store_corpus", "train", "harvest", "store_harvest", "index", "analysis")


def point(name: str) -> None:
    """Stop here for good when ATLAS_STOP_AT names this point."""
    if os.environ.get("ATLAS_STOP_AT") != name:
        return
    marker = os.environ.get("ATLAS_STOP_MARKER")
    if marker:
        Path(marker).write_text(name)
    while True:
        time.sleep(1)
