"""CUDA checks (marker ``gpu``; every test here skips without CUDA): the NL block's paths against each
other in fp32 and bf16, which path ``impl=auto`` takes, the deterministic max-pool, bf16 and fp16
training steps through the trainer's own step code, a deterministic step repeated bit for bit, and DDP
with CUDA tensors (two ranks sharing one GPU over gloo, SyncBatchNorm, AMP) against one process.

``scripts/gpu_checks.sh`` runs them on a lent GPU machine (docs/benchmarks.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from nlvideo.engine.optim import build_optimizer, build_scheduler
from nlvideo.engine.plan import standard_plan
from nlvideo.engine.runtime import build_model, make_forward
from nlvideo.engine.state import TrainState
from nlvideo.engine.trainer import Loop, train_step
from nlvideo.models import INSTANTIATIONS, NonLocalBlock, to_channels_last_3d
from nlvideo.models.pooling import MaxPool3d
from tests.test_distributed_torchrun import COMMON, _losses
from tests.test_nonlocal_block import randomise
from tests.test_pooling import POOLS, SHAPE, deterministic  # noqa: F401  (the fixture)
from tests.test_train_run import REPO, app_env, load_model_state, run_app, tiny_overrides

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = torch.device("cuda")
NL_SHAPE = (2, 16, 4, 6, 8)


@pytest.fixture
def no_tf32(monkeypatch) -> None:
    """cuDNN convolutions default to TF32 (10-bit mantissa): fp32 comparisons would measure that."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


# ---- the NL block on CUDA: efficient (sdpa) vs naive, forward and backward ----

def block_step(block: NonLocalBlock, x: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    """z, the input gradient and every parameter gradient of one forward + backward (float32 copies)."""
    x = x.detach().clone().requires_grad_()
    block.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype, enabled=dtype != torch.float32):
        z = block(x)
    z.float().square().sum().backward()
    return [t.float() for t in (z.detach(), x.grad, *(p.grad for p in block.parameters()))]


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_nl_block_efficient_equals_naive_on_cuda(instantiation, dtype, channels_last, no_tf32):
    """fp32 to 1e-4; bf16 (autocast, as trainer.amp=bf16) both within 5 % of the fp32 naive result's
    largest value: bf16 keeps 8 bits, and the gaussian form's softmax of unembedded x_i^T x_j is peaked."""
    blocks = {}
    for impl in ("naive", "efficient"):
        block = randomise(NonLocalBlock(16, instantiation=instantiation, impl=impl)).to(CUDA)
        blocks[impl] = to_channels_last_3d(block) if channels_last else block
    blocks["efficient"].load_state_dict(blocks["naive"].state_dict())
    torch.manual_seed(0)
    x = torch.randn(NL_SHAPE, device=CUDA)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    assert blocks["efficient"].path_for(x.requires_grad_()).path == "sdpa"
    naive, fast = (block_step(blocks[i], x, dtype) for i in ("naive", "efficient"))
    if dtype == torch.float32:
        for a, b in zip(fast, naive, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        return
    reference = block_step(blocks["naive"], x, torch.float32)
    for name, ref, a, b in zip(("z", "dx", *dict(blocks["naive"].named_parameters())), reference, naive, fast,
                               strict=True):
        bound = 0.05 * ref.abs().max().item() + 1e-6
        assert (a - ref).abs().max().item() <= bound and (b - ref).abs().max().item() <= bound, name


def test_auto_trains_fp32_on_the_naive_path_and_bf16_on_sdpa():
    block = NonLocalBlock(8).to(CUDA)
    x = torch.randn(2, 8, 4, 6, 8, device=CUDA)
    choice = block.path_for(x)
    assert choice.path == "naive" and "0.85x" in choice.reason
    with torch.autocast("cuda", torch.bfloat16):
        assert block.path_for(x).path == "sdpa"
    with torch.no_grad():
        assert block.path_for(x).path == "sdpa"
    block.impl = "efficient"
    assert block.path_for(x).path == "sdpa"


# ---- the deterministic max-pool: what trainer.deterministic=true needs on CUDA ----

@pytest.mark.usefixtures("deterministic")
@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_deterministic_max_pool_on_cuda_is_repeatable_and_equals_atens(pool, channels_last):
    torch.manual_seed(0)
    x = torch.randn(SHAPE, device=CUDA)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    dout = torch.randn(F.max_pool3d(x, *POOLS[pool]).shape, device=CUDA)
    module = MaxPool3d(*POOLS[pool])
    grads = []
    for _ in range(2):
        xi = x.detach().clone().requires_grad_()
        out = module(xi)
        assert type(out.grad_fn).__name__ == "_DeterministicMaxPool3dBackward"
        out.backward(dout)
        grads.append(xi.grad)
    assert torch.equal(grads[0], grads[1])
    torch.use_deterministic_algorithms(False)
    xr = x.detach().clone().requires_grad_()
    F.max_pool3d(xr, *POOLS[pool]).backward(dout)  # ATen's (atomic) backward, outside deterministic mode
    torch.testing.assert_close(grads[0], xr.grad)


# ---- training steps through the trainer's own step code ----

def compose_cfg(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        base = ["model=c2d_nl1", "model.width=8", "trainer.device=cuda", "trainer.progress=off"]
        return compose(config_name="config", overrides=[*base, *overrides])


def train_steps(cfg: DictConfig, steps: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The weights before and after ``steps`` steps of ``train_step`` on fixed random clips (the model
    built as train.py builds it: seeded, channels-last)."""
    net = build_model(cfg, CUDA)
    optimizer = build_optimizer(net, cfg.optim, 2)
    scaler = torch.amp.GradScaler("cuda") if cfg.trainer.amp == "fp16" else None
    loop = Loop(cfg=cfg, net=net, model=net, optimizer=optimizer, scaler=scaler,
                scheduler=build_scheduler(optimizer, cfg.optim, 100, 100), forward=make_forward(cfg, CUDA),
                multi_label=False, per_rank_batch=2, iters_per_epoch=100, total_iters=100,
                plan=standard_plan(8, 32, 2, 1, 200))
    before = [p.detach().clone() for p in net.parameters()]
    g = torch.Generator().manual_seed(0)
    for it in range(steps):
        batch = {"clip": torch.randn(2, 3, 8, 32, 32, generator=g),
                 "label": torch.randint(0, 4, (2,), generator=g), "failures": []}
        train_step(loop, TrainState(step=it, iteration=it), batch, data_time=0.0)
    return before, [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_steps_update_the_weights(amp):
    """bf16 autocast, and fp16 autocast through the GradScaler (init scale 2^16: the first steps may be
    skipped as overflows, each halving the scale, so five steps)."""
    before, after = train_steps(compose_cfg(f"trainer.amp={amp}"), steps=5)
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_deterministic_training_runs_are_identical_bit_for_bit(synthetic_root, tmp_path):
    """trainer.deterministic=true on CUDA (it failed in max_pool3d's backward): two train.py runs give the
    same weights. In subprocesses: deterministic cuBLAS needs CUBLAS_WORKSPACE_CONFIG before a process's
    first cuBLAS call, which train.py sets and a test process that already ran CUDA tests cannot."""
    states = []
    for name in ("first", "second"):
        r = run_app("train.py", *tiny_overrides(synthetic_root), "model=c2d_nl1", "trainer.device=cuda",
                    "trainer.max_iters=3", "trainer.eval_period=0", f"hydra.run.dir={tmp_path / name}")
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        states.append(load_model_state(tmp_path / name / "checkpoints" / "checkpoint_000000003.pt"))
    different = [k for k in states[0] if not torch.equal(states[0][k], states[1][k])]
    assert not different, f"tensors differ: {different[:5]}"


# ---- DDP with CUDA tensors: two ranks on one GPU over gloo, SyncBatchNorm, bf16 ----

CUDA_DDP = ["trainer.device=cuda", "trainer.amp=bf16", "trainer.sync_bn=true"]


def _epoch_loss(run_dir: Path) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return acc.Scalars("loss/train_epoch")[-1].value


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() != 1, reason="written for two ranks sharing one GPU")
def test_ddp_two_ranks_on_one_gpu_over_gloo_match_one_process(synthetic_root, tmp_path):
    """tests/test_distributed_torchrun.py's comparison and tolerance (2 % per iteration, 1 % per epoch),
    on CUDA with SyncBatchNorm (the BN statistics are then those of the global batch) and bf16."""
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = run_app("train.py", *tiny_overrides(synthetic_root), *COMMON, *CUDA_DDP, "data.batch_size=4",
                 f"hydra.run.dir={one}")
    assert r1.returncode == 0, r1.stdout[-3000:] + r1.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
           *tiny_overrides(synthetic_root), *COMMON, *CUDA_DDP, "data.batch_size=2", f"hydra.run.dir={two}"]
    r2 = subprocess.run(cmd, cwd=REPO, env=app_env(), text=True, capture_output=True, timeout=300)
    out2 = r2.stdout + r2.stderr
    assert r2.returncode == 0, out2[-4000:]
    assert "2 process(es) (gloo) | device cuda:0" in out2 and "global batch 4" in out2
    l1, l2 = _losses(r1.stdout), _losses(out2)
    assert len(l1) == len(l2) == 4
    assert l1 == pytest.approx(l2, rel=0.02)
    assert _epoch_loss(one) == pytest.approx(_epoch_loss(two), rel=0.01)
