"""Every stop that can be resumed prints the command that resumes it: a plain rerun of the same command
gets a new timestamped run dir and starts over (train.py subprocesses on the tiny synthetic data, run
from another working directory, as a user would)."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys

from tests.test_train_run import REPO, app_env, tiny_overrides


def resume_line(out: str) -> list[str]:
    """The printed command, split as the shell would."""
    lines = [line for line in out.splitlines() if "To resume: " in line]
    assert len(lines) == 1, out[-3000:]
    return shlex.split(lines[0].split("To resume: ", 1)[1])


def test_ctrl_c_prints_the_command_that_resumes_it(synthetic_root, tmp_path):
    """The stop line said 'rerun with the same hydra.run.dir to resume' without naming the dir; the
    same command rerun made a new dir and logged 'no valid checkpoint ... starting from scratch'."""
    argv = [str(REPO / "train.py"), *tiny_overrides(synthetic_root), "trainer.eval_period=0",
            "trainer.epochs=1", "trainer.checkpoint.every_iters=0", "model.name=my c2d"]
    proc = subprocess.Popen([sys.executable, *argv], cwd=tmp_path, env=app_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, sent = [], False
    for text in proc.stdout:
        out.append(text)
        if not sent and "epoch 1/1 [1/4]" in text:
            proc.send_signal(signal.SIGINT)
            sent = True
    assert proc.wait(timeout=120) == 130, "".join(out)[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "train" / "my c2d").iterdir()
    command = resume_line("".join(out))
    assert command[0] in ("python", sys.executable)
    assert command[1:] == [*argv, f"hydra.run.dir={run_dir}"]  # the quoted name splits back whole

    r = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, env=app_env(), text=True,
                       capture_output=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoints'}" in r.stdout
    assert len(list((tmp_path / "outputs" / "train" / "my c2d").iterdir())) == 1  # no new run dir


def test_nan_stop_prints_the_command_that_resumes_it(synthetic_root, tmp_path):
    run_dir = tmp_path / "nan"
    argv = ["train.py", *tiny_overrides(synthetic_root), "trainer.eval_period=0", "trainer.max_iters=4",
            "trainer.checkpoint.every_iters=2", "trainer.debug.nan_at_iter=3", f"hydra.run.dir={run_dir}"]
    r = subprocess.run([sys.executable, *argv], cwd=REPO, env=app_env(), text=True, capture_output=True,
                       timeout=240)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert "loss is nan at iteration 3" in r.stdout
    assert resume_line(r.stdout)[1:] == [*argv[:-1], f"hydra.run.dir={run_dir.resolve()}"]
