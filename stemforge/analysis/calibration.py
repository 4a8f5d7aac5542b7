"""Detector calibration from data: the origin (direct beam) per scan position, descan, and elliptical distortion.

Positions are detector px, ``(row, col)`` for origins and ``(x, y)`` = ``(col, row)`` relative to the origin for
vectors. The ``calibrate_*`` functions return updated :class:`~stemforge.analysis.datacube.Calibration` objects; the
``correct_*`` functions return Bragg vectors with a measured distortion removed.
"""

from __future__ import annotations

import numpy as np

from stemforge.core.streaming import stream_scan
from stemforge.core.subpixel import parabola_offset

from .braggvectors import BraggVectors
from .datacube import AnalysisError, Calibration, as_datacube


def origin_map(
    data,
    method: str = "com",
    mask_radius_px: float | None = None,
    threshold: float = 0.5,
    probe=None,
    progress: bool = False,
) -> np.ndarray:
    """``(Rx, Ry, 2)`` ``(row, col)`` (px) of the direct beam in each pattern.

    Parameters
    ----------
    data : DataCube or array (Rx, Ry, H, W)
    method : {"com", "correlation"}
        ``com``: centre of mass of the pixels above ``threshold`` × the pattern's maximum (within the search
        disk); good when the direct beam is the brightest feature. ``correlation``: the maximum of the
        cross-correlation with the probe's ``flat`` template (:func:`stemforge.analysis.probe.probe_template`),
        refined by a
        3-point parabola; robust against Bragg disks next to the beam and a smooth background.
    mask_radius_px : float, optional
        Search only within this radius (px) of the mean pattern's brightest pixel (default: the whole detector).
    threshold : float
        Relative threshold of the ``com`` method.
    probe : array (H, W), optional
        Vacuum probe for ``correlation`` (default ``data.probe``, else the direct beam of the mean pattern).
    """
    from .virtual import mean_pattern

    cube = as_datacube(data)
    if method not in ("com", "correlation"):
        raise AnalysisError(f"unknown origin method {method!r}: use 'com' or 'correlation'")
    if not 0 < threshold < 1:
        raise AnalysisError(f"threshold must lie in (0, 1), got {threshold}")
    H, W = cube.detector_shape
    rr, cc = np.mgrid[:H, :W]
    mask = np.ones((H, W), bool)
    if mask_radius_px is not None:
        c = np.unravel_index(np.argmax(mean_pattern(cube)), (H, W))
        mask = np.hypot(rr - c[0], cc - c[1]) <= mask_radius_px
        if not mask.any():
            raise AnalysisError(f"mask_radius_px={mask_radius_px} covers no pixel")
    if method == "correlation":
        import scipy.fft

        from .probe import probe_from_data, probe_template

        if probe is None:
            probe = cube.probe if cube.probe is not None else probe_from_data(cube)
        tft = np.conj(scipy.fft.rfft2(probe_template(probe, "flat")))
    out = np.full((*cube.scan_shape, 2), np.nan)
    for (r0, r1, c0, c1), block in stream_scan(cube.data, progress=progress, desc="origin"):
        flat = block.reshape(-1, H, W)
        if method == "com":
            w = flat * mask
            top = w.reshape(len(w), -1).max(1)[:, None, None]
            w = np.where(w >= threshold * top, w, 0.0)
            tot = w.sum((1, 2))
            with np.errstate(invalid="ignore", divide="ignore"):
                o = np.stack([(w * rr).sum((1, 2)) / tot, (w * cc).sum((1, 2)) / tot], -1)
        else:
            corr = scipy.fft.irfft2(scipy.fft.rfft2(flat) * tft, s=(H, W))
            i, j = np.unravel_index(np.where(mask, corr, -np.inf).reshape(len(corr), -1).argmax(1), (H, W))
            b = np.arange(len(corr))
            di = parabola_offset(corr[b, (i - 1) % H, j], corr[b, i, j], corr[b, (i + 1) % H, j])
            dj = parabola_offset(corr[b, i, (j - 1) % W], corr[b, i, j], corr[b, i, (j + 1) % W])
            o = np.stack([i + di, j + dj], -1)
        out[r0:r1, c0:c1] = o.reshape(r1 - r0, c1 - c0, 2)
    return out


def fit_origin_plane(origins: np.ndarray, order: int = 1, robust: bool = True, max_iter: int = 5) -> np.ndarray:
    """A smooth origin map fitted to a measured one (the descan of the scan coils), at every position.

    Parameters
    ----------
    origins : array (Rx, Ry, 2)
        Measured ``(row, col)`` per position (NaN = missing).
    order : {1, 2}
        1: a plane in the scan position (linear descan); 2: a quadratic surface.
    robust : bool
        Refit without positions farther than 3 robust standard deviations (MAD) from the fit (``max_iter``
        times), so a few bad origins (e.g. a Bragg disk taken for the beam) do not tilt the plane.
    """
    origins = np.asarray(origins, dtype=np.float64)
    if origins.ndim != 3 or origins.shape[-1] != 2:
        raise AnalysisError(f"origins must have shape (Rx, Ry, 2), got {origins.shape}")
    if order not in (1, 2):
        raise AnalysisError(f"order must be 1 (plane) or 2 (quadratic), got {order}")
    Rx, Ry = origins.shape[:2]
    ii, jj = (v.ravel().astype(float) for v in np.mgrid[:Rx, :Ry])
    cols = [np.ones(Rx * Ry), ii, jj] + ([ii * ii, ii * jj, jj * jj] if order == 2 else [])
    A = np.stack(cols, 1)
    y = origins.reshape(-1, 2)
    ok = np.isfinite(y).all(-1)
    if ok.sum() < A.shape[1]:
        raise AnalysisError(f"fewer than {A.shape[1]} positions with an origin; cannot fit the origin surface")
    for _ in range(max_iter if robust else 1):
        coef, *_ = np.linalg.lstsq(A[ok], y[ok], rcond=None)
        if not robust:
            break
        res = np.full(len(y), np.inf)
        res[np.isfinite(y).all(-1)] = np.hypot(*(A @ coef - y)[np.isfinite(y).all(-1)].T)
        sigma = 1.4826 * np.median(res[ok]) + 1e-6
        new = res <= 3 * sigma
        if new.sum() < A.shape[1] or np.array_equal(new, ok):
            break
        ok = new
    return (A @ coef).reshape(Rx, Ry, 2)


def calibrate_origin(data, method: str = "com", order: int = 1, **kwargs) -> tuple[Calibration, np.ndarray]:
    """Measure and fit the origin: ``(calibration, fitted origin map)``.

    The calibration is the scan's with ``origin_px`` set to the mean of the fitted map (``(row, col)`` px); the map
    ``(Rx, Ry, 2)`` (descan) can be passed as ``center`` to virtual images, as ``origin_px`` to lattice fitting, or
    to :func:`correct_origin`. ``kwargs`` go to :func:`origin_map`.
    """
    cube = as_datacube(data)
    fitted = fit_origin_plane(origin_map(cube, method=method, **kwargs), order=order)
    o = fitted.reshape(-1, 2).mean(0)
    return cube.calibration.with_(origin_px=(float(o[0]), float(o[1]))), fitted


def correct_origin(bv: BraggVectors, origins: np.ndarray, to=None) -> BraggVectors:
    """Bragg vectors shifted so each position's origin ``origins[rx, ry]`` lands on one common origin ``to``
    (default the mean origin), which becomes ``calibration.origin_px``."""
    origins = np.asarray(origins, dtype=np.float64)
    if origins.shape != (*bv.scan_shape, 2):
        raise AnalysisError(f"origin map {origins.shape} does not match the scan {(*bv.scan_shape, 2)}")
    if not np.isfinite(origins).all():
        raise AnalysisError("the origin map holds NaN; fit it first (fit_origin_plane)")
    to = origins.reshape(-1, 2).mean(0) if to is None else np.asarray(to, dtype=np.float64)
    p = bv.peaks.copy()
    o = origins[p["rx"], p["ry"]]
    p["row"] = p["row"] - o[:, 0] + to[0]
    p["col"] = p["col"] - o[:, 1] + to[1]
    return BraggVectors(
        bv.scan_shape,
        bv.detector_shape,
        p,
        bv.calibration.with_(origin_px=(float(to[0]), float(to[1]))),
        bv.method,
        dict(bv.info),
    )


def fit_ellipticity(points_xy: np.ndarray, ring=None) -> tuple[float, float, float]:
    """Ellipse ``(a, b, theta_rad)`` centred on the origin through points that should lie on circles.

    Parameters
    ----------
    points_xy : array (N, 2)
        ``(x, y)`` px relative to the origin.
    ring : int array (N,), optional
        Which circle (ring of equivalent reflections) each point belongs to; all rings share one distortion
        ``pᵀ M p = s_k``. Default: all on one ring.

    Returns
    -------
    a, b, theta_rad
        Semi-axes (px, a ≥ b) of the ellipse of ring ``0`` (the lowest label) and the angle of ``a`` from the x
        (column) axis towards y (row), in (−π/2, π/2].
    """
    p = np.asarray(points_xy, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or not np.isfinite(p).all():
        raise AnalysisError("points must be a finite array (N, 2) of (x, y)")
    ring = np.zeros(len(p), int) if ring is None else np.asarray(ring)
    if ring.shape != (len(p),):
        raise AnalysisError(f"ring labels {ring.shape} do not match the points ({len(p)},)")
    labels, idx = np.unique(ring, return_inverse=True)
    if len(p) < 2 + len(labels):
        raise AnalysisError(f"need at least {2 + len(labels)} points to fit an ellipse to {len(labels)} ring(s)")
    x, y = p.T
    # x² + y² + u (x² − y²) + 2 v x y = s_k   ↔   M = [[1 + u, v], [v, 1 − u]]
    A = np.zeros((len(p), 2 + len(labels)))
    A[:, 0], A[:, 1] = x * x - y * y, 2 * x * y
    A[np.arange(len(p)), 2 + idx] = -1.0
    sol, _, rank, _ = np.linalg.lstsq(A, -(x * x + y * y), rcond=None)
    if rank < A.shape[1]:
        raise AnalysisError("the points do not fix an ellipse (too few directions on the rings)")
    u, v, s = sol[0], sol[1], sol[2:]
    w, vec = np.linalg.eigh(np.array([[1 + u, v], [v, 1 - u]]))
    if np.any(w <= 0) or s[0] <= 0:
        raise AnalysisError("the points do not lie on an ellipse around the origin")
    a, b = np.sqrt(s[0] / w[0]), np.sqrt(s[0] / w[1])  # smaller eigenvalue ↔ longer axis
    theta = float(np.arctan2(vec[1, 0], vec[0, 0]))
    theta = theta - np.pi if theta > np.pi / 2 else theta + np.pi if theta <= -np.pi / 2 else theta
    return float(a), float(b), theta


def ring_labels(radii: np.ndarray, tolerance: float = 0.05) -> np.ndarray:
    """Group radii into rings: sorted radii split where the next is more than ``tolerance`` (relative) larger.
    Returns a ring label per radius (0 = innermost)."""
    r = np.asarray(radii, dtype=np.float64)
    order = np.argsort(r)
    rs = r[order]
    breaks = np.r_[0, np.cumsum(rs[1:] > rs[:-1] * (1 + tolerance))]
    out = np.empty(len(r), int)
    out[order] = breaks
    return out


def ellipticity_from_bragg(
    bv: BraggVectors,
    origin_px=None,
    min_radius_px: float = 3.0,
    tolerance: float = 0.05,
    min_points: int = 6,
    min_directions: int = 3,
) -> tuple[float, float, float]:
    """Detector ellipticity ``(a, b, theta_rad)`` from the Bragg-vector distribution of a scan.

    Peaks (beyond ``min_radius_px`` from the origin, the direct beam excluded) are grouped into rings of equal
    radius (:func:`ring_labels`); rings with at least ``min_points`` peaks in ``min_directions`` distinct
    directions (modulo 180°) are fitted together (:func:`fit_ellipticity`); ``a, b`` are the semi-axes of the
    innermost ring used. The distribution must be isotropic (a polycrystal, an amorphous ring, or a crystal
    whose equivalent reflections are known to lie on circles): a strained single crystal is indistinguishable
    from a distorted detector. The relative tolerance must exceed the distortion (e.g. 0.05 for a/b ≤ 1.05).
    """
    from .lattice import relative_xy

    q = relative_xy(bv, origin_px=origin_px)
    r = np.hypot(*q.T)
    q, r = q[r >= min_radius_px], r[r >= min_radius_px]
    if len(q) < min_points:
        raise AnalysisError("too few Bragg peaks away from the origin to fit the ellipticity")
    lab = ring_labels(r, tolerance)
    keep = np.zeros(len(q), bool)
    for k in np.unique(lab):
        m = lab == k
        ang = np.round(np.degrees(np.arctan2(q[m, 1], q[m, 0])) % 180 / 5.0) % 36  # directions in 5° bins
        if m.sum() >= min_points and len(np.unique(ang)) >= min_directions:
            keep |= m
    if not keep.any():
        raise AnalysisError(
            f"no ring with ≥ {min_points} peaks in ≥ {min_directions} directions; cannot fit the ellipticity"
        )
    return fit_ellipticity(q[keep], lab[keep])


def calibrate_ellipticity(bv: BraggVectors, **kwargs) -> Calibration:
    """``bv.calibration`` with ``ellipticity = (a, b, theta_rad)`` from :func:`ellipticity_from_bragg`."""
    return bv.calibration.with_(ellipticity=ellipticity_from_bragg(bv, **kwargs))


def correct_ellipticity(
    bv: BraggVectors, ellipse: tuple[float, float, float] | None = None, origin_px=None
) -> BraggVectors:
    """Bragg vectors with an elliptical distortion removed: the long axis ``a`` (at ``theta``) is scaled by
    ``b/a`` about the origin, so rings become circles of the short axis' radius.

    ``ellipse`` defaults to ``bv.calibration.ellipticity``; ``origin_px`` to the calibrated origin (or a
    per-position map ``(Rx, Ry, 2)``). The result's calibration has ``ellipticity=None`` and its ``info`` records
    ``ellipticity_corrected``, so correcting the corrected vectors again is refused rather than applied twice.
    """
    from .lattice import _origin

    ellipse = bv.calibration.ellipticity if ellipse is None else ellipse
    if ellipse is None:
        raise AnalysisError("no ellipse given and the calibration has none (calibrate_ellipticity)")
    a, b, theta = (float(v) for v in ellipse)
    if not (a > 0 and b > 0):
        raise AnalysisError(f"ellipse semi-axes must be > 0, got {a}, {b}")
    o = _origin(bv, origin_px)
    c, s = np.cos(theta), np.sin(theta)
    R = np.array([[c, -s], [s, c]])
    T = R @ np.diag([b / a, 1.0]) @ R.T
    p = bv.peaks.copy()
    oo = o[p["rx"], p["ry"]] if o.ndim == 3 else np.broadcast_to(o, (len(p), 2))
    xy = np.stack([p["col"] - oo[:, 1], p["row"] - oo[:, 0]], -1) @ T.T
    p["col"], p["row"] = xy[:, 0] + oo[:, 1], xy[:, 1] + oo[:, 0]
    # the result is circular: its calibration has no ellipticity left (so a second call refuses instead of
    # correcting twice); the ellipse removed is kept in info
    return BraggVectors(
        bv.scan_shape,
        bv.detector_shape,
        p,
        bv.calibration.with_(ellipticity=None),
        bv.method,
        {**bv.info, "ellipticity_corrected": (a, b, theta)},
    )


__all__ = [
    "origin_map",
    "fit_origin_plane",
    "calibrate_origin",
    "correct_origin",
    "fit_ellipticity",
    "ring_labels",
    "ellipticity_from_bragg",
    "calibrate_ellipticity",
    "correct_ellipticity",
]
