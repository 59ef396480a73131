"""Progress of long steps: a bar on a terminal, periodic log lines anywhere else.

A progress bar redraws itself with carriage returns, which a log file or a CI console keeps as
one ever-growing line; so a bar is drawn only when standard error is a terminal, and otherwise
the step logs one line every `every` seconds and one when it ends.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from tqdm.auto import tqdm

log = logging.getLogger("atlas.progress")


def on_terminal() -> bool:
    """Whether progress bars are drawn: standard error is a terminal and TQDM_DISABLE unset."""
    return sys.stderr.isatty() and not os.environ.get("TQDM_DISABLE")


class Progress:
    """Counts work done towards `total` (None: unknown) in `unit`s."""

    def __init__(self, desc: str, *, total: int | None = None, unit: str = "it",
                 every: float = 30.0, leave: bool = True, enabled: bool = True):
        self.desc, self.total, self.unit, self.every = desc, total, unit, every
        self.done = 0
        self.t0 = self.last = time.perf_counter()
        self.enabled = enabled
        self.bar = (tqdm(total=total, desc=desc, unit=unit, unit_scale=True, leave=leave)
                    if enabled and on_terminal() else None)

    def update(self, n: int = 1, **postfix: object) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(**postfix, refresh=False)
            return
        now = time.perf_counter()
        if self.enabled and now - self.last >= self.every:
            self.last = now
            log.info("%s: %s%s", self.desc, self._count(now),
                     "".join(f", {k} {v}" for k, v in postfix.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            return
        if self.enabled and self.done:
            log.info("%s: done, %s", self.desc, self._count(time.perf_counter()))

    def _count(self, now: float) -> str:
        seconds = now - self.t0
        of = f"/{self.total:,}" if self.total else ""
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        rate = self.done / seconds if seconds > 0 else 0.0
        return f"{self.done:,}{of} {self.unit}{pct} in {seconds:.0f}s ({rate:,.0f} {self.unit}/s)"
