"""The README documents every CLI command, every SQL view and both set-up commands."""

import re
from pathlib import Path

from atlas.cli import COMMANDS
from atlas.store import sql_files

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_cli_command_is_in_the_readme():
    for name in COMMANDS:
        assert f"atlas {name}" in README, f"`atlas {name}` is missing from README.md"


def test_every_view_is_in_the_readme():
    views = [v for _, text in sql_files()
             for v in re.findall(r"CREATE OR REPLACE VIEW (\w+)", text)]
    assert views
    for view in views:
        assert f"`{view}`" in README, f"view {view} is missing from README.md"


def test_every_table_is_in_the_readme(fresh_con):
    """Every table of a migrated atlas (a table a migration renames or drops is not one)."""
    tables = [r[0] for r in fresh_con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
        "AND table_name <> 'atlas_migrations'").fetchall()]
    assert "analysis_runs" in tables
    for table in tables:
        assert f"`{table}(" in README or f"`{table}`" in README, f"table {table} missing"


def test_ci_runs_the_readme_test_command():
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci and "bash scripts/test.sh" in README
    assert "bash scripts/build.sh" in README


def test_the_readme_command_reference_is_the_parser_s():
    """The README's command reference is written from the parser (scripts/readme.py): every
    command and flag with its default, and nothing the parser does not have; its list of the
    analyses' tables is written from the registry and their .sql files."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "readme", Path(__file__).parent.parent / "scripts" / "readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.with_blocks(README) == README, (
        "README.md's command reference or analysis tables differ from the code; run "
        "`python scripts/readme.py`")
    from atlas import analyses

    for name in analyses.all_names():
        assert f"- **{name}** (`atlas/analyses/{name}/`" in README, name
    from atlas.cli import _parser

    for name in COMMANDS:
        sub = _parser(name)._subparsers._group_actions[0].choices[name]
        for action in sub._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert f"`{flag}" in README or f", {flag}" in README, (name, flag)
