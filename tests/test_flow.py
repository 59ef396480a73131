"""The build as a real Prefect flow run, on Prefect's ephemeral local API."""

import duckdb
import pytest

from tests.conftest import tiny_config
from tests.tiny import tiny_model_dir


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    import os

    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect"))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def test_flow_builds_the_same_atlas_as_the_python_api(prefect_harness, tiny_atlas, tmp_path):
    from atlas.flows.build import build_flow

    config = tiny_config(tmp_path / "flow.duckdb")
    state = build_flow(config, return_state=True)
    assert state.is_completed()
    result = state.result()
    assert result.sae_ids == tiny_atlas[1].sae_ids
    query = ("SELECT sae_id, sum(firing_count), sum(block_count), count(*) FROM features "
             "GROUP BY 1 ORDER BY 1")
    with duckdb.connect(str(config.db), read_only=True) as a, \
            duckdb.connect(str(tiny_atlas[0].db), read_only=True) as b:
        assert a.execute(query).fetchall() == b.execute(query).fetchall()
        pairs = "SELECT sae_id, count(*), sum(n_ij) FROM cooccurrence GROUP BY 1 ORDER BY 1"
        assert a.execute(pairs).fetchall() == b.execute(pairs).fetchall()


def test_store_tasks_retry_and_compute_tasks_do_not():
    from atlas import pipeline
    from atlas.flows.build import as_task

    assert as_task(pipeline.store_harvest).retries == 2
    assert as_task(pipeline.train).retries == 0


HARVEST_TABLES = {"features": "feature", "block_firings": "block_id, feature",
                  "cooccurrence": "i, j", "examples": "feature, rank", "decoders": "feature"}


def assert_same_atlas(db_a, db_b):
    """Every harvest table of two atlases holds the same rows (NaN equal to NaN)."""
    con = duckdb.connect()
    con.execute(f"ATTACH '{db_a}' AS a (READ_ONLY)")
    con.execute(f"ATTACH '{db_b}' AS b (READ_ONLY)")
    for table in HARVEST_TABLES:
        n_a = con.execute(f"SELECT count(*) FROM a.{table}").fetchone()[0]
        n_b = con.execute(f"SELECT count(*) FROM b.{table}").fetchone()[0]
        diff = con.execute(f"SELECT count(*) FROM (SELECT * FROM a.{table} EXCEPT ALL "
                           f"SELECT * FROM b.{table})").fetchone()[0]
        assert n_a == n_b > 0 and diff == 0, f"{table}: {n_a} vs {n_b} rows, {diff} differ"
    cols = "sae_id, l0, explained_variance, dead_fraction, quality_tokens, decoder_checksum"
    assert (con.execute(f"SELECT {cols} FROM a.saes ORDER BY 1").fetchall()
            == con.execute(f"SELECT {cols} FROM b.saes ORDER BY 1").fetchall())
    con.close()


def test_sharded_build_on_a_local_dask_cluster_matches_the_single_process_atlas(
        prefect_harness, tiny_atlas, tmp_path):
    from atlas.artifacts import shards_dir
    from atlas.flows.build import run_build_flow

    config = tiny_config(tmp_path / "dask.duckdb", runner="dask", workers=2, analyses=())
    result = run_build_flow(config)
    assert result.sae_ids == tiny_atlas[1].sae_ids
    assert_same_atlas(config.db, tiny_atlas[0].db)
    import json
    import os

    metas = [json.loads(p.read_text()) for p in shards_dir(config.db).glob("*/*/meta.json")]
    with duckdb.connect(str(config.db), read_only=True) as con:
        n_blocks = con.execute("SELECT n_blocks FROM corpora").fetchone()[0]
    assert 64 < n_blocks <= 128
    assert sorted((m["sae_id"], m["start"], m["stop"]) for m in metas) == sorted(
        (s, a, b) for s in result.sae_ids for a, b in [(0, 64), (64, n_blocks)])
    # the shards ran in the cluster's worker processes, not in this one, and their task runs
    # were recorded by the flow's Prefect API
    assert all(not m["written_by"].endswith(f":{os.getpid()}") for m in metas)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(
            name=TaskRunFilterName(like_="harvest_shard")), limit=200,
            sort=TaskRunSort.EXPECTED_START_TIME_DESC)
    assert sum(r.state.is_completed() for r in runs) >= 2


def test_a_shard_that_fails_once_is_retried_and_a_rerun_skips_written_shards(
        prefect_harness, tiny_atlas, tmp_path, monkeypatch):
    from atlas import distributed
    from atlas.artifacts import shards_dir
    from atlas.flows.build import run_build_flow

    real, failed = distributed.run_shard, []

    def flaky(job, lm=None, cache=None, loaded=None):
        if job.start == 64 and not failed:
            failed.append(job.start)
            raise RuntimeError("worker lost")
        return real(job, lm, cache, loaded)

    monkeypatch.setattr(distributed, "run_shard", flaky)
    config = tiny_config(tmp_path / "threads.duckdb", analyses=())
    run_build_flow(config)
    assert failed == [64]
    assert_same_atlas(config.db, tiny_atlas[0].db)

    # A run killed before its harvests were committed resumes: the SAEs it trained are loaded,
    # the shards on disk are kept, the missing one is harvested again.
    import shutil

    import duckdb

    with duckdb.connect(str(config.db)) as con:
        con.execute("DELETE FROM harvests")
    metas = sorted(shards_dir(config.db).glob("*/*/meta.json"))
    lost = metas[0].parent
    shutil.rmtree(lost)
    kept = {m: m.stat().st_mtime_ns for m in metas[1:]}
    run_build_flow(config)
    assert (lost / "meta.json").exists()
    assert all(m.stat().st_mtime_ns == t for m, t in kept.items())
    assert_same_atlas(config.db, tiny_atlas[0].db)


def test_an_unreachable_scheduler_is_one_clear_error(tmp_path, capsys):
    import socket

    from atlas.cli import main

    with socket.socket() as s:            # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = tmp_path / "never.duckdb"
    assert main(["build", "--prefect", "--db", str(db), "--model", str(tiny_model_dir()),
                 "--runner", f"tcp://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert "no Dask scheduler answers" in err and "--runner dask" in err
    assert not db.exists()


def test_the_deployment_entry_point_runs_the_build_as_a_subflow(prefect_harness, tiny_atlas,
                                                                 tmp_path):
    from atlas.flows.build import deployed_build

    config = tiny_config(tmp_path / "deployed.duckdb", analyses=())
    state = deployed_build(config, return_state=True)
    assert state.is_completed()
    assert_same_atlas(config.db, tiny_atlas[0].db)
