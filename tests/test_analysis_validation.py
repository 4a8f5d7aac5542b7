"""Scores against ground truth: disk F1 / RMSE and strain RMSE computed as defined."""

import numpy as np
import pytest

from stemforge.analysis.braggvectors import BraggVectors
from stemforge.analysis.datacube import AnalysisError
from stemforge.analysis.validation import disk_scores, strain_scores


def test_disk_scores_count_matches_misses_and_false_peaks():
    truth = np.full((1, 2, 4, 2), np.nan)
    truth[0, 0, :3] = [[10, 10], [20, 10], [30, 30]]  # (x=col, y=row)
    truth[0, 1, :2] = [[5, 5], [40, 40]]
    visible = np.isfinite(truth[..., 0])
    visible[0, 1, 1] = False  # an invisible reflection does not count
    found = {
        (0, 0): [[10.3, 10.0, 1], [10.0, 20.0, 1], [50.0, 50.0, 1]],  # (row, col, intensity): 2 hits, 1 false
        (0, 1): [[5.0, 5.4, 1]],
    }
    bv = BraggVectors.from_lists((1, 2), (64, 64), found)
    s = disk_scores(bv, truth, visible, tolerance_px=1.0)
    assert (s["matched"], s["found"], s["true"]) == (3, 4, 4)
    assert s["precision"] == pytest.approx(0.75) and s["recall"] == pytest.approx(0.75)
    assert s["f1"] == pytest.approx(0.75)
    assert s["pos_rmse_px"] == pytest.approx(np.sqrt((0.3**2 + 0 + 0.4**2) / 3))
    with pytest.raises(AnalysisError, match="do not match the scan"):
        disk_scores(bv, truth[:, :1], visible[:, :1])


def test_strain_scores_are_rmse_over_valid_positions():
    gt = {"exx": np.zeros((2, 2)), "eyy": np.zeros((2, 2)), "exy": np.zeros((2, 2)), "theta_deg": np.zeros((2, 2))}
    meas = {k: v.copy() for k, v in gt.items()}
    meas["exx"][0, 0] = 0.002
    meas["eyy"][1, 1] = np.nan  # a failed fit is left out and reported in valid_fraction
    meas["theta_deg"][0, 1] = 359.0  # angles wrap
    s = strain_scores(meas, gt)
    assert s["valid_fraction"] == pytest.approx(0.75)
    assert s["rmse_exx"] == pytest.approx(0.002 / np.sqrt(3))
    assert s["rmse_theta_deg"] == pytest.approx(1 / np.sqrt(3))
    with pytest.raises(AnalysisError):
        strain_scores({"exx": gt["exx"]}, gt)


def test_disk_scores_with_nothing_to_find():
    """No true reflection: found nothing is right but unscored (NaN, left out of means); found something is 0."""
    from stemforge.analysis.braggvectors import PEAK_DTYPE, BraggVectors
    from stemforge.analysis.validation import disk_scores

    truth = np.full((1, 2, 3, 2), np.nan)
    none = BraggVectors((1, 2), (32, 32), np.zeros(0, PEAK_DTYPE))
    s = disk_scores(none, truth)
    assert np.isnan(s["f1"]) and np.isnan(s["precision"]) and np.isnan(s["recall"]) and s["true"] == 0
    p = np.zeros(1, PEAK_DTYPE)
    p["row"], p["col"] = 5.0, 7.0
    s = disk_scores(BraggVectors((1, 2), (32, 32), p), truth)
    assert s["f1"] == 0.0 and s["precision"] == 0.0 and s["found"] == 1
