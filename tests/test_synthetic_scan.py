"""stemforge.sim.synthetic_scan / stemforge.sim.scan_profiles: maps equal the profiles, disks sit where strain and
rotation put them,
dedupe changes no byte, refusals, and the scripts/simulate.py scan group."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from stemforge.sim.config import compose_simulate as compose

ROOT = Path(__file__).resolve().parents[1]
# rows: unstrained | εxx = 5 % (periodic stretched cell) | εxx = 3 % rotated by 10° (sheared in the crystal frame:
# non-periodic box); columns: 1 nm | 2 nm
TINY = [
    "scan=multilayer",
    "scan.scan_shape=[3,2]",
    "scan.band_strain_percent=[0,5,3]",
    "scan.band_rotation_deg=[0,0,10]",
    "scan.thickness_nm=[1.0,2.0]",
    "sampling=fast",
    "detector.shape=[64,64]",
    "detector.pixel_size_inv_A=0.04",
    "scan.progress=false",
]
C = np.array([32.0, 32.0])  # k = 0 (x=col, y=row)


def simulate(*args, cwd):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "simulate.py"), *args, f"hydra.run.dir={cwd}/hy"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    from stemforge import analysis
    from stemforge.sim.synthetic_scan import generate_scan

    tmp = tmp_path_factory.mktemp("scan")
    cfg = compose(*TINY, f"scan.path={tmp / 's.zarr'}")
    generate_scan(cfg)
    return analysis.load(tmp / "s.zarr", lazy=False), cfg, tmp


def centroid(img, x, y, rad=3):
    """Intensity centroid (x, y) of a (2·rad+1)² window around the pixel nearest (x, y)."""
    r0, c0 = int(round(y)), int(round(x))
    w = img[r0 - rad : r0 + rad + 1, c0 - rad : c0 + rad + 1].astype(float)
    yy, xx = np.mgrid[-rad : rad + 1, -rad : rad + 1]
    return np.array([(w * xx).sum() / w.sum() + c0, (w * yy).sum() / w.sum() + r0])


def test_maps_equal_the_profile(scan):
    from stemforge.sim.synthetic_scan import position_parameters

    cube, cfg, _ = scan
    gt, p = cube.ground_truth, position_parameters(cfg.scan)
    for k in ("exx", "eyy", "exy", "theta_deg"):
        np.testing.assert_allclose(gt[k], p[k], atol=1e-7)
    np.testing.assert_allclose(gt["exx"][:, 0], [0, 0.05, 0.03], atol=1e-7)
    np.testing.assert_allclose(gt["eyy"][:, 0], [0, -0.28 * 0.05, -0.28 * 0.03], atol=1e-7)
    np.testing.assert_allclose(gt["theta_deg"][:, 0], [0, 0, 10])
    np.testing.assert_allclose(gt["thickness_A"], p["thickness_A"], atol=1.0)  # nearest slice boundary (≤ 2 Å)
    np.testing.assert_array_equal(gt["phase"], 0)
    np.testing.assert_array_equal(gt["zone_axis"], np.broadcast_to([1, 1, 0], (3, 2, 3)))
    assert cube.shape == (3, 2, 64, 64) and cube.probe.shape == (64, 64) and cube.data.dtype == np.float32
    assert cube.metadata["phases"] == ["Si"] and cube.calibration.energy_eV == 300e3
    assert cube.calibration.origin_px == (32.0, 32.0) and cube.calibration.pixel_size_inv_A == 0.04
    assert 0.5 < cube.data.sum(axis=(2, 3)).min() <= cube.data.sum(axis=(2, 3)).max() <= 1.0 + 1e-6
    assert not np.array_equal(cube.data[0, 0], cube.data[0, 1])  # thickness differs along columns


def test_disks_move_as_strain_and_rotation_predict(scan):
    """Reciprocal vectors map by F⁻ᵀ = (I+ε)⁻¹ Rθ (= Rθ (I+ε_crystal)⁻ᵀ): the stored labels and the simulated
    disk centroids of the strained (row 1) and strained + rotated (row 2) positions are where that map sends the
    unstrained disks (row 0); a wrong rotation sign would miss by ~2·|g|·sin 10° ≈ 3 px."""
    from stemforge.sim.scan_profiles import reciprocal_map

    cube, _, _ = scan
    gt = cube.ground_truth
    vis = gt["reflections_visible"][0, 1]
    hkl0, px0 = gt["reflections_hkl"][0, 1][vis], gt["reflections_px"][0, 1][vis]
    strong = np.any(hkl0 != 0, axis=1) & (np.arange(len(hkl0)) < 24)  # the 23 strongest diffracted disks
    checked = 0
    for rx in (1, 2):
        M = reciprocal_map(gt["exx"][rx, 1], gt["eyy"][rx, 1], gt["exy"][rx, 1], gt["theta_deg"][rx, 1])
        expect = (M @ (px0 - C).T).T + C
        lookup = {tuple(h): xy for h, xy in zip(gt["reflections_hkl"][rx, 1], gt["reflections_px"][rx, 1])}
        img = cube.data[rx, 1]
        for h, e in zip(hkl0[strong], expect[strong]):
            if not (4 <= e[0] < 60 and 4 <= e[1] < 60):
                continue
            np.testing.assert_allclose(lookup[tuple(h)], e, atol=1e-3)  # the labels follow the map
            err = np.hypot(*(centroid(img, *e) - e))
            assert err < 0.15, (rx, h, err)  # the simulated disks too (radius 2.5 px; measured ≤ 0.11 px)
            checked += 1
        assert np.hypot(*(expect - px0)[strong].T).max() > (0.6, 2.0)[rx - 1]  # ≫ the tolerance: motion is seen
    assert checked >= 30, checked


def test_dedupe_gives_the_same_bytes(scan, tmp_path):
    from stemforge.sim.synthetic_scan import generate_scan

    cube, _, _ = scan
    generate_scan(compose(*TINY, "scan.dedupe=false", f"scan.path={tmp_path / 'nd.zarr'}"))
    import zarr

    g = zarr.open_group(str(tmp_path / "nd.zarr"), mode="r")
    assert g.attrs["multislice_sets"] == 6  # vs 3 with dedupe
    np.testing.assert_array_equal(g["data"][...], cube.data)
    for k in ("thickness_A", "reflections_px", "rotation"):
        np.testing.assert_array_equal(g[f"ground_truth/{k}"][...], cube.ground_truth[k])


def test_rerun_is_a_noop_and_a_changed_config_is_refused(scan):
    from stemforge.sim.config import ConfigError
    from stemforge.sim.synthetic_scan import generate_scan

    _, cfg, tmp = scan
    path = tmp / "s.zarr"
    before = (path / "zarr.json").stat().st_mtime_ns
    assert generate_scan(compose(*TINY, f"scan.path={path}", "scan.progress=true", "scan.dedupe=false")) == str(path)
    assert (path / "zarr.json").stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match="another configuration"):
        generate_scan(compose(*TINY, f"scan.path={path}", "scan.defocus_A=50"))
    assert (path / "zarr.json").stat().st_mtime_ns == before and not (tmp / "s.zarr.partial").exists()


def test_bad_values_are_one_line_config_errors():
    from stemforge.sim.config import ConfigError, ScanConfig
    from stemforge.sim.scan_profiles import validate_scan

    for profile in ("multilayer", "smooth", "grains"):
        validate_scan(OmegaConf.structured(ScanConfig(profile=profile)))
    for bad, needle in [
        (dict(band_strain_percent=[0, -20.0]), "below 20 %"),
        (dict(scan_shape=[4, 0]), "scan_shape"),
        (dict(profile="spiral"), "scan.profile"),
        (dict(thickness_nm=[0.0]), "thickness_nm"),
        (dict(step_A=0.0), "step_A"),
        (dict(structures=[]), "structures"),
        (dict(profile="smooth", strain_amplitude_percent=25.0), "below 20 %"),
        (dict(profile="smooth", strain_levels=1), "strain_levels"),
        (dict(energy_eV=300.0), "energy_eV"),
    ]:
        with pytest.raises(ConfigError, match=needle) as info:
            validate_scan(OmegaConf.structured(ScanConfig(**{"profile": "multilayer", **bad})))
        assert "\n" not in str(info.value)


def test_smooth_profile_is_a_rotated_quantised_bump():
    from stemforge.sim.config import ScanConfig
    from stemforge.sim.scan_profiles import crystal_frame_strain, position_parameters, strain_tensor

    s = OmegaConf.structured(
        ScanConfig(
            profile="smooth",
            scan_shape=[16, 12],
            strain_amplitude_percent=1.0,
            shear_ratio=0.5,
            poisson_ratio=0.25,
            strain_levels=5,
            rotation_amplitude_deg=2.0,
        )
    )
    p = position_parameters(s)
    eps = strain_tensor(p["exx"], p["eyy"], p["exy"])
    U = crystal_frame_strain(eps, p["theta_deg"])
    a = U[..., 0, 0]
    np.testing.assert_allclose(U[..., 0, 1], 0.5 * a, atol=1e-15)  # fixed crystal-frame tensor a·[[1, s], [s, −ν]]
    np.testing.assert_allclose(U[..., 1, 1], -0.25 * a, atol=1e-15)
    assert sorted(np.unique(np.round(a * 100, 9))) == [0.0, 0.25, 0.5, 0.75, 1.0]  # 5 levels, peak in the middle
    np.testing.assert_allclose(a[[7, 8, 7, 8], [5, 5, 6, 6]], 0.01, rtol=1e-12)
    assert abs(a[0, 0]) < 1e-15 and abs(a[-1, -1]) < 1e-15
    assert np.all(np.diff(p["theta_deg"], axis=1) > 0) and np.all(p["theta_deg"] == p["theta_deg"][:1])
    assert np.abs(p["theta_deg"]).max() < 2.0 and np.abs(p["exy"]).max() > 0.004  # rotation and shear both present
    np.testing.assert_allclose(p["theta_deg"][:, ::-1], -p["theta_deg"], atol=1e-12)


def test_grains_through_the_script(tmp_path):
    """scripts/simulate.py scan=grains: phases, rotations (crystal→lab = Rz(θ)·Q), disks at the labels; a bad value
    exits 2 with one line and writes nothing."""
    from stemforge import analysis
    from stemforge.sim.config import ScanConfig
    from stemforge.sim.frames import rotation_z as _rot_z
    from stemforge.sim.scan_profiles import position_parameters
    from stemforge.sim.specimen import zone_axis_specimen
    from stemforge.sim.structures import load_structure

    args = [
        "scan=grains",
        "scan.scan_shape=[2,3]",
        "scan.num_grains=2",
        "scan.thickness_nm=[1.0]",
        "sampling=fast",
        "detector.shape=[48,48]",
        "detector.pixel_size_inv_A=0.06",
    ]
    proc = simulate(*args, f"scan.path={tmp_path / 'g.zarr'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "grains scan (2, 3, 48, 48) of Si/Cu [001]" in proc.stdout and "multislice sets" in proc.stdout
    cube = analysis.load(tmp_path / "g.zarr", lazy=False)
    gt = cube.ground_truth
    p = position_parameters(
        OmegaConf.structured(
            ScanConfig(
                profile="grains", scan_shape=[2, 3], num_grains=2, structures=["Si", "Cu"], grain_rotation_deg=30.0
            )
        )
    )
    assert cube.metadata["phases"] == ["Si", "Cu"]
    np.testing.assert_array_equal(gt["phase"], p["phase"])
    assert set(np.unique(gt["phase"])) == {0, 1}  # seed 0 puts both phases in this 2×3 scan
    np.testing.assert_allclose(gt["theta_deg"], p["theta_deg"], atol=1e-6)
    unrotated = [zone_axis_specimen(load_structure(n), (0, 0, 1), 10.0, 10.0).rotation for n in ("Si", "Cu")]
    checked = 0
    for rx in range(2):
        for ry in range(3):
            R0 = unrotated[int(gt["phase"][rx, ry])]
            np.testing.assert_allclose(gt["rotation"][rx, ry], _rot_z(gt["theta_deg"][rx, ry]) @ R0, atol=1e-9)
            vis = gt["reflections_visible"][rx, ry]
            xy = gt["reflections_px"][rx, ry][vis]
            img = cube.data[rx, ry]
            for x, y in xy[:5]:  # the strongest disks are where the truth puts them
                if 3 <= x < 45 and 3 <= y < 45 and img[int(round(y)), int(round(x))] > 1e-4:
                    assert np.hypot(*(centroid(img, x, y, rad=2) - (x, y))) < 0.3
                    checked += 1
    assert checked >= 12, checked
    a, b = (np.argwhere(gt["phase"] == k)[0] for k in (0, 1))
    assert not np.allclose(cube.data[tuple(a)], cube.data[tuple(b)])

    proc = simulate(
        *args,
        "scan.band_strain_percent=[0,25]",
        "scan.profile=multilayer",
        f"scan.path={tmp_path / 'bad.zarr'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "below 20 %" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "bad.zarr").exists() and not (tmp_path / "bad.zarr.partial").exists()


def test_an_existing_incomplete_group_is_refused_and_kept(tmp_path):
    import zarr

    from stemforge.sim.config import ConfigError
    from stemforge.sim.synthetic_scan import generate_scan

    path = tmp_path / "other.zarr"
    zarr.open_group(str(path), mode="w").attrs["owner"] = "someone else"
    with pytest.raises(ConfigError, match="not a complete stemforge scan"):
        generate_scan(compose("scan=multilayer", f"scan.path={path}"))
    assert dict(zarr.open_group(str(path), mode="r").attrs) == {"owner": "someone else"}


def test_an_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    """Interrupted after every array is written, before the last attributes: nothing at path, no .partial."""
    import stemforge.sim.synthetic_scan as ss

    def boom(*a, **k):
        assert (tmp_path / "i.zarr.partial" / "data").exists()
        raise KeyboardInterrupt

    monkeypatch.setattr(ss, "_versions", boom)
    with pytest.raises(KeyboardInterrupt):
        ss.generate_scan(compose(*TINY, f"scan.path={tmp_path / 'i.zarr'}"))
    assert list(tmp_path.iterdir()) == []
