"""Numerics: a run that really diverges (no injected NaN) stops naming the iteration and the last good
checkpoint, which is intact and resumable with a lower learning rate; fp16 overflow is absorbed by the
GradScaler through the trainer's own step code (``nlvideo.engine.trainer.train_step``): overflowing steps are
skipped without touching the weights, the scale backs off, training goes on. (The injected-NaN stop is
tests/test_train_run.py::test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint.)

train.py accepts ``trainer.amp=fp16`` only on CUDA; torch's CPU autocast and ``GradScaler("cpu")``
run the same step code here, and the CUDA variant runs where a GPU is present.
"""

from __future__ import annotations

import re

import pytest
import torch
from hydra import compose, initialize_config_dir

from nlvideo.engine import checkpoint as ck
from nlvideo.engine.optim import build_optimizer, build_scheduler
from nlvideo.engine.plan import standard_plan
from nlvideo.engine.runtime import build_model, make_forward
from nlvideo.engine.state import TrainState
from nlvideo.engine.trainer import Loop, train_step
from tests.test_train_run import REPO, run_app, tiny_overrides


def test_real_divergence_stops_and_last_good_checkpoint_resumes_with_lower_lr(synthetic_root, tmp_path):
    """On the CPU, where this run was measured: the loss grows ~1e5x per step and overflows at iteration 6,
    after checkpoint 4, whose weights train on at lr 0.01. Where the overflow comes, and so which
    checkpoint is the last good one and whether a lower rate recovers from it, depends on the arithmetic
    (on a GPU: TF32, bf16 with trainer.amp=auto). The NaN stop on a GPU is tested by the injected-NaN
    tests of tests/test_train_run.py (trainer.device=auto)."""
    run_dir = tmp_path / "diverge"
    common = [*tiny_overrides(synthetic_root), "trainer.device=cpu", "trainer.epochs=2",
              "trainer.eval_period=0", "trainer.checkpoint.every_iters=2", "optim.clip_grad_norm=null",
              f"hydra.run.dir={run_dir}"]
    r = run_app("train.py", *common, "optim.lr=1e4")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    m = re.search(r"loss is (nan|inf|-inf) at iteration (\d+) \(epoch \d, step \d/4\); stopping\. "
                  r"Last good checkpoint: (\S+)\.", r.stdout)
    assert m, r.stdout[-3000:]
    bad_iter, last_good = int(m.group(2)), m.group(3)
    ckpts = ck.list_checkpoints(run_dir / "checkpoints")
    assert str(ckpts[-1]) == last_good and all(int(p.stem[-9:]) < bad_iter for p in ckpts)
    state = ck.load_checkpoint(last_good)  # intact: loads, finite, from before the bad iteration
    assert state["iteration"] < bad_iter
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert f"it {bad_iter}  loss" not in r.stdout  # nothing logged (or saved) for the bad iteration

    r = run_app("train.py", *common, "optim.lr=0.01")  # the advice of the message, same run dir
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"resumed from {last_good}" in r.stdout
    changed = (r"learning rate \S+ -> \S+ \(optim\.lr: 10000(\.0)? -> 0\.01\): "
               r"continuing with the configured rate")
    assert re.search(changed, r.stdout), r.stdout[-3000:]
    lrs = [float(x) for x in re.findall(r"it \d+  loss \S+  lr (\S+)", r.stdout)]
    assert lrs and max(lrs) < 0.01  # the new rate (cosine-decayed), not the diverging 1e4 schedule
    assert "training finished: 8 iterations" in r.stdout


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="config", overrides=["model.width=8", "trainer.progress=off",
                                                        "trainer.amp=fp16", *overrides])


@pytest.mark.parametrize("clip_grad_norm", [None, 10.0])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_fp16_overflow_steps_are_skipped_by_the_scaler(device, clip_grad_norm):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cfg = _cfg(f"trainer.device={device}", f"optim.clip_grad_norm={clip_grad_norm or 'null'}")
    dev = torch.device(device)
    net = build_model(cfg, dev)
    optimizer = build_optimizer(net, cfg.optim, 2)
    scheduler = build_scheduler(optimizer, cfg.optim, 100, 100)
    # The trainer's scaler, started so high that the first fp16 backward passes overflow.
    scaler = torch.amp.GradScaler(device, init_scale=2.0**20)
    forward = make_forward(cfg, dev)
    g = torch.Generator().manual_seed(0)

    def batches():
        while True:
            yield {"clip": torch.randn(2, 3, 8, 32, 32, generator=g),
                   "label": torch.randint(0, 4, (2,), generator=g), "failures": []}

    stream = batches()
    loop = Loop(cfg=cfg, net=net, model=net, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                forward=forward, multi_label=False, per_rank_batch=2, iters_per_epoch=100, total_iters=100,
                plan=standard_plan(8, 32, 2, 1, 200))
    skipped = applied = 0
    for it in range(12):
        before = [p.detach().clone() for p in net.parameters()]
        scale = scaler.get_scale()
        train_step(loop, TrainState(step=it, iteration=it), next(stream), data_time=0.0)
        same = all(torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))
        assert all(torch.isfinite(p).all() for p in net.parameters())
        if scaler.get_scale() < scale:  # overflow: the step was skipped, the weights untouched
            assert same and scaler.get_scale() == scale / 2
            skipped += 1
        else:
            assert not same
            applied += 1
            if applied == 2:
                break
    assert skipped >= 1 and applied == 2, (skipped, applied)
    assert scaler.get_scale() < 2.0**20
