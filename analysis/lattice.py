"""Lattice vectors from Bragg vectors: choose a basis (g1, g2), index peaks, fit the lattice per position.

Vectors are in detector px as ``(x, y)`` = ``(col, row)`` relative to the origin (the undiffracted beam).
"""

from __future__ import annotations

import numpy as np

from .braggvectors import BraggVectors
from .datacube import AnalysisError


def _region_mask(scan_shape, region) -> np.ndarray:
    mask = np.zeros(scan_shape, bool)
    if region is None:
        mask[:] = True
    elif isinstance(region, np.ndarray) and region.dtype == bool:
        if region.shape != tuple(scan_shape):
            raise AnalysisError(f"region mask {region.shape} does not match the scan {tuple(scan_shape)}")
        mask = region.copy()
    elif isinstance(region, (list, tuple)) and len(region) == 4 and all(isinstance(v, (int, np.integer)) for v in region):
        r0, r1, c0, c1 = (int(v) for v in region)
        if not (0 <= r0 < r1 <= scan_shape[0] and 0 <= c0 < c1 <= scan_shape[1]):
            raise AnalysisError(f"region [{r0}, {r1}, {c0}, {c1}] lies outside the scan {tuple(scan_shape)}")
        mask[r0:r1, c0:c1] = True
    else:
        mask[region] = True
    if not mask.any():
        raise AnalysisError("the region selects no scan position")
    return mask


def _origin(bv: BraggVectors, origin_px):
    if origin_px is None:
        origin_px = bv.calibration.origin_px or (bv.detector_shape[0] // 2, bv.detector_shape[1] // 2)
    return np.asarray(origin_px, dtype=np.float64)


def relative_xy(bv: BraggVectors, peaks=None, origin_px=None) -> np.ndarray:
    """Peak positions ``(x, y)`` in px relative to the origin (a single ``(row, col)`` or a map ``(Rx, Ry, 2)``)."""
    p = bv.peaks if peaks is None else peaks
    o = _origin(bv, origin_px)
    if o.ndim == 3:
        o = o[p["rx"], p["ry"]]
    return np.stack([p["col"] - o[..., 1], p["row"] - o[..., 0]], -1).astype(np.float64)


def choose_lattice_vectors(bv: BraggVectors, origin_px=None, region=None, min_length_px: float = 3.0,
                           min_angle_deg: float = 20.0, cluster_px: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """A reciprocal basis ``g1, g2`` (px, ``(x, y)``) from the peaks that recur over a region.

    Peaks of the region are clustered (within ``cluster_px``); clusters seen in at least a quarter of the positions
    are candidates; ``g1`` is the shortest candidate longer than ``min_length_px``, ``g2`` the shortest one at more
    than ``min_angle_deg`` from ``g1``.
    """
    mask = _region_mask(bv.scan_shape, region)
    sel = bv.peaks[mask[bv.peaks["rx"], bv.peaks["ry"]]]
    if len(sel) < 3:
        raise AnalysisError("too few peaks in the region to choose lattice vectors")
    q = relative_xy(bv, sel, origin_px)
    n_pos = int(mask.sum())
    centres, counts = [], []
    remaining = np.ones(len(q), bool)
    order = np.argsort(-sel["intensity"])
    for i in order:
        if not remaining[i]:
            continue
        near = remaining & (np.hypot(*(q - q[i]).T) <= cluster_px)
        centres.append(q[near].mean(0))
        counts.append(int(near.sum()))
        remaining &= ~near
    centres, counts = np.asarray(centres), np.asarray(counts)
    cand = centres[(counts >= max(1, n_pos // 4)) & (np.hypot(*centres.T) >= min_length_px)]
    if len(cand) < 2:
        raise AnalysisError("fewer than two recurring reflections; cannot choose lattice vectors")
    cand = cand[np.argsort(np.hypot(*cand.T))]
    g1 = cand[0]
    for g in cand[1:]:
        s = abs(g1[0] * g[1] - g1[1] * g[0]) / (np.linalg.norm(g1) * np.linalg.norm(g))
        if s > np.sin(np.radians(min_angle_deg)):
            g2 = g
            break
    else:
        raise AnalysisError("all recurring reflections are collinear; cannot choose a second lattice vector")
    if g1[0] * g2[1] - g1[1] * g2[0] < 0:  # right-handed in (x, y)
        g2 = -g2
    return g1, g2


def fit_lattice(bv: BraggVectors, g1, g2, origin_px=None, max_error_px: float = 2.0, min_peaks: int = 3,
                iterations: int = 2) -> dict:
    """Least-squares lattice ``q ≈ h g1' + k g2' + q0`` at every position.

    Peaks are indexed by rounding ``[g1 g2]⁻¹ q`` to integers (re-indexed with the fitted basis ``iterations``
    times), and those farther than ``max_error_px`` from their lattice point are left out.

    Returns
    -------
    dict of arrays
        ``g1``, ``g2``, ``q0`` (Rx, Ry, 2) px; ``error_px`` (RMS residual), ``num_peaks`` (Rx, Ry); NaN where fewer
        than ``min_peaks`` peaks could be indexed.
    """
    g1, g2 = np.asarray(g1, float), np.asarray(g2, float)
    if abs(g1[0] * g2[1] - g1[1] * g2[0]) < 1e-9:
        raise AnalysisError("g1 and g2 are collinear")
    Rx, Ry = bv.scan_shape
    out = {"g1": np.full((Rx, Ry, 2), np.nan), "g2": np.full((Rx, Ry, 2), np.nan), "q0": np.full((Rx, Ry, 2), np.nan),
           "error_px": np.full((Rx, Ry), np.nan), "num_peaks": np.zeros((Rx, Ry), int)}
    for rx in range(Rx):
        for ry in range(Ry):
            p = bv.at(rx, ry)
            if len(p) < min_peaks:
                continue
            q = relative_xy(bv, p, origin_px)
            basis, q0 = np.stack([g1, g2]), np.zeros(2)
            ok = np.zeros(len(q), bool)
            for _ in range(iterations + 1):
                hk = np.rint(np.linalg.solve(basis.T, (q - q0).T).T)
                resid = np.hypot(*(hk @ basis + q0 - q).T)
                ok = resid <= max_error_px
                design = np.c_[hk[ok], np.ones(ok.sum())]
                if ok.sum() < min_peaks or np.linalg.matrix_rank(design) < 3:
                    ok[:] = False
                    break
                sol, *_ = np.linalg.lstsq(design, q[ok], rcond=None)
                basis, q0 = sol[:2], sol[2]
            if ok.sum() < min_peaks:
                continue
            out["g1"][rx, ry], out["g2"][rx, ry], out["q0"][rx, ry] = basis[0], basis[1], q0
            out["error_px"][rx, ry] = float(np.sqrt(np.mean(np.sum((hk[ok] @ basis + q0 - q[ok]) ** 2, 1))))
            out["num_peaks"][rx, ry] = int(ok.sum())
    return out
