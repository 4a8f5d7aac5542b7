"""Classical analysis on synthetic spot scans with known answers: virtual images, probe, disks, calibration,
lattice fitting and strain."""

import numpy as np
import pytest

from analysis.braggvectors import BraggVectors
from analysis.calibration import correct_ellipticity, fit_ellipticity, fit_origin_plane, origin_map
from analysis.datacube import AnalysisError, Calibration, DataCube
from analysis.disks import find_bragg_disks
from analysis.lattice import choose_lattice_vectors, fit_lattice
from analysis.probe import probe_from_data, probe_template
from analysis.strain import plot_strain_maps, strain_map
from analysis.virtual import mean_pattern, virtual_adf, virtual_bf

H = W = 64
G1, G2 = np.array([11.0, 0.0]), np.array([0.0, 9.0])  # reciprocal basis (x, y) px


def disk(shape, centre, radius=2.5, amp=1.0):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    r = np.hypot(rr - centre[0], cc - centre[1])
    return amp / (1 + np.exp((r - radius) / 0.4))  # soft-edged disk


def lattice_pattern(F=np.eye(2), theta_deg=0.0, origin=(H // 2, W // 2), dose=None, rng=None, hk_max=2):
    th = np.radians(theta_deg)
    R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    M = R @ np.linalg.inv(F).T
    img = np.zeros((H, W))
    pts = []
    for h in range(-hk_max, hk_max + 1):
        for k in range(-hk_max, hk_max + 1):
            x, y = M @ (h * G1 + k * G2)
            r, c = origin[0] + y, origin[1] + x
            if 4 <= r < H - 4 and 4 <= c < W - 4:
                img += disk((H, W), (r, c), amp=1.0 if (h, k) == (0, 0) else 0.3)
                pts.append((c, r))
    if dose:
        img = rng.poisson(img / img.sum() * dose) / dose
    return img, np.array(pts)


def strained_scan(dose=None, seed=0):
    rng = np.random.default_rng(seed)
    Rx, Ry = 3, 4
    data = np.zeros((Rx, Ry, H, W))
    gt = {k: np.zeros((Rx, Ry)) for k in ("exx", "eyy", "exy", "theta_deg")}
    truth = np.full((Rx, Ry, 25, 2), np.nan)
    for i in range(Rx):
        for j in range(Ry):
            exx, eyy, exy, th = (0.0, 0.0, 0.0, 0.0) if i == 0 else (0.01 * j, -0.005 * j, 0.004 * i, 0.5 * j)
            F = np.eye(2) + np.array([[exx, exy], [exy, eyy]])
            data[i, j], pts = lattice_pattern(F, th, dose=dose, rng=rng)
            truth[i, j, : len(pts)] = pts
            gt["exx"][i, j], gt["eyy"][i, j], gt["exy"][i, j], gt["theta_deg"][i, j] = exx, eyy, exy, th
    probe = disk((H, W), (H // 2, W // 2))
    return DataCube(data.astype(np.float32), Calibration(q_pixel_size=0.03), probe=probe), gt, truth


def test_virtual_images_equal_hand_sums():
    cube, _, _ = strained_scan()
    rr, cc = np.mgrid[:H, :W]
    r = np.hypot(rr - H // 2, cc - W // 2)
    np.testing.assert_allclose(virtual_bf(cube, 4), cube.data[..., r < 4].sum(-1), rtol=1e-5)
    np.testing.assert_allclose(virtual_adf(cube, 6, 20), cube.data[..., (r >= 6) & (r < 20)].sum(-1), rtol=1e-5)
    np.testing.assert_allclose(mean_pattern(cube), cube.data.mean((0, 1)), rtol=1e-5, atol=1e-7)


def test_probe_and_templates_are_centred():
    cube, _, _ = strained_scan()
    probe = probe_from_data(cube)
    com = np.array(np.unravel_index(np.argmax(probe), probe.shape))
    assert np.abs(com - (H // 2, W // 2)).max() <= 1
    for kind in ("flat", "gaussian", "sigmoid"):
        t = probe_template(probe, kind)
        assert np.unravel_index(np.argmax(t), t.shape) == (0, 0)
    assert abs(probe_template(probe, "flat").sum()) < 1e-6  # zero-mean kernel
    with pytest.raises(AnalysisError):
        probe_template(np.zeros((8, 8)))


def test_disks_found_at_their_positions():
    from analysis.validation import disk_scores

    cube, _, truth = strained_scan(dose=2e6)
    bv = find_bragg_disks(cube, min_relative_intensity=0.1, progress=False)
    s = disk_scores(bv, truth, tolerance_px=1.5)
    assert s["f1"] == 1.0, s
    assert s["pos_rmse_px"] < 0.08, s


def test_lattice_fit_and_strain_recover_the_ground_truth():
    cube, gt, _ = strained_scan(dose=2e6)
    bv = find_bragg_disks(cube, min_relative_intensity=0.1, progress=False)
    g1, g2 = choose_lattice_vectors(bv, region=[0, 1, 0, 4])
    lat = fit_lattice(bv, g1, g2)
    s = strain_map(lat, reference=[0, 1, 0, 4])
    for k in ("exx", "eyy", "exy"):
        np.testing.assert_allclose(s[k], gt[k], atol=1.5e-3)
    np.testing.assert_allclose(s["theta_deg"], gt["theta_deg"], atol=0.1)
    fig = plot_strain_maps(s, gt)
    assert len(fig.axes) >= 8


def test_dask_input_gives_the_numpy_result():
    da = pytest.importorskip("dask.array")
    cube, _, _ = strained_scan()
    lazy = DataCube(da.from_array(cube.data, chunks=(1, 2, H, W)), cube.calibration, probe=cube.probe)
    a = find_bragg_disks(cube, progress=False)
    b = find_bragg_disks(lazy, progress=False)
    np.testing.assert_array_equal(a.peaks[["rx", "ry", "row", "col"]], b.peaks[["rx", "ry", "row", "col"]])
    np.testing.assert_allclose(virtual_bf(cube, 4), virtual_bf(lazy, 4))


def test_origin_map_recovers_a_descan():
    Rx, Ry = 3, 3
    data = np.zeros((Rx, Ry, H, W))
    true = np.zeros((Rx, Ry, 2))
    for i in range(Rx):
        for j in range(Ry):
            true[i, j] = (30 + 0.7 * i, 33 - 0.4 * j)
            data[i, j] = disk((H, W), true[i, j], radius=4)
    np.testing.assert_allclose(fit_origin_plane(origin_map(data)), true, atol=0.05)


def test_ellipticity_is_recovered_and_removed():
    a, b, th = 20.0, 18.0, 0.3
    t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    c, s = np.cos(th), np.sin(th)
    xy = np.c_[a * np.cos(t), b * np.sin(t)] @ np.array([[c, -s], [s, c]]).T
    fa, fb, fth = fit_ellipticity(xy)
    assert abs(fa - a) < 1e-6 and abs(fb - b) < 1e-6 and abs(np.sin(fth - th)) < 1e-6
    bv = BraggVectors.from_lists((1, 1), (64, 64), {(0, 0): np.c_[xy[:, 1] + 32, xy[:, 0] + 32, np.ones(12)]})
    fixed = correct_ellipticity(bv, (fa, fb, fth))
    r = np.hypot(fixed.peaks["col"] - 32, fixed.peaks["row"] - 32)
    assert r.std() < 1e-4


def test_bad_inputs_are_refused():
    cube, _, _ = strained_scan()
    with pytest.raises(AnalysisError, match="4D"):
        find_bragg_disks(cube.data[0], progress=False)
    bad = cube.data.copy()
    bad[1, 2, 0, 0] = np.nan
    with pytest.raises(AnalysisError, match="NaN"):
        find_bragg_disks(bad, template=probe_template(cube.probe), progress=False)
    with pytest.raises(AnalysisError, match="empty"):
        find_bragg_disks(cube, template=np.zeros((H, W)), progress=False)
    with pytest.raises(AnalysisError, match="unknown method"):
        find_bragg_disks(cube, method="magic", progress=False)
    bv = find_bragg_disks(cube, progress=False)
    lat = fit_lattice(bv, *choose_lattice_vectors(bv))
    with pytest.raises(AnalysisError, match="outside the scan"):
        strain_map(lat, reference=[5, 9, 0, 2])
