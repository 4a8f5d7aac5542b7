"""Detector calibration from data: the origin (direct beam) per position, descan, and elliptical distortion."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .braggvectors import BraggVectors
from .datacube import AnalysisError, as_datacube


def origin_map(data, mask_radius_px: float | None = None, threshold: float = 0.5) -> np.ndarray:
    """``(Rx, Ry, 2)`` ``(row, col)`` of the direct beam in each pattern.

    The centre of mass of the pixels above ``threshold`` × the pattern's maximum, within ``mask_radius_px`` of the
    mean pattern's brightest pixel (default: the whole detector).
    """
    from .virtual import mean_pattern

    cube = as_datacube(data)
    H, W = cube.detector_shape
    rr, cc = np.mgrid[:H, :W]
    mask = np.ones((H, W), bool)
    if mask_radius_px is not None:
        c = np.unravel_index(np.argmax(mean_pattern(cube)), (H, W))
        mask = np.hypot(rr - c[0], cc - c[1]) <= mask_radius_px
    out = np.full((*cube.scan_shape, 2), np.nan)
    for rx in range(cube.scan_shape[0]):
        row = np.asarray(cube.data[rx], dtype=np.float64) * mask
        top = row.reshape(len(row), -1).max(1)[:, None, None]
        w = np.where(row >= threshold * top, row, 0.0)
        tot = w.sum((1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[rx, :, 0] = (w * rr).sum((1, 2)) / tot
            out[rx, :, 1] = (w * cc).sum((1, 2)) / tot
    return out


def fit_origin_plane(origins: np.ndarray) -> np.ndarray:
    """A plane fitted to an origin map (the linear descan of the scan coils), evaluated at every position."""
    origins = np.asarray(origins, dtype=np.float64)
    Rx, Ry = origins.shape[:2]
    ii, jj = np.mgrid[:Rx, :Ry]
    A = np.c_[np.ones(Rx * Ry), ii.ravel(), jj.ravel()]
    ok = np.isfinite(origins).all(-1).ravel()
    if ok.sum() < 3:
        raise AnalysisError("fewer than three positions with an origin; cannot fit a plane")
    coef, *_ = np.linalg.lstsq(A[ok], origins.reshape(-1, 2)[ok], rcond=None)
    return (A @ coef).reshape(Rx, Ry, 2)


def calibrate_origin(data, **kwargs):
    """The scan with ``calibration.origin_px`` set to the mean fitted origin (see :func:`origin_map`)."""
    cube = as_datacube(data)
    o = np.nanmean(fit_origin_plane(origin_map(cube, **kwargs)).reshape(-1, 2), 0)
    return replace(cube, calibration=cube.calibration.with_(origin_px=(float(o[0]), float(o[1]))))


def fit_ellipticity(points_xy: np.ndarray) -> tuple[float, float, float]:
    """Ellipse ``(a, b, theta_rad)`` through points ``(N, 2)`` (x, y relative to the origin) that should lie on one
    circle (a ring of equivalent reflections): semi-axes a ≥ b and the angle of a from the x axis."""
    p = np.asarray(points_xy, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or len(p) < 3:
        raise AnalysisError("need at least three (x, y) points to fit an ellipse centred on the origin")
    x, y = p.T
    M = np.c_[x * x, 2 * x * y, y * y]  # A x² + 2B xy + C y² = 1
    (A, B, C), *_ = np.linalg.lstsq(M, np.ones(len(p)), rcond=None)
    w, v = np.linalg.eigh(np.array([[A, B], [B, C]]))
    if np.any(w <= 0):
        raise AnalysisError("the points do not lie on an ellipse around the origin")
    b, a = 1 / np.sqrt(w[1]), 1 / np.sqrt(w[0])  # smaller eigenvalue ↔ longer axis
    theta = float(np.arctan2(v[1, 0], v[0, 0]))
    return float(a), float(b), theta


def correct_ellipticity(bv: BraggVectors, ellipse: tuple[float, float, float], origin_px=None) -> BraggVectors:
    """Bragg vectors with the elliptical distortion removed (the long axis is shrunk to the short one's length)."""
    a, b, theta = ellipse
    if origin_px is None:
        origin_px = bv.calibration.origin_px or (bv.detector_shape[0] // 2, bv.detector_shape[1] // 2)
    c, s = np.cos(theta), np.sin(theta)
    R = np.array([[c, -s], [s, c]])
    T = R @ np.diag([b / a, 1.0]) @ R.T
    p = bv.peaks.copy()
    xy = np.stack([p["col"] - origin_px[1], p["row"] - origin_px[0]], -1) @ T.T
    p["col"], p["row"] = xy[:, 0] + origin_px[1], xy[:, 1] + origin_px[0]
    return BraggVectors(bv.scan_shape, bv.detector_shape, p, bv.calibration.with_(ellipticity=(a, b, theta)),
                        bv.method, dict(bv.info))
