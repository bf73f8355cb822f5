"""One run per run directory, as a requeued or re-typed command meets it (train.py subprocesses on the
tiny synthetic data): a fresh start never mixes with an earlier run's checkpoints, a second process
never trains alongside the first, a truncated newest checkpoint never makes new ones vanish, a
changed model config is not resumed silently, Ctrl-C checkpoints, and epoch metrics of a resumed
epoch cover the whole epoch."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nlvideo.engine import checkpoint as ck
from tests.test_train_run import REPO, app_env, run_app, tiny_overrides

QUICK = ["trainer.eval_period=0", "trainer.checkpoint.every_iters=1"]


def iterations(run_dir: Path) -> list[int]:
    return [int(p.stem.split("_")[1]) for p in ck.list_checkpoints(run_dir / "checkpoints")]


def train(root: Path, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_app("train.py", *tiny_overrides(root), *QUICK, f"hydra.run.dir={run_dir}", *overrides)


@pytest.fixture(scope="module")
def finished_run(synthetic_root, tmp_path_factory) -> Path:
    """6 iterations, a checkpoint after each, the last 2 kept."""
    run_dir = tmp_path_factory.mktemp("rundir") / "first"
    r = train(synthetic_root, run_dir, "trainer.max_iters=6", "trainer.checkpoint.keep_last=2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert iterations(run_dir) == [5, 6]
    return run_dir


def test_fresh_start_in_a_run_dir_with_checkpoints_is_refused(finished_run, synthetic_root):
    """It used to train, log 'saved _1/_2/_3', exit 0 and leave only the old run's _5 and _6."""
    r = train(synthetic_root, finished_run, "trainer.resume=null", "trainer.max_iters=3",
              "trainer.checkpoint.keep_last=2")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: trainer.resume=null, but {finished_run / 'checkpoints'} already holds 2 checkpoint(s) "
        "(newest checkpoint_000000006.pt): pass trainer.resume=auto to continue that run, or choose a new "
        "hydra.run.dir"]
    assert iterations(finished_run) == [5, 6]


def test_resume_with_another_model_config_is_refused_then_allowed_with_history(finished_run,
                                                                              synthetic_root):
    r = train(synthetic_root, finished_run, "model.dropout=0.3", "trainer.max_iters=10")
    assert r.returncode == 2
    assert "was trained with another model config (model.dropout: 0.5 -> 0.3)" in r.stderr
    assert "trainer.allow_config_change=true" in r.stderr
    assert iterations(finished_run) == [5, 6]

    r = train(synthetic_root, finished_run, "model.dropout=0.3", "trainer.max_iters=10",
              "trainer.allow_config_change=true", "trainer.checkpoint.keep_last=2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resuming with a changed model config" in r.stdout and "iteration 6)" in r.stdout
    assert iterations(finished_run) == [9, 10]  # on to max_iters=10; keep_last=2
    (old,) = (finished_run / "config_history").glob("config_resolved_*.yaml")
    assert "dropout: 0.5" in old.read_text()
    assert "dropout: 0.3" in (finished_run / "config_resolved.yaml").read_text()


def test_truncated_newest_checkpoint_is_set_aside_and_new_ones_survive(synthetic_root, tmp_path):
    """keep_last=1 and a truncated newest file: the rerun started from 0 silently and deleted each new
    checkpoint as soon as it was written."""
    run_dir = tmp_path / "run"
    r = train(synthetic_root, run_dir, "trainer.max_iters=3", "trainer.checkpoint.keep_last=1")
    assert r.returncode == 0 and iterations(run_dir) == [3]
    newest = ck.checkpoint_path(run_dir / "checkpoints", 3)
    newest.write_bytes(newest.read_bytes()[:1000])

    r = train(synthetic_root, run_dir, "trainer.max_iters=2", "trainer.checkpoint.keep_last=1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"checkpoint {newest} is unreadable" in r.stdout
    assert "no valid checkpoint in" in r.stdout and "starting from scratch" in r.stdout
    assert iterations(run_dir) == [2]
    assert torch.load(ck.checkpoint_path(run_dir / "checkpoints", 2), weights_only=True)["iteration"] == 2
    assert (run_dir / "checkpoints" / "unreadable" / newest.name).stat().st_size == 1000


def test_second_process_on_a_held_run_dir_refuses_or_waits(synthetic_root, tmp_path):
    """A requeued job starting while the old one still runs used to train alongside it."""
    run_dir = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from nlvideo.engine.run_lock import RunDirLock; "
         f"RunDirLock({str(run_dir)!r}).acquire(); print('held', flush=True); time.sleep(120)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = train(synthetic_root, run_dir, "trainer.max_iters=1")
        assert r.returncode == 2
        assert "in use by host" in r.stderr and f"pid {holder.pid} since" in r.stderr
        assert not (run_dir / "checkpoints").exists()

        waiter = subprocess.Popen(
            [sys.executable, "train.py", *tiny_overrides(synthetic_root), *QUICK, "trainer.max_iters=1",
             "trainer.wait_for_run_dir=true", f"hydra.run.dir={run_dir}"],
            cwd=REPO, env=app_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        first = waiter.stdout.readline()
        assert first.startswith(f"waiting for run dir {run_dir} (held by host"), first
    finally:
        holder.kill()
        holder.wait()
    rest = waiter.communicate(timeout=240)[0]
    assert waiter.returncode == 0, rest[-3000:]
    assert iterations(run_dir) == [1]


def _files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_second_train_on_a_busy_run_dir_refuses_before_writing_anything(synthetic_root, tmp_path):
    """Hydra wrote the second command's .hydra/config.yaml, hydra.yaml and overrides.yaml over the
    running first one's (and opened its train.log) before train() took the lock and refused."""
    run_dir = tmp_path / "busy_run"
    first = subprocess.Popen(
        [sys.executable, "train.py", *tiny_overrides(synthetic_root), "trainer.eval_period=0",
         "trainer.epochs=100", "trainer.checkpoint.every_iters=0", f"hydra.run.dir={run_dir}"],
        cwd=REPO, env=app_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for line in first.stdout:
            if "epoch 1/100 [1/4]" in line:  # training: the lock is held, .hydra and train.log written
                break
        else:
            pytest.fail(f"the first run ended with status {first.wait()} before training")
        first.send_signal(signal.SIGSTOP)  # frozen, lock held: its files stay as they are
        before = _files(run_dir)
        assert {".hydra/config.yaml", ".hydra/overrides.yaml", "train.log", ".nlvideo.lock"} <= set(before)
        r = train(synthetic_root, run_dir, "model.dropout=0.3", "trainer.max_iters=1")
        assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
        (message,) = r.stderr.strip().splitlines()
        assert message.startswith(f"error: run dir {run_dir} is in use by host ") and \
            f"pid {first.pid} since" in message, message
        assert _files(run_dir) == before
    finally:
        first.send_signal(signal.SIGCONT)
        first.kill()
        first.communicate(timeout=60)


def _train_until(synthetic_root: Path, run_dir: Path, *steps: tuple[str, int]) -> tuple[int, str]:
    """Train one epoch; send each ``(after_this_line, signal)`` in turn. (returncode, output)"""
    proc = subprocess.Popen(
        [sys.executable, "train.py", *tiny_overrides(synthetic_root), "trainer.eval_period=0",
         "trainer.epochs=1", "trainer.checkpoint.every_iters=0", f"hydra.run.dir={run_dir}"],
        cwd=REPO, env=app_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, todo = [], list(steps)
    for text in proc.stdout:
        out.append(text)
        if todo and todo[0][0] in text:
            proc.send_signal(todo.pop(0)[1])
    return proc.wait(timeout=120), "".join(out)


def test_ctrl_c_checkpoints_and_exits_with_one_line(synthetic_root, tmp_path):
    """It gave a ~30-line KeyboardInterrupt traceback and no checkpoint."""
    code, out = _train_until(synthetic_root, tmp_path / "ctrl_c", ("epoch 1/1 [1/4]", signal.SIGINT))
    assert code == 130, out[-3000:]
    assert "received SIGINT: will checkpoint and stop at the next iteration boundary" in out
    assert "stopped by signal SIGINT" in out and "Traceback" not in out
    assert iterations(tmp_path / "ctrl_c")[0] >= 1


def test_second_ctrl_c_stops_at_once_without_traceback(synthetic_root, tmp_path):
    code, out = _train_until(synthetic_root, tmp_path / "ctrl_c2", ("epoch 1/1 [1/4]", signal.SIGINT),
                             ("received SIGINT", signal.SIGINT))
    assert code == 130, out[-3000:]
    last = out.rstrip().splitlines()[-1]
    assert "Traceback" not in out and last.startswith("interrupted; to resume from the last checkpoint: "), \
        out[-2000:]
    assert f"hydra.run.dir={tmp_path / 'ctrl_c2'}" in last


def test_a_checkpoint_that_cannot_be_written_stops_with_one_line_in_train_log(synthetic_root, tmp_path):
    """Disk full / quota: a traceback on the console only, nothing in train.log. Here every file is
    capped at 256 KiB (RLIMIT_FSIZE; Python ignores SIGXFSZ, so the write fails instead): logs and
    event files fit, a checkpoint does not."""
    import resource

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    run_dir = tmp_path / "full"
    r = subprocess.run([sys.executable, "train.py", *tiny_overrides(synthetic_root), *QUICK,
                        "trainer.max_iters=2", f"hydra.run.dir={run_dir}"], cwd=REPO, env=app_env(),
                       text=True, capture_output=True, timeout=240, preexec_fn=small_files)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    line = f"could not write the checkpoint of iteration 1 to {run_dir / 'checkpoints'} ("
    assert line in (run_dir / "train.log").read_text()
    assert "Last good checkpoint: none" in r.stdout and "Traceback" not in r.stdout + r.stderr
    assert not list((run_dir / "checkpoints").iterdir())  # no partial file left behind


def test_rerun_right_after_sigkill_with_loader_workers_is_accepted(synthetic_root, tmp_path):
    """The lock was an ``flock``, shared by the forked loader workers: after a SIGKILL of the main
    process they held the dir for a few seconds more and an immediate rerun was refused, naming the
    dead pid. A record lock is the main process's alone."""
    from nlvideo.engine.run_lock import RunDirLock

    run_dir = tmp_path / "killed_with_workers"
    proc = subprocess.Popen(
        [sys.executable, "train.py", *tiny_overrides(synthetic_root), "data.num_workers=2",
         "trainer.eval_period=0", "trainer.epochs=100", "trainer.checkpoint.every_iters=0",
         f"hydra.run.dir={run_dir}"],
        cwd=REPO, env=app_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for line in proc.stdout:
        if "epoch 1/100 [1/4]" in line:  # the workers are up and loading
            break
    else:
        pytest.fail(f"the run ended with status {proc.wait()} before training")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    with RunDirLock(run_dir):  # at once: the workers may still be alive, the dir is free
        pass
    r = train(synthetic_root, run_dir, "data.num_workers=2", "trainer.max_iters=1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "in use by" not in r.stderr


def test_resume_refuses_other_data_the_model_sees_and_allows_speed_settings(synthetic_root, tmp_path):
    """data.mean, data.sampling_rate, crop sizes... resumed with rc 0 and no word (the model trained on
    other inputs from then on); model.nonlocal.impl, a computation path, was refused as a model change."""
    run_dir = tmp_path / "changed"
    assert train(synthetic_root, run_dir, "trainer.max_iters=1").returncode == 0
    r = train(synthetic_root, run_dir, "data.mean=100", "data.sampling_rate=4", "data.train_crop_size=40",
              "trainer.max_iters=2")
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    (message,) = r.stderr.strip().splitlines()
    assert message == (f"error: checkpoint {ck.checkpoint_path(run_dir / 'checkpoints', 1)} was trained with "
                       "another data config (data.mean: 114.75 -> 100; data.sampling_rate: 8 -> 4; "
                       "data.train_crop_size: 48 -> 40): pass trainer.allow_config_change=true to resume "
                       "anyway, or choose a new hydra.run.dir"), message

    r = train(synthetic_root, run_dir, "model.nonlocal.impl=naive", "trainer.channels_last=false",
              "data.num_workers=1", "trainer.max_iters=2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resuming with other speed settings (same computation): model.nonlocal.impl: auto -> naive; " \
           "data.num_workers: 0 -> 1; trainer.channels_last: True -> False" in r.stdout
    assert iterations(run_dir)[-1] == 2
