"""Write the README's command reference from the `atlas` parser (`tests/test_docs.py` checks
that the README holds exactly this text).

    python scripts/cli_reference.py          # rewrite the block in README.md
"""

from __future__ import annotations

import sys
from pathlib import Path

from atlas.cli import reference

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- cli-reference: start -->", "<!-- cli-reference: end -->"


def with_reference(text: str) -> str:
    """The README text with the block between the markers replaced by the reference."""
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{reference()}\n{END}{tail}"


if __name__ == "__main__":
    README.write_text(with_reference(README.read_text()))
    sys.exit(0)
