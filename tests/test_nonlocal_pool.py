"""``pool="before_embed"`` (video-nonlocal-net, PySlowFast): the input is max-pooled once and phi/g embed
the pooled input. Checked against the paper's formula written out in float64 on every computation path."""

import pytest
import torch
from torch import nn

from nlvideo.models import INSTANTIATIONS, NonLocalBlock
from nlvideo.models import nonlocal_block as nl
from tests.test_nonlocal_block import CHANNELS_LAST, SHAPES, randomise


def conv1x1(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(C, P) positions -> (C', P) through a 1x1 conv's weight and bias, written out."""
    return conv.weight.flatten(1) @ x + conv.bias[:, None]


def pool_first_formula(block: NonLocalBlock, x: torch.Tensor) -> torch.Tensor:
    """z_0 for batch element 0, from the weights alone: x_p = 1x2x2 max-pool of x; theta_i = W_theta x_i,
    phi_j = W_phi x_p_j, g_j = W_g x_p_j (gaussian: theta = x, phi = x_p); y_i = 1/C sum_j f_ij g_j."""
    c, t, h, w = x.shape[1:]
    x0 = x[0]
    xp = x0.reshape(c, t, h // 2, 2, w // 2, 2).amax(dim=(3, 5))  # the max over each 1x2x2 window
    xs, xps = x0.flatten(1), xp.flatten(1)  # (C, N), (C, M)
    if block.instantiation == "gaussian":
        theta, phi = xs.T, xps.T
    else:
        theta, phi = conv1x1(block.theta, xs).T, conv1x1(block.phi[0], xps).T
    g = conv1x1(block.g[0], xps).T  # (M, C')
    n, m = theta.shape[0], phi.shape[0]
    scale = block.inter_channels**-0.5 if block.scale else 1.0
    f = torch.empty(n, m, dtype=x.dtype)
    for i in range(n):
        for j in range(m):
            if block.instantiation in ("gaussian", "embedded_gaussian"):
                f[i, j] = torch.exp(scale * theta[i] @ phi[j])
            elif block.instantiation == "dot_product":
                f[i, j] = theta[i] @ phi[j]
            else:
                w_f = block.concat_project[0].weight.flatten()
                f[i, j] = torch.relu(w_f @ torch.cat([theta[i], phi[j]]))
    norm = f.sum(1, keepdim=True) if block.instantiation in ("gaussian", "embedded_gaussian") else m
    y = ((f / norm) @ g).T.reshape(1, -1, t, h, w)
    return block.W(y) + x[:1]


CASES = [(inst, False) for inst in INSTANTIATIONS] + [("embedded_gaussian", True)]


@pytest.mark.parametrize(("instantiation", "scale"), CASES)
@pytest.mark.parametrize("path", nl.PATHS)
def test_pool_before_embed_is_the_formula_in_float64_on_every_path(instantiation, scale, path, monkeypatch):
    """Each path is forced through select_path, so a path added later is checked here too."""
    monkeypatch.setattr(nl, "select_path", lambda *a, **k: nl.PathChoice(path, "forced by the test"))
    block = NonLocalBlock(8, instantiation=instantiation, scale=scale, pool="before_embed")
    block = randomise(block).double()
    x = torch.randn(SHAPES[3], dtype=torch.float64) * 0.5
    torch.testing.assert_close(block(x)[:1], pool_first_formula(block, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_pool_before_embed_efficient_equals_naive_fp32_forward_and_backward(instantiation, layout):
    naive = randomise(NonLocalBlock(8, instantiation=instantiation, pool="before_embed", impl="naive"))
    fast = randomise(NonLocalBlock(8, instantiation=instantiation, pool="before_embed", impl="efficient"))
    fast.load_state_dict(naive.state_dict())
    x1 = torch.randn(SHAPES[3], requires_grad=True)
    x2 = x1.detach().clone()
    if layout == "channels_last":
        x2 = x2.contiguous(memory_format=CHANNELS_LAST[3])
    x2.requires_grad_()
    z1, z2 = naive(x1), fast(x2)
    torch.testing.assert_close(z2, z1, rtol=1e-5, atol=1e-5)
    z1.square().sum().backward()
    z2.square().sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-4, atol=1e-5)
    for (name, p1), p2 in zip(naive.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_both_pool_modes_share_state_dict_keys_and_differ_as_functions(instantiation):
    after = randomise(NonLocalBlock(8, instantiation=instantiation)).double()
    before = NonLocalBlock(8, instantiation=instantiation, pool="before_embed").double().eval()
    assert before.state_dict().keys() == after.state_dict().keys()
    before.load_state_dict(after.state_dict())
    x = torch.randn(SHAPES[3], dtype=torch.float64)
    assert not torch.allclose(before(x), after(x))  # a max-pool does not commute with the embedding


def test_fresh_pool_first_block_is_the_identity_and_bad_pool_is_named():
    x = torch.randn(SHAPES[3])
    assert torch.equal(NonLocalBlock(8, pool="before_embed").eval()(x), x)
    with pytest.raises(ValueError, match="unknown pool 'first'; allowed: after_embed, before_embed"):
        NonLocalBlock(8, pool="first")
