"""Kill and resume, as a week-long job meets it: SIGKILL at random iterations, SIGKILL half-way through
writing a checkpoint, SIGTERM (preemption), a corrupt newest checkpoint -- and the job, rerun with the
same command each time, ends with weights bit-identical to an uninterrupted run (CPU, deterministic),
every iteration it redid giving the same loss as the first time.

The kill points are drawn at random; the seed is printed in every failure message and can be fixed
with ``NLVIDEO_FAULT_SEED=<n>``. (tests/test_train_run.py has the single mid-epoch SIGKILL and the
SIGTERM exit status.)
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nlvideo.engine import checkpoint as ck
from tests.test_train_run import REFERENCE, REPO, app_env, run_app, tiny_overrides

LOSS = re.compile(r"\] +it (\d+) +loss ([0-9.e+-]+)")


@pytest.fixture
def reference(reference_run) -> tuple[Path, str]:
    """conftest's uninterrupted run (the same command as the cycles below) and its stdout."""
    return reference_run, (reference_run.parent / "stdout.txt").read_text()


def run_cycle(args: list[str], at_iteration: int | None = None, sig: int = signal.SIGKILL
              ) -> tuple[int, str]:
    """Run train.py; once iteration ``at_iteration`` is logged, send ``sig``. (returncode, output)"""
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, env=app_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = []
    for line in proc.stdout:
        out.append(line)
        m = LOSS.search(line)
        if at_iteration is not None and m and int(m.group(1)) == at_iteration:
            proc.send_signal(sig)
            at_iteration = None
            if sig == signal.SIGKILL:
                break
    proc.stdout.close()
    return proc.wait(timeout=120), "".join(out)


def names(ckpt_dir: Path) -> list[int]:
    return [int(p.stem.split("_")[1]) for p in ck.list_checkpoints(ckpt_dir)]


@pytest.mark.slow
def test_random_kills_checkpoint_write_crash_sigterm_and_corrupt_checkpoint_resume_bit_exact(
        reference, synthetic_root, tmp_path):
    seed = int(os.environ.get("NLVIDEO_FAULT_SEED", random.SystemRandom().randrange(1_000_000)))
    rng = random.Random(seed)
    why = f"NLVIDEO_FAULT_SEED={seed}"
    ref_dir, ref_out = reference
    ref_loss = dict(LOSS.findall(ref_out))
    assert sorted(map(int, ref_loss)) == list(range(1, 9))
    run_dir = tmp_path / "run"
    ckpt_dir = run_dir / "checkpoints"
    base = [*tiny_overrides(synthetic_root), *REFERENCE, f"hydra.run.dir={run_dir}"]
    outputs = []

    # 1. SIGKILL in epoch 1 after checkpoint 2 exists and before checkpoint 4 (so that phases 2 and 3
    #    both fit in the 8 iterations; iteration 4 would race the kill against checkpoint 4's write).
    k1 = 3
    code, out = run_cycle(base, k1)
    outputs.append(out)
    assert code == -signal.SIGKILL, (why, out[-2000:])
    assert 2 in names(ckpt_dir), (why, out[-2000:])

    # 2. Resume, then SIGKILL half-way through writing the next checkpoint(s) at 4 or 6.
    newest = names(ckpt_dir)[-1]
    k_ckpt = 4  # 6 would leave no iteration for phase 3's SIGTERM before the run ends
    code, out = run_cycle([*base, f"trainer.debug.kill_during_checkpoint={k_ckpt}"])
    outputs.append(out)
    assert code == -signal.SIGKILL, (why, out[-2000:])
    assert f"resumed from {ckpt_dir / f'checkpoint_{newest:09d}.pt'}" in out, (why, out[-2000:])
    assert names(ckpt_dir) == [c for c in (2, 4, 6) if c < k_ckpt], why
    assert list(ckpt_dir.glob(f".checkpoint_{k_ckpt:09d}.pt.*.tmp")), "the killed writer left its temp file"

    # 3. Resume (the partial file is ignored), SIGTERM at a random later iteration: checkpoint, exit 0.
    k3 = rng.randint(k_ckpt + 1, 6)
    code, out = run_cycle(base, k3, signal.SIGTERM)
    outputs.append(out)
    assert code == 0 and "stopped by signal" in out, (why, out[-2000:])
    assert f"resumed from {ckpt_dir / f'checkpoint_{k_ckpt - 2:09d}.pt'}" in out, (why, out[-2000:])
    assert not list(ckpt_dir.glob("*.tmp")), "the next save removes a killed writer's temp file"
    stopped = names(ckpt_dir)[-1]
    assert stopped > k3 >= k_ckpt + 1 and k_ckpt in names(ckpt_dir), (why, names(ckpt_dir))

    # 4. The newest checkpoint gets corrupted (half of it, as an interrupted copy leaves it): the
    #    previous one is used, and the run finishes.
    newest_path = ck.checkpoint_path(ckpt_dir, stopped)
    data = newest_path.read_bytes()
    newest_path.write_bytes(data[: len(data) // 2])
    previous = names(ckpt_dir)[-2]
    code, out = run_cycle(base)
    outputs.append(out)
    assert code == 0, (why, out[-3000:])
    assert f"checkpoint {newest_path} is unreadable" in out, (why, out[-2000:])
    assert f"resumed from {ckpt_dir / f'checkpoint_{previous:09d}.pt'}" in out, (why, out[-2000:])
    assert "training finished: 8 iterations" in out, why

    want = torch.load(ref_dir / "checkpoints" / "checkpoint_000000008.pt", map_location="cpu",
                      weights_only=True)
    got = torch.load(ckpt_dir / "checkpoint_000000008.pt", map_location="cpu", weights_only=True)
    diff = [k for k in want["model"] if not torch.equal(want["model"][k], got["model"][k])]
    assert not diff, (why, f"model tensors differ: {diff[:5]}")
    for a, b in zip(want["optimizer"]["state"].values(), got["optimizer"]["state"].values(), strict=True):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"]), why
    assert got["scheduler"] == want["scheduler"], why
    # Every iteration run in any cycle (some twice, after a kill) logged the reference's loss.
    logged = [(int(i), v) for out in outputs for i, v in LOSS.findall(out)]
    assert {i for i, _ in logged} == set(range(1, 9)), why
    wrong = [(i, v, ref_loss[str(i)]) for i, v in logged if v != ref_loss[str(i)]]
    assert not wrong, (why, wrong)


def test_raising_max_iters_after_a_truncated_last_epoch_trains_to_the_new_total(synthetic_root, tmp_path):
    """``trainer.max_iters=6`` with 4 iterations per epoch stops 2 steps into epoch 2; rerun with
    ``max_iters=10``, the job goes on to iteration 10. It used to stop at 8 without a word: epochs were
    cut at multiples of 4 iterations from the start, and epoch 3 got only the 2 steps up to 12 - 4."""
    run_dir = tmp_path / "extended"
    args = [*tiny_overrides(synthetic_root), "trainer.eval_period=0", f"hydra.run.dir={run_dir}"]
    first = run_app("train.py", *args, "trainer.max_iters=6")
    assert first.returncode == 0 and "training finished: 6 iterations" in first.stdout, first.stdout[-2000:]
    r = run_app("train.py", *args, "trainer.max_iters=10")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "iteration 6)" in r.stdout and "training finished: 10 iterations" in r.stdout, r.stdout[-2000:]
    assert [int(i) for i, _ in LOSS.findall(r.stdout)] == [7, 8, 9, 10]
    assert "epoch 3/3 done: iteration 10" in r.stdout
    assert (run_dir / "checkpoints" / "checkpoint_000000010.pt").is_file()


def resume_from_copy(reference_dir: Path, run_dir: Path, iteration: int) -> None:
    """A run dir holding one checkpoint of the reference run (the state a kill after it leaves)."""
    (run_dir / "checkpoints").mkdir(parents=True)
    name = ck.checkpoint_path(reference_dir / "checkpoints", iteration).name
    (run_dir / "checkpoints" / name).write_bytes((reference_dir / "checkpoints" / name).read_bytes())


@pytest.mark.parametrize("batch, position, epoch_ends", [
    # 8 of the epoch's 16 clips trained in 2 steps of 4: with 8 a step the epoch went on at step 2 of 2
    # (marked done, 8 clips never trained); with 2 at step 3 of 8 (4 clips trained twice).
    (8, "after its first 8 clips, at step 1 of 2 (was step 2); iteration 2 -> 1", (2, 4)),
    (2, "after its first 8 clips, at step 4 of 8 (was step 2); iteration 2 -> 4", (8, 16)),
    (3, "after its first 8 clips, at step 2 of 5 (was step 2); iteration 2 -> 2", (5, 10)),
])
def test_another_batch_size_on_resume_trains_each_clip_of_the_epoch_once(
        reference, tmp_path, synthetic_root, batch, position, epoch_ends):
    """Resume the reference's checkpoint 2 (epoch 1, step 2 of 4 at batch 4) with another
    data.batch_size: the epoch goes on after the same 8 clips and trains each of the others once (with
    3 a step, one short step of 1 clip first, then whole ones: 15 clips an epoch at that batch size).
    The log says what changed: the global batch, and the learning rate that linear scaling ties to it
    (it used to say 'optim.lr differs from the checkpoint's', optim.lr being unchanged)."""
    run_dir = tmp_path / f"batch{batch}"
    resume_from_copy(reference[0], run_dir, 2)
    r = run_app("train.py", *tiny_overrides(synthetic_root), *REFERENCE, f"data.batch_size={batch}",
                "trainer.eval_period=0", f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert f"global batch 4 -> {batch} (data.batch_size 4 -> {batch}, 1 -> 1 process(es)): epoch 1 goes on " \
           + position in out, out[-3000:]
    new_lr = 0.01 * batch / 64
    assert f"learning rate 0.000625 -> {new_lr:g} (global batch 4 -> {batch}, which optim.linear_scaling " \
           "scales the rate by)" in out and "optim.lr" not in out, out[-3000:]
    clips = 16 - 16 % batch
    for epoch, end in enumerate(epoch_ends, 1):
        assert f"epoch {epoch}/2 done: iteration {end}  clips {clips}  " in out, out[-3000:]
    assert ("a short step of 1 clip(s) per process first" in out) == (batch == 3)
    assert f"training finished: {epoch_ends[-1]} iterations" in out
    if batch == 8:  # checkpoint 2 counted steps of 4: renumbered 1, the original set aside
        (abandoned,) = (run_dir / "checkpoints").glob("abandoned-*")
        assert [p.name for p in abandoned.iterdir()] == ["checkpoint_000000002.pt"]
        assert "saved " + str(ck.checkpoint_path(run_dir / "checkpoints", 1)) in out


def quick_run(root: Path, run_dir: Path, *overrides: str) -> str:
    r = run_app("train.py", *tiny_overrides(root), "trainer.eval_period=0",
                "trainer.checkpoint.every_iters=1", "trainer.checkpoint.keep_last=10",
                f"hydra.run.dir={run_dir}", *overrides)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_resume_path_rerun_with_the_same_command_continues_the_run(synthetic_root, tmp_path):
    """A SLURM requeue reruns the same arguments: trainer.resume=PATH started from PATH again each time,
    repeating all work since. PATH now starts only a run dir without checkpoints of its own."""
    seed = tmp_path / "seed"
    quick_run(synthetic_root, seed, "trainer.max_iters=2")
    command = [f"trainer.resume={ck.checkpoint_path(seed / 'checkpoints', 2)}", "trainer.max_iters=4"]
    run_dir = tmp_path / "seeded"
    first = quick_run(synthetic_root, run_dir, *command)
    assert "the run dir has no checkpoint of its own; starting from it" in first
    assert [int(i) for i, _ in LOSS.findall(first)] == [3, 4]

    again = quick_run(synthetic_root, run_dir, *command)
    assert "this run was started from it before; continuing from the run dir's newest checkpoint " \
           f"{ck.checkpoint_path(run_dir / 'checkpoints', 4)}" in again, again[-3000:]
    assert LOSS.findall(again) == [] and "training finished: 4 iterations" in again


def test_rolling_back_sets_the_abandoned_checkpoints_aside(synthetic_root, tmp_path):
    """Resuming from an older checkpoint of the run (e.g. with a lower learning rate) wrote new
    checkpoints beside the abandoned branch's newer ones, and a later resume=auto picked those up."""
    run_dir = tmp_path / "rollback"
    ckpts = run_dir / "checkpoints"
    quick_run(synthetic_root, run_dir, "trainer.max_iters=6")
    abandoned = {n: ck.checkpoint_path(ckpts, n).read_bytes() for n in (4, 5, 6)}
    back = [f"trainer.resume={ck.checkpoint_path(ckpts, 3)}", "trainer.max_iters=5", "optim.lr=0.005"]
    out = quick_run(synthetic_root, run_dir, *back)
    assert "rolling the run back to" in out and "moved to" in out
    (aside,) = ckpts.glob("abandoned-*")
    assert {int(p.stem.split("_")[1]): p.read_bytes() for p in aside.iterdir()} == abandoned
    assert names(ckpts) == [1, 2, 3, 4, 5] and [int(i) for i, _ in LOSS.findall(out)] == [4, 5]

    requeued = quick_run(synthetic_root, run_dir, *back)  # the same command again: no second roll-back
    assert "this run was started from it before" in requeued and LOSS.findall(requeued) == []
    out = quick_run(synthetic_root, run_dir, "trainer.max_iters=6", "optim.lr=0.005")
    assert f"resumed from {ck.checkpoint_path(ckpts, 5)}" in out, out[-3000:]
    assert [int(i) for i, _ in LOSS.findall(out)] == [6]


def test_roll_back_command_rerun_after_rotation_deleted_its_checkpoint_continues(synthetic_root, tmp_path):
    """keep_last=1 deletes the roll-back's starting file once the run has gone past it: the requeued
    command names a file that no longer exists, and continues the run instead of failing."""
    run_dir = tmp_path / "rotated"
    ckpts = run_dir / "checkpoints"
    quick_run(synthetic_root, run_dir, "trainer.max_iters=3")
    back = [f"trainer.resume={ck.checkpoint_path(ckpts, 1)}", "trainer.max_iters=3",
            "trainer.checkpoint.keep_last=1"]
    quick_run(synthetic_root, run_dir, *back)
    assert names(ckpts) == [3] and not ck.checkpoint_path(ckpts, 1).exists()
    out = quick_run(synthetic_root, run_dir, *back)
    assert "this run was started from it before" in out and LOSS.findall(out) == [], out[-3000:]
