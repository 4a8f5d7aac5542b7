"""scripts/analyze.py end to end on a small scan with ground truth, and its one-line refusal of bad input."""

import subprocess
import sys
from pathlib import Path

import zarr
from test_analysis_classical import strained_scan

from stemforge import analysis

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "analyze.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_analyze_writes_maps_figures_and_report(tmp_path):
    cube, gt, truth = strained_scan(dose=2e6)
    cube.ground_truth = {**gt, "reflections_px": truth}
    analysis.save(cube, tmp_path / "scan.zarr")
    out = tmp_path / "out"
    proc = run(
        f"data.path={tmp_path / 'scan.zarr'}",
        "methods=[classical]",
        f"output.dir={out}",
        "orientation.enabled=false",
        "strain.reference=[0,1,null,null]",
        "progress=false",
        "classical.min_relative_intensity=0.1",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "strain RMSE (%)" in proc.stdout and (out / "report.txt").exists()
    for name in ("virtual.png", "disks.png", "strain_classical.png"):
        assert (out / name).stat().st_size > 0
    g = zarr.open_group(str(out / "maps.zarr"), mode="r")
    assert g.attrs["complete"] and g["classical/strain/exx"].shape == (3, 4)
    assert g["virtual_bf"].shape == (3, 4)
    assert g["classical"].attrs["scores"]["strain"]["rmse"] < 2e-3


def test_analyze_refuses_a_missing_file_in_one_line(tmp_path):
    proc = run(f"data.path={tmp_path / 'nope.zarr'}", f"output.dir={tmp_path / 'out'}", cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "no such" in proc.stderr
    assert not (tmp_path / "out" / "maps.zarr").exists() and not (tmp_path / "out" / "report.txt").exists()
