"""``nlvideo.compare --x time`` and ``--reach``: curves against the training wall-clock, read from the
wall times of real TensorBoard event files. A stopped and resumed run has one events file per train.py
session; only the time inside sessions counts (a run paused overnight is not 10 hours long), and the
iterations a resume trains again replace the ones its predecessor logged after its checkpoint."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from nlvideo.compare import clock, compare, find_event_dirs, load_run
from tests.test_compare_visualize import configured_run_dir, run_compare, run_module, table_rows

START = 1_000_000_000.0  # the first session's start (2001-09-09), in wall-clock seconds
GAP = 10 * 3600.0  # the pause between the first session's stop and its resume


def write_session(tb: Path, start: float, points: list[tuple[str, int, float, float]]) -> None:
    """One train.py session's events file, opened at wall time ``start``: each point is (tag, step,
    value, seconds after start). The writer stamps its first event (the file version) with the clock of
    the moment it is opened, so the clock reads ``start`` while it opens; the points carry their own
    wall times (``add_scalar(walltime=...)``)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "time", lambda: start)
        writer = SummaryWriter(str(tb))
    for tag, step, value, after in points:
        writer.add_scalar(tag, value, step, walltime=start + after)
    writer.close()


def resumed_run(root: Path, name: str, *overrides: str) -> Path:
    """A run stopped after 180 s (checkpoint at iteration 20, iteration 30 logged after it) and resumed
    10 hours later from that checkpoint for 110 s: iteration 30 trained and logged again."""
    run_dir = root / name
    configured_run_dir(run_dir, "model=c2d", *overrides)
    write_session(run_dir / "tb", START, [
        ("accuracy/train_top1", 10, 20.0, 60.0), ("accuracy/train_top1", 20, 25.0, 120.0),
        ("accuracy/val_top1", 20, 30.0, 130.0), ("accuracy/train_top1", 30, 99.0, 180.0)])
    resume = START + 180.0 + GAP
    write_session(run_dir / "tb", resume, [
        ("accuracy/train_top1", 30, 35.0, 50.0), ("accuracy/train_top1", 40, 45.0, 100.0),
        ("accuracy/val_top1", 40, 60.0, 110.0)])
    return run_dir


def one_session_run(root: Path, name: str, vals: list[tuple[int, float, float]], *overrides: str) -> Path:
    """A run of one session: validations (step, top-1, seconds after start), a training point each."""
    run_dir = root / name
    configured_run_dir(run_dir, *overrides)
    points = [(tag, step, value, after) for step, value, after in vals
              for tag in ("accuracy/train_top1", "accuracy/val_top1")]
    write_session(run_dir / "tb", START, points)
    return run_dir


def test_time_counts_only_inside_sessions_and_a_resume_replaces_the_steps_it_retrains(tmp_path):
    run_dir = resumed_run(tmp_path, "c2d")
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 2
    run = load_run(find_event_dirs([run_dir])[0])
    assert run.sessions == [(START, START + 180.0), (START + 180.0 + GAP, START + 290.0 + GAP)]
    assert run.trained_seconds == pytest.approx(290.0)  # not 10 h 4 min 50 s
    steps, values = run.series("train/top1")
    assert steps.tolist() == [10, 20, 30, 40] and values.tolist() == [20.0, 25.0, 35.0, 45.0]
    seconds, _ = run.series("train/top1", "time")
    np.testing.assert_allclose(seconds, [60.0, 120.0, 180.0 + 50.0, 180.0 + 100.0])
    seconds, values = run.series("val/top1", "time")
    np.testing.assert_allclose(seconds, [130.0, 290.0])
    assert values.tolist() == [30.0, 60.0]


def test_reach_column_gives_each_groups_mean_and_range_of_seeds(tmp_path, capsys):
    """c2d: the resumed seed reaches 50 % at its second validation (290 s of training), seed 1 at 200 s;
    c2d_nl1: one of two seeds reaches it; c2d_nl5 never does."""
    resumed_run(tmp_path, "c2d_seed0", "seed=0")
    one_session_run(tmp_path, "c2d_seed1", [(20, 40.0, 100.0), (40, 55.0, 200.0)], "model=c2d", "seed=1")
    one_session_run(tmp_path, "nl1_seed0", [(20, 51.0, 100.0)], "model=c2d_nl1", "seed=0")
    one_session_run(tmp_path, "nl1_seed1", [(20, 20.0, 100.0)], "model=c2d_nl1", "seed=1")
    one_session_run(tmp_path, "nl5_seed0", [(20, 40.0, 100.0)], "model=c2d_nl5", "seed=0")
    out = tmp_path / "out"
    result = run_compare(capsys, str(tmp_path), "--out", str(out), "--x", "time", "--reach", "50")
    assert result.returncode == 0, result.stderr
    header = next(line for line in (out / "table.md").read_text().splitlines() if line.startswith("| model"))
    assert "| time to val top-1 ≥ 50 ² | notes |" in header
    rows = table_rows(out / "table.md")
    assert rows["c2d"][9] == "0:04:05 (0:03:20–0:04:50)"  # mean of 290 s and 200 s (min–max)
    assert rows["c2d_nl1"][9] == "0:01:40, 1 of 2 runs"
    assert rows["c2d_nl5"][9] == "—"
    assert "² training wall-clock (H:MM:SS) at the first validation whose val top-1 is ≥ 50" in result.stdout
    assert (out / "curves.png").stat().st_size > 20_000

    plain = run_compare(capsys, str(tmp_path), "--out", str(tmp_path / "plain"))  # no --reach: no column
    assert plain.returncode == 0 and "time to" not in (tmp_path / "plain" / "table.md").read_text()


@pytest.mark.parametrize("value", ["abc", "101", "-1", "nan"])
def test_a_reach_that_is_no_percentage_is_one_line(tmp_path, capsys, value):
    result = run_compare(capsys, str(tmp_path), "--reach", value)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].endswith(
        f" error: argument --reach: expected a validation accuracy in % (0 to 100), got '{value}'")


def test_seeds_are_averaged_on_a_time_grid_up_to_the_shortest_run(tmp_path):
    """Two seeds logging at different times: one curve on a common grid ending where the shorter ends."""
    from nlvideo.compare import _mean_band_in_time

    grid, mean, low, high = _mean_band_in_time([(np.array([0.0, 100.0, 300.0]), np.array([90.0, 70.0, 50.0])),
                                                (np.array([50.0, 200.0]), np.array([80.0, 60.0]))])
    assert grid[0] == 50.0 and grid[-1] == 200.0  # the latest first point to the shortest run's end
    assert mean[0] == pytest.approx((80.0 + 80.0) / 2) and mean[-1] == pytest.approx((60.0 + 60.0) / 2)
    assert (low <= mean).all() and (mean <= high).all()


def test_a_real_train_run_is_compared_against_its_training_time(two_runs, tmp_path):
    """train.py's own events: its validations fall inside its one session, in order, and every run
    reaches 0 % at its first validation."""
    run = load_run(find_event_dirs([two_runs["c2d_nl1"]])[0])
    assert len(run.sessions) == 1 and 0 < run.trained_seconds < 600
    seconds, _ = run.series("val/top1", "time")
    assert len(seconds) == 2 and 0 < seconds[0] < seconds[1] <= run.trained_seconds
    result = run_module("nlvideo.compare", *map(str, two_runs.values()), "--out", str(tmp_path),
                        "--x", "time", "--reach", "0")
    assert result.returncode == 0, result.stderr
    rows = table_rows(tmp_path / "table.md")
    assert rows["c2d_nl1"][9] == clock(seconds[0])
    assert re.fullmatch(r"\d+:\d\d:\d\d", rows["c2d"][9])
    png, _, _, _ = compare(list(two_runs.values()), tmp_path / "iter")  # the default axis still works
    assert png.is_file()
