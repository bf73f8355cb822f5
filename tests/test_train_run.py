"""train.py end to end, as users run it (subprocesses of the Hydra app on the tiny synthetic data).

One reference run (2 epochs x 4 iterations, checkpoint every 2 iterations, validation with precise BN
after each epoch, deterministic) is shared: its TensorBoard events and files are checked, and it is
the uninterrupted baseline that a SIGKILLed-and-resumed run must reproduce bit for bit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY_DATA = dict(train_per_class=4, val_per_class=2)  # = conftest.SMALL_SYNTHETIC, the shared copy


def tiny_overrides(root: Path) -> list[str]:
    return [
        f"data.root={root}",
        *(f"data.generate.{k}={v}" for k, v in TINY_DATA.items()),
        "data.num_workers=0", "data.batch_size=4", "model.width=8",
        "trainer.progress=lines", "trainer.log_period=1", "trainer.precise_bn.num_batches=2",
        "trainer.deterministic=true",
    ]


def app_env() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0", OMP_NUM_THREADS="1")


def run_app(script: str, *overrides: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *overrides], cwd=REPO, env=app_env(), text=True,
                          capture_output=True, timeout=timeout)


def load_model_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


REFERENCE = ["trainer.epochs=2", "trainer.checkpoint.every_iters=2", "trainer.checkpoint.keep_last=10"]


def test_full_run_writes_tensorboard_checkpoints_and_run_files(reference_run, synthetic_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    d = reference_run
    assert (d / ".hydra" / "config.yaml").is_file() and (d / "config_resolved.yaml").is_file()
    assert len(json.loads((d / "classes.json").read_text())) == 4
    assert (d / "train.log").read_text().count("validation:") == 2
    assert f"train: 16 videos, 4 classes (single-label) from {synthetic_root / 'train.csv'}" in \
        (d / "train.log").read_text()
    ckpts = sorted(p.name for p in (d / "checkpoints").glob("*.pt"))
    assert ckpts == [f"checkpoint_{i:09d}.pt" for i in (2, 4, 6, 8)]
    state = torch.load(d / "checkpoints" / ckpts[-1], map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "iteration", "iter_in_epoch", "rng",
            "samples_per_rank", "config", "overrides"} <= set(state)
    assert state["iteration"] == 8 and state["epoch"] == 2 and len(state["rng"]) == 1

    events = list((d / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(d / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/train", "accuracy/train_top1", "train/lr", "train/clips_per_s", "train/data_time_frac",
            "accuracy/val_top1", "train/skipped_videos"} <= tags
    assert "val/top5" not in tags  # 4 classes: top-5 would always be 100
    assert [e.step for e in acc.Scalars("loss/train")] == list(range(1, 9))
    assert [e.step for e in acc.Scalars("accuracy/val_top1")] == [4, 8]
    assert all(0 <= e.value <= 100 for e in acc.Scalars("accuracy/val_top1"))
    lrs = [e.value for e in acc.Scalars("train/lr")]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] > 0  # cosine decay
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["iteration"] == 8 and "top1" in metrics


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_exact(reference_run, synthetic_root, tmp_path):
    """Kill -9 mid-epoch 1 once a checkpoint exists, resume, end with the reference's exact weights."""
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "train.py", *tiny_overrides(synthetic_root), *REFERENCE,
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=app_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    killed_at = None
    for line in proc.stdout:
        if "epoch 1/2 [3/4]" in line:  # iteration 3 logged => checkpoint 2 is on disk
            proc.send_signal(signal.SIGKILL)
            killed_at = line
            break
    proc.wait(timeout=60)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL
    assert [p.name for p in (run_dir / "checkpoints").glob("*.pt")] == ["checkpoint_000000002.pt"]

    r = run_app("train.py", *tiny_overrides(synthetic_root), *REFERENCE, f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resumed from" in r.stdout and "iteration 2)" in r.stdout
    # The resumed epoch's totals cover all its steps (they used to cover only those after the resume).
    done = [ln.split("done: ", 1)[1].split("  run eta")[0]  # the ETA is timing, not a total
            for ln in (reference_run / "train.log").read_text().splitlines() if "epoch 1/2 done: " in ln]
    assert len(done) == 1 and f"epoch 1/2 done: {done[0]}" in r.stdout, (done, r.stdout[-2000:])
    want = load_model_state(reference_run / "checkpoints" / "checkpoint_000000008.pt")
    got = load_model_state(run_dir / "checkpoints" / "checkpoint_000000008.pt")
    assert want.keys() == got.keys()
    different = [k for k in want if not torch.equal(want[k], got[k])]
    assert not different, f"tensors differ after resume: {different[:5]}"


@pytest.mark.slow
def test_sigterm_checkpoints_at_iteration_boundary_and_exits_zero(synthetic_root, tmp_path):
    run_dir = tmp_path / "preempted"
    cmd = [sys.executable, "train.py", *tiny_overrides(synthetic_root), "trainer.epochs=1",
           "trainer.eval_period=0", "trainer.checkpoint.every_iters=0", "trainer.cpu_threads=2",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=app_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    out = []
    for line in proc.stdout:
        out.append(line)
        if "epoch 1/1 [1/4]" in line:
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, "".join(out)[-3000:]
    text = "".join(out)
    assert "received SIGTERM" in text and "stopped by signal" in text
    assert "| 2 CPU thread(s) |" in text  # trainer.cpu_threads wins over OMP_NUM_THREADS=1
    (ckpt,) = (run_dir / "checkpoints").glob("*.pt")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert 1 <= state["iteration"] < 4 and state["iter_in_epoch"] == state["iteration"]


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(synthetic_root, tmp_path):
    run_dir = tmp_path / "nan"
    r = run_app("train.py", *tiny_overrides(synthetic_root), "trainer.epochs=1", "trainer.eval_period=0",
                "trainer.checkpoint.every_iters=2", "trainer.debug.nan_at_iter=3", f"hydra.run.dir={run_dir}")
    assert r.returncode == 1
    assert "loss is nan at iteration 3" in r.stdout
    assert "Last good checkpoint: " in r.stdout and "checkpoint_000000002.pt" in r.stdout
    assert [p.name for p in (run_dir / "checkpoints").glob("*.pt")] == ["checkpoint_000000002.pt"]


def iteration_lines(text: str) -> list[str]:
    """The per-iteration progress lines' fields, without timestamps and speeds."""
    return re.findall(r"(epoch \d/\d \[\d/\d\]  it \d+  loss \S+  lr \S+)", text)


def test_the_log_names_the_non_local_path_and_why(two_runs):
    """impl=auto chooses by device, dtype and autocast; train.log says which path and the reason."""
    text = (two_runs["c2d_nl1"] / "train.log").read_text()
    found = re.findall(r"non-local blocks take the (\w+) path: (.+)", text)
    expected = "sdpa" if torch.cuda.is_available() else "naive"  # bf16 on CUDA; fp32, measured, on CPU
    assert len(found) == 1 and found[0][0] == expected and "impl='auto'" in found[0][1], found
    assert "non-local blocks take" not in (two_runs["c2d"] / "train.log").read_text()


@pytest.mark.slow
def test_reading_the_device_every_few_steps_changes_nothing_else(reference_run, synthetic_root, tmp_path):
    """``trainer.sync_period=3`` (the GPU default is log_period): the host reads the steps' losses in
    groups, yet logs the same per-iteration lines and epoch totals and ends on the same weights."""
    run_dir = tmp_path / "sync3"
    r = run_app("train.py", *tiny_overrides(synthetic_root), *REFERENCE, "trainer.checkpoint.every_iters=0",
                "trainer.sync_period=3", f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    reference = (reference_run / "train.log").read_text()
    assert len(iteration_lines(reference)) == 8
    assert iteration_lines(r.stdout) == iteration_lines(reference)
    done = [ln.split(" - ", 1)[1].split("  run eta")[0] for ln in reference.splitlines() if " done: " in ln]
    assert len(done) == 2 and all(line in r.stdout for line in done), (done, r.stdout[-2000:])
    want = load_model_state(reference_run / "checkpoints" / "checkpoint_000000008.pt")
    got = load_model_state(run_dir / "checkpoints" / "checkpoint_000000008.pt")
    assert [k for k in want if not torch.equal(want[k], got[k])] == []


def test_nan_loss_read_late_still_names_its_iteration_and_saves_nothing_after(synthetic_root, tmp_path):
    """With the host reading every 3 steps, a NaN at iteration 2 is found at the read after iteration 3,
    before that iteration's checkpoint is written."""
    run_dir = tmp_path / "nan_late"
    r = run_app("train.py", *tiny_overrides(synthetic_root), "trainer.epochs=1", "trainer.eval_period=0",
                "trainer.sync_period=3", "trainer.checkpoint.every_iters=3", "trainer.debug.nan_at_iter=2",
                f"hydra.run.dir={run_dir}")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert "loss is nan at iteration 2 (epoch 1, step 2/4)" in r.stdout
    assert "Last good checkpoint: none" in r.stdout
    assert not list(run_dir.glob("checkpoints/*.pt"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=xyz"], "error: model=xyz is not allowed; choose one of: c2d, c2d_nl1,"),
        (["data=kinetics400", "data.root=???"], "error: data.root is required for data=kinetics400"),
        (["data=kinetics400"], "is not a directory: pass data.root=/path/to/kinetics400"),
    ],
)
def test_bad_overrides_fail_fast_with_one_clear_line(overrides, message, tmp_path):
    # data.root points nowhere: validation must fail before any data is read or generated.
    r = run_app("train.py", f"data.root={tmp_path / 'absent'}", *overrides, f"hydra.run.dir={tmp_path}/run",
                "model.width=8", timeout=60)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "absent").exists()


@pytest.mark.slow
def test_multirun_sweep_gives_each_model_its_own_run(synthetic_root, tmp_path):
    r = run_app("train.py", "-m", "model=c2d,c2d_nl1", *tiny_overrides(synthetic_root), "trainer.max_iters=1",
                "trainer.eval_period=0", f"hydra.sweep.dir={tmp_path}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for sub in ("0_c2d", "1_c2d_nl1"):
        assert (tmp_path / sub / "checkpoints" / "checkpoint_000000001.pt").is_file()
        assert (tmp_path / sub / "tb").is_dir()


@pytest.mark.slow
def test_every_instantiation_trains_in_the_default_channels_last_layout(synthetic_root, tmp_path):
    """trainer.channels_last (the default) converts the Conv3d weights only: Module.to(channels_last_3d)
    failed on the concatenation block's 4-D w_f (a Conv2d, as in the seed)."""
    sweep = "model.nonlocal.instantiation=gaussian,dot_product,concatenation"
    r = run_app("train.py", "-m", "model=c2d_nl1", sweep, *tiny_overrides(synthetic_root),
                "trainer.max_iters=1", "trainer.eval_period=0", f"hydra.sweep.dir={tmp_path}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert len(list(tmp_path.glob("*/checkpoints/checkpoint_000000001.pt"))) == 3
