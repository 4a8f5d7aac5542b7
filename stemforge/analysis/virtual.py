"""Virtual images and summary patterns of a 4D-STEM scan, streamed block by block (dask chunks for lazy data).

Detector geometry is in px. A detector's centre is ``(row, col)``: by default the calibrated origin of the scan
(``calibration.origin_px``), else the detector centre ``(H//2, W//2)``; it may also be a per-position origin map
``(Rx, Ry, 2)`` (descan, :func:`stemforge.analysis.calibration.origin_map`), which moves the detector with the beam.
"""

from __future__ import annotations

import numpy as np

from stemforge.core.streaming import stream_scan

from .datacube import AnalysisError, as_datacube


def mean_pattern(data, progress: bool = False) -> np.ndarray:
    """Mean diffraction pattern ``(H, W)`` over the scan (same units as the data)."""
    cube = as_datacube(data)
    acc = np.zeros(cube.detector_shape)
    for _, block in stream_scan(cube.data, progress=progress, desc="mean pattern", finite=False):
        acc += block.sum((0, 1))
    return (acc / np.prod(cube.scan_shape)).astype(np.float32)


def max_pattern(data, progress: bool = False) -> np.ndarray:
    """Pixel-wise maximum ``(H, W)`` over the scan (shows weak reflections that appear anywhere)."""
    cube = as_datacube(data)
    acc = np.full(cube.detector_shape, -np.inf)
    for _, block in stream_scan(cube.data, progress=progress, desc="max pattern", finite=False):
        acc = np.maximum(acc, block.max((0, 1)))
    return acc.astype(np.float32)


def annular_mask(shape, inner_px: float, outer_px: float, center=None) -> np.ndarray:
    """Boolean detector mask ``inner_px ≤ r < outer_px`` (px) about ``center`` ``(row, col)`` (default the
    detector centre ``(H//2, W//2)``). ``inner_px = 0`` gives a disk."""
    if not (np.isfinite(inner_px) and np.isfinite(outer_px) and 0 <= inner_px < outer_px):
        raise AnalysisError(f"need 0 ≤ inner_px < outer_px (px), got {inner_px}, {outer_px}")
    h, w = shape
    c = (h // 2, w // 2) if center is None else center
    rr, cc = np.mgrid[:h, :w]
    r = np.hypot(rr - c[0], cc - c[1])
    return (r >= inner_px) & (r < outer_px)


def virtual_image(
    data, inner_px: float = 0.0, outer_px: float | None = None, center=None, mask=None, progress: bool = False
) -> np.ndarray:
    """Integrated intensity of each pattern over a virtual detector → ``(Rx, Ry)`` (data units × pixels).

    Parameters
    ----------
    data : DataCube or array (Rx, Ry, H, W)
    inner_px, outer_px : float
        Annulus ``inner_px ≤ r < outer_px`` in px about ``center`` (``inner_px = 0``: a circular detector).
    center : (row, col) or array (Rx, Ry, 2), optional
        Detector centre in px: one point (may be off-axis, e.g. a single Bragg disk for a dark-field image) or a
        per-position origin map that follows the descan. Default: the scan's origin.
    mask : bool array (H, W), optional
        Any detector shape instead of an annulus (then ``inner_px``, ``outer_px`` and ``center`` are not used).
    progress : bool
        Show a tqdm bar.
    """
    cube = as_datacube(data)
    H, W = cube.detector_shape
    Rx, Ry = cube.scan_shape
    per_position = None
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (H, W):
            raise AnalysisError(f"detector mask {mask.shape} does not match the detector {(H, W)}")
    else:
        if outer_px is None:
            raise AnalysisError("give outer_px (px) or a detector mask")
        c = cube.origin_px if center is None else center
        c = np.asarray(c, dtype=np.float64)
        if c.shape == (Rx, Ry, 2):
            if not np.isfinite(c).all():
                raise AnalysisError(
                    "the origin map holds NaN; fit it first (stemforge.analysis.calibration.fit_origin_plane)"
                )
            per_position = c
            mask = annular_mask((H, W), inner_px, outer_px, (H // 2, W // 2))  # checks the radii
        elif c.shape == (2,):
            mask = annular_mask((H, W), inner_px, outer_px, tuple(c))
        else:
            raise AnalysisError(f"center must be (row, col) or an origin map {(Rx, Ry, 2)}, got shape {c.shape}")
    if per_position is None and not mask.any():
        raise AnalysisError("the virtual detector covers no pixel")
    out = np.zeros((Rx, Ry))
    rr, cc = np.mgrid[:H, :W]
    for (r0, r1, c0, c1), block in stream_scan(cube.data, progress=progress, desc="virtual image", finite=False):
        if per_position is None:
            out[r0:r1, c0:c1] = block[..., mask].sum(-1)
        else:
            o = per_position[r0:r1, c0:c1]
            r = np.hypot(rr - o[..., 0, None, None], cc - o[..., 1, None, None])
            m = (r >= inner_px) & (r < outer_px)
            out[r0:r1, c0:c1] = (block * m).sum((-2, -1))
    return out


def virtual_bf(data, radius_px: float, center=None, progress: bool = False) -> np.ndarray:
    """Virtual bright field: a circular detector of ``radius_px`` (px) about the origin (or ``center``)."""
    return virtual_image(data, 0.0, radius_px, center, progress=progress)


def virtual_adf(data, inner_px: float, outer_px: float, center=None, progress: bool = False) -> np.ndarray:
    """Virtual annular dark field between ``inner_px`` and ``outer_px`` (px) about the origin (or ``center``)."""
    return virtual_image(data, inner_px, outer_px, center, progress=progress)
