"""The progress and epoch lines show the whole run's ETA (remaining epochs x epoch time + validation
and precise BN), not only the epoch's (a real train.py run on the tiny synthetic data)."""

from __future__ import annotations

import re
from datetime import datetime

from tests.test_train_run import run_app, tiny_overrides

LINE = re.compile(r"^\[([\d:, -]+)\]\[[\w.]+\]\[INFO\] - (epoch (\d)/3 .*)$")


def seconds(hms: str) -> int:
    h, m, s = map(int, hms.split(":"))
    return 3600 * h + 60 * m + s


def test_progress_and_epoch_lines_show_the_whole_runs_eta(synthetic_root, tmp_path):
    """Before: 'epoch eta 0:00:01' only, the time left in the current epoch."""
    r = run_app("train.py", *tiny_overrides(synthetic_root), "trainer.epochs=3", "trainer.eval_period=1",
                f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = [m.groups() for m in map(LINE.match, r.stdout.splitlines()) if m and " validation:" not in m[2]]
    assert len(lines) == 3 * 5  # 4 progress lines and one 'done' line per epoch
    for _, text, epoch in lines:
        eta = re.search(r"run eta (\d+:\d\d:\d\d)( \+ validation)?$", text)
        assert eta, text
        # no validation has been timed during epoch 1: its time is not guessed but named
        assert bool(eta[2]) == (epoch == "1"), text
    # the first line of epoch 2 foresees the rest of the run: 7 steps, 2 validations with precise BN
    stamp, text, _ = next(line for line in lines if line[1].startswith("epoch 2/3 [1/4]"))
    end = re.search(r"^\[([\d:, -]+)\].*training finished", r.stdout, re.M)[1]
    left = (datetime.strptime(end, "%Y-%m-%d %H:%M:%S,%f")
            - datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")).total_seconds()
    eta = seconds(re.search(r"run eta (\S+)", text)[1])
    epoch_eta = seconds(re.search(r"epoch eta (\S+)", text)[1])
    assert eta > epoch_eta and 0.4 * left - 1 <= eta <= 2.5 * left + 1, (eta, left, text)
