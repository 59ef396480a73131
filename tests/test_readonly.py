import pytest

from atlas.errors import AtlasError
from atlas.readonly import open_readonly, run_query, sqlalchemy_url


@pytest.fixture
def ro(tiny_atlas):
    con = open_readonly(tiny_atlas[0].db)
    yield con
    con.close()


def test_select_runs(ro):
    table = run_query(ro, "SELECT sae_id, count(*) AS n FROM features GROUP BY 1 ORDER BY 1")
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
    assert run_query(ro, "SELECT count(*) AS n FROM features").column("n")[0].as_py() == 192


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
