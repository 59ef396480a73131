import pytest

from atlas.errors import AtlasError
from atlas.readonly import Limits, open_readonly, run_query, sqlalchemy_url


@pytest.fixture
def ro(tiny_atlas):
    con = open_readonly(tiny_atlas[0].db)
    yield con
    con.close()


def test_select_runs(ro):
    result = run_query(ro, "SELECT sae_id, count(*) AS n FROM features GROUP BY 1 ORDER BY 1")
    table = result.table
    assert not result.truncated and result.note() is None
    assert table.num_rows == 2 and table.column("n").to_pylist() == [96, 96]


@pytest.mark.parametrize("sql, needle", [
    ("DELETE FROM features", "refused a DELETE"),
    ("INSERT INTO models VALUES ('x', 'y', 1, 1)", "refused a INSERT"),
    ("DROP TABLE features", "refused a DROP"),
    ("UPDATE features SET label = 'x'", "refused a UPDATE"),
    ("CREATE TABLE x AS SELECT 1", "refused a CREATE"),
    ("ATTACH '/tmp/other.duckdb' AS o", "refused a ATTACH"),
    ("INSTALL httpfs", "refused a LOAD"),
    ("LOAD httpfs", "refused a LOAD"),
    ("COPY features TO '/tmp/leak.csv'", "refused a COPY"),
    ("SET enable_external_access = true", "refused a SET"),
    ("PRAGMA enable_profiling", "refused a PRAGMA"),
    ("SELECT * FROM read_csv('/etc/passwd')", "reads or writes files"),
    ("SELECT * FROM read_text('/etc/hostname')", "reads or writes files"),
    ("SELECT * FROM glob('/etc/*')", "reads or writes files"),
    ("SELECT 1; DELETE FROM features", "one statement at a time"),
    ("SELEC 1", "does not parse"),
])
def test_hostile_statements_are_refused(ro, sql, needle):
    with pytest.raises(AtlasError, match=needle):
        run_query(ro, sql)
    assert run_query(ro, "SELECT count(*) AS n FROM features").table.column("n")[0].as_py() == 192


def test_sqlalchemy_url_reaches_the_atlas(tiny_atlas):
    import sqlalchemy

    engine = sqlalchemy.create_engine(sqlalchemy_url(tiny_atlas[0].db),
                                      connect_args={"read_only": True})
    with engine.connect() as c:
        n = c.execute(sqlalchemy.text("SELECT count(*) FROM saes")).scalar()
    engine.dispose()
    assert n == 2


def test_missing_or_foreign_files_are_clear_errors(tmp_path):
    import duckdb

    with pytest.raises(AtlasError, match="does not exist"):
        open_readonly(tmp_path / "nope.duckdb")
    duckdb.connect(str(tmp_path / "other.duckdb")).close()
    with pytest.raises(AtlasError, match="holds no atlas"):
        open_readonly(tmp_path / "other.duckdb")


HEAVY = "SELECT count(*) FROM range(100000000) a, range(100000000) b"


def test_a_query_past_the_time_limit_is_stopped_and_the_connection_stays_usable(ro):
    import time

    t0 = time.perf_counter()
    with pytest.raises(AtlasError, match=r"stopped at the 0.5 s time limit.*--timeout"):
        run_query(ro, HEAVY, limits=Limits(timeout_s=0.5))
    assert time.perf_counter() - t0 < 10
    assert run_query(ro, "SELECT 42 AS x").table.column("x")[0].as_py() == 42
    # A quick query under the same limit is not touched by a stale interrupt.
    for _ in range(20):
        assert run_query(ro, "SELECT 1 AS x", limits=Limits(timeout_s=0.01)).table.num_rows == 1


def test_the_row_cap_cuts_and_says_so(ro):
    result = run_query(ro, "SELECT * FROM range(100)", limits=Limits(max_rows=7))
    assert result.table.num_rows == 7 and result.truncated
    assert "first 7 rows" in result.note()
    exact = run_query(ro, "SELECT * FROM range(7)", limits=Limits(max_rows=7))
    assert exact.table.num_rows == 7 and not exact.truncated
    every = run_query(ro, "SELECT * FROM range(20000)", limits=Limits(max_rows=None))
    assert every.table.num_rows == 20000 and not every.truncated


def test_the_memory_limit_and_thread_cap_hold(tiny_atlas, tmp_path):
    import shutil

    db = tmp_path / "mem.duckdb"
    shutil.copy(tiny_atlas[0].db, db)
    con = open_readonly(db, Limits(memory_limit="64MB", threads=1))
    try:
        settings = run_query(con, "SELECT current_setting('threads') AS t, "
                                  "current_setting('memory_limit') AS m").table.to_pylist()[0]
        assert settings["t"] == 1 and settings["m"].startswith("61")   # 64 MB in MiB
        with pytest.raises(AtlasError, match="64MB memory limit"):
            run_query(con, "SELECT list(s) FROM (SELECT i, i::VARCHAR || repeat('x', 100) AS s "
                           "FROM range(3000000) t(i)) GROUP BY i % 7",
                      limits=Limits(memory_limit="64MB", timeout_s=60))
        assert run_query(con, "SELECT 1 AS x").table.num_rows == 1
    finally:
        con.close()


def test_limits_from_the_environment(monkeypatch):
    monkeypatch.setenv("ATLAS_SQL_TIMEOUT", "2.5")
    monkeypatch.setenv("ATLAS_SQL_MAX_ROWS", "0")
    monkeypatch.setenv("ATLAS_SQL_MEMORY", "1GB")
    limits = Limits.from_env(how_to_raise="ATLAS_SQL_TIMEOUT")
    assert (limits.timeout_s, limits.max_rows, limits.memory_limit) == (2.5, None, "1GB")
    assert limits.how_to_raise == "ATLAS_SQL_TIMEOUT"
    monkeypatch.setenv("ATLAS_SQL_TIMEOUT", "soon")
    with pytest.raises(AtlasError, match="ATLAS_SQL_TIMEOUT in seconds"):
        Limits.from_env()
