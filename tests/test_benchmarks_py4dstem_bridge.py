"""benchmarks/analysis_accuracy.py: py4DSTEM-style peaks → stemforge BraggVectors (no py4DSTEM needed)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("analysis_accuracy", ROOT / "benchmarks" / "analysis_accuracy.py")
aa = importlib.util.module_from_spec(spec)
spec.loader.exec_module(aa)


def test_py4dstem_peaks_become_bragg_vectors_with_qx_as_row():
    from stemforge.analysis.datacube import Calibration

    # a 2x3 scan; py4DSTEM lists peaks per position in row-major scan order, qx = detector row (axis 2 of the data)
    counts = np.array([2, 0, 1, 0, 3, 1])
    qx = np.array([10.25, 20.0, 30.5, 40.0, 41.0, 42.0, 50.0])
    qy = np.array([60.75, 70.0, 5.0, 6.0, 7.0, 8.0, 9.5])
    inten = np.arange(7, dtype=float) + 1
    cal = Calibration(pixel_size_inv_A=0.03, origin_px=(64.0, 64.0))
    bv = aa.py4dstem_to_bragg((2, 3), (128, 96), counts, qx, qy, inten, cal, {"source": "test"})
    assert bv.scan_shape == (2, 3) and bv.detector_shape == (128, 96) and bv.method == "py4dstem"
    np.testing.assert_array_equal(bv.counts(), counts.reshape(2, 3))
    p = bv.at(0, 0)
    np.testing.assert_allclose(p["row"], [10.25, 20.0])
    np.testing.assert_allclose(p["col"], [60.75, 70.0])
    np.testing.assert_allclose(p["intensity"], [1, 2])
    assert np.isnan(p["sigma_px"]).all()
    np.testing.assert_allclose(bv.at(0, 2)["row"], [30.5])
    np.testing.assert_allclose(bv.at(1, 1)["col"], [6.0, 7.0, 8.0])
    np.testing.assert_allclose(bv.at(0, 2)["col"], [5.0])
    np.testing.assert_allclose(bv.at(1, 2)[["row", "col"]].tolist(), [(50.0, 9.5)])
    assert len(bv.at(0, 1)) == 0 and len(bv.at(1, 0)) == 0
    assert bv.calibration.pixel_size_inv_A == 0.03 and bv.info["source"] == "test"


def test_converted_peaks_score_against_truth_in_col_row_order():
    """A peak at image (row 30, col 80) is py4DSTEM's (qx 30, qy 80) and stemforge's truth (x 80, y 30)."""
    from stemforge.analysis.validation import disk_scores

    img = np.zeros((64, 96))
    img[30, 80] = 1.0
    qx, qy = np.unravel_index(np.argmax(img), img.shape)  # how py4DSTEM indexes data[rx, ry, qx, qy]
    bv = aa.py4dstem_to_bragg((1, 1), img.shape, [1], [qx + 0.2], [qy - 0.1], [1.0])
    truth = np.array([[[[80.0, 30.0]]]])  # (x = col, y = row)
    s = disk_scores(bv, truth, tolerance_px=2.0)
    assert s["f1"] == 1.0 and s["pos_rmse_px"] == pytest.approx(np.hypot(0.2, 0.1), abs=1e-6)
    swapped = aa.py4dstem_to_bragg((1, 1), img.shape, [1], [qy], [qx], [1.0])
    assert disk_scores(swapped, truth, tolerance_px=2.0)["f1"] == 0.0


def test_counts_must_match_scan_and_peaks():
    with pytest.raises(ValueError):
        aa.py4dstem_to_bragg((2, 2), (32, 32), [1, 0, 0], [1.0], [1.0], [1.0])
    with pytest.raises(ValueError):
        aa.py4dstem_to_bragg((1, 2), (32, 32), [1, 1], [1.0], [1.0], [1.0])


def test_parameters_follow_stemforge_classical_settings():
    p = aa.py4dstem_params({"min_relative_intensity": 0.02, "min_spacing_px": 4})["find_Bragg_disks"]
    assert p["minRelativeIntensity"] == 0.02 and p["minPeakSpacing"] == 4 and p["relativeToPeak"] == 0
    assert p["edgeBoundary"] == 4 and isinstance(p["edgeBoundary"], int) and p["maxNumPeaks"] == 70
    assert p["corrPower"] == 1 and p["sigma_cc"] == 0 and p["subpixel"] == "multicorr" and p["upsample_factor"] == 16


@pytest.mark.parametrize("python", [sys.executable, "/nonexistent/bin/python"])
def test_a_python_without_py4dstem_is_one_line_exit_2(python):
    if python == sys.executable and importlib.util.find_spec("py4DSTEM") is not None:
        pytest.skip("py4DSTEM is importable here")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "analysis_accuracy.py"), "--quick", "--py4dstem-python", python],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "py4DSTEM" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""  # stopped before simulating or analysing anything
