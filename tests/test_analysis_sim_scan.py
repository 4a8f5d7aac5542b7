"""Both methods on a dynamical scan from sim.synthetic_scan, scored against its ground truth (slow: it simulates).

Scan: Si [110] multilayer, 4×2 positions, 20 nm, rows 2–3 at εxx = +2 %. A method that returned zero strain
everywhere would score a strain RMSE of 0.0085 here, so the bounds are stated against that baseline too.
Measured 2026-11-25: classical 0.0005 (εxx 1.96 % in the band), ACOM 6.8°; the shipped bragg-fcunet 2.0.0
(one deterministic pass) 0.0149, with εxx −1.59 % in the band: the wrong sign, worse than the zero baseline. Its
peaks track the classical ones (mean offset 0.25 px, the same in both bands), but the list holds off-lattice peaks
and `choose_lattice_vectors` picks a basis that is not a lattice vector (g1 = (7.86, 8.21) px against the
classical (5.93, 8.45)). Kept visible as a strict xfail until lattice-vector choice is robust to such peaks.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    import analysis
    from analysis.validation import STRAIN_KEYS, strain_scores
    from analysis.workflow import analyse, report

    tmp_path = tmp_path_factory.mktemp("sim_scan")
    path = tmp_path / "scan.zarr"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "simulate.py"), "scan=multilayer",
                           f"scan.path={path}", "scan.scan_shape=[4,2]", "scan.band_strain_percent=[0,2]",
                           "scan.thickness_nm=[20.0]", "sampling=fast", "scan.progress=false",
                           f"hydra.run.dir={tmp_path}/hy"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cube = analysis.load(path, lazy=False)
    res = analyse(cube, ["classical", "ml"], ml={"model": "bragg-fcunet:stable",
                                                 "store": str(ROOT / "registry" / "pretrained"), "mc_samples": 0},
                  strain_reference=[0, 2, None, None], orientation={"k_max": 1.5}, progress=False)
    print(report(res, cube))
    gt = cube.ground_truth
    zero = strain_scores({k: np.zeros_like(gt[k]) for k in STRAIN_KEYS}, gt)["rmse"]
    return res, zero


@pytest.mark.slow
def test_classical_recovers_strain_and_orientation(scored):
    res, zero = scored
    rmse = res["classical"].scores["strain"]["rmse"]
    assert rmse < 0.005 and rmse < 0.25 * zero, (rmse, zero)
    assert res["classical"].scores["orientation"]["mean_deg"] < 10.0


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="ML peaks include off-lattice ones; choose_lattice_vectors then picks a non-lattice basis (+2 % read as -1.6 %)")
def test_ml_recovers_strain(scored):
    res, zero = scored
    rmse = res["ml"].scores["strain"]["rmse"]
    assert rmse < 0.5 * zero, (rmse, zero)
