"""Scores of analysis results against the ground truth of synthetic scans (:mod:`stemforge.sim.synthetic_scan`).

Used by ``scripts/analyze.py`` (when the scan carries ground truth) and ``benchmarks/analysis_accuracy.py``:

* :func:`true_reflections` — which true reflections a finder should find: by default those *present* in the
  noise-free dynamical pattern at the scan's dose (:func:`stemforge.sim.labels.present` on
  ``ground_truth/reflections_intensity``); ``truth="kinematic"`` is the earlier definition (``reflections_visible``:
  Ewald weight and |V_g| only, which counts ~115 reflections per pattern on 50 nm Si [110] where ~30 carry more
  than 0.1 % of the beam), ``truth="all"`` every kinematic reflection on the detector;
* :func:`disk_scores` — precision, recall, F1, position RMSE (px) and the mean radial offset (px, found − true
  along g: negative inside the true lattice point) of Bragg peaks against those positions
  (``ground_truth/reflections_px``), matched one-to-one within a tolerance (Hungarian,
  :func:`stemforge.networks.peaks.match_peaks`);
* :func:`strain_scores` — RMSE of εxx, εyy, εxy (dimensionless) and θ (degrees) against the ground-truth maps;
* :func:`orientation_scores` — symmetry-reduced misorientation (degrees) against ground-truth rotations.
"""

from __future__ import annotations

import numpy as np

from .braggvectors import BraggVectors
from .datacube import AnalysisError

STRAIN_KEYS = ("exx", "eyy", "exy")
TRUTHS = ("present", "kinematic", "all")
#: Noise-free scans are scored as if recorded at this dose (e⁻ per pattern): what "present" means without noise.
NOISE_FREE_DOSE_E = 1e5


def true_reflections(ground_truth: dict, dose_e: float | None = None, truth: str = "present") -> tuple:
    """The mask ``(Rx, Ry, R)`` of true reflections a disk finder is scored against, and what it means.

    Parameters
    ----------
    ground_truth : dict
        A synthetic scan's ground truth (``reflections_px`` and, for ``present``, ``reflections_intensity`` and
        ``reflections_background``).
    dose_e : float, optional
        Electrons per pattern of the scored data; ``None`` (noise-free data): :data:`NOISE_FREE_DOSE_E`.
    truth : {"present", "kinematic", "all"}
        ``present``: present at ``dose_e`` in the dynamical pattern (:func:`stemforge.sim.labels.present`);
        ``kinematic``: the kinematic flag ``reflections_visible``; ``all``: every reflection on the detector.
        A scan written before present intensities existed is scored ``kinematic`` (said in the description).

    Returns
    -------
    (mask, description)
    """
    from stemforge.sim.labels import PRESENT_SNR, distinct_spots, present

    if truth not in TRUTHS:
        raise AnalysisError(f"truth must be one of {TRUTHS}, got {truth!r}")
    px = np.asarray(ground_truth["reflections_px"])
    # one true disk per detector spot: reflections differing only along the beam project onto the same pixel
    finite = np.apply_along_axis(distinct_spots, -1, px.reshape(*px.shape[:-2], -1)) if px.size else px[..., 0] > 0
    if truth == "present" and "reflections_intensity" in ground_truth:
        dose = NOISE_FREE_DOSE_E if dose_e is None else float(dose_e)
        mask = present(ground_truth["reflections_intensity"], ground_truth["reflections_background"], dose)
        where = "noise-free, scored" if dose_e is None else "scored"
        return mask & finite, f"present ({where} at {dose:g} e⁻/pattern, SNR ≥ {PRESENT_SNR:g})"
    if truth in ("present", "kinematic") and "reflections_visible" in ground_truth:
        note = "" if truth == "kinematic" else " (the scan records no disk intensities)"
        return np.asarray(ground_truth["reflections_visible"], bool) & finite, "kinematic" + note
    return finite, "all kinematic reflections on the detector"


def disk_scores(
    bv: BraggVectors,
    truth_px: np.ndarray,
    visible: np.ndarray | None = None,
    tolerance_px: float = 2.0,
    exclude_center_px: float | None = None,
    positions: np.ndarray | None = None,
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
    positions : bool array (Rx, Ry), optional
        Score only these scan positions (e.g. one thickness step of a scan); default all.

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1``, ``pos_rmse_px`` (over matched pairs), ``radial_offset_px`` (mean of
        (found − true)·ĝ over matched diffracted beams, ĝ the unit vector from the direct beam to the true
        position: negative when peaks sit inside the true lattice points, a bias per-axis means cancel by
        symmetry), ``matched``, ``found``, ``true``. Where there is nothing to find and nothing was found
        (e.g. a thick crystal at 10³ e⁻ whose every reflection, the direct beam too, is below the noise) precision,
        recall and F1 are NaN: a correct outcome with no score, left out of means rather than counted as 0.
    """
    from stemforge.networks.peaks import match_peaks

    truth_px = np.asarray(truth_px, dtype=np.float64)
    if truth_px.shape[:2] != bv.scan_shape or truth_px.shape[-1] != 2:
        raise AnalysisError(f"truth positions {truth_px.shape} do not match the scan {bv.scan_shape} (Rx, Ry, R, 2)")
    centre = np.array([bv.detector_shape[1] // 2, bv.detector_shape[0] // 2], dtype=np.float64)
    origin = centre if bv.calibration.origin_px is None else np.asarray(bv.calibration.origin_px, float)[::-1]
    tp = found = true = 0
    sq, radial = [], []
    for rx in range(bv.scan_shape[0]):
        for ry in range(bv.scan_shape[1]):
            if positions is not None and not positions[rx, ry]:
                continue
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
            if len(pred) and len(t):
                pi, ti, dist = match_peaks(pred, t, tolerance_px)
                g = t[ti] - origin
                norm = np.hypot(*g.T)
                beam = norm > 0.5  # the direct beam has no radial direction
                radial.extend(np.sum((pred[pi] - t[ti])[beam] * g[beam], 1) / norm[beam])
            else:
                dist = np.zeros(0)
            tp += len(dist)
            found += len(pred)
            true += len(t)
            sq.extend(dist**2)
    if not found and not true:  # nothing to find and nothing found: right, but no score
        precision = recall = f1 = float("nan")
    else:
        precision = tp / found if found else 0.0
        recall = tp / true if true else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    rmse = float(np.sqrt(np.mean(sq))) if sq else float("nan")
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "pos_rmse_px": rmse,
        "radial_offset_px": float(np.mean(radial)) if radial else float("nan"),
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
