"""Losses: map losses (MSE, L1, SSIM + L1) and symmetry-aware orientation losses."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .rotations import symmetric_geodesic_angle

__all__ = ["ssim", "MapLoss", "OrientationLoss"]


def _gaussian_window(size: int, sigma: float, device, dtype) -> Tensor:
    r = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    return g / g.sum()


def ssim(
    x: Tensor,
    y: Tensor,
    window: int = 11,
    sigma: float = 1.5,
    data_range: float | Tensor | None = None,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Structural similarity (Wang et al. 2004) per image with a Gaussian window ('valid' filtering).

    Parameters
    ----------
    x, y : Tensor
        (B, C, H, W) prediction and target.
    window : int
        Odd window size in px; reduced to the largest odd size <= min(H, W) for small images.
    sigma : float
        Gaussian window standard deviation in px.
    data_range : float or Tensor, optional
        Dynamic range L in map units for the constants ``(k1 L)^2`` and ``(k2 L)^2``; default per image
        ``max(y) - min(y)`` (at least 1e-6).

    Returns
    -------
    Tensor
        (B,) mean SSIM over channels and positions (1 for identical images).
    """
    b, c, h, w = x.shape
    window = min(int(window), h if h % 2 else h - 1, w if w % 2 else w - 1)
    g = _gaussian_window(window, sigma, x.device, x.dtype)
    kx = g.view(1, 1, 1, -1).expand(c, 1, 1, window)
    ky = g.view(1, 1, -1, 1).expand(c, 1, window, 1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, kx, groups=c), ky, groups=c)

    if data_range is None:
        data_range = (y.flatten(1).amax(1) - y.flatten(1).amin(1)).clamp_min(1e-6).view(b, 1, 1, 1)
    elif isinstance(data_range, Tensor):
        data_range = data_range.view(-1, 1, 1, 1)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


class MapLoss(nn.Module):
    """Loss between predicted and target maps.

    Parameters
    ----------
    kind : {"mse", "l1", "ssim+l1"}
        Mean squared error (units^2), mean absolute error (units), or
        ``alpha * (1 - SSIM) + (1 - alpha) * L1`` (Zhao et al. 2017 mix; SSIM is dimensionless, L1 in map units).
    alpha : float
        SSIM weight of ``ssim+l1``.
    window, sigma : int, float
        SSIM Gaussian window (px).
    """

    def __init__(
        self, kind: Literal["mse", "l1", "ssim+l1"] = "mse", alpha: float = 0.84, window: int = 11, sigma: float = 1.5
    ) -> None:
        super().__init__()
        if kind not in ("mse", "l1", "ssim+l1"):
            raise ValueError(f"loss must be 'mse', 'l1' or 'ssim+l1', got {kind!r}")
        self.kind, self.alpha, self.window, self.sigma = kind, float(alpha), int(window), float(sigma)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        pred, target = pred.float(), target.float()
        if self.kind == "mse":
            return F.mse_loss(pred, target)
        if self.kind == "l1":
            return F.l1_loss(pred, target)
        s = ssim(pred, target, self.window, self.sigma).mean()
        return self.alpha * (1 - s) + (1 - self.alpha) * F.l1_loss(pred, target)


class OrientationLoss(nn.Module):
    """Symmetry-aware orientation loss, minimised over the sample's proper point group.

    Parameters
    ----------
    kind : {"geodesic", "chordal"}
        ``geodesic``: mean over the batch of min_S angle(R_pred, R_true @ S) in radians;
        ``chordal``: mean of min_S ||R_pred - R_true @ S||_F^2 (dimensionless, = 8 sin^2(angle/2)).
    """

    def __init__(self, kind: Literal["geodesic", "chordal"] = "geodesic") -> None:
        super().__init__()
        if kind not in ("geodesic", "chordal"):
            raise ValueError(f"orientation loss must be 'geodesic' or 'chordal', got {kind!r}")
        self.kind = kind

    def forward(self, r_pred: Tensor, r_true: Tensor, symmetry: Tensor | None = None) -> Tensor:
        r_pred, r_true = r_pred.float(), r_true.float()
        if self.kind == "geodesic":
            return symmetric_geodesic_angle(r_pred, r_true, symmetry).mean()
        if symmetry is None:
            return (r_pred - r_true).square().sum((-2, -1)).mean()
        if symmetry.ndim == 3:
            symmetry = symmetry.unsqueeze(0).expand(r_true.shape[0], -1, -1, -1)
        cand = r_true.unsqueeze(1) @ symmetry.float()
        return (r_pred.unsqueeze(1) - cand).square().sum((-2, -1)).amin(1).mean()
