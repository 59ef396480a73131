"""Crash safety: a build SIGKILLed at each of its commit points in turn (while the corpus is
stored, after an SAE is trained and saved, mid-harvest, while a harvest is written, while an
index is written, while an analysis run is written), then run again, equals a clean build —
every table by content, and the index files — and the re-runs keep what was committed."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from atlas import faults
from tests.conftest import tiny_config
from tests.helpers import CliProcess

# Columns that differ between two builds of the same content: ids and times of runs, the
# build's own settings (its path), timings.
VOLATILE = {"run_id", "created_at", "seconds", "setup_seconds", "config", "built_seconds",
            "harvest_id"}


def build_argv(config) -> list[str]:
    return ["build", "--db", str(config.db),
            "--model", config.model, "--layers", ",".join(map(str, config.layers)),
            "--tokens", str(config.tokens), "--d-sae", str(config.d_sae), "--k", str(config.k),
            "--block-size", str(config.block_size), "--epochs", str(config.epochs),
            "--train-batch", str(config.train_batch), "--n-examples", str(config.n_examples),
            "--batch-blocks", str(config.batch_blocks), "--threshold", str(config.threshold),
            "--analyses", "galaxy,lobes"]


def run_until(config, point: str | None, tmp: Path) -> str:
    """Run the build in a child process; with `point`, SIGKILL it once it stops there.
    Returns its log."""
    marker = tmp / f"reached-{point}"
    log = tmp / f"log-{point}.txt"
    env = {**os.environ, "ATLAS_STOP_MARKER": str(marker)}
    env.pop("ATLAS_STOP_AT", None)
    if point:
        env["ATLAS_STOP_AT"] = point
    proc = CliProcess(build_argv(config), env=env, stdout=log)
    if point:
        proc.wait_for(marker)
        proc.kill()
    assert proc.wait(timeout=300) == (-signal.SIGKILL if point else 0), log.read_text()
    return log.read_text()


def tables(db: Path) -> dict[str, pa.Table]:
    with duckdb.connect(str(db), read_only=True) as con:
        names = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_name <> 'atlas_migrations' ORDER BY 1").fetchall()]
        out = {}
        for name in names:
            cols = [(c, t) for c, t in con.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE "
                "table_name = ? ORDER BY ordinal_position", [name]).fetchall()
                if c not in VOLATILE]
            # Paths name the atlas's own folder; compare them relative to it.
            sel = ", ".join(
                f"replace(\"{c}\", '{db.parent}', '<atlas>') AS \"{c}\"" if t == "VARCHAR"
                else f'"{c}"' for c, t in cols)
            out[name] = con.sql(f"SELECT {sel} FROM {name} ORDER BY ALL").to_arrow_table()
        return out


def assert_same(a: pa.Table, b: pa.Table, name: str) -> None:
    assert a.num_rows == b.num_rows, f"{name}: {a.num_rows} rows against {b.num_rows}"
    for col in a.column_names:
        x, y = a.column(col).to_pylist(), b.column(col).to_pylist()
        if x == y:
            continue
        # Floats from the same computation may differ in the last bits between processes.
        fx = np.asarray(_flat(x), float)
        fy = np.asarray(_flat(y), float)
        np.testing.assert_allclose(fx, fy, rtol=1e-6, atol=1e-9, err_msg=f"{name}.{col}")


def _flat(values):
    out = []
    for v in values:
        if isinstance(v, list):
            out.extend(_flat(v))
        elif v is None:
            out.append(np.nan)
        else:
            out.append(v)
    return out


def index_digests(db: Path) -> dict[str, str]:
    folder = db.with_name(db.name + ".index")
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.glob("*.faiss"))}


def test_killed_at_every_commit_point_then_rerun_equals_a_clean_build(tmp_path):
    clean = tiny_config(tmp_path / "clean" / "atlas.duckdb")
    crashed = tiny_config(tmp_path / "crashed" / "atlas.duckdb")
    run_until(clean, None, tmp_path)

    logs = {}
    for point in faults.POINTS:
        logs[point] = run_until(crashed, point, tmp_path)
    final = run_until(crashed, None, tmp_path)

    # Each run keeps what the runs before it committed, and redoes what they did not.
    assert "is stored already; kept" not in logs["train"]   # killed inside that transaction
    assert "is stored already; kept" in logs["harvest"]
    assert "trained by an earlier run of this build" not in logs["harvest"]
    assert "trained by an earlier run of this build" in logs["store_harvest"]
    assert "harvests already stored by this build, kept" not in logs["index"]
    assert "harvests already stored by this build, kept" in logs["analysis"]
    assert "is current; kept" in final and "held-out EV" not in final
    assert "stored tiny" not in final

    want, got = tables(clean.db), tables(crashed.db)
    assert sorted(want) == sorted(got)
    for name in want:
        assert_same(want[name], got[name], name)
    assert index_digests(clean.db) == index_digests(crashed.db) != {}

    # A finished build run again keeps everything.
    again = run_until(crashed, None, tmp_path)
    assert "already stored with these settings; kept" in again
    assert not any(f"{name} tiny" in again for name in ("galaxy", "lobes"))
    runs = tables(crashed.db)["analysis_runs"]
    assert runs.num_rows == want["analysis_runs"].num_rows
