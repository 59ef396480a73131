"""Fuzzing the read-only surface: generated statements mixing file readers and writers,
ATTACH, extension loading, writes and settings with harmless SQL, comments, case and statement
separators. Whatever `run_query` accepts, no file is ever read or written and the atlas is
unchanged."""

import hashlib
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas.errors import AtlasError
from atlas.readonly import Limits, open_readonly, run_query

SECRET = "fuzz-secret-7f3a"


def _paths(root):
    return {"secret": str(root / "secret.csv"), "out": str(root / "out.csv"),
            "db": str(root / "other.duckdb"), "dir": str(root / "export")}


def hostile(p):
    return [
        f"SELECT * FROM read_csv('{p['secret']}')",
        f"SELECT * FROM read_csv_auto('{p['secret']}')",
        f"SELECT * FROM '{p['secret']}'",
        f"SELECT * FROM read_text('{p['secret']}')",
        f"SELECT * FROM read_blob('{p['secret']}')",
        f"SELECT * FROM read_json('{p['secret']}')",
        f"SELECT * FROM read_parquet('{p['secret']}')",
        f"SELECT * FROM glob('{p['secret']}')",
        f"SELECT * FROM sniff_csv('{p['secret']}')",
        f"FROM '{p['secret']}'",
        f"COPY features TO '{p['out']}'",
        f"COPY (SELECT 1) TO '{p['out']}' (FORMAT csv)",
        f"COPY features FROM '{p['secret']}'",
        f"EXPORT DATABASE '{p['dir']}'",
        f"IMPORT DATABASE '{p['dir']}'",
        f"ATTACH '{p['db']}' AS o",
        f"ATTACH '{p['db']}' AS o; CREATE TABLE o.t AS SELECT 1",
        "INSTALL httpfs", "LOAD httpfs", "FORCE INSTALL json",
        "SET enable_external_access = true", "RESET enable_external_access",
        "SET lock_configuration = false", "PRAGMA enable_profiling",
        f"PRAGMA profile_output = '{p['out']}'",
        "CREATE TABLE t AS SELECT 1", "CREATE VIEW v AS SELECT 1", "DROP TABLE features",
        "DELETE FROM features", "UPDATE features SET label = 'x'",
        "INSERT INTO saes SELECT * FROM saes", "ALTER TABLE features ADD COLUMN z INT",
        "CHECKPOINT", "VACUUM", "CALL pragma_version()", "CREATE MACRO m(x) AS x",
        "CREATE SECRET s (TYPE s3)", "DETACH DATABASE atlas", "USE memory",
        f"SELECT * FROM (SELECT 1) t, read_csv('{p['secret']}')",
        f"WITH x AS (SELECT * FROM read_text('{p['secret']}')) SELECT * FROM x",
        f"SELECT (SELECT content FROM read_text('{p['secret']}'))",
        f"EXPLAIN SELECT * FROM read_csv('{p['secret']}')",
        f"EXPLAIN ANALYZE COPY features TO '{p['out']}'",
        f"DESCRIBE SELECT * FROM read_csv('{p['secret']}')",
        f"SUMMARIZE SELECT * FROM read_csv('{p['secret']}')",
    ]


HARMLESS = ["SELECT 1", "SELECT count(*) FROM features", "SELECT * FROM saes LIMIT 2",
            "DESCRIBE features", "SHOW TABLES", "EXPLAIN SELECT 1",
            "WITH a AS (SELECT 2 AS x) SELECT x FROM a", "SELECT 'x' AS \"y\""]


def variants(sql: str):
    return st.sampled_from([
        sql, sql.lower(), sql.upper(), "  " + sql + " ;", "/* c */ " + sql,
        sql + " -- tail\n", "\n" + sql.replace(" ", "\n  ") + "\n", "(" + sql + ")",
    ])


@pytest.fixture(scope="module")
def sandbox(tiny_atlas, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    db = root / "atlas.duckdb"
    shutil.copy(tiny_atlas[0].db, db)
    (root / "secret.csv").write_text(f"a\n{SECRET}\n")
    con = open_readonly(db)
    yield root, db, con
    con.close()


def _listing(root):
    return sorted(p.name for p in root.rglob("*"))


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_generated_statement_reads_or_writes_files(sandbox, data):
    root, db, con = sandbox
    p = _paths(root)
    pool = hostile(p) + HARMLESS
    parts = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))
    pieces = [data.draw(variants(x)) for x in parts]
    sql = data.draw(st.sampled_from(["; ", ";\n", " ; -- x\n"])).join(pieces)
    before_files, before_db = _listing(root), _digest(db)
    try:
        result = run_query(con, sql, limits=Limits(timeout_s=10))
    except AtlasError as exc:
        assert "\n" not in str(exc)
    else:
        text = str(result.table.to_pylist())
        assert SECRET not in text, sql
        assert len(parts) == 1, f"a multi-statement text ran: {sql!r}"
    assert _listing(root) == before_files, sql
    assert _digest(db) == before_db, sql


@pytest.mark.parametrize("sql", HARMLESS)
def test_the_harmless_pool_runs(sandbox, sql):
    """The fuzz above would pass vacuously if nothing ran."""
    assert run_query(sandbox[2], sql).table.num_rows >= 1
