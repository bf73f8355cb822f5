"""Multi-process jobs whose ranks disagree or whose launcher goes away (real 2-process torchrun, gloo):
ranks reading different lists fail at start-up with one line instead of hanging after the shorter
epoch; a stopped (SIGSTOPped) rank ends the job with a clear error within ``trainer.dist_timeout_min``;
a SIGTERMed or SIGKILLed launcher makes its workers checkpoint and exit instead of training on; in a
two-node job (two torchrun agents on loopback) whose worker dies, the other node stops with one error
line instead of hanging."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nlvideo.engine import checkpoint as ck
from tests.slurm_cluster import free_port
from tests.test_distributed_torchrun import node_command
from tests.test_reliability_distributed import TORCHRUN, children, rank_of
from tests.test_train_run import REPO, app_env, tiny_overrides

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ports")]  # free_port(): see test_slurm.py
TRAIN = ["trainer.eval_period=0", "trainer.epochs=2", "trainer.checkpoint.every_iters=0",
         "data.batch_size=2"]


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([*TORCHRUN, "train.py", *args], cwd=REPO, env=env or app_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def read_until(proc: subprocess.Popen, pattern: str, out: list[str]) -> bool:
    for line in proc.stdout:
        out.append(line)
        if re.search(pattern, line):
            return True
    return False


def gone(pids: list[int], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() and "zombie" not in _state(p) for p in pids):
            return True
        time.sleep(0.2)
    return False


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def test_ranks_reading_different_lists_fail_at_start_with_one_line(synthetic_root, tmp_path):
    """Different files on two nodes: the rank with fewer videos ended its epoch early and the other
    waited for it forever."""
    other = tmp_path / "other_copy"
    shutil.copytree(synthetic_root, other)
    lines = (other / "train.csv").read_text().splitlines(keepends=True)
    (other / "train.csv").write_text("".join(lines[:-1]))  # one video fewer on "node 1"
    wrapper = tmp_path / "train_on_my_copy.sh"  # each rank reads the copy named for its LOCAL_RANK
    wrapper.write_text(f'#!/bin/sh\nroot=$(eval echo "\\$NLV_ROOT_$LOCAL_RANK")\n'
                       f'exec {sys.executable} train.py "data.root=$root" "$@"\n')
    wrapper.chmod(0o755)
    env = dict(app_env(), NLV_ROOT_0=str(synthetic_root), NLV_ROOT_1=str(other))
    proc = subprocess.Popen([*TORCHRUN, "--no-python", str(wrapper), *tiny_overrides(synthetic_root)[1:],
                             *TRAIN, f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.communicate(timeout=180)[0]
    assert proc.returncode != 0, out[-3000:]
    assert re.search(r"error: rank 1 reads other data than rank 0 \(videos, fingerprint: \['15:", out), \
        out[-3000:]
    # The only traceback is torchrun's own report that a worker failed, none from the workers.
    tracebacks = out.split("Traceback (most recent call last):")[1:]
    assert all(t.lstrip().startswith('File "<frozen runpy>"') for t in tracebacks), out[-3000:]


def test_stopped_rank_ends_the_job_with_a_clear_error_within_the_timeout(synthetic_root, tmp_path):
    proc = start([*tiny_overrides(synthetic_root), *TRAIN, "trainer.dist_timeout_min=0.2",
                  f"hydra.run.dir={tmp_path / 'run'}"])
    out: list[str] = []
    assert read_until(proc, r"\] +it 2 +loss", out), "".join(out)[-3000:]
    workers = {rank_of(c): c for c in children(proc.pid)}
    os.kill(workers[1], signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        assert read_until(proc, r"error: a collective with the other processes failed", out), \
            "".join(out)[-3000:]
        waited = time.monotonic() - t0
    finally:
        if Path(f"/proc/{workers[1]}").exists():
            os.kill(workers[1], signal.SIGCONT)  # let it take the launcher's SIGTERM
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert waited < 0.2 * 60 + 30, waited
    assert "trainer.dist_timeout_min" in "".join(out)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_workers_checkpoint_and_stop_when_the_launcher_is_signalled_or_dies(synthetic_root, tmp_path, sig):
    run_dir = tmp_path / "run"
    proc = start([*tiny_overrides(synthetic_root), *TRAIN, f"hydra.run.dir={run_dir}"])
    out: list[str] = []
    assert read_until(proc, r"\] +it 2 +loss", out), "".join(out)[-3000:]
    workers = children(proc.pid)
    proc.send_signal(sig)
    rest = proc.stdout.read()  # the workers keep the pipe open until they exit
    proc.wait(timeout=60)
    text = "".join(out) + rest
    assert gone(workers, within=60), text[-3000:]
    assert "stopped by signal SIGTERM at iteration" in text, text[-3000:]
    assert "training finished" not in text
    (path,) = ck.list_checkpoints(run_dir / "checkpoints")
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert 2 <= state["iteration"] < 8 and len(state["rng"]) == 2


def _two_nodes(synthetic_root: Path, run_dir: Path, logs: list[Path], timeout_min: float
               ) -> list[subprocess.Popen]:
    endpoint = f"127.0.0.1:{free_port()}"
    procs = []
    for log in logs:
        with log.open("w") as f:
            procs.append(subprocess.Popen(
                node_command(endpoint, run_dir, synthetic_root, "trainer.epochs=2",
                             "trainer.checkpoint.every_iters=2", "trainer.checkpoint.keep_last=10",
                             f"trainer.dist_timeout_min={timeout_min}"),
                cwd=REPO, env=app_env(), text=True, stdout=f, stderr=subprocess.STDOUT))
    return procs


def _kill_rank_1_after_iteration_3(procs: list[subprocess.Popen], logs: list[Path]) -> None:
    deadline = time.monotonic() + 180
    while not any(re.search(r"\] +it 3 +loss", log.read_text()) for log in logs):  # checkpoint 2 exists
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            "".join(log.read_text() for log in logs)[-3000:]
        time.sleep(0.2)
    workers = {rank_of(c): c for p in procs for c in children(p.pid)}
    os.kill(workers[1], signal.SIGKILL)


def test_two_nodes_without_restarts_the_survivor_stops_with_a_clear_error(synthetic_root, tmp_path):
    """No infinite hang: the node whose worker died exits, and the other one's worker, left in a
    collective, ends with one error line within trainer.dist_timeout_min."""
    run_dir, logs = tmp_path / "run", [tmp_path / f"node{i}.log" for i in (0, 1)]
    procs = _two_nodes(synthetic_root, run_dir, logs, timeout_min=0.25)
    try:
        _kill_rank_1_after_iteration_3(procs, logs)
        t0 = time.monotonic()
        codes = [p.wait(timeout=120) for p in procs]
        took = time.monotonic() - t0
    finally:
        for p in procs:
            p.kill()
    out = "".join(log.read_text() for log in logs)
    assert all(code != 0 for code in codes), out[-4000:]
    assert took < 0.25 * 60 + 60, took
    assert "training finished" not in out
    assert "error: a collective with the other processes failed" in out, out[-4000:]
