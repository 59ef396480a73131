"""Bad inputs to a build over an existing atlas: each is one line naming the problem and the
fix (exit status 2, no traceback), and the atlas on disk is left exactly as it was."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import random_sae, run_cli, save_sae


def content(db: Path) -> dict[str, str]:
    """A digest of every table's rows."""
    with duckdb.connect(str(db), read_only=True) as con:
        names = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                           "WHERE table_type = 'BASE TABLE' ORDER BY 1")
                 .fetchall()]
        return {n: hashlib.sha256(str(con.execute(f'SELECT * FROM "{n}" ORDER BY ALL')
                                      .fetchall()).encode()).hexdigest() for n in names}


def build(db: Path, model: str, *extra: str, env: dict | None = None, preexec=None):
    """`atlas build` on the atlas in a child process; `preexec` runs there first."""
    argv = ["build", "--db", str(db), "--model", model, "--layers", "1", "--tokens", "1280",
            "--block-size", "64", "--d-sae", "32", "--k", "4", "--epochs", "1", "--quick",
            *extra]
    return run_cli(argv, env={**os.environ, **(env or {})}, before=preexec)


def one_line_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("atlas: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


def _bad_utf8(d: Path) -> Path:
    p = d / "notes.txt"
    p.write_bytes(b"good words here\n" * 40 + b"then \xff\xfe broken bytes\n" + b"more\n" * 40)
    return p


def _not_json(d: Path) -> Path:
    p = d / "c.jsonl"
    p.write_text('{"text": "fine"}\n' * 20 + "not json at all\n" + '{"text": "x"}\n')
    return p


def _no_text_field(d: Path) -> Path:
    p = d / "c.jsonl"
    p.write_text('{"text": "fine"}\n' * 20 + '{"body": "no text"}\n')
    return p


def _parquet_without_text(d: Path) -> Path:
    p = d / "c.parquet"
    pq.write_table(pa.table({"body": ["some words"] * 10, "id": list(range(10))}), p)
    return p


@pytest.mark.parametrize("make, needles", [
    (_bad_utf8, ["is not UTF-8", "byte"]),
    (_not_json, ["line 21 is not JSON", '{"text": "..."}']),
    (_no_text_field, ["record 20", "no string field 'text'"]),
    (_parquet_without_text, ["no 'text' column", "body, id", "rename"]),
])
def test_bad_corpus_files(atlas_copy, tiny_atlas, tmp_path, make, needles):
    db, _ = atlas_copy
    before = content(db)
    proc = build(db, tiny_atlas[0].model, "--corpus", str(make(tmp_path)))
    one_line_error(proc, *needles)
    assert content(db) == before


def test_an_sae_with_truncated_weights(atlas_copy, tiny_atlas, tmp_path):
    db, _ = atlas_copy
    path = save_sae(random_sae("topk", d_in=64, d_sae=32, hook="blocks.1.hook_resid_post",
                               input_norm=1.0), tmp_path / "cut")
    weights = path / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    before = content(db)
    proc = build(db, tiny_atlas[0].model, "--sae-path", str(path))
    one_line_error(proc, str(path), "truncated or corrupt")
    assert content(db) == before


def mark_applied(db: Path, name: str):
    """Record schema file `name` as applied to the atlas; its content afterwards."""
    with duckdb.connect(str(db)) as con:
        con.execute("INSERT INTO atlas_migrations VALUES (?, 'x', now()::TIMESTAMP)", [name])
    return content(db)


def test_an_atlas_from_a_newer_schema_is_not_written(atlas_copy, tiny_atlas, capsys):
    from atlas.cli import main

    db, _ = atlas_copy
    before = mark_applied(db, "900_from_the_future.sql")
    proc = build(db, tiny_atlas[0].model)
    one_line_error(proc, "newer version", "900_from_the_future.sql", "upgrade")
    assert main(["analyze", "--db", str(db), "--analyses", "galaxy"]) == 2
    assert "newer version" in capsys.readouterr().err
    assert content(db) == before
    # Reading it still works.
    assert main(["sql", "--db", str(db), "SELECT count(*) AS n FROM saes"]) == 0


def _small_disk(path: Path, megabytes: int):
    """Whether a tmpfs of that size could be mounted at `path` (root, or a capable container)."""
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs",
                         str(path)], capture_output=True).returncode == 0
    return ok


def _cap_file_size(limit: int) -> None:
    """Fail writes past `limit` bytes in this process (EFBIG, not a signal)."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_disk_that_fills_during_a_write_loses_nothing(tiny_atlas, tmp_path):
    """On a small tmpfs where the machine allows mounting one; elsewhere under a file-size
    limit (RLIMIT_FSIZE), which fails writes the same way (EFBIG instead of ENOSPC)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    size = Path(tiny_atlas[0].db).stat().st_size
    mounted = _small_disk(disk, size // 2**20 + 3)
    try:
        db = disk / "atlas.duckdb"
        shutil.copy(tiny_atlas[0].db, db)
        before = content(db)
        cap = None if mounted else functools.partial(_cap_file_size, size + 2 * 2**20)
        # The atlas's own corpus (kept as stored), and a wide SAE whose harvest does not fit.
        proc = build(db, tiny_atlas[0].model, "--tokens", str(tiny_atlas[0].tokens), "--layers",
                     "2", "--d-sae", "4096", "--k", "32", preexec=cap)
        one_line_error(proc, "the disk is full", "run the same command again")
        assert content(db) == before
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], capture_output=True)


def test_an_atlas_written_before_schema_version_1_is_refused_with_the_rebuild(atlas_copy,
                                                                              tiny_atlas,
                                                                              capsys):
    """Atlases of the migrations that version 1 squashed hold '001_schema.sql' applied: every
    command refuses them in one line naming the rebuild, and changes nothing."""
    from atlas.cli import main

    db, _ = atlas_copy
    before = mark_applied(db, "001_schema.sql")
    proc = build(db, tiny_atlas[0].model)
    one_line_error(proc, "before schema version 1", f"atlas build --db {db}", "--sae-path")
    for args in (["analyze", "--db", str(db), "--analyses", "galaxy"],
                 ["sql", "--db", str(db), "SELECT count(*) FROM saes"],
                 ["info", "--db", str(db)]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "before schema version 1" in err and f"atlas build --db {db}" in err
    assert content(db) == before
