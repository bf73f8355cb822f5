"""Optimiser groups, linear lr scaling and the warmup/step/cosine schedule."""

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from nlvideo.engine.optim import build_optimizer, build_scheduler, clip_gradients, lr_factor_fn, scaled_lr

BASE = dict(lr=0.01, reference_batch_size=64, linear_scaling=True, momentum=0.9, nesterov=True,
            weight_decay=1e-4, bn_weight_decay=False, bias_weight_decay=False, clip_grad_norm=None,
            schedule="cosine", unit="epoch", warmup=0.0, warmup_start_factor=0.1, steps=[], gamma=0.1,
            final_lr_factor=0.0, per_iteration=True)


def cfg(**kw):
    return OmegaConf.create({**BASE, **kw})


def test_no_weight_decay_on_bn_and_bias_and_nesterov():
    net = nn.Sequential(nn.Conv3d(3, 4, 3), nn.BatchNorm3d(4), nn.Linear(4, 2))
    opt = build_optimizer(net, cfg(), global_batch_size=64)
    by_wd = {g["weight_decay"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    decayed = {id(net[0].weight), id(net[2].weight)}
    assert by_wd[1e-4] == decayed
    assert by_wd[0.0] == {id(net[0].bias), id(net[1].weight), id(net[1].bias), id(net[2].bias)}
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    opt = build_optimizer(net, cfg(bn_weight_decay=True, bias_weight_decay=True), 64)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4]


def test_linear_scaling():
    assert scaled_lr(cfg(), 64) == pytest.approx(0.01)
    assert scaled_lr(cfg(), 8) == pytest.approx(0.00125)
    assert scaled_lr(cfg(linear_scaling=False), 8) == pytest.approx(0.01)


def test_step_schedule_in_iterations_like_the_paper():
    f = lr_factor_fn(cfg(schedule="step", unit="iter", steps=[150_000, 300_000]), 1000, 400_000)
    assert f(0) == 1.0 and f(149_999) == 1.0
    assert f(150_000) == pytest.approx(0.1) and f(300_000) == pytest.approx(0.01)


def test_warmup_then_cosine_in_epochs():
    f = lr_factor_fn(cfg(warmup=1.0, warmup_start_factor=0.1), iters_per_epoch=10, total_iters=100)
    end = 0.5 * (1 + math.cos(math.pi * 0.1))
    assert f(0) == pytest.approx(0.1 * end)
    assert f(5) == pytest.approx(0.1 * end + 0.5 * 0.9 * end)
    assert f(10) == pytest.approx(end)
    assert f(50) == pytest.approx(0.5)
    assert f(100) == pytest.approx(0.0, abs=1e-12)


def test_epoch_based_holds_within_epoch():
    f = lr_factor_fn(cfg(schedule="step", steps=[1], per_iteration=False), iters_per_epoch=4, total_iters=8)
    assert [f(i) for i in range(8)] == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1])


def test_scheduler_steps_per_iteration_and_resumes():
    net = nn.Linear(2, 2)
    c = cfg(schedule="cosine")
    opt = build_optimizer(net, c, 64)
    sch = build_scheduler(opt, c, iters_per_epoch=5, total_iters=10)
    for _ in range(3):
        opt.step()
        sch.step()
    lr3 = opt.param_groups[0]["lr"]
    opt2 = build_optimizer(net, c, 64)
    sch2 = build_scheduler(opt2, c, 5, 10)
    opt2.load_state_dict(opt.state_dict())
    sch2.load_state_dict(sch.state_dict())
    assert sch2.last_epoch == 3 and opt2.param_groups[0]["lr"] == pytest.approx(lr3)
    assert lr3 == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 0.3)))



def test_adamw_option_keeps_the_decay_groups_and_scaled_rate():
    import torch

    net = nn.Sequential(nn.Conv3d(3, 4, 3), nn.BatchNorm3d(4), nn.Linear(4, 2))
    opt = build_optimizer(net, cfg(optimizer="adamw", lr=0.004, weight_decay=0.05, betas=[0.9, 0.99]), 16)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.99)
    assert opt.defaults["lr"] == pytest.approx(0.001)
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.05]


@pytest.mark.parametrize("max_norm", [None, 0.5])
def test_clip_gradients_returns_the_norm_before_clipping_whether_it_clips_or_not(max_norm):
    """train/grad_norm is this value; without clipping the gradients are left exactly as they are."""
    net = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    net(torch.ones(2, 4)).sum().backward()
    net[0].bias.grad = None  # parameters without a gradient do not count
    grads = [p.grad.clone() for p in net.parameters() if p.grad is not None]
    expected = math.sqrt(sum(float((g**2).sum()) for g in grads))
    norm = clip_gradients(net, max_norm)
    assert isinstance(norm, torch.Tensor) and float(norm) == pytest.approx(expected, rel=1e-6)
    after = [p.grad for p in net.parameters() if p.grad is not None]
    if max_norm is None:
        assert all(torch.equal(a, b) for a, b in zip(grads, after, strict=True))
    else:
        assert float(torch.stack([g.norm() for g in after]).norm()) == pytest.approx(max_norm, rel=1e-4)


def test_a_warmup_as_long_as_the_run_is_refused_before_training(synthetic_root, tmp_path):
    """trainer.epochs=1 with the nl_vs_baseline 1-epoch warm-up trained the whole run at lr 0 without a
    word (the warm-up ramps towards the cosine's value at its end, which is the end of the run)."""
    import subprocess
    import sys

    from tests.test_train_run import REPO, app_env, tiny_overrides

    run_dir = tmp_path / "run"
    r = subprocess.run([sys.executable, "train.py", *tiny_overrides(synthetic_root), "trainer.epochs=1",
                        "optim.warmup=1", f"hydra.run.dir={run_dir}"], cwd=REPO, env=app_env(), text=True,
                       capture_output=True, timeout=240)
    assert r.returncode == 2, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == [
        "error: optim.warmup=1 epoch(s) covers the whole run (1 epoch(s), 4 iterations): the rate would "
        "stay at 0 x optim.lr; lower optim.warmup or train longer"]
    assert not run_dir.exists()  # refused before any work
