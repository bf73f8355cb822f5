"""train.py on a live single-node SLURM (:mod:`tests.slurm_cluster`), as users launch it on a cluster:
``scripts/slurm_train.sh`` through sbatch with 2 gloo workers; its time-limit path (signal -> checkpoint
-> requeue -> resume, bit-exact); a bad config ending FAILED instead of requeueing; a 2-job sweep through
hydra-submitit-launcher, read back by ``nlvideo.compare``.

The cluster is installed with apt when missing (``.ci/install_slurm.sh``). Where it cannot be, these tests
skip with the reason, except in CI (``CI`` set), where they fail: a CI without SLURM would otherwise
pass while testing none of it. Opt out with ``-m "not slurm"``. A cluster that is installed but does not
start always fails, with the daemons' log tails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.slurm_cluster import FINISHED, SlurmCluster, SlurmError, ensure_installed, free_port
from tests.test_train_run import REPO, app_env, load_model_state, tiny_overrides

# xdist_group: the tests that pick a free port for a process to bind later run one at a time on one
# pytest-xdist worker (README: --dist loadgroup), so two of them never pick the same port.
pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.xdist_group("ports")]

# 2 workers x 2 clips, 4 iterations per epoch: 40 iterations of ~0.1 s, a window to signal mid-run.
TRAIN = ["data.batch_size=2", "trainer.epochs=10", "trainer.eval_period=0"]
JOB_TIMEOUT = 180


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> Iterator[SlurmCluster]:
    problem = ensure_installed()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"SLURM tests cannot run in CI: {problem}", pytrace=False)
        pytest.skip(problem)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except SlurmError as exc:
        cluster.stop()
        pytest.fail(f"the test SLURM cluster did not start: {exc}", pytrace=False)
    yield cluster
    cluster.stop()


def submit_training(slurm: SlurmCluster, run_dir: Path, root: Path, *extra: str) -> tuple[int, Path]:
    """``NPROC_PER_NODE=2 sbatch --gpus-per-node=0 --cpus-per-task=2 scripts/slurm_train.sh ...``: the
    script's GPU defaults turned off for a CPU node. Returns the job id and its output file."""
    env = slurm.env(app_env(), NPROC_PER_NODE="2", MASTER_PORT=str(free_port()), RUN_DIR=str(run_dir))
    out = run_dir.parent / f"{run_dir.name}-%j.out"
    job = slurm.sbatch(["--gpus-per-node=0", "--cpus-per-task=2", "--time=10", f"--output={out}",
                        "scripts/slurm_train.sh", *tiny_overrides(root), *TRAIN, *extra], env=env)
    return job, Path(str(out).replace("%j", str(job)))


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="module")
def uninterrupted(slurm, synthetic_root, tmp_path_factory) -> tuple[Path, str, dict[str, str]]:
    """The reference job: run dir, output and final scontrol fields."""
    run_dir = tmp_path_factory.mktemp("slurm_runs") / "uninterrupted"
    job, out = submit_training(slurm, run_dir, synthetic_root)
    info = slurm.wait_for_state(job, FINISHED, JOB_TIMEOUT)
    return run_dir, read(out), info


def test_sbatch_script_trains_two_gloo_workers_to_the_end(uninterrupted):
    run_dir, out, info = uninterrupted
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", out[-4000:]
    assert info["Restarts"] == "0"
    named = rf"\[slurm_train\] job \d+: 1 node\(s\) x 2 worker\(s\), run dir {re.escape(str(run_dir))}\n"
    assert re.search(named, out), out[:2000]
    assert f"run dir {run_dir} | 2 process(es) (gloo)" in out and "global batch 4" in out
    assert "training finished: 40 iterations" in out
    assert (run_dir / "checkpoints" / "checkpoint_000000040.pt").is_file()


@pytest.mark.parametrize(("stop", "shell_got"), [
    (["scancel", "--batch", "--signal=USR1"], "USR1"),  # what --signal=B:USR1@180 sends before the limit
    (["scontrol", "requeue"], "TERM"),  # preemption by requeue: SLURM itself sends SIGTERM to every process
], ids=["time_limit_usr1", "scontrol_requeue"])
def test_preemption_checkpoints_requeues_and_resumes_bit_exact(stop, shell_got, slurm, uninterrupted,
                                                               synthetic_root, tmp_path):
    """Stopped mid-epoch, the workers checkpoint and the job is requeued (by the batch shell on SIGUSR1,
    by SLURM on ``scontrol requeue``); the requeued job resumes and ends on the reference's exact
    weights."""
    run_dir = tmp_path / "preempted"
    job, out = submit_training(slurm, run_dir, synthetic_root)
    deadline = time.monotonic() + JOB_TIMEOUT
    while not re.search(r"\] +it 2 +loss", read(out)):
        assert time.monotonic() < deadline and slurm.job(job)["JobState"] not in FINISHED, read(out)[-4000:]
        time.sleep(0.1)
    slurm.run(*stop, str(job))

    pending = slurm.wait_for_state(job, {"PENDING"}, 60, reason="BeginTime")
    assert pending["Restarts"] == "1", pending
    first = read(out)
    stopped = re.search(r"stopped by signal SIGTERM at iteration (\d+); checkpoint saved", first)
    assert stopped and int(stopped[1]) < 40, first[-4000:]
    assert re.search(rf"\[slurm_train\] .* SIG{shell_got}: stop the workers \(they checkpoint\), then "
                     rf"requeue job {job}\n", first), first[-4000:]
    # A requeued job waits (BeginTime) before it may start again, and a test need not wait as long; but
    # it must not start within the second its first run's credential was revoked in: slurmd would refuse
    # it ("Killing non-startable batch JobId=N: Job credential revoked") and the job end FAILED unrun.
    slurm.wait_until_idle(60)
    slurm.run("scontrol", "update", f"jobid={job}", "starttime=now+2")
    info = slurm.wait_for_state(job, FINISHED, JOB_TIMEOUT)
    text = read(out)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", text[-4000:] + slurm.log_tail(30)
    assert re.search(rf"resumed from \S+checkpoint_{int(stopped[1]):09d}\.pt", text), text[-4000:]
    assert "training finished: 40 iterations" in text

    want = load_model_state(uninterrupted[0] / "checkpoints" / "checkpoint_000000040.pt")
    got = load_model_state(run_dir / "checkpoints" / "checkpoint_000000040.pt")
    assert want.keys() == got.keys()
    different = [k for k in want if not torch.equal(want[k], got[k])]
    assert not different, f"tensors differ after the requeue: {different[:5]}"


def test_bad_config_job_fails_with_the_error_line_and_is_not_requeued(slurm, synthetic_root, tmp_path):
    run_dir = tmp_path / "bad"
    job, out = submit_training(slurm, run_dir, synthetic_root, "trainer.epochs=0")
    info = slurm.wait_for_state(job, FINISHED, JOB_TIMEOUT)
    text = read(out)
    assert info["JobState"] == "FAILED" and info["Restarts"] == "0", (info, text[-4000:])
    assert "error: trainer.epochs=0 must be an integer >= 1\n" in text
    assert not list(run_dir.glob("checkpoints/*.pt"))


def test_submitit_sweep_trains_both_models_and_compare_reads_them(slurm, synthetic_root, tmp_path):
    """``hydra/launcher=slurm`` (configs/hydra/launcher/slurm.yaml over hydra-submitit-launcher) with its
    GPU settings turned off: a job array of 2 jobs, each 2 srun tasks that form one gloo group."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", "-m", "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}",
           "hydra.launcher.gpus_per_node=0", "hydra.launcher.tasks_per_node=2",
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null", "hydra.launcher.timeout_min=10",
           "model=c2d,c2d_nl5",
           *tiny_overrides(synthetic_root), "data.batch_size=2", "trainer.epochs=1"]
    r = subprocess.run(cmd, cwd=REPO, env=slurm.env(app_env()), text=True, capture_output=True,
                       timeout=2 * JOB_TIMEOUT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("0_c2d", "1_c2d_nl5"):
        log = read(sweep / name / "train.log")
        assert "2 process(es) (gloo)" in log and "validation:" in log, log[-3000:]
        assert (sweep / name / "checkpoints" / "checkpoint_000000004.pt").is_file()

    c = subprocess.run([sys.executable, "-m", "nlvideo.compare", str(sweep), "--out", str(tmp_path / "cmp")],
                       cwd=REPO, env=app_env(), text=True, capture_output=True, timeout=120)
    assert c.returncode == 0, c.stdout[-3000:] + c.stderr[-3000:]
    table = (tmp_path / "cmp" / "table.md").read_text()
    for model in ("c2d", "c2d_nl5"):
        assert re.search(rf"^\| {model} \| \d+ \| 1 \| 4 \|", table, re.MULTILINE), table
