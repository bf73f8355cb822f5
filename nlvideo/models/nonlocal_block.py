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

Two computation paths give the same result (tested to 1e-5 in fp32):

- ``naive``: build the (N x M) affinity explicitly, as the seed, PySlowFast, MMAction2 and
  PyTorchVideo do. Its memory is O(B N M) for the map plus softmax saved for backward.
- ``efficient``: the softmax forms go through ``F.scaled_dot_product_attention`` on 4-D
  ``(B, 1, N, d)`` tensors (3-D inputs fall back to a slow kernel on CPU), which never stores the
  map; the 1/N dot product is computed as theta (phi^T g) when that association is cheaper; the
  concatenation form splits w_f^T [theta_i; phi_j] = a_i + b_j and never builds the
  (B, 2C', N, M) concatenated tensor.

``impl="auto"`` uses the efficient path except when the attention map is requested.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Instantiation = Literal["gaussian", "embedded_gaussian", "dot_product", "concatenation"]
INSTANTIATIONS: tuple[str, ...] = ("gaussian", "embedded_gaussian", "dot_product", "concatenation")
IMPLS: tuple[str, ...] = ("auto", "naive", "efficient")

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
# Sub-sampling pools space only (the seed's and the reference code's 1x2x2 for video).
_POOL = {1: lambda: nn.MaxPool1d(2), 2: lambda: nn.MaxPool2d((2, 2)), 3: lambda: nn.MaxPool3d((1, 2, 2))}


class NonLocalBlock(nn.Module):
    """Residual non-local block for 1-D (B, C, L), 2-D (B, C, H, W) or 3-D (B, C, T, H, W) input.

    Args:
        in_channels: C of the input (and output).
        inter_channels: C' of theta/phi/g; ``in_channels // 2`` (at least 1) when None.
        dimension: 1, 2 or 3 (the input's number of non-batch, non-channel axes).
        sub_sample: max-pool phi and g (1x2x2 in 3-D), cutting the pairwise cost by 4.
        bn_layer: W_z followed by a BN with zero-initialised scale; otherwise W_z itself is zero.
        instantiation: the pairwise function, one of :data:`INSTANTIATIONS`.
        scale: multiply theta^T phi by C'^-1/2 (embedded gaussian; video-nonlocal-net does, the
            paper and the seed do not).
        impl: ``auto`` | ``naive`` | ``efficient``.
        init_std: std of the normal init of the new 1x1 convs (0.01 in the reference code).
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
        self.in_channels = in_channels
        self.inter_channels = inter_channels or max(in_channels // 2, 1)
        self.dimension = dimension
        self.sub_sample = sub_sample
        self.instantiation = instantiation
        self.scale = scale
        self.impl = impl
        conv, ci = _CONV[dimension], self.inter_channels

        def embed() -> nn.Module:
            return conv(in_channels, ci, kernel_size=1)

        def maybe_pool(module: nn.Module) -> nn.Module:
            return nn.Sequential(module, _POOL[dimension]()) if sub_sample else module

        self.g = maybe_pool(embed())
        if instantiation == "gaussian":
            # No embedding: theta and phi are the input itself (phi optionally pooled).
            self.theta = nn.Identity()
            self.phi = _POOL[dimension]() if sub_sample else nn.Identity()
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
            f"sub_sample={self.sub_sample}, impl={self.impl}"
        )

    def _embeddings(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """theta (B, N, d), phi (B, M, d), g (B, M, C') as position-major matrices."""
        b = x.shape[0]
        theta = self.theta(x).reshape(b, -1, x[0, 0].numel()).transpose(1, 2)
        phi_x = self.phi(x)
        phi = phi_x.reshape(b, phi_x.shape[1], -1).transpose(1, 2)
        g = self.g(x).reshape(b, self.inter_channels, -1).transpose(1, 2)
        return theta, phi, g

    def _concat_terms(self, theta: torch.Tensor, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """w_f^T [theta_i; phi_j] = a_i + b_j: the two halves of w_f applied separately."""
        w = self.concat_project[0].weight.flatten()  # (2C',)
        ci = self.inter_channels
        return theta @ w[:ci], phi @ w[ci:]  # (B, N), (B, M)

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

    def _aggregate_efficient(self, theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        n, m = theta.shape[1], phi.shape[1]
        if self.instantiation in ("gaussian", "embedded_gaussian"):
            s = self.inter_channels**-0.5 if self.scale else 1.0
            y = F.scaled_dot_product_attention(theta[:, None], phi[:, None], g[:, None], scale=s)
            return y[:, 0]
        if self.instantiation == "dot_product":
            ci = self.inter_channels
            if (n + m) * ci < 2 * n * m:  # theta (phi^T g): (N+M) C'^2 MACs vs 2 N M C'
                return theta @ (phi.transpose(1, 2) @ g) / m
            return (theta @ phi.transpose(1, 2)) @ g / m
        a, b = self._concat_terms(theta, phi)
        return F.relu(a[:, :, None] + b[:, None, :]) @ g / m

    def forward(
        self, x: torch.Tensor, return_nl_map: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Return ``z`` (same shape as ``x``), or ``(z, map)`` with ``map`` (B, N, M) when asked."""
        if x.dim() != self.dimension + 2:
            raise ValueError(
                f"NonLocalBlock(dimension={self.dimension}) expects a {self.dimension + 2}-D input "
                f"(B, C, ...), got shape {tuple(x.shape)}"
            )
        theta, phi, g = self._embeddings(x)
        nl_map = None
        if return_nl_map or self.impl == "naive":
            nl_map = self.affinity(theta, phi)
            y = nl_map @ g
        else:
            y = self._aggregate_efficient(theta, phi, g)
        y = y.transpose(1, 2).reshape(x.shape[0], self.inter_channels, *x.shape[2:])
        z = self.W(y) + x
        return (z, nl_map) if return_nl_map else z
