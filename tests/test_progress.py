"""Progress: a bar on a terminal, and log lines (never carriage returns) anywhere else."""

import logging

from atlas.progress import Progress


def test_progress_off_a_terminal_logs_lines_without_carriage_returns(caplog, capsys):
    caplog.set_level(logging.INFO, logger="atlas.progress")
    bar = Progress("forward", total=300, unit="tok", every=0.0)
    for _ in range(3):
        bar.update(100, loss="0.5")
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("forward: 100/300 tok (33%)") and "loss 0.5" in lines[0]
    assert lines[-1].startswith("forward: done, 300/300 tok (100%)")
    captured = capsys.readouterr()
    assert "\r" not in captured.err + captured.out


def test_progress_logs_at_most_once_per_interval_and_can_be_silenced(caplog):
    caplog.set_level(logging.INFO, logger="atlas.progress")
    bar = Progress("train", total=None, unit="step", every=3600.0)
    for _ in range(50):
        bar.update()
    bar.close()
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["train: done"]
    caplog.clear()
    quiet = Progress("quiet", total=5, enabled=False, every=0.0)
    quiet.update(5)
    quiet.close()
    assert not caplog.records
