"""The non-local block (Wang et al., CVPR 2018, Sec. 3):  z_i = W_z y_i + x_i,

    y_i = 1/C(x) * sum_j f(x_i, x_j) g(x_j),   g(x_j) = W_g x_j.

Four pairwise functions f (``instantiation``):

- ``gaussian``           f = exp(x_i^T x_j),          C = sum_j f  -> softmax over j, no embedding;
- ``embedded_gaussian``  f = exp(theta_i^T phi_j),    C = sum_j f  -> softmax (self-attention);
- ``dot_product``        f = theta_i^T phi_j,         C = N (positions j);
- ``concatenation``      f = ReLU(w_f^T [theta_i; phi_j]), C = N.

Parameter names and module structure follow the seed's ``_NonLocalBlockND`` (``theta``, ``phi``,
``g``, ``W``; with sub-sampling ``phi``/``g`` are ``Sequential(conv, max-pool)``; ``W`` is
``Sequential(conv, BN)`` with a zero-initialised BN, or a zero-initialised conv without BN), so a
state dict of that block loads with plain ``load_state_dict`` and a freshly built block is exactly
the identity, which is what lets it be inserted into a pre-trained network.

Where sub-sampling pools (``pool``): ``"after_embed"`` (the seed's) max-pools phi and g after their
1x1 convs; ``"before_embed"`` (video-nonlocal-net, PySlowFast) max-pools the input once, in
``input_pool``, and embeds the pooled input, which is a different function (a max does not commute
with a 1x1 conv) and 4x cheaper for phi and g. phi/g are then ``Sequential(conv)``, so both modes
have the same state-dict keys.

Three computation paths give the same result (tested to 1e-5 in fp32). Which one an input takes,
and why, is decided in one place, :func:`select_path` (``block.path_for(x)`` asks a block; ``forward``
only dispatches on the answer):

- ``"naive"`` (:meth:`NonLocalBlock.affinity`): build the (N x M) affinity explicitly, as the seed,
  PySlowFast, MMAction2 and PyTorchVideo do. Its memory is O(B N M) for the map plus softmax saved
  for backward. Taken for ``impl="naive"``, whenever the map is returned (``return_nl_map``), and
  by ``impl="auto"`` where a training step was measured faster on it than on the device's fast path
  (:data:`NAIVE_MEASURED_FASTER`: CUDA fp32; CPU fp32 and bf16, either memory layout).
- ``"sdpa"`` (:func:`_sdpa`): the submodules theta/phi/g/W with plain autograd ops, and
  ``F.scaled_dot_product_attention`` on 4-D ``(B, 1, N, d)`` tensors for the softmax forms
  (flash / memory-efficient kernels). Taken on CUDA (any non-CPU device; ``impl="auto"`` trains in
  fp32 on the naive path there, above), under CPU autocast (``impl="auto"`` trains in bf16 on the
  naive path), while traced or exported (``torch.jit.trace``, ``torch.export``, ONNX) and when no
  gradient is needed.
- ``"cpu_chunked"`` (:meth:`NonLocalBlock._forward_cpu_chunked`): CPU training without autocast for
  ``impl="efficient"``, and for ``impl="auto"`` in dtypes it was not measured slower in (float64, say;
  fp32 and bf16 train on the naive path, above). SDPA's CPU flash kernel runs ~10x slower on the
  subnormal weights of a peaked softmax (``_probs``), so this is a flash-attention-style kernel of our
  own (``_ChunkedSoftmaxAttention``: query chunks, scores recomputed in backward) with the 1x1 convs as
  GEMMs on the input's own storage (channel-major for a contiguous input, position-major for a
  channels-last one, so channels-last models pay no layout conversion), a max-pool that saves only
  int32 indices and a fused W_z + BN + residual (``_LeanBNResidual``), which together keep 0.23-0.57x
  the activations the naive path keeps for backward, at 0.5-1x its speed (``scripts/bench_nonlocal.py``).
  The private ATen kernels these use are wrapped in :mod:`nlvideo.models.aten_ops`.

The two fast paths aggregate y in :meth:`NonLocalBlock._aggregate`, each passing its softmax kernel;
there the 1/N dot product is computed as theta (phi^T g) when that association is cheaper, and the
concatenation form splits w_f^T [theta_i; phi_j] = a_i + b_j and never builds the (B, 2C', N, M)
concatenated tensor.

Hooks: only ``"naive"`` calls every submodule. ``"sdpa"`` calls theta, phi, g and W but reads
``concat_project``'s weight directly; ``"cpu_chunked"`` reads the weights of theta, phi, g and W
directly (one GEMM for phi and g, W fused with its BN), so forward hooks and pre-hooks on those
submodules do not run (nor do the pre-hooks of the old-style ``nn.utils.weight_norm`` /
``spectral_norm``; their ``nn.utils.parametrizations`` versions work). Hooks on the block itself
always run. Use ``impl="naive"`` where submodule hooks are needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

from nlvideo.models import aten_ops
from nlvideo.models.pooling import MaxPool3d

Instantiation = Literal["gaussian", "embedded_gaussian", "dot_product", "concatenation"]
INSTANTIATIONS: tuple[str, ...] = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")
IMPLS: tuple[str, ...] = ("auto", "naive", "efficient")
Path = Literal["naive", "sdpa", "cpu_chunked"]
PATHS: tuple[str, ...] = ("naive", "sdpa", "cpu_chunked")
POOLS: tuple[str, ...] = ("after_embed", "before_embed")  # where sub-sampling max-pools (module doc)
_SOFTMAX_FORMS = ("gaussian", "embedded_gaussian")
# softmax(s theta phi^T) g of (B, N, d), (B, M, d), (B, M, C') matrices, s = scale or 1 when None.
SoftmaxAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float | None], torch.Tensor]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
# Sub-sampling pools space only (the seed's and the reference code's 1x2x2 for video). The 3-D pool's
# backward must also run in deterministic mode on CUDA (nlvideo.models.pooling); ATen's 1-D/2-D ones do.
_POOL = {1: lambda: nn.MaxPool1d(2), 2: lambda: nn.MaxPool2d((2, 2)), 3: lambda: MaxPool3d((1, 2, 2))}


class NonLocalBlock(nn.Module):
    """Residual non-local block for 1-D (B, C, L), 2-D (B, C, H, W) or 3-D (B, C, T, H, W) input.

    Forward hooks on the submodules ``theta``/``phi``/``g``/``W`` do not run on the ``"cpu_chunked"``
    path (CPU training without autocast, ``impl="efficient"``, or ``"auto"`` in a dtype other than
    fp32/bf16), which reads their weights directly: use ``impl="naive"`` where they are needed (see
    the module docstring).

    Args:
        in_channels: C of the input (and output).
        inter_channels: C' of theta/phi/g; ``in_channels // 2`` (at least 1) when None.
        dimension: 1, 2 or 3 (the input's number of non-batch, non-channel axes).
        sub_sample: max-pool phi and g (1x2x2 in 3-D), cutting the pairwise cost by 4.
        bn_layer: W_z followed by a BN with zero-initialised scale; otherwise W_z itself is zero.
        instantiation: the pairwise function, one of :data:`INSTANTIATIONS`.
        scale: multiply theta^T phi by C'^-1/2 (embedded gaussian; video-nonlocal-net does, the
            paper and the seed do not).
        impl: ``naive`` always builds the attention map; ``efficient`` takes the fast path for the
            input's device; ``auto`` too, except where naive was measured faster
            (:data:`NAIVE_MEASURED_FASTER`). :meth:`path_for` says which path an input takes.
        init_std: std of the normal init of the new 1x1 convs (0.01 in the reference code).
        pool: with ``sub_sample``, max-pool phi and g after their convs (``"after_embed"``, the
            seed's) or the input before them (``"before_embed"``, as the published video-nonlocal-net
            and PySlowFast models were trained), one of :data:`POOLS`.
    """

    def __init__(
        self,
        in_channels: int,
        inter_channels: int | None = None,
        dimension: int = 3,
        sub_sample: bool = True,
        bn_layer: bool = True,
        instantiation: Instantiation = "embedded_gaussian",
        scale: bool = False,
        impl: str = "auto",
        init_std: float = 0.01,
        pool: str = "after_embed",
    ) -> None:
        super().__init__()
        if dimension not in _CONV:
            raise ValueError(f"NonLocalBlock: dimension must be 1, 2 or 3, got {dimension!r}")
        if instantiation not in INSTANTIATIONS:
            raise ValueError(
                f"NonLocalBlock: unknown instantiation {instantiation!r}; "
                f"allowed: {', '.join(INSTANTIATIONS)}"
            )
        if impl not in IMPLS:
            raise ValueError(f"NonLocalBlock: unknown impl {impl!r}; allowed: {', '.join(IMPLS)}")
        if scale and instantiation != "embedded_gaussian":
            raise ValueError("NonLocalBlock: scale=True only applies to instantiation='embedded_gaussian'")
        if pool not in POOLS:
            raise ValueError(f"NonLocalBlock: unknown pool {pool!r}; allowed: {', '.join(POOLS)}")
        self.in_channels = in_channels
        self.inter_channels = inter_channels or max(in_channels // 2, 1)
        self.dimension = dimension
        self.sub_sample = sub_sample
        self.instantiation = instantiation
        self.scale = scale
        self.impl = impl
        self.pool = pool
        conv, ci = _CONV[dimension], self.inter_channels
        pool_first = sub_sample and pool == "before_embed"
        # before_embed: phi and g embed the pooled input; their own Sequential then holds the conv
        # alone, so the state-dict keys (phi.0.weight) are those of after_embed.
        self.input_pool = _POOL[dimension]() if pool_first else None

        def embed() -> nn.Module:
            return conv(in_channels, ci, kernel_size=1)

        def maybe_pool(module: nn.Module) -> nn.Module:
            if not sub_sample:
                return module
            return nn.Sequential(module) if pool_first else nn.Sequential(module, _POOL[dimension]())

        self.g = maybe_pool(embed())
        if instantiation == "gaussian":
            # No embedding: theta and phi are the input itself (phi optionally pooled).
            self.theta = nn.Identity()
            self.phi = _POOL[dimension]() if sub_sample and not pool_first else nn.Identity()
        else:
            self.theta = embed()
            self.phi = maybe_pool(embed())
        if instantiation == "concatenation":
            # w_f: a 1x1 projection of [theta_i; phi_j] (2C' channels) to one scalar, then ReLU.
            self.concat_project = nn.Sequential(nn.Conv2d(2 * ci, 1, kernel_size=1, bias=False), nn.ReLU())

        if bn_layer:
            self.W = nn.Sequential(conv(ci, in_channels, kernel_size=1), _BN[dimension](in_channels))
        else:
            self.W = conv(ci, in_channels, kernel_size=1)
        self._init_weights(init_std)

    def _init_weights(self, std: float) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        last = self.W[1] if isinstance(self.W, nn.Sequential) else self.W
        nn.init.zeros_(last.weight)  # zero BN scale (or zero conv): the fresh block is the identity
        nn.init.zeros_(last.bias)

    def extra_repr(self) -> str:
        return (
            f"instantiation={self.instantiation}, dimension={self.dimension}, "
            f"sub_sample={self.sub_sample}, pool={self.pool}, impl={self.impl}"
        )

    def _embeddings(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """theta (B, N, d), phi (B, M, d), g (B, M, C') as position-major matrices (views: contiguous
        ones when the convolutions return channels-last tensors)."""
        xp = x if self.input_pool is None else self.input_pool(x)
        return tuple(t.flatten(2).transpose(1, 2) for t in (self.theta(x), self.phi(xp), self.g(xp)))

    def _concat_terms(self, theta: torch.Tensor, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """w_f^T [theta_i; phi_j] = a_i + b_j: the two halves of w_f applied separately."""
        w = self.concat_project[0].weight.flatten()[:, None]  # (2C', 1)
        ci = self.inter_channels
        # Matrix-matrix, not matrix @ (2C',) vector: ONNX Runtime 1.32's graph optimisations compute a
        # transposed (B, N, C') @ 1-D weight wrongly (tests/test_export.py catches it).
        return (theta @ w[:ci]).squeeze(2), (phi @ w[ci:]).squeeze(2)  # (B, N), (B, M)

    def affinity(self, theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """The normalised pairwise map f(x_i, x_j) / C(x), shape (B, N, M): the naive path."""
        m = phi.shape[1]
        if self.instantiation == "concatenation":
            b, n, ci = theta.shape
            pairs = torch.cat(  # (B, 2C', N, M): what the paper's formula literally builds
                (
                    theta.transpose(1, 2)[..., None].expand(b, ci, n, m),
                    phi.transpose(1, 2)[:, :, None, :].expand(b, ci, n, m),
                ),
                dim=1,
            )
            return self.concat_project(pairs).squeeze(1) / m
        f = theta @ phi.transpose(1, 2)
        if self.instantiation == "dot_product":
            return f / m
        if self.scale:
            f = f * self.inter_channels**-0.5
        return f.softmax(dim=-1)

    def _aggregate(
        self, theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor, softmax_attention: SoftmaxAttention
    ) -> torch.Tensor:
        """y = 1/C(x) sum_j f(x_i, x_j) g_j as a (B, N, C') matrix, for both fast paths.

        The paths differ only in the softmax forms' kernel, passed as ``softmax_attention``; the
        other forms avoid what the naive path builds: the dot product is associated as
        theta (phi^T g) when that is cheaper, and the concatenation form adds a_i + b_j instead of
        projecting the (B, 2C', N, M) pairs.
        """
        if self.instantiation in _SOFTMAX_FORMS:
            return softmax_attention(theta, phi, g, self.inter_channels**-0.5 if self.scale else None)
        m = phi.shape[1]
        if self.instantiation == "dot_product":
            n, ci = theta.shape[1], self.inter_channels
            if (n + m) * ci < 2 * n * m:  # theta (phi^T g): (N+M) C'^2 MACs vs 2 N M C'
                return theta @ (phi.transpose(1, 2) @ g) / m
            return (theta @ phi.transpose(1, 2)) @ g / m
        a, b = self._concat_terms(theta, phi)  # (B, N), (B, M)
        return F.relu(a[:, :, None] + b[:, None, :]) @ g / m

    # ---- the "cpu_chunked" path: (B, N, K) matrices whose storage follows the input's memory format ----
    #
    # Every tensor below is a logical position-major matrix (B, N, K). For a contiguous (channel-major)
    # input it is a transposed view of a (B, K, N) storage; for a channels-last input, which is
    # (B, T, H, W, C) in memory, it is contiguous. The GEMMs read either without copies (BLAS transpose
    # flags), so neither layout pays a conversion on the way in or out of the block.

    def _forward_cpu_chunked(self, x: torch.Tensor) -> torch.Tensor:
        """The ``"cpu_chunked"`` path: theta/phi/g/W as GEMMs on their weights (their hooks do not run)
        and custom autograd Functions that save about half the naive path's activations."""
        spatial = tuple(x.shape[2:])
        pm = _is_channels_last(x)
        if not pm:
            x = x.contiguous()
        xm = x.flatten(2).transpose(1, 2)  # (B, N, C): a view in both layouts
        ci = self.inter_channels
        embedded = self.instantiation != "gaussian"
        g_conv = self.g[0] if self.sub_sample else self.g

        def max_pool(t: torch.Tensor) -> torch.Tensor:
            return _MaxPoolLean.apply(t, spatial, self._pool_module(), pm)

        pool_first = self.input_pool is not None
        src = max_pool(xm) if pool_first else xm  # what phi and g embed

        def post(t: torch.Tensor) -> torch.Tensor:  # after_embed's pool of phi and g
            return max_pool(t) if self.sub_sample and not pool_first else t

        if embedded:
            phi_conv = self.phi[0] if self.sub_sample else self.phi
            theta = _linear(xm, *_conv_weight(self.theta), pm)
            phig = post(_linear(src, *_cat_weights(phi_conv, g_conv), pm))  # phi and g: one GEMM, one pool
            phi, g = phig[..., :ci], phig[..., ci:]
        else:  # gaussian: theta = x, phi = pooled x
            theta, phi = xm, post(src)
            g = post(_linear(src, *_conv_weight(g_conv), pm))
        y = self._aggregate(theta, phi, g, lambda q, k, v, s: _ChunkedSoftmaxAttention.apply(q, k, v, s, pm))
        return self._output(y, xm, pm, spatial)

    def _pool_module(self) -> nn.Module:
        if self.input_pool is not None:
            return self.input_pool
        return self.phi[1] if isinstance(self.phi, nn.Sequential) else self.phi

    def _output(self, y: torch.Tensor, xm: torch.Tensor, pm: bool, spatial: tuple[int, ...]) -> torch.Tensor:
        """z = BN(W_z y) + x, shaped and laid out as x; the BN form recomputes W_z y in backward."""
        if isinstance(self.W, nn.Sequential):
            conv, bn = self.W
            if _LeanBNResidual.supports(bn):
                w, bias = _conv_weight(conv)
                z = _from_bn_view(_LeanBNResidual.apply(y, w, bias, bn.weight, bn.bias, xm, bn, pm))
            else:  # e.g. SyncBatchNorm: the module itself, on the (B, C, *spatial) view it expects
                wy = _linear(y, *_conv_weight(conv), pm)
                z = _from_bn_view(bn(wy.transpose(1, 2).unflatten(2, spatial))) + xm
        else:
            z = _linear(y, *_conv_weight(self.W), pm) + xm
        return z.transpose(1, 2).unflatten(2, spatial)

    def path_for(self, x: torch.Tensor, return_nl_map: bool = False) -> PathChoice:
        """The computation path ``self(x, return_nl_map)`` takes, and why: :func:`select_path`."""
        return select_path(self, x, return_nl_map)

    def forward(
        self, x: torch.Tensor, return_nl_map: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Return ``z`` (same shape as ``x``), or ``(z, map)`` with ``map`` (B, N, M) when asked.

        The computation path is :func:`select_path`'s (:meth:`path_for`).
        """
        if x.dim() != self.dimension + 2:
            raise ValueError(
                f"NonLocalBlock(dimension={self.dimension}) expects a {self.dimension + 2}-D input "
                f"(B, C, ...), got shape {tuple(x.shape)}"
            )
        path = select_path(self, x, return_nl_map).path
        if path == "cpu_chunked":
            return self._forward_cpu_chunked(x)
        theta, phi, g = self._embeddings(x)
        if path == "naive":
            nl_map = self.affinity(theta, phi)
            y = nl_map @ g
        else:
            nl_map, y = None, self._aggregate(theta, phi, g, _sdpa)
        y = y.transpose(1, 2).reshape(x.shape[0], self.inter_channels, *x.shape[2:])
        z = self.W(y) + x
        return (z, nl_map) if return_nl_map else z


# Where impl="auto" takes the naive path in training although the device has a fast one: (device type,
# compute dtype) -> the measurement that says naive is faster there (issue 18). impl="efficient" keeps
# the fast path, for its memory.
# CUDA, on an H200 (torch 2.11): one block at res3 of 32x2 (B=8, C=512, 8x28x28), forward + backward,
# ran at 0.85x naive's speed on the sdpa path in fp32 (SDPA has no flash kernel for fp32) and at 1.14x
# in bf16, so only fp32 is listed; the sdpa path used 0.56x naive's memory there.
# CPU, on an AMD EPYC (AVX-512, no AMX; 2 threads, torch 2.13), naive and ours taking turns in one
# process: `python scripts/bench_nonlocal.py --interleaved --rounds 9` (i3d_nl5's res3/res4 blocks of
# 8x8 and 32x2 clips, B=2) and `--model-step i3d_nl5 --frames 8 32` (docs/benchmarks.md, issue 18).
# Per block, cpu_chunked trained at 0.71-0.81x naive's speed in the contiguous layout (a tie,
# 0.96-1.04x, at res3 of 32x2) and 0.48-0.81x channels-last; bf16 weights 0.59-0.85x, the sdpa path
# under bf16 autocast 0.56-0.88x. Whole i3d_nl5 steps: 8x224² at 0.80x channels-last (2.24 s vs
# 1.83 s; the report: 2.15 s vs 1.75 s) and 0.88x contiguous, 32x224² a tie (1.03x, 1.00x).
# Naive is as fast or faster in both layouts, so the layout is not part of the rule; the memory
# (cpu_chunked keeps 0.23-0.57x naive's activations) is impl="efficient"'s. The issue's "~1.2x faster
# in the contiguous layout" matches bench_nonlocal's per-process table, whose MALLOC_MMAP_THRESHOLD_
# makes every large tensor a fresh mapping, which slows naive more: here res3 of 8x8 went from 0.82x
# to 1.01x with it.
# Float64 (tests) and float16 were not measured and keep the cpu_chunked path.
NAIVE_MEASURED_FASTER: dict[tuple[str, torch.dtype], str] = {
    ("cuda", torch.float32): "measured on an H200, the sdpa path trained at 0.85x naive's speed in fp32 "
    "(res3 of 32x2, B=8); impl=efficient keeps sdpa's memory saving",
    ("cpu", torch.float32): "measured on an AMD EPYC, the cpu_chunked path trained at 0.71-1.04x naive's "
    "speed in the contiguous layout and 0.48-0.81x in channels-last (i3d_nl5's blocks), i3d_nl5 at "
    "0.80x (8x224², channels-last); impl=efficient keeps cpu_chunked's memory saving",
    ("cpu", torch.bfloat16): "measured on an AMD EPYC, the sdpa path (autocast) trained at 0.56-0.88x "
    "naive's speed and cpu_chunked (bf16 weights) at 0.59-0.85x, in both layouts; impl=efficient keeps "
    "their memory saving",
}


class PathChoice(NamedTuple):
    """A computation path of :class:`NonLocalBlock` (one of :data:`PATHS`) and why it is taken."""

    path: Path
    reason: str


def select_path(block: NonLocalBlock, x: torch.Tensor, return_nl_map: bool = False) -> PathChoice:
    """The computation path ``block(x, return_nl_map)`` takes, and why: the first rule that applies.

    1. ``"naive"`` for ``impl="naive"``, and whenever the map is returned: only it builds the map.
    2. ``"sdpa"`` while tracing or exporting (``torch.jit.trace``, ``torch.export``, and ONNX export,
       which runs one of the two): the ``"cpu_chunked"`` path's custom autograd Functions, Python
       loops and ``out=`` kernels are not captured as a graph (``torch.jit.trace`` fails; the graph
       ``torch.export`` records cannot be run), while the sdpa path is plain ATen ops. Plain
       ``torch.compile`` is not tracing in this sense: it handles the custom Functions.
    3. ``"naive"`` for ``impl="auto"`` in training where :func:`naive_measured_faster` says so: CUDA
       fp32 (the sdpa path was measured at 0.85x naive's speed) and CPU fp32 and bf16, in either
       memory layout (the cpu_chunked and sdpa paths at 0.48-1.04x; :data:`NAIVE_MEASURED_FASTER`).
    4. ``"sdpa"`` for an input on CUDA (or any other non-CPU device), where
       ``F.scaled_dot_product_attention`` has flash / memory-efficient kernels, and under CPU
       autocast: the CPU path's custom Functions are written and tested for one dtype throughout,
       not for autocast's per-op casts, which plain autograd ops and SDPA follow.
    5. ``"sdpa"`` when no gradient is needed (grad mode off, as in evaluation, or neither the input
       nor a parameter of the block requires one): what the ``"cpu_chunked"`` path saves is
       activations for backward; without one it is not consistently faster than SDPA
       (``scripts/bench_inference.py``, docs/inference.md).
    6. ``"cpu_chunked"`` otherwise (CPU training, no autocast: ``impl="efficient"``, or ``"auto"`` in
       a dtype rule 3 does not list, such as float64): see the module docstring for why not SDPA.
    """
    if block.impl == "naive":
        return PathChoice("naive", "impl='naive' always builds the attention map")
    if return_nl_map:
        return PathChoice("naive", "return_nl_map=True: only the naive path builds the attention map")
    if torch.jit.is_tracing() or torch.compiler.is_exporting():
        return PathChoice("sdpa", "tracing/exporting: plain ATen ops, no custom autograd Functions")
    needs_grad, dtype = _needs_grad(block, x), _compute_dtype(x)
    if block.impl == "auto" and (why := naive_measured_faster(x.device.type, dtype, needs_grad)):
        return PathChoice("naive", f"impl='auto', {x.device.type} {dtype} training: {why}")
    if x.device.type != "cpu":
        return PathChoice("sdpa", f"{x.device.type} input: scaled_dot_product_attention's fused kernels")
    if torch.is_autocast_enabled("cpu"):
        return PathChoice("sdpa", "CPU autocast is enabled: the CPU chunked kernels are for one dtype")
    if not needs_grad:
        return PathChoice("sdpa", "no gradient needed: the CPU chunked path only saves memory for backward")
    return PathChoice(
        "cpu_chunked",
        f"CPU training without autocast (impl={block.impl!r}, {dtype}): chunked attention, lean max-pool "
        "and fused W_z + BN keep 0.23-0.57x the naive path's activations; SDPA's CPU kernel is slow on "
        "the subnormal weights of a peaked softmax",
    )


def naive_measured_faster(device_type: str, compute_dtype: torch.dtype, needs_grad: bool) -> str | None:
    """Why ``impl="auto"`` takes the naive path for a block on ``device_type`` computing in
    ``compute_dtype`` (autocast's dtype when it is on), or None: a training step measured faster on it
    (:data:`NAIVE_MEASURED_FASTER`). Forward alone was not measured there, so it keeps the fast path."""
    return NAIVE_MEASURED_FASTER.get((device_type, compute_dtype)) if needs_grad else None


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the block's matmuls run in: autocast's for the input's device when it is on, else x's."""
    device = x.device.type
    if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):  # others: autocast has no state
        return torch.get_autocast_dtype(device)
    return x.dtype


def _needs_grad(block: NonLocalBlock, x: torch.Tensor) -> bool:
    """Whether autograd will record ``block(x)``: grad mode on and the input or a parameter requires it."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in block.parameters()))


def _sdpa(theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor, scale: float | None) -> torch.Tensor:
    """The ``"sdpa"`` path's :data:`SoftmaxAttention`: F.scaled_dot_product_attention on (B, 1, N, d)."""
    # The fused (flash / memory-efficient) kernels need a unit stride in the last dimension; a
    # transposed view silently sends SDPA to its math kernel, which builds the whole map.
    q, k, v = (t.contiguous()[:, None] for t in (theta, phi, g))
    return F.scaled_dot_product_attention(q, k, v, scale=1.0 if scale is None else scale)[:, 0]


def _is_channels_last(x: torch.Tensor) -> bool:
    """True for a 4-D/5-D channels-last input that is not also plain contiguous (C == 1 or N == 1)."""
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    return fmt is not None and not x.is_contiguous() and x.is_contiguous(memory_format=fmt)


def _conv_weight(conv: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A 1x1 conv's weight as the (C_out, C_in) matrix it is, and its bias.

    ``as_strided`` rather than ``flatten``: its gradient keeps the weight's own strides, also in the
    size-1 kernel dimensions, which DDP compares with its bucket views (a channels-last weight would
    otherwise get a contiguous gradient and a "grad strides do not match" warning and copy).
    """
    w = conv.weight
    return w.as_strided(w.shape[:2], w.stride()[:2]), conv.bias


def _cat_weights(*convs: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Several 1x1 convs of the same input as one (sum C_out, C_in) matrix: one GEMM instead of several."""
    ws, bs = zip(*(_conv_weight(c) for c in convs), strict=True)
    bias = torch.cat(bs) if all(b is not None for b in bs) else None
    return torch.cat(ws), bias


def _new(b: int, n: int, k: int, like: torch.Tensor, pm: bool) -> torch.Tensor:
    """An uninitialised (B, N, K) matrix stored position-major (pm) or as a (B, K, N) transposed view."""
    return like.new_empty(b, n, k) if pm else like.new_empty(b, k, n).transpose(1, 2)


def _linear(t: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, pm: bool) -> torch.Tensor:
    """t @ w^T + bias for a (B, N, K) matrix t, stored position-major (pm) or channel-major: one GEMM."""
    b, n, _ = t.shape
    w = w.to(t.dtype)
    bias = None if bias is None else bias.to(t.dtype)
    if pm:  # (B*N, K) @ (K, K_out): a view of the channels-last storage
        flat = t.reshape(b * n, t.shape[2])
        out = torch.mm(flat, w.t()) if bias is None else torch.addmm(bias, flat, w.t())
        return out.view(b, n, w.shape[0])
    w, tk = w.expand(b, *w.shape), t.transpose(1, 2)  # (B, K_out, K) @ (B, K, N): no copy of t
    out = torch.bmm(w, tk) if bias is None else torch.baddbmm(bias[:, None], w, tk)
    return out.transpose(1, 2)


def _chunk_rows(n: int, m: int, itemsize: int) -> int:
    """Queries per chunk: an (n_c x M) score block of about 4 MiB (fits the L3 cache)."""
    return max(32, min(n, (1 << 22) // max(1, m * itemsize)))


# Attention weights below this are set to 0. A peaked softmax (the gaussian form's unscaled x_i^T x_j,
# or a trained block) otherwise leaves subnormal floats in the map, and x86 cores take far longer for
# GEMMs that read them (measured: 7 s instead of 0.23 s for the res3 gaussian block's step). Dropping
# weights below 1e-30 changes y by at most M * 1e-30 relative, far below fp32 rounding.
_TINY_WEIGHT = 1e-30


def _mm_into(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """``out[:] = a @ b``: with ``out=`` in eager mode (no temporary); under ``torch.compile``, whose
    tracer cannot write ``out=`` into a non-contiguous view (a graph break per call), as a copy."""
    if torch.compiler.is_compiling():
        out.copy_(torch.mm(a, b))
    else:
        torch.mm(a, b, out=out)


def _probs(theta: torch.Tensor, phi: torch.Tensor, scale: float | None) -> torch.Tensor:
    """softmax(s theta phi^T) of one query chunk, weights below :data:`_TINY_WEIGHT` set to 0."""
    s = torch.mm(theta, phi.t())
    if scale is not None:
        s.mul_(scale)
    return F.threshold_(torch.softmax(s, dim=1), _TINY_WEIGHT, 0.0)


class _ChunkedSoftmaxAttention(torch.autograd.Function):
    """y = softmax(s theta phi^T) g for (B, N, d), (B, M, d), (B, M, C') matrices; y is (B, N, C').

    Flash-attention style on CPU: the queries are processed in chunks so the (N x M) map never exists
    whole; backward recomputes each chunk's scores and softmax instead of saving them, so the saved
    activations are theta, phi, g (O(N d)) instead of the O(N M) map. Each chunk's arithmetic is the
    naive path's (mm, softmax, mm; softmax backward), hence equal to it to rounding. Outputs and
    gradients are stored position-major when ``pm``, else channel-major, like the inputs.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        theta: torch.Tensor,
        phi: torch.Tensor,
        g: torch.Tensor,
        scale: float | None,
        pm: bool,
    ) -> torch.Tensor:
        b, n, _ = theta.shape
        y = _new(b, n, g.shape[2], g, pm)
        rows = _chunk_rows(n, phi.shape[1], theta.element_size())
        for i in range(b):
            for r in range(0, n, rows):
                p = _probs(theta[i, r : r + rows], phi[i], scale)
                _mm_into(p, g[i], y[i, r : r + rows])
        ctx.save_for_backward(theta, phi, g)
        ctx.scale, ctx.pm = scale, pm
        return y

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, dy: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None, None]:
        theta, phi, g = ctx.saved_tensors
        scale = ctx.scale
        b, n, _ = theta.shape
        pm = ctx.pm
        dtheta = _new(b, n, theta.shape[2], theta, pm)
        dphi = _new(b, phi.shape[1], phi.shape[2], phi, pm).zero_()
        dg = _new(b, g.shape[1], g.shape[2], g, pm).zero_()
        rows = _chunk_rows(n, phi.shape[1], theta.element_size())
        for i in range(b):
            for r in range(0, n, rows):
                th = theta[i, r : r + rows]
                dyc = dy[i, r : r + rows]
                p = _probs(th, phi[i], scale)
                dp = torch.mm(dyc, g[i].t())  # (n_c, M)
                dg[i].addmm_(p.t(), dyc)
                ds = aten_ops.softmax_backward(dp, p, 1)
                if scale is not None:
                    ds.mul_(scale)
                _mm_into(ds, phi[i], dtheta[i, r : r + rows])
                dphi[i].addmm_(ds.t(), th)
        return dtheta, dphi, dg, None, None


class _MaxPoolLean(torch.autograd.Function):
    """The block's max-pool of a (B, N, K) matrix over its spatial shape, saving int32 indices only.

    The matrix is pooled as the (B, K, *spatial) tensor it is a view of (channels-last when stored
    position-major), so no layout conversion happens; autograd's max-pool would also save the input.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx, t: torch.Tensor, spatial: tuple[int, ...], pool: nn.Module, pm: bool
    ) -> torch.Tensor:
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(spatial)]
        t5 = t.transpose(1, 2).unflatten(2, spatial)
        out, idx = fn(t5, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode, True)
        ctx.save_for_backward(idx.flatten(2).transpose(1, 2).to(torch.int32))
        ctx.pm, ctx.n = pm, t.shape[1]
        return out.flatten(2).transpose(1, 2)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dout: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (idx,) = ctx.saved_tensors
        b, _, k = idx.shape
        dt = _new(b, ctx.n, k, dout, ctx.pm).zero_()
        dt.scatter_(1, idx.long(), dout)  # pooling windows do not overlap
        return dt, None, None, None


class _LeanBNResidual(torch.autograd.Function):
    """z = BN(y W^T + b) + x for (B, N, C') y and (B, N, C) x, BN being a BatchNorm module.

    Saves y (already saved by the attention) and the BN statistics, not W y (C/C' = 2 times larger):
    backward recomputes it with one GEMM. The residual is added in place to the BN output. Statistics,
    running-stat updates and the backward are ATen's own batch-norm kernels. ``z`` is returned as the
    (B, C, N[, 1]) tensor ATen's batch norm produced (see :func:`_bn_view`), not as a view of it, so
    that the caller's reshaping views of it stay modifiable in place.
    """

    @staticmethod
    def supports(bn: nn.Module) -> bool:
        # Exactly the plain BN classes: a SyncBatchNorm (trainer.sync_bn under DDP) must keep its own
        # forward, which all-reduces the statistics across processes.
        plain = type(bn) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
        return plain and bn.affine and (bn.track_running_stats or bn.training)

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        y: torch.Tensor,
        w: torch.Tensor,
        bias: torch.Tensor | None,
        gamma: torch.Tensor,
        beta: torch.Tensor,
        xm: torch.Tensor,
        bn: nn.Module,
        pm: bool,
    ) -> torch.Tensor:
        wy = _linear(y, w, bias, pm)
        training = bn.training or bn.running_mean is None
        momentum = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:
                momentum = 1.0 / float(bn.num_batches_tracked)
        running = (bn.running_mean, bn.running_var) if bn.track_running_stats else (None, None)
        if training and wy.shape[0] * wy.shape[1] == 1:
            raise ValueError(  # nn.BatchNorm's check: the batch variance of one value is undefined
                f"Expected more than 1 value per channel when training, got input size {tuple(wy.shape)}"
            )
        z, mean, invstd = aten_ops.batch_norm_forward(  # updates the running statistics as nn.BatchNorm
            _bn_view(wy, pm), gamma, beta, *running, training, momentum, bn.eps
        )
        del wy
        z.add_(_bn_view(xm, pm))
        # Eval mode normalises with the running statistics: keep them as this forward used them, in
        # case something updates them before backward (the batch statistics are returned fresh).
        stats = (mean, invstd) if training else (bn.running_mean.clone(), bn.running_var.clone())
        ctx.save_for_backward(y, w, bias, gamma, *stats)
        ctx.training, ctx.eps, ctx.pm = training, bn.eps, pm
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dz: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        y, w, bias, gamma, *stats = ctx.saved_tensors
        pm = ctx.pm
        wy = _linear(y, w, bias, pm)
        rm, rv, sm, si = (None, None, *stats) if ctx.training else (*stats, None, None)
        dz = dz.contiguous(memory_format=torch.channels_last if pm else torch.contiguous_format)
        dwy, dgamma, dbeta = aten_ops.batch_norm_backward(
            dz, _bn_view(wy, pm), gamma, rm, rv, sm, si, ctx.training, ctx.eps
        )
        del wy
        dwy = _from_bn_view(dwy)
        dy = _linear(dwy, w.t(), None, pm)
        if pm:
            dw = torch.mm(dwy.reshape(-1, dwy.shape[2]).t(), y.reshape(-1, y.shape[2]))
        else:
            dw = torch.bmm(dwy.transpose(1, 2), y).sum(0)
        dbias = dwy.sum((0, 1)) if bias is not None else None
        return dy, dw, dbias, dgamma, dbeta, _from_bn_view(dz), None, None


def _bn_view(t: torch.Tensor, pm: bool) -> torch.Tensor:
    """A (B, N, C) matrix as the (B, C, ...) tensor ATen's batch norm takes, without a copy.

    Position-major storage becomes a channels-last (B, C, N, 1) view (ATen has fast channels-last
    batch-norm kernels for 4-D/5-D tensors only); channel-major storage a contiguous (B, C, N).
    """
    return t.transpose(1, 2)[..., None] if pm else t.transpose(1, 2)


def _from_bn_view(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(2).transpose(1, 2)
