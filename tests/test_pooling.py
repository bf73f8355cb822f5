"""nlvideo.models.pooling.MaxPool3d: in deterministic mode its own backward, equal to ATen's to the bit.

On CPU ATen's backward is deterministic too, so it is the reference: the deterministic Function must give
the same gradient for every 3-D pool the models use (pool1 with overlapping windows and either padding,
pool2, the NL block's 1x2x2), both memory formats, with ties. On CUDA (tests/test_gpu.py) it is the
only backward deterministic mode allows on torch <= 2.11.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from nlvideo import create_model
from nlvideo.models import NonLocalBlock
from nlvideo.models.pooling import MaxPool3d

POOLS = {  # (kernel, stride, padding) of each 3-D max-pool in the models
    "pool1 8x8": ((1, 3, 3), (1, 2, 2), (0, 1, 1)),
    "pool1 32x2": ((2, 3, 3), (2, 2, 2), (0, 1, 1)),
    "pool1 caffe2": ((1, 3, 3), (1, 2, 2), (0, 0, 0)),  # model.stem_pool_padding=0
    "pool2": ((2, 1, 1), (2, 1, 1), (0, 0, 0)),
    "nl sub-sampling": ((1, 2, 2), (1, 2, 2), (0, 0, 0)),
}
SHAPE = (2, 3, 4, 9, 10)  # odd sizes: windows at the border are cut by the padding


@pytest.fixture
def deterministic() -> Iterator[None]:
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def pooled_input(dtype: torch.dtype, channels_last: bool, ties: bool) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randint(0, 4, SHAPE).to(dtype) if ties else torch.randn(SHAPE, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x.requires_grad_()


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_deterministic_backward_equals_atens_exactly(pool, dtype, channels_last, ties, deterministic):
    kernel, stride, padding = POOLS[pool]
    module = MaxPool3d(kernel, stride, padding)
    x, x_ref = pooled_input(dtype, channels_last, ties), pooled_input(dtype, channels_last, ties)
    out, ref = module(x), F.max_pool3d(x_ref, kernel, stride, padding)
    assert type(out.grad_fn).__name__ == "_DeterministicMaxPool3dBackward"  # not ATen's backward
    torch.manual_seed(1)
    dout = torch.randn(ref.shape, dtype=dtype)
    out.backward(dout)
    ref.backward(dout)
    assert torch.equal(out, ref) and torch.equal(x.grad, x_ref.grad)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    assert x.grad.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("pool", ["pool1 8x8", "nl sub-sampling"])
def test_deterministic_backward_gradcheck(pool, deterministic):
    module = MaxPool3d(*POOLS[pool])
    x = pooled_input(torch.float64, channels_last=False, ties=False)  # no ties: max is differentiable
    assert torch.autograd.gradcheck(module, (x,))


def test_atens_pool_outside_deterministic_mode_without_gradient_or_batch(deterministic):
    module = MaxPool3d(*POOLS["pool1 8x8"])
    x = pooled_input(torch.float32, channels_last=False, ties=False)
    with torch.no_grad():
        assert module(x).grad_fn is None
    assert type(module(x[0]).grad_fn).__name__ != "_DeterministicMaxPool3dBackward"  # unbatched
    torch.use_deterministic_algorithms(False)
    assert type(module(x).grad_fn).__name__ == "MaxPool3DWithIndicesBackward0"


def test_every_3d_pool_of_the_models_is_the_deterministic_one(deterministic):
    """pool1, pool2 and the NL blocks' sub-sampling pools (both pool modes); a deterministic backward
    through a whole model gives the gradients of the ATen pools (CPU) exactly."""
    net = create_model("c2d_nl1", num_classes=4, width=8)
    pools = [m for m in net.modules() if isinstance(m, torch.nn.MaxPool3d)]
    assert len(pools) == 4 and all(isinstance(m, MaxPool3d) for m in pools)  # pool1, pool2, phi, g
    assert isinstance(NonLocalBlock(8, pool="before_embed").input_pool, MaxPool3d)

    x = torch.randn(2, 3, 8, 32, 32)
    grads = []
    for mode in (True, False):
        torch.use_deterministic_algorithms(mode)
        net.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same dropout mask
        net(x).square().sum().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
