"""Scores of analysis results against the ground truth of synthetic scans (:mod:`stemforge.sim.synthetic_scan`).

Used by ``scripts/analyze.py`` (when the scan carries ground truth) and ``benchmarks/analysis_accuracy.py``:

* :func:`disk_scores` — precision, recall, F1 and position RMSE (px) of Bragg peaks against the kinematic
  reflection positions of the strained, rotated crystal (``ground_truth/reflections_px`` where
  ``reflections_visible``), matched one-to-one within a tolerance (Hungarian,
  :func:`stemforge.networks.peaks.match_peaks`);
* :func:`strain_scores` — RMSE of εxx, εyy, εxy (dimensionless) and θ (degrees) against the ground-truth maps;
* :func:`orientation_scores` — symmetry-reduced misorientation (degrees) against ground-truth rotations.
"""

from __future__ import annotations

import numpy as np

from .braggvectors import BraggVectors
from .datacube import AnalysisError

STRAIN_KEYS = ("exx", "eyy", "exy")


def disk_scores(
    bv: BraggVectors,
    truth_px: np.ndarray,
    visible: np.ndarray | None = None,
    tolerance_px: float = 2.0,
    exclude_center_px: float | None = None,
) -> dict:
    """Detection scores of ``bv`` against true peak positions.

    Parameters
    ----------
    bv : BraggVectors
    truth_px : array (Rx, Ry, R, 2)
        True ``(x=col, y=row)`` positions in px, NaN-padded.
    visible : bool array (Rx, Ry, R), optional
        Which true reflections count (default: every finite one).
    tolerance_px : float
        Largest distance of a match (px).
    exclude_center_px : float, optional
        Ignore true and found peaks within this distance of the detector centre (the direct beam), for methods
        that do not report it.

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1``, ``pos_rmse_px`` (over matched pairs), ``matched``, ``found``, ``true``.
    """
    from stemforge.networks.peaks import match_peaks

    truth_px = np.asarray(truth_px, dtype=np.float64)
    if truth_px.shape[:2] != bv.scan_shape or truth_px.shape[-1] != 2:
        raise AnalysisError(f"truth positions {truth_px.shape} do not match the scan {bv.scan_shape} (Rx, Ry, R, 2)")
    centre = np.array([bv.detector_shape[1] // 2, bv.detector_shape[0] // 2], dtype=np.float64)
    tp = found = true = 0
    sq = []
    for rx in range(bv.scan_shape[0]):
        for ry in range(bv.scan_shape[1]):
            t = truth_px[rx, ry]
            keep = np.isfinite(t).all(-1)
            if visible is not None:
                keep &= np.asarray(visible[rx, ry], dtype=bool)
            t = t[keep]
            p = bv.at(rx, ry)
            pred = np.stack([p["col"], p["row"]], 1).astype(np.float64)
            if exclude_center_px:
                t = t[np.hypot(*(t - centre).T) > exclude_center_px]
                pred = pred[np.hypot(*(pred - centre).T) > exclude_center_px]
            _, _, dist = match_peaks(pred, t, tolerance_px) if len(pred) and len(t) else (None, None, np.zeros(0))
            tp += len(dist)
            found += len(pred)
            true += len(t)
            sq.extend(dist**2)
    precision = tp / found if found else 0.0
    recall = tp / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    rmse = float(np.sqrt(np.mean(sq))) if sq else float("nan")
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "pos_rmse_px": rmse,
        "matched": tp,
        "found": found,
        "true": true,
    }


def strain_scores(strain: dict, ground_truth: dict, mask: np.ndarray | None = None) -> dict:
    """RMSE of measured strain maps against the ground truth over valid (finite) positions.

    Returns ``rmse_exx``, ``rmse_eyy``, ``rmse_exy`` (dimensionless), ``rmse_theta_deg`` (when both have θ),
    ``rmse`` (over the three strain components together) and ``valid_fraction``.
    """
    missing = [k for k in STRAIN_KEYS if k not in strain or k not in ground_truth]
    if missing:
        raise AnalysisError(f"strain scores need {missing} in both the measured and the ground-truth maps")
    shape = np.shape(ground_truth["exx"])
    ok = np.ones(shape, bool) if mask is None else np.asarray(mask, bool).copy()
    for k in STRAIN_KEYS:
        ok &= np.isfinite(strain[k]) & np.isfinite(ground_truth[k])
    out = {"valid_fraction": float(ok.mean())}
    if not ok.any():
        return {**out, "rmse": float("nan"), **{f"rmse_{k}": float("nan") for k in STRAIN_KEYS}}
    errs = []
    for k in STRAIN_KEYS:
        d = (np.asarray(strain[k]) - np.asarray(ground_truth[k]))[ok]
        errs.append(d)
        out[f"rmse_{k}"] = float(np.sqrt(np.mean(d**2)))
    out["rmse"] = float(np.sqrt(np.mean(np.concatenate(errs) ** 2)))
    if "theta_deg" in strain and "theta_deg" in ground_truth:
        d = (np.asarray(strain["theta_deg"]) - np.asarray(ground_truth["theta_deg"]))[ok]
        d = (d + 180.0) % 360.0 - 180.0
        out["rmse_theta_deg"] = float(np.sqrt(np.nanmean(d**2)))
    return out


def orientation_scores(omap, rotation_truth: np.ndarray) -> dict:
    """Misorientation (degrees, crystal symmetry considered) of an
    :class:`stemforge.analysis.orientation.OrientationMap`
    against ground-truth rotations ``(Rx, Ry, 3, 3)``: ``mean_deg``, ``median_deg``, ``p90_deg``,
    ``valid_fraction``."""
    err = omap.misorientation_deg(np.asarray(rotation_truth, dtype=np.float64))
    ok = np.isfinite(err)
    if not ok.any():
        return {"mean_deg": float("nan"), "median_deg": float("nan"), "p90_deg": float("nan"), "valid_fraction": 0.0}
    e = err[ok]
    return {
        "mean_deg": float(e.mean()),
        "median_deg": float(np.median(e)),
        "p90_deg": float(np.percentile(e, 90)),
        "valid_fraction": float(ok.mean()),
    }
