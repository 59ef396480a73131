"""One folder per analysis: what it creates in SQL is named in SQL nowhere else in the shipped
code, and the registry finds every part of it."""

import re
from pathlib import Path

import duckdb

from atlas import analyses, store

ROOT = Path(__file__).parent.parent
SHIPPED = ("atlas", "app", "flows", "sql", "scripts", "docker")
"""What users run (tests, benchmarks and the README name tables as users do)."""
CREATED = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:TABLE|VIEW|MACRO)\s+(\w+)", re.I)


def created_by(name: str) -> set[str]:
    folder = ROOT / "atlas" / "analyses" / name
    return {m.group(1).lower() for f in folder.glob("*.sql") for m in CREATED.finditer(
        f.read_text())}


def test_each_analysis_folder_holds_its_parts():
    for name in analyses.all_names():
        folder = ROOT / "atlas" / "analyses" / name
        if name in analyses.available():   # the runner's contract
            parts = {"__init__.py", "analysis.py", "geometry.py", "queries.py", "page.py"}
            module = analyses.module(name)
            assert name == module.NAME
        else:                              # a command of its own
            parts = {"__init__.py", "command.py", "queries.py", "page.py"}
            module = analyses.command(name)
            assert analyses.about(name).COMMAND in analyses.own_commands()
        assert parts <= {p.name for p in folder.iterdir()}, name
        tables = {m.group(1).lower() for f in folder.glob("*.sql") for m in re.finditer(
            r"CREATE\s+TABLE\s+(\w+)", f.read_text(), re.I)}
        assert tables == set(module.TABLES), name
        assert isinstance(analyses.queries(name).EXAMPLES, dict)


def test_an_analysis_tables_and_views_are_named_only_in_its_folder():
    """FROM/JOIN/INTO/... <name> for every table, view and macro an analysis's .sql files create,
    searched in every shipped .py, .sql, .sh and .yaml file outside the analysis's folder."""
    files = [p for part in SHIPPED for p in (ROOT / part).rglob("*")
             if p.suffix in (".py", ".sql", ".sh", ".yaml") and "__pycache__" not in p.parts]
    found = []
    for name in analyses.all_names():
        own = ROOT / "atlas" / "analyses" / name
        names = created_by(name)
        assert names, name
        used = re.compile(r"(?:FROM|JOIN|INTO|UPDATE|TABLE|VIEW)\s+\"?(" + "|".join(names)
                          + r")\b", re.I)
        for path in files:
            if path.is_relative_to(own):
                continue
            found += [f"{path.relative_to(ROOT)}: {m.group(0)} ({name})"
                      for m in used.finditer(path.read_text())]
    assert found == []


def test_the_store_applies_every_folder_schema_in_name_order(tmp_path):
    files = store.sql_files()
    assert [n for n, _ in files] == sorted(n for n, _ in files)
    shipped = {n for n, _ in files}
    for name in analyses.all_names():
        assert {f.name for f in (ROOT / "atlas" / "analyses" / name).glob("*.sql")} <= shipped
    con = duckdb.connect(str(tmp_path / "a.duckdb"))
    store.migrate(con)
    have = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables")
            .fetchall()}
    for name in analyses.names():
        assert set(analyses.module(name).TABLES) <= have, name
    con.close()


def test_compare_atlases_finds_equal_and_changed_content(atlas_copy, tiny_atlas, tmp_path):
    """scripts/compare_atlases.py, which checked that moving the analyses into their folders left
    a build's content unchanged: an atlas equals its copy, and a changed row is found."""
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("compare_atlases",
                                                  ROOT / "scripts" / "compare_atlases.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    db, ids = atlas_copy
    same = tmp_path / "same.duckdb"
    shutil.copy(tiny_atlas[0].db, same)
    assert module.compare(str(tiny_atlas[0].db), str(same)) == []
    con = store.connect(db)
    con.execute("UPDATE clusters SET cluster = cluster + 1 WHERE sae_id = ? AND feature = 0",
                [ids[0]])
    con.close()
    assert module.compare(str(tiny_atlas[0].db), str(db)) == ["clusters", "lobes"]  # and its view
