"""The build as a real Prefect flow run, on Prefect's ephemeral local API."""

import duckdb
import pytest

from tests.conftest import tiny_config


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
    from flows.build import build_flow

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
    from flows.build import as_task

    assert as_task(pipeline.store_harvest).retries == 2
    assert as_task(pipeline.train).retries == 0
