"""Peak finding on predicted maps and one-to-one matching to true positions (numpy/scipy/torch only).

Pixel coordinates follow the batch contract: ``x`` = column, ``y`` = row, in px, integer values at pixel
centres (the pattern centre k = 0 is at ``(x, y) = (W//2, H//2)``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from stemforge.core.subpixel import parabola_offset

__all__ = ["find_peaks", "match_peaks"]

Refine = Literal["gaussian", "parabola", "centroid", "none"]


def _as_maps(maps) -> tuple[Tensor, bool]:
    t = torch.as_tensor(maps).detach()
    single = t.ndim == 2
    if t.ndim == 4:
        if t.shape[1] != 1:
            raise ValueError(f"4-D maps must be (B, 1, H, W), got {tuple(t.shape)}")
        t = t[:, 0]
    elif single:
        t = t[None]
    elif t.ndim != 3:
        raise ValueError(f"maps must be (H, W), (B, H, W) or (B, 1, H, W), got {tuple(t.shape)}")
    return t.float(), single


def find_peaks(
    maps,
    threshold: float = 0.05,
    min_distance: int = 2,
    absolute_threshold: float | None = None,
    refine: Refine = "gaussian",
    max_peaks: int | None = None,
) -> Tensor | list[Tensor]:
    """Local maxima of map(s) with sub-pixel positions.

    Parameters
    ----------
    maps : Tensor or array
        (H, W), (B, H, W) or (B, 1, H, W) real maps (any units, e.g. volts).
    threshold : float
        Relative threshold: a peak's value must exceed ``threshold * max(map)`` (per map).
    min_distance : int
        Minimum spacing in px: a peak is the maximum of its ``(2 min_distance + 1)``-square window, and of
        equal maxima closer than that (Chebyshev distance <= ``min_distance``) only the first is kept.
    absolute_threshold : float, optional
        Additionally require value > ``absolute_threshold`` (map units). With neither threshold positive,
        a map whose maximum is <= 0 has no peaks.
    refine : {"gaussian", "parabola", "centroid", "none"}
        Sub-pixel refinement on the 3x3 neighbourhood: a separable 3-point parabola through the log values
        (exact for Gaussian blobs; falls back to the plain parabola where a value is <= 0), a plain
        parabola, the centroid of the 3x3 values minus their minimum, or none. Offsets are clipped to
        +-0.5 px.
    max_peaks : int, optional
        Keep only the strongest ``max_peaks``.

    Returns
    -------
    Tensor or list of Tensor
        Per map an (N, 3) float32 tensor of ``(x, y, value)`` (x = column, y = row, px; value in map units),
        sorted by decreasing value, on the CPU. A 2-D input gives one tensor, batched input a list.
    """
    if refine not in ("gaussian", "parabola", "centroid", "none"):
        raise ValueError(f"refine must be gaussian, parabola, centroid or none, got {refine!r}")
    md = int(min_distance)
    if md < 1:
        raise ValueError(f"min_distance must be >= 1 px, got {min_distance}")
    m, single = _as_maps(maps)
    m = m.cpu()
    b, h, w = m.shape
    pooled = F.max_pool2d(m[:, None], 2 * md + 1, stride=1, padding=md)[:, 0]
    peak_max = m.flatten(1).amax(1)
    thr = torch.clamp_min(threshold * peak_max, 0.0) if threshold > 0 else torch.zeros_like(peak_max)
    if absolute_threshold is not None:
        thr = torch.maximum(thr, torch.full_like(thr, float(absolute_threshold)))
    mask = (m == pooled) & (m > thr[:, None, None])
    padded = F.pad(m[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    out = []
    for i in range(b):
        ys, xs = torch.nonzero(mask[i], as_tuple=True)
        vals = m[i, ys, xs]
        order = torch.argsort(vals, descending=True, stable=True)
        ys, xs, vals = ys[order], xs[order], vals[order]
        if len(ys) > 1:  # equal maxima inside one window: keep the first (greedy)
            d = torch.maximum((ys[:, None] - ys[None]).abs(), (xs[:, None] - xs[None]).abs())
            close = (d <= md) & ~torch.eye(len(ys), dtype=torch.bool)
            if close.any():
                keep = torch.ones(len(ys), dtype=torch.bool)
                for j in range(len(ys)):
                    if keep[j]:
                        keep[j + 1 :] &= ~close[j, j + 1 :]
                ys, xs, vals = ys[keep], xs[keep], vals[keep]
        if max_peaks is not None:
            ys, xs, vals = ys[:max_peaks], xs[:max_peaks], vals[:max_peaks]
        # 3x3 neighbourhoods: padded index (y+1+dy, x+1+dx)
        nb = torch.stack([padded[i, ys + 1 + dy, xs + 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], -1)
        nb = nb.reshape(-1, 3, 3)
        if refine == "none" or len(ys) == 0:
            dx = dy = torch.zeros(len(ys))
        elif refine == "centroid":
            wgt = nb - nb.flatten(1).amin(1)[:, None, None]
            tot = wgt.sum((1, 2)).clamp_min(1e-30)
            grid = torch.tensor([-1.0, 0.0, 1.0])
            dx = (wgt.sum(1) * grid).sum(1) / tot
            dy = (wgt.sum(2) * grid).sum(1) / tot
        else:
            n = nb.double().numpy()
            log = refine == "gaussian"
            dx = torch.from_numpy(parabola_offset(n[:, 1, 0], n[:, 1, 1], n[:, 1, 2], log)).float()
            dy = torch.from_numpy(parabola_offset(n[:, 0, 1], n[:, 1, 1], n[:, 2, 1], log)).float()
        out.append(torch.stack([xs.float() + dx, ys.float() + dy, vals], -1).float())
    return out[0] if single else out


def match_peaks(pred, true, tolerance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching of predicted to true positions (Hungarian, minimum total distance).

    Parameters
    ----------
    pred : array (N, >=2)
        Predicted ``(x, y, ...)`` in px; extra columns are ignored.
    true : array (M, 2)
        True ``(x, y)`` in px; rows with a NaN are padding and dropped.
    tolerance : float
        Largest matching distance in px (inclusive).

    Returns
    -------
    pred_idx, true_idx, distance : ndarray
        Indices of the matched pairs (into ``pred`` and into the NaN-filtered ``true``) and their Euclidean
        distances in px. The number of pairs within ``tolerance`` is maximised first, then their total
        distance is minimised.
    """
    from scipy.optimize import linear_sum_assignment

    p = torch.as_tensor(pred).detach().cpu().double().numpy()
    p = p.reshape(-1, p.shape[-1])[:, :2]
    t = torch.as_tensor(true).detach().cpu().double().numpy().reshape(-1, 2)
    t = t[np.isfinite(t).all(1)]
    empty = np.zeros(0, dtype=np.int64)
    if len(p) == 0 or len(t) == 0:
        return empty, empty, np.zeros(0)
    dist = np.sqrt(((p[:, None, :] - t[None, :, :]) ** 2).sum(-1))
    allowed = dist <= tolerance
    if not allowed.any():
        return empty, empty, np.zeros(0)
    big = 1.0 + dist[allowed].sum() * 2 + len(p) * len(t) * max(tolerance, 1.0)
    rows, cols = linear_sum_assignment(np.where(allowed, dist, big))
    ok = allowed[rows, cols]
    return rows[ok].astype(np.int64), cols[ok].astype(np.int64), dist[rows[ok], cols[ok]]
