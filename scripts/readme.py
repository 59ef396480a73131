"""Write the README's generated blocks: the command reference from the `atlas` parser, and the
analyses' tables and views from the registry and their folders' .sql files (`tests/test_docs.py`
checks that the README holds exactly this text).

    python scripts/readme.py          # rewrite both blocks in README.md
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import duckdb

from atlas import analyses, store
from atlas.cli import reference

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = {"cli-reference": reference}


def analysis_tables() -> str:
    """Per analysis (run order): its folder, what it is, its tables with their columns as a
    fresh atlas holds them, and its views and macros."""
    con = duckdb.connect()
    store.migrate(con)
    out = []
    for name in analyses.all_names():
        about = analyses.about(name)
        module = (analyses.module(name) if name in analyses.available()
                  else analyses.command(name))
        folder = Path(about.__file__).parent
        summary = " ".join((about.__doc__ or "").split("\n\n")[0].split())
        tables = []
        for table in module.TABLES:
            cols = [r[0] for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                "ORDER BY ordinal_position", [table]).fetchall()]
            tables.append(f"`{table}({', '.join(cols)})`")
        views = sorted({m.group(1) for f in folder.glob("1*.sql") for m in re.finditer(
            r"CREATE\s+OR\s+REPLACE\s+(?:VIEW|MACRO)\s+(\w+)", f.read_text())})
        out.append(f"- **{name}** (`atlas/analyses/{name}/`, definition "
                   f"`{module.DEFINITION}`): {summary} Tables: {', '.join(tables)}."
                   + (f" Views: {', '.join(f'`{v}`' for v in views)}." if views else ""))
    con.close()
    return "\n".join(out)


BLOCKS["analysis-tables"] = analysis_tables


def with_blocks(text: str) -> str:
    """The README text with each generated block between its markers written afresh."""
    for name, write in BLOCKS.items():
        start, end = f"<!-- {name}: start -->", f"<!-- {name}: end -->"
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{write()}\n{end}{tail}"
    return text


if __name__ == "__main__":
    README.write_text(with_blocks(README.read_text()))
    sys.exit(0)
