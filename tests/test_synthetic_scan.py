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
    np.testing.assert_allclose(gt["thickness_A"], [[10, 20]] * 3, atol=1.5)  # to the nearest slice boundary
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


def compose(*overrides):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    from sim.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hcompose(config_name="simulate", overrides=list(overrides))


def test_bad_values_are_config_errors_without_simulating():
    from sim.config import ConfigError
    from sim.synthetic_scan import ScanConfig, validate_scan

    validate_scan(OmegaConf.structured(ScanConfig(profile="multilayer")))
    for bad, needle in [(dict(band_strain_percent=[0, -20.0]), "20 %"), (dict(scan_shape=[4, 0]), "scan_shape"),
                        (dict(profile="spiral"), "scan.profile"), (dict(thickness_nm=[0.0]), "thickness_nm"),
                        (dict(step_A=0.0), "step_A"), (dict(structures=[]), "structures")]:
        with pytest.raises(ConfigError, match=needle):
            validate_scan(OmegaConf.structured(ScanConfig(**{"profile": "multilayer", **bad})))


def test_grains_parameters_are_constant_per_grain():
    from sim.synthetic_scan import ScanConfig, position_parameters

    s = OmegaConf.structured(ScanConfig(profile="grains", scan_shape=[12, 10], structures=["Si", "Cu"],
                                        num_grains=4, grain_rotation_deg=30.0, seed=3))
    p = position_parameters(s)
    assert p["phase"].shape == (12, 10) and set(np.unique(p["phase"])) <= {0, 1}
    sets = {(int(a), float(b)) for a, b in zip(p["phase"].ravel(), p["theta_deg"].ravel())}
    assert 2 <= len(sets) <= 4 and np.all(np.abs(p["theta_deg"]) <= 30.0)
    assert np.all(p["exx"] == 0) and np.all(p["eyy"] == 0) and np.all(p["exy"] == 0)
    np.testing.assert_array_equal(position_parameters(s)["theta_deg"], p["theta_deg"])  # seeded


def test_grains_scan_phases_rotations_and_disks(tmp_path):
    import analysis
    from sim.generate import _rot_z
    from sim.specimen import zone_axis_specimen
    from sim.structures import load_structure
    from sim.synthetic_scan import generate_scan, position_parameters

    cfg = compose("scan=grains", "scan.scan_shape=[2,3]", "scan.num_grains=2", "scan.thickness_nm=[1.0]",
                  "scan.progress=false", "sampling=fast", "detector.shape=[40,40]", "detector.pixel_size=0.06",
                  f"scan.path={tmp_path / 'g.zarr'}")
    p = position_parameters(cfg.scan)
    generate_scan(cfg)
    unrotated = [zone_axis_specimen(load_structure(n), (0, 0, 1), 10.0, 10.0).rotation for n in ("Si", "Cu")]
    cube = analysis.load(tmp_path / "g.zarr", lazy=False)
    gt = cube.ground_truth
    assert cube.metadata["phases"] == ["Si", "Cu"]
    np.testing.assert_array_equal(gt["phase"], p["phase"])
    np.testing.assert_allclose(gt["theta_deg"], p["theta_deg"], atol=1e-6)
    assert np.all(np.abs(gt["thickness_A"] - 10.0) <= 1.5)  # 1 nm, to the nearest slice boundary
    checked = 0
    for rx in range(2):
        for ry in range(3):
            # crystal→lab rotation = Rz(θ)·(zone-axis rotation of the unrotated crystal)
            R0 = unrotated[int(gt["phase"][rx, ry])]
            np.testing.assert_allclose(gt["rotation"][rx, ry], _rot_z(gt["theta_deg"][rx, ry]) @ R0, atol=1e-9)
            np.testing.assert_array_equal(gt["zone_axis"][rx, ry], [0, 0, 1])
            vis = gt["reflections_visible"][rx, ry]
            xy, hkl = gt["reflections_px"][rx, ry][vis], gt["reflections_hkl"][rx, ry][vis]
            assert len(xy) >= 5 and np.all(np.isfinite(xy))
            img = cube.data[rx, ry]
            for (x, y), h in zip(xy[:5], hkl[:5]):  # the strongest disks are where the truth puts them
                if 2 <= x < 38 and 2 <= y < 38 and img[int(round(y)), int(round(x))] > 1e-4:
                    assert np.hypot(*(centroid(img, x, y) - (x, y))) < 0.3, (rx, ry, h)
                    checked += 1
    assert checked >= 12, checked
    assert set(np.unique(gt["phase"])) == {0, 1}  # seed 0 puts both phases in this 2×3 scan
    a, b = (np.argwhere(gt["phase"] == k)[0] for k in (0, 1))
    assert not np.allclose(cube.data[tuple(a)], cube.data[tuple(b)])


def test_an_existing_incomplete_group_is_refused_and_kept(tmp_path):
    import zarr

    from sim.config import ConfigError
    from sim.synthetic_scan import generate_scan

    path = tmp_path / "other.zarr"
    zarr.open_group(str(path), mode="w").attrs["owner"] = "someone else"
    cfg = compose("scan=multilayer", f"scan.path={path}")
    with pytest.raises(ConfigError, match="not a complete stemforge scan"):
        generate_scan(cfg)
    assert dict(zarr.open_group(str(path), mode="r").attrs) == {"owner": "someone else"}
