"""Multigrid training (trainer.multigrid, nlvideo/engine/plan.py): the schedule's numbers against
PySlowFast's, the batches a plan makes (every rank the same grid each step), split batch norm, clips
decoded at each grid, and train.py end to end: non-local blocks at every grid, TensorBoard shapes, a
SIGKILL mid-stage resumed bit-exact, eval.py on the checkpoint, two torchrun processes, config errors.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nlvideo.data import ClipSampler, build_dataset
from nlvideo.data.sampler import GridBatchSampler
from nlvideo.engine.config import ConfigError, check_warmup
from nlvideo.engine.optim import lr_factor_fn
from nlvideo.engine.plan import Grid, build_plan, grid_spec
from nlvideo.models.split_bn import SplitBatchNorm3d, split_batch_norm
from tests.test_train_run import REPO, app_env, load_model_state, run_app, tiny_overrides

ROOT2 = 0.5 ** 0.5


def config(**over) -> OmegaConf:
    """The composed defaults (trainer, optim, data) with ``over`` merged (dotted keys)."""
    cfg = OmegaConf.create({
        "trainer": OmegaConf.load(REPO / "configs/trainer/default.yaml"),
        "optim": OmegaConf.load(REPO / "configs/optim/sgd.yaml"),
        "data": {"num_frames": 8, "train_crop_size": 224, "batch_size": 16},
    })
    for key, value in over.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_long_and_short_cycle_schedule_is_pyslowfasts():
    """PySlowFast's Kinetics multigrid recipe (SOLVER.STEPS [0, 94, 154, 196], MAX_EPOCH 239, the default
    MULTIGRID factors): the epochs where each base shape ends, the learning-rate multiplier of each part
    and the fine-tuning's midpoint step, as slowfast/utils/multigrid.py computes them (recorded from it:
    schedule ends 73 110 142 158 | 205 228 248 259 | 291 308 322 329 | 358, SOLVER.LRS 8 4 2 1 0.8 ...)."""
    cfg = config(**{"trainer.epochs": 239, "trainer.multigrid.long_cycle": True,
                    "trainer.multigrid.short_cycle": True, "optim.schedule": "step",
                    "optim.steps": [94, 154, 196], "data.batch_size": 8})
    plan = build_plan(cfg, clips_per_rank=240_000, batch=8)
    ends = [e + 1 for e in range(plan.num_epochs - 1) if plan.epochs[e] != plan.epochs[e + 1]]
    # 329 (the fine-tuning stage starts) is no change: the same grid, and PySlowFast's rate goes on to 343
    assert ends + [plan.num_epochs] == [73, 110, 142, 158, 205, 228, 248, 259, 291, 308, 322, 358]
    # base grids (frames, crop) and batch factors of the first stage, PySlowFast's [8,2,158] ...:
    bases = [plan.grids[plan.shape(e - 1).cycle[-1][0]] for e in (73, 110, 142, 158)]
    assert bases == [Grid(2, 158), Grid(4, 158), Grid(4, 224), Grid(8, 224)]
    assert [plan.shape(e - 1).lr_scale for e in (73, 110, 142, 158)] == [8, 4, 2, 1]
    # the short cycle: crops 112 and 158 at 4x and 2x the base batch (here of the target grid)
    assert [(plan.grids[g], c) for g, c in plan.shape(357).cycle] == [
        (Grid(8, 112), 32), (Grid(8, 158), 16), (Grid(8, 224), 8)]
    assert plan.lr_steps == [158, 259, 343]  # LR x0.1 at each stage, the fine-tuning's at its middle
    lr = lr_factor_fn(cfg.optim, 1, plan.total_iters(None), plan)
    start = [plan.epoch_start(e) for e in (0, 73, 158, 259, 329, 343)]
    assert [round(lr(i), 6) for i in start] == [8, 4, 0.8, 0.08, 0.01, 0.001]


def test_short_cycle_alone_stretches_the_schedule():
    """PySlowFast: epochs and milestones x epoch_factor, rounded down; the warm-up as configured."""
    cfg = config(**{"trainer.epochs": 10, "trainer.multigrid.short_cycle": True, "optim.schedule": "step",
                    "optim.steps": [4, 8], "optim.warmup": 1.0})
    plan = build_plan(cfg, clips_per_rank=1000, batch=16)
    assert plan.num_epochs == 15 and plan.lr_steps == [6, 12]
    assert [plan.configured_epochs(e) for e in (1, 2, 3, 15)] == [0, 1, 2, 10]  # validation's cadence
    assert [(plan.grids[g], c) for g, c in plan.shape(0).cycle] == [
        (Grid(8, 112), 64), (Grid(8, 158), 32), (Grid(8, 224), 16)]
    assert plan.steps(0) == 3 * 8 + 2  # 8 cycles of 112 clips, then 64 + 32 of the last 104
    lr = lr_factor_fn(cfg.optim, 1, plan.total_iters(None), plan)
    at = {e: lr(plan.epoch_start(e)) for e in (0, 1, 5, 6, 12)}
    assert at[0] == pytest.approx(0.1) and at[1] == at[5] == 1.0  # warm-up 1 epoch, steps at 6, 12
    assert at[6] == pytest.approx(0.1) and at[12] == pytest.approx(0.01)


def test_a_warm_up_is_checked_on_the_plans_epochs():
    """2 configured epochs, a 1-epoch warm-up: a multigrid run of 3 cheaper epochs, in fewer steps than
    one standard epoch, warms up for 1 of them; the standard check counted its steps as 0.7 epochs and
    refused it. A run of 1 plan epoch is refused, naming the configured warm-up."""
    cfg = config(**{"trainer.epochs": 2, "trainer.multigrid.short_cycle": True, "optim.warmup": 1.0})
    plan = build_plan(cfg, clips_per_rank=1200, batch=16)
    assert plan.num_epochs == 3 and plan.total_iters(None) < 2 * plan.target_steps
    check_warmup(cfg.optim, plan.target_steps, plan.total_iters(None), plan)
    with pytest.raises(ConfigError, match=r"optim.warmup=1 epoch\(s\) covers the whole run \(1 epoch"):
        check_warmup(cfg.optim, plan.target_steps, plan.epoch_start(1), plan)


def test_short_runs_keep_pyslowfasts_rates_and_end_at_the_target_grid():
    """Where the fine-tuning stage rounds away in PySlowFast (7 epochs, steps [3, 6]: its rates per
    epoch 8 8 4 2 1 0.8 0.8 0.4 0.2 0.1, recorded from slowfast/utils/multigrid.py), the same rates, then
    one fine-tuning epoch at the target grid; cosine stages add no rate drops; trainer.max_iters past the
    plan continues the cosine instead of training at rate 0."""
    cfg = config(**{"trainer.epochs": 7, "trainer.multigrid.long_cycle": True,
                    "trainer.multigrid.short_cycle": True, "optim.schedule": "step", "optim.steps": [3, 6],
                    "data.batch_size": 8})
    plan = build_plan(cfg, clips_per_rank=240_000, batch=8)
    lr = lr_factor_fn(cfg.optim, 1, plan.total_iters(None), plan)
    assert [round(lr(plan.epoch_start(e)), 4) for e in range(plan.num_epochs)] == [
        8, 8, 4, 2, 1, 0.8, 0.8, 0.4, 0.2, 0.1, 0.01]
    assert plan.grids[plan.shape(10).cycle[-1][0]] == Grid(8, 224)
    cosine = config(**{"trainer.epochs": 2, "trainer.multigrid.long_cycle": True})
    plan = build_plan(cosine, clips_per_rank=240_000, batch=8)
    assert plan.lr_steps == [] and plan.grids[plan.shape(plan.num_epochs - 1).cycle[-1][0]] == Grid(8, 224)
    lr = lr_factor_fn(cosine.optim, 1, 2 * plan.total_iters(None), plan)
    assert lr(plan.total_iters(None)) > 0.1  # the cosine goes on past the plan's end


def test_a_standard_plan_is_the_standard_epoch():
    plan = build_plan(config(**{"trainer.epochs": 3}), clips_per_rank=50, batch=16)
    assert not plan.varies and plan.steps(0) == plan.steps(7) == 3 == plan.target_steps
    assert plan.total_iters(None) == 9 and plan.total_iters(20) == 20 and plan.locate(19) == (6, 1)


def test_positions_in_clips_and_steps_agree():
    cfg = config(**{"trainer.epochs": 4, "trainer.multigrid.short_cycle": True})
    plan = build_plan(cfg, clips_per_rank=500, batch=4)
    for step in range(plan.steps(0) + 1):
        assert plan.step_after(0, plan.clips_before(0, step)) == step
    with pytest.raises(ValueError, match="inside a step"):
        plan.step_after(0, 1)


def test_every_rank_trains_the_same_grid_each_step_and_the_union_is_the_epoch():
    cfg = config(**{"trainer.epochs": 2, "trainer.multigrid.short_cycle": True})
    batches = []
    for rank in (0, 1):
        sampler = ClipSampler(200, shuffle=True, seed=3, rank=rank, world_size=2)
        plan = build_plan(cfg, sampler.per_rank, batch=2)
        sampler.set_epoch(1)
        batches.append(list(GridBatchSampler(sampler, plan)))
    assert len(batches[0]) == len(batches[1]) == plan.steps(1) == 21  # 100 clips: 8+4+2 a cycle, 7 cycles
    for mine, theirs in zip(*batches, strict=True):
        assert len(mine) == len(theirs) and {g for *_, g in mine} == {g for *_, g in theirs}
    seen = [i for rank in batches for batch in rank for i, _, _ in batch]
    assert len(seen) == len(set(seen)) == 7 * 14 * 2  # no clip twice; 2 clips per rank dropped
    # a resume after 5 steps gets the same remaining batches
    sampler = ClipSampler(200, shuffle=True, seed=3, rank=0, world_size=2)
    sampler.set_epoch(1, start=plan.clips_before(1, 5))
    assert list(GridBatchSampler(sampler, plan)) == batches[0][5:]


def test_split_batch_norm_normalises_each_group_and_keeps_plain_statistics():
    torch.manual_seed(0)
    plain = torch.nn.BatchNorm3d(3).train()
    x = torch.randn(20, 3, 2, 4, 4) * 3 + 1  # groups of 8, 8 + 4 (the last short group joins)
    split = split_batch_norm(torch.nn.Sequential(plain), 8)[0]
    assert isinstance(split, SplitBatchNorm3d)
    ref = torch.nn.BatchNorm3d(3).train()
    parts = [ref(x[:8]), ref(x[8:])]
    ref.reset_running_stats()
    out = split(x)
    assert torch.allclose(out, torch.cat(parts), atol=1e-5)
    whole = torch.nn.BatchNorm3d(3).train()
    whole(x)
    assert torch.allclose(split.running_mean, whole.running_mean, atol=1e-6)
    assert torch.allclose(split.running_var, whole.running_var, atol=1e-5)
    assert split.state_dict().keys() == whole.state_dict().keys()
    split.eval(), whole.eval()
    assert torch.allclose(split(x), whole(x), atol=1e-6)  # eval: a plain BN
    cl = x.to(memory_format=torch.channels_last_3d)
    split.train()
    assert torch.allclose(split(cl), out, atol=1e-5)


def test_clips_are_decoded_at_their_grid_with_the_same_span(synthetic_cfg, tmp_path):
    """A coarse grid: fewer frames over the same span (larger stride), a smaller crop of the same picture
    (scales shrink with it, so the decoder is asked for a smaller frame); a bad video is replaced and
    counted, at the grid."""
    ds = build_dataset(synthetic_cfg, "train")
    target = Grid(synthetic_cfg.num_frames, synthetic_cfg.train_crop_size)
    coarse = grid_spec(ds.spec, target, Grid(2, 24))
    assert coarse.num_frames == 2 and coarse.crop_size == 24
    assert coarse.sampling_rate * (2 - 1) == ds.spec.sampling_rate * (8 - 1)  # first to last frame: 56
    assert coarse.max_scale < ds.spec.max_scale
    ds.grid_specs = [ds.spec, coarse]
    item = ds[(5, 1234, 1)]
    assert item["clip"].shape == (3, 2, 24, 24) and item["valid"]
    assert ds[(5, 1234, 0)]["clip"].shape == (3, 8, 48, 48)
    ds.records[5].path = str(tmp_path / "missing.mp4")
    item = ds[(5, 1234, 1)]
    assert item["clip"].shape == (3, 2, 24, 24) and [p for p, _ in item["failures"]] == [ds.records[5].path]


# --- train.py end to end ---------------------------------------------------------------------------------
# Two long-cycle grids (4 then 8 frames) and a short cycle with one smaller crop (34 of 48): the tiny
# data's 16 clips make 2 steps (8 + 4 clips) in epoch 1, 5 steps (4, 2, 4, 2, 4) in epochs 2 and 3.
MULTIGRID = ["trainer.multigrid.long_cycle=true", "trainer.multigrid.short_cycle=true",
             "trainer.multigrid.long_cycle_factors=[[0.5,1],[1,1]]",
             "trainer.multigrid.short_cycle_factors=[0.7071067811865476]", "trainer.multigrid.long_cycles=1",
             "trainer.multigrid.bn_base_size=2", "data.batch_size=2", "trainer.epochs=2",
             "trainer.checkpoint.every_iters=2", "trainer.checkpoint.keep_last=10"]


def overrides(root: Path, run_dir: Path, *more: str) -> list[str]:
    return [*tiny_overrides(root), "model=c2d_nl5", *MULTIGRID, *more, f"hydra.run.dir={run_dir}"]


@pytest.fixture(scope="module")
def reference(synthetic_root, tmp_path_factory) -> tuple[Path, str]:
    run_dir = tmp_path_factory.mktemp("multigrid") / "reference"
    r = run_app("train.py", *overrides(synthetic_root, run_dir))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return run_dir, r.stdout


def test_multigrid_run_trains_every_grid_and_logs_its_shape(reference):
    run_dir, out = reference
    assert "multigrid: 3 epochs, 12 steps" in out and "epoch 3/3 done" in out
    assert out.count("validation:") == 2 and "non-local blocks take" in out and "run eta" in out
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    shapes = {(int(b.value), int(f.value), int(c.value)) for b, f, c in zip(
        acc.Scalars("multigrid/batch"), acc.Scalars("multigrid/frames"), acc.Scalars("multigrid/crop_size"),
        strict=True)}
    assert shapes == {(8, 4, 34), (4, 4, 48), (4, 8, 34), (2, 8, 48)}
    # validated after each configured epoch's worth: 2 of the plan's 3 epochs
    assert [e.step for e in acc.Scalars("accuracy/val_top1")] == [7, 12]
    lrs = [e.value for e in acc.Scalars("train/lr")]
    assert lrs[0] > 1.9 * lrs[2]  # epoch 1 (4 frames) trains at twice the rate: twice the batch


def test_multigrid_checkpoint_is_a_plain_model_for_eval(reference, synthetic_root, tmp_path):
    run_dir, _ = reference
    r = run_app("eval.py", *tiny_overrides(synthetic_root), "model=c2d_nl5",
                f"checkpoint={run_dir / 'checkpoints' / 'checkpoint_000000012.pt'}",
                f"hydra.run.dir={tmp_path / 'eval'}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "top1" in (tmp_path / "eval" / "metrics.json").read_text()


def test_sigkill_mid_stage_resumes_bit_exact(reference, synthetic_root, tmp_path):
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "train.py", *overrides(synthetic_root, run_dir)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=app_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    killed = False
    for line in proc.stdout:
        if "epoch 2/3 [3/5]" in line:  # iteration 5 logged: the checkpoint of iteration 4 is on disk
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
    proc.wait(timeout=60)
    assert killed and proc.returncode == -signal.SIGKILL
    r = run_app("train.py", *overrides(synthetic_root, run_dir))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "iteration 4)" in r.stdout and "epoch 3/3 done" in r.stdout
    want = load_model_state(reference[0] / "checkpoints" / "checkpoint_000000012.pt")
    got = load_model_state(run_dir / "checkpoints" / "checkpoint_000000012.pt")
    assert [k for k in want if not torch.equal(want[k], got[k])] == []
    # another plan on resume is refused in one line, before any step: another trainer.epochs changes
    # every epoch's steps, other multigrid settings are named
    r = run_app("train.py", *overrides(synthetic_root, run_dir, "trainer.epochs=3"))
    assert r.returncode == 2 and "another multigrid plan (epochs 1-1:" in r.stderr, r.stderr[-2000:]
    r = run_app("train.py", *overrides(synthetic_root, run_dir, "trainer.multigrid.short_cycle=false",
                                       "trainer.epochs=3"))
    assert r.returncode == 2 and "another multigrid plan" in r.stderr and "short_cycle: True -> False" in \
        r.stderr, r.stderr[-2000:]


@pytest.mark.slow
def test_two_torchrun_processes_train_the_plan(synthetic_root, tmp_path):
    run_dir = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
           *overrides(synthetic_root, run_dir, "data.batch_size=1", "trainer.eval_period=0")]
    r = subprocess.run(cmd, cwd=REPO, env=app_env(), text=True, capture_output=True, timeout=240)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "2 process(es) (gloo)" in out and "multigrid: 3 epochs" in out and out.count("epoch 3/3 done") == 1
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    assert {int(e.value) for e in acc.Scalars("multigrid/batch")} == {4, 2, 1}  # per process, halved


@pytest.mark.parametrize(("override", "message"), [
    ("optim=paper_kinetics", "trainer.multigrid needs optim.unit=epoch"),
    ("trainer.multigrid.short_cycle_factors=[0.5,2]", "trainer.multigrid.short_cycle_factors"),
    ("trainer.multigrid.bn_base_size=0", "trainer.multigrid.bn_base_size=0 must be an integer >= 1"),
    ("data.batch_size=8", "is larger than the training split"),
    ("trainer.multigrid.long_cycle_factors=[[0.125,1],[1,1]]", "a grid of 1 of data.num_frames=8 frames"),
    ("trainer.multigrid.short_cycle_factors=[0.001]", "leave a crop of at least 1"),
    ("trainer.multigrid.long_cycle_factors=[0.5,1]", "must be a list of [frames, crop] factors"),
    ("trainer.compile=true", "trainer.compile with trainer.multigrid"),
    ("data.batch_size=1 trainer.multigrid.long_cycle_factors=[[1,1]] "
     "trainer.multigrid.short_cycle_factors=[0.34]",  # crop 16: res4's 1x1 map has nothing to sub-sample
     "the grid of 8 frames x 16² (data.num_frames=8 x data.train_crop_size=48, scaled by the cycle "
     "factors) is too small for model=c2d_nl5"),
])
def test_bad_multigrid_settings_are_one_line(synthetic_root, tmp_path, override, message):
    r = run_app("train.py", *overrides(synthetic_root, tmp_path / "bad"), *override.split())
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, \
        r.stdout[-2000:] + r.stderr[-2000:]


def test_charades_multi_label_data_trains_under_multigrid(synthetic_root, tmp_path):
    """The Charades reader (multi-label, per-clip labels from each clip's own span) under both cycles."""
    run_dir = tmp_path / "charades"
    r = run_app("train.py", *overrides(synthetic_root, run_dir, "data=synthetic_charades"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "(multi-label)" in r.stdout and "multigrid: 3 epochs" in r.stdout
    assert r.stdout.count("validation: mAP") == 2


def test_repeated_clips_under_multigrid_count_videos_in_the_plan(synthetic_cfg):
    """data.clips_per_video=2: the plan counts sampler items (videos), each step holds k clips of each, at
    the step's grid."""
    from nlvideo.data import build_loader

    synthetic_cfg.clips_per_video, synthetic_cfg.batch_size = 2, 4
    ds = build_dataset(synthetic_cfg, "train")
    sampler = ClipSampler(len(ds), seed=0)
    cfg = config(**{"trainer.epochs": 2, "trainer.multigrid.short_cycle": True,
                    "trainer.multigrid.short_cycle_factors": [ROOT2],
                    "data.num_frames": 8, "data.train_crop_size": 48})
    plan = build_plan(cfg, sampler.per_rank, batch=2)  # 4 clips = 2 videos a step at the target grid
    ds.grid_specs = [grid_spec(ds.spec, plan.grids[0], g) for g in plan.grids]
    loader = build_loader(ds, synthetic_cfg, sampler, 4, batch_sampler=GridBatchSampler(sampler, plan))
    sampler.set_epoch(0)
    shapes = [tuple(b["clip"].shape) for b in loader]
    assert shapes[:2] == [(8, 3, 8, 34, 34), (4, 3, 8, 48, 48)] and len(shapes) == plan.steps(0)


def test_split_batch_norm_cumulative_statistics_for_precise_bn():
    """Precise BN sets momentum=None (a cumulative average over its batches): the split BN's running
    statistics are then the mean of the batches' whole-batch statistics, as a plain BN's are."""
    torch.manual_seed(1)
    batches = [torch.randn(16, 2, 2, 3, 3) * (i + 1) + i for i in range(3)]
    split = SplitBatchNorm3d(2, 8, momentum=None).train()
    plain = torch.nn.BatchNorm3d(2, momentum=None).train()
    for x in batches:
        split(x), plain(x)
    assert torch.allclose(split.running_mean, plain.running_mean, atol=1e-6)
    assert torch.allclose(split.running_var, plain.running_var, atol=1e-5)
    assert int(split.num_batches_tracked) == 3
