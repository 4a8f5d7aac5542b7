"""Bragg disk finding: template cross-correlation (classical) or a registry network (``method="ml"``).

Both return :class:`~analysis.braggvectors.BraggVectors` in the scan's detector pixels, so lattice fitting, strain
and orientation mapping take either.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
from scipy import ndimage

from .braggvectors import PEAK_DTYPE, BraggVectors
from .datacube import AnalysisError, as_datacube


def _parabola(fm, f0, fp):
    den = fm - 2 * f0 + fp
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(den < 0, 0.5 * (fm - fp) / np.where(den < 0, den, -1.0), 0.0)
    return np.clip(off, -0.5, 0.5)


def correlate(patterns: np.ndarray, template_ft: np.ndarray, corr_power: float = 1.0) -> np.ndarray:
    """Cross-correlation of patterns ``(B, H, W)`` with a template given by its FFT (``corr_power`` 1:
    cross-correlation, 0: phase correlation, between: hybrid)."""
    pf = scipy.fft.rfft2(patterns, workers=-1)
    prod = pf * np.conj(template_ft)
    if corr_power != 1.0:
        prod = prod * np.abs(prod) ** (corr_power - 1.0)
    return scipy.fft.irfft2(prod, s=patterns.shape[-2:], workers=-1)


def find_bragg_disks(data, template=None, method: str = "classical", model=None, *, corr_power: float = 1.0,
                     sigma_px: float = 0.0, min_relative_intensity: float = 0.005, min_absolute_intensity: float = 0.0,
                     min_spacing_px: int = 6, edge_px: int = 4, max_peaks: int = 70, subpixel: str = "parabola",
                     batch_size: int = 64, progress: bool = True, **ml_kwargs) -> BraggVectors:
    """Bragg disks of every pattern of a scan.

    Parameters
    ----------
    data : DataCube or array (Rx, Ry, H, W)
        The scan (numpy or dask, streamed row by row).
    template : array (H, W), optional
        Correlation kernel centred at pixel (0, 0) (:func:`analysis.probe.probe_template`). Default: the
        ``flat`` template of ``data.probe`` or of :func:`analysis.probe.probe_from_data`.
    method : {"classical", "ml"}
        ``"ml"`` calls :func:`analysis.inference.find_bragg_disks_ml` with ``model`` (default
        ``"bragg-fcunet:stable"``) and ``ml_kwargs`` (``store``, ``mc_samples``, ``threshold``...).
    corr_power : float
        1 = cross-correlation, 0 = phase correlation, in between = hybrid correlation.
    sigma_px : float
        Gaussian smoothing of the correlation map before peak finding (px; 0 = none).
    min_relative_intensity, min_absolute_intensity : float
        A peak must exceed this fraction of the pattern's strongest correlation peak / this absolute value.
    min_spacing_px : int
        Peaks closer than this (px) to a stronger one are dropped.
    edge_px : int
        Peaks closer than this to the detector edge are dropped.
    max_peaks : int
        The strongest ``max_peaks`` are kept.
    subpixel : {"parabola", "none"}
        Sub-pixel refinement: separable 3-point parabola through the correlation around each maximum (about
        0.05–0.1 px on disks of a few px radius at high dose; see tests).

    Returns
    -------
    BraggVectors
        ``intensity`` is the correlation value; ``sigma_px`` NaN (the classical method gives no uncertainty).
    """
    if method == "ml":
        from .inference import find_bragg_disks_ml

        return find_bragg_disks_ml(data, model=model or "bragg-fcunet:stable", **ml_kwargs)
    if method != "classical":
        raise AnalysisError(f"unknown method {method!r}: use 'classical' or 'ml'")
    if ml_kwargs:
        raise AnalysisError(f"unexpected arguments for the classical method: {sorted(ml_kwargs)}")
    if subpixel not in ("com", "parabola", "none"):
        raise AnalysisError(f"subpixel must be 'com', 'parabola' or 'none', got {subpixel!r}")
    cube = as_datacube(data)
    H, W = cube.detector_shape
    if template is None:
        from .probe import probe_from_data, probe_template

        probe = cube.probe if cube.probe is not None else probe_from_data(cube)
        template = probe_template(probe, "flat")
    template = np.asarray(template, dtype=np.float64)
    if template.shape != (H, W):
        raise AnalysisError(f"template shape {template.shape} differs from the detector {(H, W)}")
    if not np.isfinite(template).all() or not np.any(template):
        raise AnalysisError("the template is empty or not finite")
    tft = scipy.fft.rfft2(template)
    from tqdm.auto import tqdm

    parts = []
    Ry = cube.scan_shape[1]
    bar = tqdm(total=int(np.prod(cube.scan_shape)), desc="classical disks", unit="pattern", disable=not progress)
    for rx in range(cube.scan_shape[0]):
        row = np.asarray(cube.data[rx], dtype=np.float64)
        if not np.isfinite(row).all():
            ry = int(np.argmax(~np.isfinite(row).all(axis=(1, 2))))
            raise AnalysisError(f"pattern at scan position ({rx}, {ry}) holds NaN or Inf; mask or replace it first")
        for start in range(0, Ry, batch_size):
            corr = correlate(row[start:start + batch_size], tft, corr_power)
            if sigma_px > 0:
                corr = ndimage.gaussian_filter(corr, (0, sigma_px, sigma_px))
            for b in range(corr.shape[0]):
                parts.append(_peaks_one(corr[b], rx, start + b, min_relative_intensity, min_absolute_intensity,
                                        min_spacing_px, edge_px, max_peaks, subpixel))
            bar.update(corr.shape[0])
    bar.close()
    peaks = np.concatenate(parts) if parts else np.zeros(0, PEAK_DTYPE)
    return BraggVectors(cube.scan_shape, cube.detector_shape, peaks, cube.calibration, "classical",
                        {"corr_power": corr_power, "subpixel": subpixel})


def _peaks_one(c, rx, ry, rel, absolute, spacing, edge, max_peaks, subpixel):
    H, W = c.shape
    local = c == ndimage.maximum_filter(c, size=3, mode="nearest")
    thr = max(rel * c.max(), absolute)
    local &= c > thr
    local[:edge, :], local[H - edge:, :], local[:, :edge], local[:, W - edge:] = False, False, False, False
    rr, cc = np.nonzero(local)
    vals = c[rr, cc]
    order = np.argsort(-vals, kind="stable")
    rr, cc, vals = rr[order], cc[order], vals[order]
    keep = []
    for i in range(len(rr)):  # greedy minimum spacing, strongest first
        if len(keep) >= max_peaks:
            break
        if all((rr[i] - rr[j]) ** 2 + (cc[i] - cc[j]) ** 2 >= spacing ** 2 for j in keep):
            keep.append(i)
    rr, cc, vals = rr[keep], cc[keep], vals[keep]
    p = np.zeros(len(rr), PEAK_DTYPE)
    p["rx"], p["ry"], p["intensity"], p["sigma_px"] = rx, ry, vals, np.nan
    if subpixel == "com" and len(rr):
        rad = 2
        dy, dx = np.mgrid[-rad:rad + 1, -rad:rad + 1]
        r0, c0 = np.clip(rr, rad, H - 1 - rad), np.clip(cc, rad, W - 1 - rad)
        win = c[r0[:, None, None] + dy, c0[:, None, None] + dx]
        wgt = np.clip(win - 0.5 * vals[:, None, None], 0, None)
        tot = np.maximum(wgt.sum((1, 2)), 1e-30)
        p["row"] = r0 + (wgt * dy).sum((1, 2)) / tot
        p["col"] = c0 + (wgt * dx).sum((1, 2)) / tot
    elif subpixel == "parabola" and len(rr):
        r0, c0 = np.clip(rr, 1, H - 2), np.clip(cc, 1, W - 2)
        p["row"] = rr + _parabola(c[r0 - 1, c0], c[r0, c0], c[r0 + 1, c0])
        p["col"] = cc + _parabola(c[r0, c0 - 1], c[r0, c0], c[r0, c0 + 1])
    else:
        p["row"], p["col"] = rr, cc
    return p
