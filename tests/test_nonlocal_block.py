"""The non-local block against the paper's formulas, the seed block, and itself (naive vs efficient)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nlvideo.models import INSTANTIATIONS, NonLocalBlock, to_channels_last_3d
from nlvideo.models.nonlocal_block import POOLS
from tests.reference.seed_nonlocal import _NonLocalBlockND

SHAPES = {1: (2, 8, 12), 2: (2, 8, 6, 8), 3: (2, 8, 4, 6, 8)}


def randomise(block: nn.Module, std: float = 0.2) -> nn.Module:
    """Non-zero weights everywhere (a fresh block's W is zero) and eval-mode BN with real statistics."""
    torch.manual_seed(1)
    for p in block.parameters():
        nn.init.normal_(p, std=std)
    for m in block.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(std=0.1)
            m.running_var.uniform_(0.5, 1.5)
    return block.eval()


def paper_formula(block: NonLocalBlock, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Direct float64 evaluation of y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j), z = W_z y + x, loop over i, j.

    3-D input. With ``pool="before_embed"`` phi and g embed the 1x2x2 max-pooled input; with ``scale``
    theta_i^T phi_j is multiplied by C'^-1/2."""
    pooled = F.max_pool3d(x, (1, 2, 2)) if block.sub_sample and block.pool == "before_embed" else x
    theta = block.theta(x).flatten(2)[0].T  # (N, d) for batch element 0
    phi = block.phi(pooled).flatten(2)[0].T  # (M, d)
    g = block.g(pooled).flatten(2)[0].T  # (M, C')
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
                w = block.concat_project[0].weight.flatten()
                f[i, j] = torch.relu(w @ torch.cat([theta[i], phi[j]]))
    norm = f.sum(1, keepdim=True) if block.instantiation in ("gaussian", "embedded_gaussian") else m
    attn = f / norm
    y = (attn @ g).T.reshape(1, -1, *x.shape[2:])
    return block.W(y) + x[:1], attn


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
@pytest.mark.parametrize("sub_sample", [True, False])
def test_each_instantiation_equals_the_papers_formula_in_float64(instantiation, sub_sample):
    block = randomise(NonLocalBlock(8, instantiation=instantiation, sub_sample=sub_sample)).double()
    x = torch.randn(SHAPES[3], dtype=torch.float64) * 0.5
    z_ref, attn_ref = paper_formula(block, x)
    for impl in ("naive", "efficient"):
        block.impl = impl
        z, attn = block(x, return_nl_map=True)
        torch.testing.assert_close(z[:1], z_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(attn[0], attn_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(block(x)[:1], z_ref, rtol=1e-10, atol=1e-10)


CHANNELS_LAST = {2: torch.channels_last, 3: torch.channels_last_3d}


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
@pytest.mark.parametrize(("dimension", "layout"), [(1, "contiguous"), (2, "contiguous"), (3, "contiguous"),
                                                   (2, "channels_last"), (3, "channels_last")])
@pytest.mark.parametrize("pool", POOLS)
def test_efficient_path_equals_naive_path_fp32_forward_and_backward(instantiation, dimension, layout, pool):
    """Both storage layouts of the efficient path (channel-major, and position-major for channels-last)."""
    kwargs = {"dimension": dimension, "instantiation": instantiation, "pool": pool}
    naive = randomise(NonLocalBlock(8, impl="naive", **kwargs))
    fast = randomise(NonLocalBlock(8, impl="efficient", **kwargs))
    fast.load_state_dict(naive.state_dict())
    x1 = torch.randn(SHAPES[dimension], requires_grad=True)
    x2 = x1.detach().clone()
    if layout == "channels_last":
        x2 = x2.contiguous(memory_format=CHANNELS_LAST[dimension])
    x2.requires_grad_()
    z1, z2 = naive(x1), fast(x2)
    torch.testing.assert_close(z2, z1, rtol=1e-5, atol=1e-5)
    fmt = CHANNELS_LAST[dimension] if layout == "channels_last" else torch.contiguous_format
    assert z2.is_contiguous(memory_format=fmt)  # the output keeps the input's layout: no conversions
    z1.square().sum().backward()
    z2.square().sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-4, atol=1e-5)
    for (name, p1), p2 in zip(naive.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_dot_product_uses_both_associations_and_they_agree():
    """theta (phi^T g) is chosen for large N*M; (theta phi^T) g for tiny maps: both are exact."""
    block = randomise(NonLocalBlock(64, instantiation="dot_product", sub_sample=False, impl="efficient"))
    naive = randomise(NonLocalBlock(64, instantiation="dot_product", sub_sample=False, impl="naive"))
    naive.load_state_dict(block.state_dict())
    for shape in [(1, 64, 2, 2, 2), (1, 64, 4, 14, 14)]:  # N*M = 64 (direct) and 614,656 (re-associated)
        x = torch.randn(shape)
        torch.testing.assert_close(block(x), naive(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
@pytest.mark.parametrize("bn_layer", [True, False])
@pytest.mark.parametrize("impl", ["auto", "efficient"])
def test_fresh_block_is_exactly_the_identity(instantiation, bn_layer, impl):
    block = NonLocalBlock(8, instantiation=instantiation, bn_layer=bn_layer, impl=impl)
    x = torch.randn(SHAPES[3])
    assert torch.equal(block(x), x)
    block.train()
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("dimension", [1, 2, 3])
@pytest.mark.parametrize("sub_sample", [True, False])
@pytest.mark.parametrize("bn_layer", [True, False])
def test_seed_state_dict_loads_and_reproduces_output_and_map(dimension, sub_sample, bn_layer):
    seed = randomise(_NonLocalBlockND(8, dimension=dimension, sub_sample=sub_sample, bn_layer=bn_layer))
    ours = NonLocalBlock(8, dimension=dimension, sub_sample=sub_sample, bn_layer=bn_layer)
    assert ours.load_state_dict(seed.state_dict()) is not None  # strict: every key matches
    ours.eval()
    x = torch.randn(SHAPES[dimension])
    z_seed, map_seed = seed(x, return_nl_map=True)
    z_ours, map_ours = ours(x, return_nl_map=True)
    torch.testing.assert_close(z_ours, z_seed, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(map_ours, map_seed, rtol=1e-5, atol=1e-6)
    ours.impl = "efficient"
    torch.testing.assert_close(ours(x), z_seed, rtol=1e-5, atol=1e-6)  # efficient path too


def test_attention_map_shape_and_rows_sum_to_one_for_softmax_forms():
    block = randomise(NonLocalBlock(8, sub_sample=True))
    z, attn = block(torch.randn(2, 8, 4, 6, 8), return_nl_map=True)
    assert attn.shape == (2, 4 * 6 * 8, 4 * 3 * 4)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 192))


def test_scaled_embedded_gaussian_divides_logits_by_sqrt_inner_channels():
    plain = randomise(NonLocalBlock(8, sub_sample=False, impl="naive"))
    scaled = NonLocalBlock(8, sub_sample=False, scale=True, impl="naive")
    scaled.load_state_dict(plain.state_dict())
    x = torch.randn(1, 8, 2, 3, 3)
    theta = plain.theta(x).flatten(2).transpose(1, 2)
    phi = plain.phi(x).flatten(2)
    expected = (theta @ phi / 2.0).softmax(-1)  # C' = 4 -> 1/sqrt(4)
    torch.testing.assert_close(scaled(x, return_nl_map=True)[1], expected)
    scaled.impl = "efficient"
    torch.testing.assert_close(scaled(x), scaled(x, return_nl_map=True)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"instantiation": "softmax"}, "unknown instantiation 'softmax'"),
        ({"dimension": 4}, "dimension must be 1, 2 or 3"),
        ({"impl": "fast"}, "unknown impl 'fast'"),
        ({"scale": True, "instantiation": "dot_product"}, "scale=True only applies"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NonLocalBlock(8, **kwargs)


def test_wrong_input_rank_is_a_clear_error():
    with pytest.raises(ValueError, match=r"expects a 5-D input"):
        NonLocalBlock(8)(torch.randn(2, 8, 4, 4))


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_training_mode_running_stats_and_grads_match_naive(instantiation, momentum):
    """The efficient path's fused W_z + BN updates BN's running statistics exactly as nn.BatchNorm."""
    # float64: train-mode BN divides by the batch std, which would amplify fp32 rounding differences
    naive = randomise(NonLocalBlock(8, instantiation=instantiation, impl="naive")).train().double()
    fast = NonLocalBlock(8, instantiation=instantiation, impl="efficient").train().double()
    fast.load_state_dict(naive.state_dict())
    for block in (naive, fast):
        block.W[1].momentum = momentum
    for step in range(4):
        x = torch.randn(SHAPES[3], dtype=torch.float64) + step
        if step % 2:  # the position-major (channels-last) path keeps the same statistics
            x = x.contiguous(memory_format=torch.channels_last_3d)
        z1, z2 = naive(x), fast(x)
        torch.testing.assert_close(z2, z1, rtol=1e-10, atol=1e-10)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(fast.W[1], name), getattr(naive.W[1], name), msg=name)


def test_sync_batchnorm_keeps_its_own_forward():
    """Under DDP with SyncBN the fused kernel must not bypass the cross-process statistics."""
    block = nn.SyncBatchNorm.convert_sync_batchnorm(NonLocalBlock(8))
    assert isinstance(block.W[1], nn.SyncBatchNorm)
    from nlvideo.models.nonlocal_block import _LeanBNResidual

    assert not _LeanBNResidual.supports(block.W[1])
    assert _LeanBNResidual.supports(NonLocalBlock(8).W[1])


def test_peaked_softmax_leaves_no_subnormal_weights_and_matches_naive():
    """Subnormal attention weights make x86 GEMMs ~100x slower; the efficient path flushes them."""
    from nlvideo.models.nonlocal_block import _probs

    torch.manual_seed(0)
    block = NonLocalBlock(64, instantiation="gaussian", impl="naive")
    nn.init.normal_(block.W[1].weight)
    x = torch.randn(1, 64, 2, 8, 8) * 2  # unscaled x_i^T x_j of 64 channels: a very peaked softmax
    z_naive, attn = block(x, return_nl_map=True)
    tiny = torch.finfo(torch.float32).tiny
    assert ((attn > 0) & (attn < tiny)).any()  # the naive map does hold subnormals here
    theta = x.flatten(2).transpose(1, 2)[0]
    phi = block.phi(x).flatten(2).transpose(1, 2)[0]
    p = _probs(theta, phi, None)
    assert not ((p > 0) & (p < 1e-30)).any()
    torch.testing.assert_close(p, attn[0], rtol=1e-5, atol=1e-30)
    block.impl = "efficient"
    torch.testing.assert_close(block(x), z_naive, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_bn_that_the_fused_kernel_does_not_take_runs_as_its_module(channels_last):
    """A BN the fused kernel cannot replace (here non-affine; SyncBatchNorm under DDP) is called as
    the module, on the (B, C, T, H, W) tensor a BatchNorm3d insists on, in either layout."""
    naive = randomise(NonLocalBlock(8, impl="naive"))
    naive.W[1] = nn.BatchNorm3d(8, affine=False)
    fast = randomise(NonLocalBlock(8, impl="efficient"))
    fast.W[1] = nn.BatchNorm3d(8, affine=False)
    fast.load_state_dict(naive.state_dict())
    naive.train(), fast.train()
    x = torch.randn(SHAPES[3])
    x_fast = x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x
    torch.testing.assert_close(fast(x_fast), naive(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_autocast_path_uses_a_fused_attention_kernel_not_the_map(channels_last):
    """Under autocast (and on CUDA) the block calls F.scaled_dot_product_attention, whose fused
    kernels need unit-stride rows: given transposed views it silently falls back to the math kernel,
    which keeps the whole (N x M) map for backward. No saved tensor may be that large."""
    block = randomise(NonLocalBlock(16, sub_sample=False, impl="efficient")).train()
    x = torch.randn(1, 16, 4, 8, 8, requires_grad=True)
    if channels_last:
        x = x.detach().contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    n = 4 * 8 * 8
    sizes = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", torch.bfloat16):
        z = block(x)
    assert sizes and max(sizes) < n * n, f"a saved tensor of {max(sizes)} elements: the {n}x{n} map"
    z.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
def test_weight_gradients_keep_the_weights_strides(instantiation):
    """DDP copies each gradient into a bucket view with the parameter's strides and warns (and copies
    element by element) when they differ, size-1 kernel dimensions included: a channels-last model's
    1x1x1 weights must get channels-last gradients from the efficient path. (The naive path, which
    impl=auto trains on, gets ATen's conv3d gradients: channels-last from oneDNN's multi-threaded
    kernel, contiguous from the one-thread kernel -- torch's choice, not this block's.)"""
    block = NonLocalBlock(8, instantiation=instantiation, impl="efficient")
    block = to_channels_last_3d(block)
    nn.init.normal_(block.W[1].weight)
    x = torch.randn(SHAPES[3]).contiguous(memory_format=torch.channels_last_3d)
    block(x).square().sum().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.stride() == p.stride(), name


@pytest.mark.parametrize("channels_last", [False, True])
def test_output_can_be_modified_in_place_like_any_layer_output(channels_last):
    """A following in-place ReLU or += must work: the fused BN kernel's output is not handed out as
    a view of a custom Function's output (autograd forbids modifying those in place)."""
    block = randomise(NonLocalBlock(8)).train().double()  # float64: training-mode BN amplifies rounding
    x = torch.randn(SHAPES[3], dtype=torch.float64, requires_grad=True)
    x_in = x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x
    z = block(x_in)
    z += 1
    z.relu_()
    z.sum().backward()
    naive = randomise(NonLocalBlock(8, impl="naive")).train().double()
    x2 = x.detach().clone().requires_grad_()
    torch.relu(naive(x2) + 1).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-10, atol=1e-10)


def test_training_with_one_value_per_channel_fails_like_batchnorm():
    """nn.BatchNorm refuses a batch variance of one value; the fused kernel must not turn it into NaN."""
    for impl in ("naive", "efficient"):
        block = NonLocalBlock(4, sub_sample=False, impl=impl).train()
        with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
            block(torch.randn(1, 4, 1, 1, 1))
        assert torch.isfinite(block.W[1].running_var).all()


def test_eval_mode_backward_uses_the_statistics_of_its_forward():
    """Running statistics updated between forward and backward (another forward in training mode)
    must not change the gradient of an eval-mode forward."""
    block = randomise(NonLocalBlock(8)).double()
    x = torch.randn(SHAPES[3], dtype=torch.float64, requires_grad=True)
    z = block.eval()(x)
    (g_ref,) = torch.autograd.grad(z.sum(), x, retain_graph=True)
    block.train()(torch.randn(SHAPES[3], dtype=torch.float64) * 3 + 1)  # moves running_mean/var
    (g,) = torch.autograd.grad(z.sum(), x)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=0)


# ---- which computation path an input takes (select_path / path_for), and submodule hooks ----

PATH_CASES = {  # the conditions select_path distinguishes, and the path each one gets
    "impl_naive": ("naive", {"impl": "naive"}, False, False),
    "map_requested": ("naive", {"impl": "efficient"}, True, False),
    "cpu_autocast": ("sdpa", {"impl": "efficient"}, False, True),
    "cpu_fp32": ("cpu_chunked", {"impl": "efficient"}, False, False),
    "auto_cpu_autocast": ("naive", {}, False, True),  # measured faster (NAIVE_MEASURED_FASTER)
    "auto_cpu_fp32": ("naive", {}, False, False),
}


@pytest.mark.parametrize("case", PATH_CASES)
def test_path_for_names_the_path_forward_takes_and_why(case, monkeypatch):
    """Each path's entry point is spied on: forward must run exactly the one path_for names."""
    from nlvideo.models import nonlocal_block as nl

    expected, kwargs, return_nl_map, autocast = PATH_CASES[case]
    taken = []

    def spy(owner: object, attr: str, path: str) -> None:
        fn = getattr(owner, attr)

        def wrapper(*args: object, **kwargs: object) -> object:
            taken.append(path)
            return fn(*args, **kwargs)

        monkeypatch.setattr(owner, attr, wrapper)

    spy(NonLocalBlock, "affinity", "naive")
    spy(nl, "_sdpa", "sdpa")
    spy(NonLocalBlock, "_forward_cpu_chunked", "cpu_chunked")
    block = NonLocalBlock(8, **kwargs)
    x = torch.randn(SHAPES[3])
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        choice = block.path_for(x, return_nl_map=return_nl_map)
        assert choice == nl.select_path(block, x, return_nl_map)
        block(x, return_nl_map=return_nl_map)
    assert choice.path == expected and taken == [expected], (choice, taken)
    assert choice.path in nl.PATHS and choice.reason


def test_non_cpu_inputs_take_the_sdpa_path():
    """CUDA in practice; any non-CPU device type takes the same branch (a meta tensor stands in)."""
    block = NonLocalBlock(8)
    choice = block.path_for(torch.empty(SHAPES[3], device="meta"))
    assert choice.path == "sdpa" and "meta" in choice.reason
    assert block.path_for(torch.empty(SHAPES[3], device="meta"), return_nl_map=True).path == "naive"


@pytest.mark.parametrize(
    ("device", "dtype", "needs_grad", "naive"),
    [
        ("cuda", torch.float32, True, True),  # an H200 trained sdpa at 0.85x naive's speed
        ("cuda", torch.bfloat16, True, False),  # 1.14x
        ("cuda", torch.float16, True, False),
        ("cuda", torch.float32, False, False),  # forward only: not measured
        ("cpu", torch.float32, True, True),  # an AMD EPYC trained cpu_chunked at 0.48-1.04x naive's speed
        ("cpu", torch.bfloat16, True, True),  # sdpa (autocast) 0.56-0.88x, cpu_chunked 0.59-0.85x
        ("cpu", torch.float64, True, False),  # not measured
        ("cpu", torch.float16, True, False),
        ("cpu", torch.float32, False, False),  # forward only: sdpa (scripts/bench_inference.py)
        ("meta", torch.float32, True, False),
    ],
)
def test_auto_takes_the_naive_path_only_where_it_was_measured_faster(device, dtype, needs_grad, naive):
    """select_path's rule 3, as the pure function it asks (the CUDA side runs in tests/test_gpu.py)."""
    from nlvideo.models import nonlocal_block as nl

    why = nl.naive_measured_faster(device, dtype, needs_grad)
    assert (why is not None) == naive and (not naive or "measured" in why)


CPU = torch.float32, torch.bfloat16, torch.float64  # weights and input; bf16 autocast runs fp32 ones
CPU_RULE = [  # impl, dtype, channels-last, bf16 autocast, gradient needed -> path (issue 18)
    *[("auto", dt, cl, False, True, "naive") for dt in CPU[:2] for cl in (False, True)],  # measured faster
    *[("auto", torch.float32, cl, True, True, "naive") for cl in (False, True)],
    *[("auto", torch.float64, cl, False, True, "cpu_chunked") for cl in (False, True)],  # not measured
    *[("auto", torch.float32, cl, amp, False, "sdpa") for cl in (False, True) for amp in (False, True)],
    *[("efficient", dt, cl, False, True, "cpu_chunked") for dt in CPU for cl in (False, True)],
    *[("efficient", torch.float32, cl, True, True, "sdpa") for cl in (False, True)],
    *[("efficient", torch.float32, cl, False, False, "sdpa") for cl in (False, True)],
    *[("naive", torch.float32, cl, amp, True, "naive") for cl in (False, True) for amp in (False, True)],
]


@pytest.mark.parametrize(("impl", "dtype", "channels_last", "autocast", "grad", "expected"), CPU_RULE)
def test_cpu_path_by_impl_dtype_layout_autocast_and_grad_mode(
    impl, dtype, channels_last, autocast, grad, expected, monkeypatch
):
    """On CPU, impl=auto trains on the naive path in fp32 and bf16 whatever the memory layout (the
    cpu_chunked and sdpa paths were measured slower in both, scripts/bench_nonlocal.py --interleaved),
    and says so; impl=efficient keeps the memory-lean paths. forward runs the path path_for names."""
    from nlvideo.models import nonlocal_block as nl

    taken = []
    for owner, attr, path in [(NonLocalBlock, "affinity", "naive"), (nl, "_sdpa", "sdpa"),
                              (NonLocalBlock, "_forward_cpu_chunked", "cpu_chunked")]:
        fn = getattr(owner, attr)
        monkeypatch.setattr(owner, attr, lambda *a, fn=fn, path=path, **k: taken.append(path) or fn(*a, **k))
    block = NonLocalBlock(8, impl=impl).to(dtype).train()
    x = torch.randn(SHAPES[3], dtype=dtype)
    if channels_last:
        block, x = to_channels_last_3d(block), x.contiguous(memory_format=torch.channels_last_3d)
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast), torch.set_grad_enabled(grad):
        choice = block.path_for(x)
        z = block(x)
    assert choice.path == expected and taken == [expected], (choice, taken)
    assert z.shape == x.shape and z.dtype == dtype
    if impl == "auto" and expected == "naive":
        assert "measured" in choice.reason and "impl=efficient keeps" in choice.reason, choice.reason


def test_the_compute_dtype_is_autocasts_when_it_is_on():
    from nlvideo.models import nonlocal_block as nl

    x = torch.randn(SHAPES[3])
    assert nl._compute_dtype(x) == torch.float32
    with torch.autocast("cpu", torch.bfloat16):
        assert nl._compute_dtype(x) == torch.bfloat16
        assert nl._compute_dtype(x.to("meta")) == torch.float32  # autocast keeps no state for meta


SUBMODULES = ("theta", "phi", "g", "W")


@pytest.mark.parametrize("instantiation", INSTANTIATIONS)
@pytest.mark.parametrize(
    ("impl", "autocast"), [("naive", False), ("efficient", True), ("efficient", False), ("auto", False)]
)
def test_forward_hooks_on_submodules_run_except_on_the_documented_cpu_chunked_path(
    instantiation, impl, autocast
):
    """The naive and sdpa paths call theta/phi/g/W; the cpu_chunked path reads their weights and, as
    documented, runs none of their hooks. Hooks on the block itself run on every path."""
    block = NonLocalBlock(8, instantiation=instantiation, impl=impl)
    fired = []
    for name in (*SUBMODULES, ""):
        block.get_submodule(name).register_forward_hook(lambda m, a, o, name=name: fired.append(name))
    x = torch.randn(SHAPES[3])
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        path = block.path_for(x).path
        block(x)
    expected = [""] if path == "cpu_chunked" else [*SUBMODULES, ""]
    assert sorted(fired) == sorted(expected), (path, fired)
