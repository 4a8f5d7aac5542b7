"""Both methods on a dynamical scan from sim.synthetic_scan, scored against its ground truth (slow: it simulates).

Stated tolerances (measured values in benchmarks/RESULTS.md): classical strain RMSE < 0.5 %, the shipped
bragg-fcunet 2.0.0 (a small early model) < 2 %; ACOM orientation error of the classical peaks < 10° mean.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_classical_and_ml_recover_strain_and_orientation(tmp_path):
    import analysis
    from analysis.workflow import analyse, report

    path = tmp_path / "scan.zarr"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "simulate.py"), "scan=multilayer",
                           f"scan.path={path}", "scan.scan_shape=[4,2]", "scan.band_strain_percent=[0,2]",
                           "scan.thickness_nm=[20.0]", "sampling=fast", "scan.progress=false",
                           f"hydra.run.dir={tmp_path}/hy"], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cube = analysis.load(path, lazy=False)
    res = analyse(cube, ["classical", "ml"], ml={"model": "bragg-fcunet:stable", "store": str(ROOT / "registry" / "pretrained"),
                                                 "mc_samples": 0},
                  strain_reference=[0, 2, None, None], orientation={"k_max": 1.5}, progress=False)
    print(report(res, cube))
    assert res["classical"].scores["strain"]["rmse"] < 0.005
    assert res["ml"].scores["strain"]["rmse"] < 0.02
    assert res["classical"].scores["orientation"]["mean_deg"] < 10.0
