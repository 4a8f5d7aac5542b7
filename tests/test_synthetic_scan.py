"""sim.synthetic_scan: ground-truth maps, disks where the strain and rotation put them, refusals, CLI."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["scan=multilayer", "scan.scan_shape=[3,2]", "scan.band_strain_percent=[0,5,0]",
        "scan.band_rotation_deg=[0,0,10]", "scan.thickness_nm=[1.0,2.0]", "sampling=fast", "detector.shape=[48,48]",
        "detector.pixel_size=0.06", "scan.progress=false"]


def simulate(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "simulate.py"), *args, f"hydra.run.dir={cwd}/hy"],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scan")
    proc = simulate(*ARGS, f"scan.path={tmp / 's.zarr'}", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import analysis

    return analysis.load(tmp / "s.zarr", lazy=False), tmp


def centroid(img, x, y, rad=2):
    r0, c0 = int(round(y)), int(round(x))
    w = img[r0 - rad:r0 + rad + 1, c0 - rad:c0 + rad + 1].astype(float)
    yy, xx = np.mgrid[-rad:rad + 1, -rad:rad + 1]
    return np.array([(w * xx).sum() / w.sum() + c0, (w * yy).sum() / w.sum() + r0])


def test_maps_equal_the_profile(scan):
    from sim.synthetic_scan import ScanConfig, position_parameters

    cube, _ = scan
    gt = cube.ground_truth
    s = OmegaConf.structured(ScanConfig(profile="multilayer", scan_shape=[3, 2], band_strain_percent=[0, 5, 0],
                                        band_rotation_deg=[0, 0, 10], thickness_nm=[1.0, 2.0]))
    p = position_parameters(s)
    np.testing.assert_allclose(gt["exx"][1], 0.05, atol=1e-7)
    np.testing.assert_allclose(gt["eyy"][1], -0.28 * 0.05, atol=1e-7)
    np.testing.assert_allclose(gt["theta_deg"], p["theta_deg"])
    np.testing.assert_allclose(gt["thickness_A"], [[10, 20]] * 3)
    assert cube.shape == (3, 2, 48, 48) and cube.probe.shape == (48, 48)
    assert cube.metadata["phases"] == ["Si"] and cube.calibration.energy_eV == 300e3
    assert not np.array_equal(cube.data[0, 0], cube.data[0, 1])  # thickness differs along columns


def strong(gt, rx, ry, families=((2, -2, 0), (0, 0, 4))):
    hkl = gt["reflections_hkl"][rx, ry]
    keep = [i for i, h in enumerate(hkl) if tuple(np.abs(h)) in {tuple(np.abs(f)) for f in families}]
    return gt["reflections_px"][rx, ry][keep], hkl[keep]


def test_disks_move_with_strain_and_rotation(scan):
    cube, _ = scan
    gt = cube.ground_truth
    c = np.array([24.0, 24.0])
    p0, h0 = strong(gt, 0, 1)
    for rx in (1, 2):
        p1, h1 = strong(gt, rx, 1)
        assert np.array_equal(h0, h1)
        # the labels move as the theory says: q' = R(θ) (I+ε)^-T q
        t = np.radians(gt["theta_deg"][rx, 1])
        R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        F = np.eye(2) + np.array([[gt["exx"][rx, 1], 0], [0, gt["eyy"][rx, 1]]])
        R_, F_ = (np.eye(2), F) if rx == 1 else (R, np.eye(2))
        expect = (R_ @ np.linalg.inv(F_).T @ (p0 - c).T).T + c
        np.testing.assert_allclose(p1, expect, atol=0.02)
        # and the simulated disks are where the labels are
        for (x, y) in p1:
            assert np.hypot(*(centroid(cube.data[rx, 1], x, y) - (x, y))) < 0.25  # 5x5 centroid of a 1.7 px disk


def test_identical_rerun_is_a_noop_and_bad_values_are_refused(scan):
    cube, tmp = scan
    path = tmp / "s.zarr"
    before = (path / "data" / "zarr.json").stat().st_mtime
    proc = simulate(*ARGS, f"scan.path={path}", cwd=tmp)
    assert proc.returncode == 0 and (path / "data" / "zarr.json").stat().st_mtime == before
    for bad, needle in [("scan.band_strain_percent=[0,25]", "20 %"), ("scan.scan_shape=[0,4]", "scan_shape"),
                        ("scan.profile=spiral", "scan.profile")]:
        proc = simulate(*ARGS, bad, f"scan.path={tmp / 'bad.zarr'}", cwd=tmp)
        assert proc.returncode == 2 and needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not (tmp / "bad.zarr").exists() and not (tmp / "bad.zarr.partial").exists()
