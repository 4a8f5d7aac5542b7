"""Virtual images and summary patterns of a 4D-STEM scan (streamed row by row for lazy data).

Detector radii are in px about a centre ``(row, col)`` (default: the calibrated origin, else ``(H//2, W//2)``).
"""

from __future__ import annotations

import numpy as np

from .datacube import AnalysisError, as_datacube


def _rows(cube):
    for rx in range(cube.scan_shape[0]):
        yield rx, np.asarray(cube.data[rx], dtype=np.float64)


def mean_pattern(data) -> np.ndarray:
    """Mean diffraction pattern ``(H, W)`` over the scan."""
    cube = as_datacube(data)
    acc = np.zeros(cube.detector_shape)
    for _, row in _rows(cube):
        acc += row.sum(0)
    return (acc / np.prod(cube.scan_shape)).astype(np.float32)


def max_pattern(data) -> np.ndarray:
    """Pixel-wise maximum ``(H, W)`` over the scan (shows weak reflections that appear anywhere)."""
    cube = as_datacube(data)
    acc = np.full(cube.detector_shape, -np.inf)
    for _, row in _rows(cube):
        acc = np.maximum(acc, row.max(0))
    return acc.astype(np.float32)


def annular_mask(shape, inner_px: float, outer_px: float, center=None) -> np.ndarray:
    """Boolean detector mask ``inner_px ≤ r < outer_px`` about ``center`` ``(row, col)`` (default the centre)."""
    if not 0 <= inner_px < outer_px:
        raise AnalysisError(f"need 0 ≤ inner_px < outer_px, got {inner_px}, {outer_px}")
    h, w = shape
    c = (h // 2, w // 2) if center is None else center
    rr, cc = np.mgrid[:h, :w]
    r = np.hypot(rr - c[0], cc - c[1])
    return (r >= inner_px) & (r < outer_px)


def virtual_image(data, inner_px: float, outer_px: float, center=None) -> np.ndarray:
    """Sum of each pattern over an annulus (``inner_px = 0``: a disk) → ``(Rx, Ry)``."""
    cube = as_datacube(data)
    mask = annular_mask(cube.detector_shape, inner_px, outer_px, cube.origin_px if center is None else center)
    if not mask.any():
        raise AnalysisError("the virtual detector covers no pixel")
    out = np.zeros(cube.scan_shape)
    for rx, row in _rows(cube):
        out[rx] = row[:, mask].sum(1)
    return out


def virtual_bf(data, radius_px: float, center=None) -> np.ndarray:
    """Virtual bright field: the disk of ``radius_px`` about the origin."""
    return virtual_image(data, 0.0, radius_px, center)


def virtual_adf(data, inner_px: float, outer_px: float, center=None) -> np.ndarray:
    """Virtual annular dark field between ``inner_px`` and ``outer_px``."""
    return virtual_image(data, inner_px, outer_px, center)
