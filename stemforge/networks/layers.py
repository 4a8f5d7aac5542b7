"""Building blocks shared by the networks: MC dropout, complex convolutions, U-Net bookkeeping.

Complex tensors are carried as real tensors in *block layout*: a tensor with ``C`` complex channels
has ``2C`` real channels, the real parts first, ``[re_0 .. re_{C-1}, im_0 .. im_{C-1}]``. Every
real-valued operation that is applied per channel (BatchNorm, ReLU, max pooling, upsampling) is then
applied to real and imaginary parts independently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = [
    "MCDropout",
    "ComplexConv2d",
    "ComplexConvBlock",
    "RealConvBlock",
    "MCDropoutMixin",
    "complex_cat",
    "split_complex",
    "merge_complex",
    "level_filters",
    "resolve_depth",
    "check_image",
    "split_inputs",
]


# ---------------------------------------------------------------------------------------------------------------
# MC dropout
# ---------------------------------------------------------------------------------------------------------------
class MCDropout(nn.Module):
    """Element-wise dropout that can stay active in eval mode (Monte-Carlo dropout, Gal & Ghahramani 2016).

    Parameters
    ----------
    p : float
        Drop probability in [0, 1).
    complex_pairs : bool
        If True the input is in complex block layout (``2C`` channels) and the real and imaginary part of
        one complex element are dropped together (one mask of ``C`` channels, used twice).

    Notes
    -----
    Dropout is active when the module is training **or** when ``mc`` is True; :class:`MCDropoutMixin`
    sets ``mc`` on every :class:`MCDropout` of a network.
    """

    def __init__(self, p: float = 0.1, complex_pairs: bool = False) -> None:
        super().__init__()
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.complex_pairs = bool(complex_pairs)
        self.mc = False

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not (self.training or self.mc):
            return x
        keep = 1.0 - self.p
        # rand < keep is ~1.7x faster than bernoulli_ on CPU; the scale 1/keep keeps the mean unchanged
        if self.complex_pairs:
            c = x.shape[1] // 2
            mask = torch.rand_like(x[:, :c]) < keep
            mask = torch.cat([mask, mask], dim=1)
        else:
            mask = torch.rand_like(x) < keep
        return x * mask.to(x.dtype) * (1.0 / keep)

    def extra_repr(self) -> str:
        return f"p={self.p}, complex_pairs={self.complex_pairs}, mc={self.mc}"


# ---------------------------------------------------------------------------------------------------------------
# complex layout helpers and convolution
# ---------------------------------------------------------------------------------------------------------------
def split_complex(x: Tensor) -> tuple[Tensor, Tensor]:
    """Block layout (B, 2C, H, W) -> (real, imag), each (B, C, H, W)."""
    c = x.shape[1] // 2
    return x[:, :c], x[:, c:]


def merge_complex(re: Tensor, im: Tensor) -> Tensor:
    """(real, imag) each (B, C, H, W) -> block layout (B, 2C, H, W)."""
    return torch.cat([re, im], dim=1)


def complex_cat(*xs: Tensor) -> Tensor:
    """Concatenate complex block-layout tensors along the complex channel axis."""
    parts = [split_complex(x) for x in xs]
    return merge_complex(torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1))


class ComplexConv2d(nn.Module):
    """Complex-valued 2-D convolution ``W = A + iB`` done as one real convolution.

    On block-layout input ``(x_re, x_im)`` the output is ``(A*x_re - B*x_im, B*x_re + A*x_im)``,
    i.e. one real convolution with the weight ``[[A, -B], [B, A]]`` (``*`` is PyTorch's cross-correlation).

    Parameters
    ----------
    in_channels, out_channels : int
        Numbers of **complex** channels (the real tensors carry twice as many).
    kernel_size : int
        Odd square kernel size (``same`` padding).
    bias : bool
        Complex bias ``b_re + i b_im``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.in_channels, self.out_channels, self.kernel_size = int(in_channels), int(out_channels), int(kernel_size)
        shape = (self.out_channels, self.in_channels, kernel_size, kernel_size)
        self.weight_re = nn.Parameter(torch.empty(shape))
        self.weight_im = nn.Parameter(torch.empty(shape))
        self.bias_re = nn.Parameter(torch.zeros(self.out_channels)) if bias else None
        self.bias_im = nn.Parameter(torch.zeros(self.out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # He-like initialisation for complex weights: Var(|W|^2) = 2 / fan_in split over two parts.
        fan_in = self.in_channels * self.kernel_size**2
        std = math.sqrt(1.0 / fan_in)
        nn.init.normal_(self.weight_re, 0.0, std)
        nn.init.normal_(self.weight_im, 0.0, std)

    def real_weight(self) -> Tensor:
        """The equivalent real weight ``[[A, -B], [B, A]]`` of shape (2 Cout, 2 Cin, k, k)."""
        a, b = self.weight_re, self.weight_im
        return torch.cat([torch.cat([a, -b], dim=1), torch.cat([b, a], dim=1)], dim=0)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != 2 * self.in_channels:
            raise ValueError(
                f"expected {2 * self.in_channels} real channels ({self.in_channels} complex), got {x.shape[1]}"
            )
        bias = None if self.bias_re is None else torch.cat([self.bias_re, self.bias_im])
        return F.conv2d(x, self.real_weight(), bias, padding=self.kernel_size // 2)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size} (complex)"


class ComplexConvBlock(nn.Sequential):
    """``n_convs`` x [complex 3x3 conv -> BatchNorm -> ReLU -> MC dropout] on block-layout tensors.

    BatchNorm and ReLU act on real and imaginary parts separately ("split" complex BN / CReLU).
    Channel counts are complex channels.
    """

    def __init__(self, in_channels: int, out_channels: int, n_convs: int = 2, dropout: float = 0.1) -> None:
        layers: list[nn.Module] = []
        for i in range(n_convs):
            layers += [
                ComplexConv2d(in_channels if i == 0 else out_channels, out_channels, 3, bias=False),
                nn.BatchNorm2d(2 * out_channels),
                nn.ReLU(inplace=True),
                MCDropout(dropout, complex_pairs=True),
            ]
        super().__init__(*layers)


class RealConvBlock(nn.Sequential):
    """``n_convs`` x [3x3 conv -> BatchNorm -> ReLU -> MC dropout] (real valued)."""

    def __init__(self, in_channels: int, out_channels: int, n_convs: int = 2, dropout: float = 0.1) -> None:
        layers: list[nn.Module] = []
        for i in range(n_convs):
            layers += [
                nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
                MCDropout(dropout),
            ]
        super().__init__(*layers)


# ---------------------------------------------------------------------------------------------------------------
# U-Net bookkeeping
# ---------------------------------------------------------------------------------------------------------------
def level_filters(base: int, max_filters: int, depth: int) -> list[int]:
    """Filters per level ``min(base * 2**level, max_filters)`` for levels 0..depth."""
    if base < 1 or max_filters < 1:
        raise ValueError(f"base_filters and max_filters must be >= 1, got {base}, {max_filters}")
    return [min(base * 2**level, max_filters) for level in range(depth + 1)]


def resolve_depth(image_size: int | None, depth: int | None) -> int:
    """Depth (number of 2x poolings) from ``depth`` or, when None, ``log2(image_size)`` (down to 1x1)."""
    if image_size is not None:
        image_size = int(image_size)
        if image_size < 2 or image_size & (image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 2, got {image_size}")
    if depth is None:
        if image_size is None:
            raise ValueError("give depth, or image_size to use the default depth log2(image_size)")
        return int(math.log2(image_size))
    depth = int(depth)
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if image_size is not None and 2**depth > image_size:
        raise ValueError(f"depth {depth} pools {image_size} px below 1 px (max {int(math.log2(image_size))})")
    return depth


def check_image(x: Tensor, depth: int, name: str = "pattern") -> None:
    """Refuse inputs that are not (B, 1, H, W) with H, W divisible by 2**depth."""
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"{name} must have shape (B, 1, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % 2**depth or w % 2**depth:
        raise ValueError(f"{name} size {h}x{w} is not divisible by 2**depth = {2**depth}")


def split_inputs(inputs: Any) -> tuple[Tensor, Tensor]:
    """Accept a batch dict (``pattern``, ``probe``), a ``(pattern, probe)`` pair or a (B, 2, H, W) tensor."""
    if isinstance(inputs, Mapping):
        return inputs["pattern"], inputs["probe"]
    if isinstance(inputs, Tensor):
        if inputs.ndim != 4 or inputs.shape[1] != 2:
            raise ValueError(
                f"a single input tensor must be (B, 2, H, W) = (pattern, probe), got {tuple(inputs.shape)}"
            )
        return inputs[:, :1], inputs[:, 1:]
    if isinstance(inputs, Sequence) and len(inputs) == 2:
        return inputs[0], inputs[1]
    raise TypeError(f"expected a batch dict, a (pattern, probe) pair or a (B, 2, H, W) tensor, got {type(inputs)!r}")


class MCDropoutMixin:
    """Monte-Carlo dropout controls for an ``nn.Module`` whose ``forward(pattern, probe)`` returns a map."""

    def set_mc_dropout(self, enabled: bool) -> None:
        """Keep every :class:`MCDropout` active in eval mode (``enabled``) or not."""
        self._mc_dropout = bool(enabled)
        for m in self.modules():  # type: ignore[attr-defined]
            if isinstance(m, MCDropout):
                m.mc = bool(enabled)

    @property
    def mc_dropout(self) -> bool:
        """Whether dropout stays active at inference (eval mode)."""
        return getattr(self, "_mc_dropout", False)

    @contextmanager
    def _mc_state(self, enabled: bool):
        previous = self.mc_dropout
        self.set_mc_dropout(enabled)
        try:
            yield
        finally:
            self.set_mc_dropout(previous)

    @torch.no_grad()
    def predict_mc(self, inputs: Any, n_samples: int = 20, force_dropout: bool = True) -> tuple[Tensor, Tensor]:
        """Mean and variance of ``n_samples`` stochastic forward passes (MC dropout).

        Parameters
        ----------
        inputs : dict | tuple | Tensor
            A batch dict with ``pattern`` and ``probe`` (B, 1, H, W), a ``(pattern, probe)`` pair, or a
            (B, 2, H, W) tensor.
        n_samples : int
            Number of stochastic passes (>= 1).
        force_dropout : bool
            Activate dropout for the passes even if the network was built with ``mc_dropout=False``
            (default). With False the network's own ``mc_dropout`` setting decides; a network without
            MC dropout then returns variance 0.

        Returns
        -------
        mean, variance : Tensor
            Each (B, 1, H, W), in the units of the output map (variance in units squared); the variance
            is the unbiased sample variance (0 for ``n_samples == 1``).

        Notes
        -----
        BatchNorm runs in eval mode (running statistics) during the passes; the module's train/eval
        state and MC setting are restored afterwards.
        """
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        pattern, probe = split_inputs(inputs)
        was_training = self.training  # type: ignore[attr-defined]
        self.eval()  # type: ignore[attr-defined]
        try:
            with self._mc_state(True if force_dropout else self.mc_dropout):
                mean = m2 = None
                for i in range(int(n_samples)):  # Welford's running mean / variance
                    y = self(pattern, probe).float()  # type: ignore[operator]
                    if mean is None:
                        mean, m2 = y.clone(), torch.zeros_like(y)
                    else:
                        delta = y - mean
                        mean += delta / (i + 1)
                        m2 += delta * (y - mean)
        finally:
            self.train(was_training)  # type: ignore[attr-defined]
        var = m2 / (n_samples - 1) if n_samples > 1 else m2
        return mean, var
