"""Classical analysis on synthetic spot scans with known answers: virtual images, probe and templates, disk finding,
origin / descan and ellipticity calibration (lattice fitting and strain: test_analysis_strain.py)."""

import numpy as np
import pytest

from stemforge.analysis.braggvectors import BraggVectors
from stemforge.analysis.calibration import (
    calibrate_ellipticity,
    calibrate_origin,
    correct_ellipticity,
    correct_origin,
    ellipticity_from_bragg,
    fit_ellipticity,
    fit_origin_plane,
    origin_map,
)
from stemforge.analysis.datacube import AnalysisError, Calibration, DataCube
from stemforge.analysis.disks import find_bragg_disks
from stemforge.analysis.lattice import choose_lattice_vectors, fit_lattice
from stemforge.analysis.probe import probe_from_data, probe_template
from stemforge.analysis.strain import strain_map
from stemforge.analysis.validation import disk_scores
from stemforge.analysis.virtual import max_pattern, mean_pattern, virtual_adf, virtual_bf, virtual_image

H = W = 64
G1, G2 = np.array([11.0, 0.0]), np.array([0.0, 9.0])  # reciprocal basis (x, y) px


def disk(shape, centre, radius=2.5, amp=1.0):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    r = np.hypot(rr - centre[0], cc - centre[1])
    return amp / (1 + np.exp((r - radius) / 0.4))  # soft-edged disk


def lattice_pattern(F=None, theta_deg=0.0, origin=(H // 2, W // 2), dose=None, rng=None, hk_max=2):
    """Disks at the reciprocal lattice of a crystal deformed by D = F·R(θ) (F = I + ε symmetric: the convention of
    stemforge.sim.synthetic_scan's ground truth): g' = D⁻ᵀ·g = F⁻¹·R(θ)·g."""
    F = np.eye(2) if F is None else F
    th = np.radians(theta_deg)
    R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    M = np.linalg.inv(F) @ R
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
    """3×4 scan: row 0 unstrained (the reference), rows 1–2 with ε, θ varying by position (D = (I+ε)·Rθ)."""
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
    return DataCube(data.astype(np.float32), Calibration(pixel_size_inv_A=0.03), probe=probe), gt, truth


def random_offset_scan(n=6, seed=1):
    """n patterns of a rotated lattice shifted by random sub-pixel offsets (noise-free), with true positions."""
    rng = np.random.default_rng(seed)
    data, truth = np.zeros((1, n, H, W)), np.full((1, n, 40, 2), np.nan)
    for j in range(n):
        off, th = rng.uniform(-0.5, 0.5, 2), rng.uniform(0, 20)
        img, pts = lattice_pattern(theta_deg=th, origin=(H // 2 + off[0], W // 2 + off[1]))
        data[0, j], truth[0, j, : len(pts)] = img, pts
    probe = disk((H, W), (H // 2, W // 2))
    return DataCube(data.astype(np.float32), Calibration(pixel_size_inv_A=0.03), probe=probe), truth


# ---------------------------------------------------------------- virtual images and probe


def test_virtual_images_equal_hand_sums():
    cube, _, _ = strained_scan()
    rr, cc = np.mgrid[:H, :W]
    r = np.hypot(rr - H // 2, cc - W // 2)
    np.testing.assert_allclose(virtual_bf(cube, 4), cube.data[..., r < 4].sum(-1), rtol=1e-5)
    np.testing.assert_allclose(virtual_adf(cube, 6, 20), cube.data[..., (r >= 6) & (r < 20)].sum(-1), rtol=1e-5)
    np.testing.assert_allclose(mean_pattern(cube), cube.data.mean((0, 1)), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(max_pattern(cube), cube.data.max((0, 1)))
    # an off-axis circular detector (dark field on one reflection) and an arbitrary mask
    off = np.hypot(rr - (H // 2), cc - (W // 2 + 11)) < 3
    np.testing.assert_allclose(
        virtual_image(cube, 0, 3, center=(H // 2, W // 2 + 11)), cube.data[..., off].sum(-1), rtol=1e-5
    )
    half = cc < W // 2
    np.testing.assert_allclose(virtual_image(cube, mask=half), cube.data[..., half].sum(-1), rtol=1e-5)
    with pytest.raises(AnalysisError, match="inner_px < outer_px"):
        virtual_adf(cube, 10, 5)
    with pytest.raises(AnalysisError, match="covers no pixel"):
        virtual_image(cube, mask=np.zeros((H, W), bool))


def test_virtual_bright_field_follows_a_descan():
    # the beam moves by up to 3 px over the scan; a 4 px detector about the per-position origin catches all of it
    data, origins = np.zeros((2, 3, H, W)), np.zeros((2, 3, 2))
    for i in range(2):
        for j in range(3):
            origins[i, j] = (H // 2 + 1.5 * i, W // 2 - 1.5 * j)
            data[i, j] = disk((H, W), origins[i, j])
    rr, cc = np.mgrid[:H, :W]
    hand = np.array(
        [
            [data[i, j][np.hypot(rr - origins[i, j, 0], cc - origins[i, j, 1]) < 4].sum() for j in range(3)]
            for i in range(2)
        ]
    )
    follow = virtual_bf(data, 4, center=origins)
    np.testing.assert_allclose(follow, hand, rtol=1e-10)
    assert np.ptp(follow) < 0.01 * follow.mean()  # the same disk everywhere ...
    fixed = virtual_bf(data, 4)
    assert fixed.min() < 0.8 * follow.min()  # ... which a fixed detector partly misses


def test_probe_and_templates_are_centred():
    cube, _, _ = strained_scan()
    probe = probe_from_data(cube)
    assert np.abs(np.array(np.unravel_index(np.argmax(probe), probe.shape)) - (H // 2, W // 2)).max() <= 1
    # a vacuum region: the mean of those patterns (whole-pixel aligned)
    vac = np.zeros((2, 2, H, W))
    vac[0, :] = disk((H, W), (30, 31))
    vac[1, :] = disk((H, W), (32, 33))  # shifted by 2 px: aligned onto the first
    p = probe_from_data(vac, region=[0, 2, 0, 2])
    np.testing.assert_allclose(p, disk((H, W), (30, 31)), atol=1e-6)
    with pytest.raises(AnalysisError, match="outside the scan"):
        probe_from_data(vac, region=[0, 3, 0, 1])
    for kind in ("flat", "gaussian", "sigmoid", "raw"):
        t = probe_template(probe, kind)
        assert np.unravel_index(np.argmax(t), t.shape) == (0, 0), kind
        com = np.array([(np.fft.fftshift(np.clip(t, 0, None)) * g).sum() for g in np.mgrid[:H, :W]])
        assert np.allclose(com / np.clip(t, 0, None).sum(), (H // 2, W // 2), atol=0.05), kind  # centred sub-pixel
        assert abs(t.sum() - (1.0 if kind == "raw" else 0.0)) < 1e-5, kind  # background-rejecting kernels sum to 0
    # explicit sizes in px change the kernel
    assert not np.allclose(probe_template(probe, "gaussian", sigma_px=3), probe_template(probe, "gaussian", sigma_px=8))
    with pytest.raises(AnalysisError):
        probe_template(np.zeros((8, 8)))
    with pytest.raises(AnalysisError, match="unknown template"):
        probe_template(probe, "mexican")


# ---------------------------------------------------------------- disk finding


def test_disks_found_at_their_positions():
    cube, _, truth = strained_scan(dose=2e6)
    bv = find_bragg_disks(cube, min_relative_intensity=0.1, progress=False)
    s = disk_scores(bv, truth, tolerance_px=1.5)
    assert s["f1"] == 1.0, s
    assert s["pos_rmse_px"] < 0.08, s


@pytest.mark.parametrize("subpixel, limit", [("parabola", 0.06), ("upsample", 0.03), ("com", 0.12)])
def test_subpixel_accuracy_on_random_offsets(subpixel, limit):
    cube, truth = random_offset_scan()
    bv = find_bragg_disks(cube, subpixel=subpixel, min_relative_intensity=0.1, progress=False)
    s = disk_scores(bv, truth, tolerance_px=1.0)
    assert s["f1"] == 1.0 and s["pos_rmse_px"] < limit, s
    if subpixel == "parabola":  # and clearly better than whole pixels
        none = disk_scores(
            find_bragg_disks(cube, subpixel="none", min_relative_intensity=0.1, progress=False), truth, tolerance_px=1.0
        )
        assert none["pos_rmse_px"] > 3 * s["pos_rmse_px"]


def test_hybrid_correlation_and_peak_filters():
    cube, _, truth = strained_scan(dose=2e6)
    s = disk_scores(
        find_bragg_disks(cube, corr_power=0.7, min_relative_intensity=0.1, progress=False), truth, tolerance_px=1.5
    )
    assert s["f1"] == 1.0 and s["pos_rmse_px"] < 0.12, s
    bv = find_bragg_disks(cube, min_relative_intensity=0.1, max_peaks=5, progress=False)
    assert bv.counts().max() == 5
    # the 5 kept are the strongest: the direct beam is among them everywhere
    assert all(
        np.hypot(bv.at(i, j)["row"] - H // 2, bv.at(i, j)["col"] - W // 2).min() < 0.5
        for i in range(3)
        for j in range(4)
    )
    far = find_bragg_disks(cube, min_relative_intensity=0.1, edge_px=20, progress=False)
    assert np.all((far.peaks["row"] >= 19.5) & (far.peaks["row"] <= H - 20.5))
    sparse = find_bragg_disks(cube, min_relative_intensity=0.1, min_spacing_px=12, progress=False)
    for i in range(3):
        for j in range(4):
            p = sparse.at(i, j)
            d = np.hypot(p["row"][:, None] - p["row"], p["col"][:, None] - p["col"]) + 99 * np.eye(len(p))
            assert d.min() >= 11  # whole-pixel maxima ≥ 12 px apart, then refined by < 0.5 px each


def test_ml_method_is_delegated(monkeypatch):
    import stemforge.analysis.inference as inference

    seen = {}

    def fake(cube, **kw):
        seen.update(kw, cube=cube)
        return "ml-result"

    monkeypatch.setattr(inference, "find_bragg_disks_ml", fake)
    cube, _, _ = strained_scan()
    out = find_bragg_disks(cube, method="ml", model="bragg-fcunet:1.0.0", batch_size=3, progress=False, mc_samples=2)
    assert out == "ml-result" and seen["cube"] is cube
    assert seen == {"cube": cube, "model": "bragg-fcunet:1.0.0", "batch_size": 3, "progress": False, "mc_samples": 2}
    seen.clear()
    find_bragg_disks(cube, method="ml")
    assert "model" not in seen  # the inference module's default model
    with pytest.raises(AnalysisError, match="probe="):
        find_bragg_disks(cube, template=np.ones((H, W)), method="ml")
    with pytest.raises(AnalysisError, match="model applies"):
        find_bragg_disks(cube, model="bragg-fcunet:stable")


def test_dask_input_gives_the_numpy_result():
    da = pytest.importorskip("dask.array")
    cube, _, _ = strained_scan(dose=1e5)
    for chunks in ((1, 2, H, W), (2, 3, H, W), (3, 4, H, W)):
        lazy = DataCube(da.from_array(cube.data, chunks=chunks), cube.calibration, probe=cube.probe)
        a = find_bragg_disks(cube, progress=False)
        b = find_bragg_disks(lazy, progress=False, batch_size=5)
        np.testing.assert_array_equal(
            a.peaks[["rx", "ry", "row", "col", "intensity"]], b.peaks[["rx", "ry", "row", "col", "intensity"]]
        )
        np.testing.assert_allclose(virtual_bf(cube, 4), virtual_bf(lazy, 4))
        np.testing.assert_allclose(mean_pattern(cube), mean_pattern(lazy), rtol=1e-6)
        np.testing.assert_allclose(origin_map(cube), origin_map(lazy))
    lazy = DataCube(da.from_array(cube.data, chunks=(1, 2, H, W)), cube.calibration)  # probe from the data
    a = find_bragg_disks(DataCube(cube.data, cube.calibration), progress=False)
    b = find_bragg_disks(lazy, progress=False)
    np.testing.assert_array_equal(a.peaks[["row", "col"]], b.peaks[["row", "col"]])
    bad = cube.data.copy()
    bad[2, 1, 5, 5] = np.inf
    with pytest.raises(AnalysisError, match=r"\(2, 1\) holds NaN or Inf"):
        find_bragg_disks(
            DataCube(da.from_array(bad, chunks=(1, 2, H, W)), cube.calibration, probe=cube.probe), progress=False
        )


# ---------------------------------------------------------------- calibration


def test_origin_map_recovers_a_descan():
    Rx, Ry = 3, 3
    data = np.zeros((Rx, Ry, H, W))
    true = np.zeros((Rx, Ry, 2))
    for i in range(Rx):
        for j in range(Ry):
            true[i, j] = (30 + 0.7 * i, 33 - 0.4 * j)
            data[i, j] = disk((H, W), true[i, j], radius=4)
    np.testing.assert_allclose(fit_origin_plane(origin_map(data)), true, atol=0.05)
    cal, fitted = calibrate_origin(DataCube(data, Calibration(pixel_size_inv_A=0.03)))
    assert isinstance(cal, Calibration) and cal.pixel_size_inv_A == 0.03
    np.testing.assert_allclose(cal.origin_px, true.reshape(-1, 2).mean(0), atol=0.05)
    np.testing.assert_allclose(fitted, true, atol=0.05)


def test_origin_by_correlation_with_bragg_disks_and_an_outlier():
    # a lattice of disks moving with the beam; one pattern has a brighter Bragg disk than its direct beam
    Rx, Ry = 3, 4
    data, true = np.zeros((Rx, Ry, H, W)), np.zeros((Rx, Ry, 2))
    for i in range(Rx):
        for j in range(Ry):
            true[i, j] = (H // 2 - 1.3 + 0.9 * i, W // 2 + 0.6 - 0.7 * j)
            data[i, j], _ = lattice_pattern(origin=true[i, j])
    data[2, 3] += disk((H, W), (10, 10), amp=3.0)  # a bright spot far from the beam (e.g. a hot grain)
    cube = DataCube(data, Calibration(), probe=disk((H, W), (H // 2, W // 2)))
    measured = origin_map(cube, method="correlation")
    assert np.hypot(*(measured[2, 3] - (10, 10))) < 1  # the outlier took the bright spot ...
    ok = np.ones((Rx, Ry), bool)
    ok[2, 3] = False
    assert np.abs(measured[ok] - true[ok]).max() < 0.1
    np.testing.assert_allclose(fit_origin_plane(measured), true, atol=0.1)  # ... and the robust plane ignores it
    np.testing.assert_allclose(origin_map(cube, method="correlation", mask_radius_px=8)[2, 3], true[2, 3], atol=0.1)
    # Bragg vectors moved onto one origin: every position then shows the same lattice
    bv = find_bragg_disks(
        DataCube(data[:2], Calibration(), probe=cube.probe), min_relative_intensity=0.1, progress=False
    )
    fixed = correct_origin(bv, true[:2])
    assert fixed.calibration.origin_px == pytest.approx(tuple(true[:2].reshape(-1, 2).mean(0)))
    beams = np.array(
        [
            min(fixed.at(i, j), key=lambda p: -p["intensity"])[["row", "col"]].tolist()
            for i in range(2)
            for j in range(Ry)
        ]
    )
    assert np.abs(beams - fixed.calibration.origin_px).max() < 0.1


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
    assert r.std() < 1e-4 and abs(r.mean() - b) < 1e-4
    with pytest.raises(AnalysisError, match="no ellipse"):
        correct_ellipticity(bv)


def test_ellipticity_from_a_distorted_ring_of_spots():
    # two rings of 12 spots (a polycrystal-like distribution) seen through a detector stretched 4 % along 25°
    a_over_b, th = 1.04, np.radians(25.0)
    c, s = np.cos(th), np.sin(th)
    Rm = np.array([[c, -s], [s, c]])
    A = Rm @ np.diag([a_over_b, 1.0]) @ Rm.T
    rng = np.random.default_rng(3)
    data = np.zeros((2, 2, H, W))
    for i in range(2):
        for j in range(2):
            img = disk((H, W), (H // 2, W // 2))
            for radius, phase in ((12.0, rng.uniform(0, 30)), (22.0, rng.uniform(0, 30))):
                for ang in np.radians(phase + 30 * np.arange(12)):
                    x, y = A @ (radius * np.array([np.cos(ang), np.sin(ang)]))
                    img += disk((H, W), (H // 2 + y, W // 2 + x), radius=1.5, amp=0.3)
            data[i, j] = rng.poisson(img / img.sum() * 1e6) / 1e6
    cube = DataCube(data, Calibration(pixel_size_inv_A=0.03), probe=disk((H, W), (H // 2, W // 2), radius=1.5))
    bv = find_bragg_disks(cube, min_relative_intensity=0.1, min_spacing_px=3, edge_px=2, progress=False)
    a, b, fth = ellipticity_from_bragg(bv)
    assert abs(a / b - a_over_b) < 0.004 and abs(np.degrees(np.arcsin(np.sin(fth - th)))) < 2.0, (a, b, fth)
    assert abs(b - 12.0) < 0.15  # the inner ring's short axis
    cal = calibrate_ellipticity(bv)
    assert cal.ellipticity == pytest.approx((a, b, fth))
    fixed = correct_ellipticity(bv.__class__(bv.scan_shape, bv.detector_shape, bv.peaks, cal))
    r = np.hypot(fixed.peaks["col"] - W // 2, fixed.peaks["row"] - H // 2)
    inner = r[(r > 6) & (r < 17)]
    r0 = np.hypot(bv.peaks["col"] - W // 2, bv.peaks["row"] - H // 2)
    assert inner.std() < 0.08 and inner.std() < 0.4 * r0[(r0 > 6) & (r0 < 17)].std()
    assert fixed.calibration.ellipticity is None and fixed.info["ellipticity_corrected"] == pytest.approx((a, b, fth))
    with pytest.raises(AnalysisError, match="no ellipse"):  # never corrected twice
        correct_ellipticity(fixed)


# ---------------------------------------------------------------- bad input


def test_bad_inputs_are_refused():
    cube, _, _ = strained_scan()
    with pytest.raises(AnalysisError, match="4D"):
        find_bragg_disks(cube.data[0], progress=False)
    bad = cube.data.copy()
    bad[1, 2, 0, 0] = np.nan
    with pytest.raises(AnalysisError, match="NaN"):
        find_bragg_disks(bad, template=probe_template(cube.probe), progress=False)
    with pytest.raises(AnalysisError, match="NaN"):
        origin_map(bad)
    with pytest.raises(AnalysisError, match="empty"):
        find_bragg_disks(cube, template=np.zeros((H, W)), progress=False)
    with pytest.raises(AnalysisError, match="empty"):
        find_bragg_disks(cube, template=np.zeros((0, 0)), progress=False)
    with pytest.raises(AnalysisError, match="differs from the detector"):
        find_bragg_disks(cube, template=np.ones((8, 8)), progress=False)
    with pytest.raises(AnalysisError, match="unknown method"):
        find_bragg_disks(cube, method="magic", progress=False)
    with pytest.raises(AnalysisError, match="subpixel"):
        find_bragg_disks(cube, subpixel="magic", progress=False)
    with pytest.raises(AnalysisError, match="corr_power"):
        find_bragg_disks(cube, corr_power=2.0, progress=False)
    with pytest.raises(AnalysisError, match="unknown origin method"):
        origin_map(cube, method="magic")
    bv = find_bragg_disks(cube, progress=False)
    lat = fit_lattice(bv, *choose_lattice_vectors(bv))
    with pytest.raises(AnalysisError, match="outside the scan"):
        strain_map(lat, reference=[5, 9, 0, 2])
    with pytest.raises(AnalysisError, match="does not match the scan"):
        strain_map(lat, reference=np.ones((2, 2), bool))


def _weak_and_strong(dose, seed):
    """One 64×64 pattern in fractions of the beam at ``dose`` e⁻: a direct beam, 12 disks whose share of the beam
    falls from 5 % to 0.01 %, and 30 % of the beam spread as a flat background; Poisson noise."""
    rng = np.random.default_rng(seed)
    spots = [(16 + 11 * (i // 4), 10 + 14 * (i % 4) + 0.3 * (i // 4)) for i in range(12)]
    shares = np.geomspace(0.05, 1e-4, len(spots))
    beam = disk((H, W), (H // 2, W // 2))
    img = 0.5 * beam / beam.sum() + 0.3 / (H * W)
    for (r, c), f in zip(spots, shares):
        d = disk((H, W), (r, c))
        img += f * d / d.sum()
    noisy = rng.poisson(img * dose) / dose
    return noisy, np.array([(c, r) for r, c in spots]), shares * dose


def test_shot_noise_threshold_keeps_weak_disks_and_drops_noise():
    from stemforge.analysis.disks import find_bragg_disks_classical

    probe = disk((H, W), (H // 2, W // 2))
    for dose in (1e3, 1e6):
        img, pts, counts = _weak_and_strong(dose, seed=3)
        cube = DataCube(img[None, None].astype(np.float32), probe=probe, metadata={"dose_e_per_pattern": dose})
        snr = find_bragg_disks_classical(
            cube, min_snr=5, min_relative_intensity=1e-6, min_spacing_px=4, edge_px=2, progress=False
        )
        rel = find_bragg_disks_classical(cube, min_relative_intensity=0.02, min_spacing_px=4, edge_px=2, progress=False)
        found = np.stack([snr.peaks["col"], snr.peaks["row"]], 1)
        d = np.hypot(*(found[:, None, :] - np.vstack([pts, [[W // 2, H // 2]]])[None]).transpose(2, 0, 1))
        assert d.min(1).max() < 3, "a peak on noise"  # every kept peak is a disk (or the direct beam)
        hit = d.min(0)[:-1] < 3
        # Rose SNR of each disk: its electrons over the noise of them plus the background under a ~20 px core
        rose = counts / np.sqrt(counts + 0.3 / (H * W) * dose * 20)
        assert hit[rose >= 10].all() and not hit[rose < 1].any(), (dose, rose, hit)
        if dose == 1e6:  # the relative threshold misses disks of 0.01-1 % the snr rule keeps
            rel_pts = np.stack([rel.peaks["col"], rel.peaks["row"]], 1)
            rel_hit = np.hypot(*(rel_pts[:, None, :] - pts[None]).transpose(2, 0, 1)).min(0) < 3
            assert hit.sum() >= rel_hit.sum() + 4
    # the same data as whole counts needs no dose; in fractions without a dose it asks for one
    img, *_ = _weak_and_strong(1e4, seed=4)
    counts_cube = DataCube(np.round(img * 1e4)[None, None], probe=probe)
    frac_cube = DataCube(img[None, None], probe=probe)
    a = find_bragg_disks_classical(counts_cube, min_snr=5, min_relative_intensity=1e-6, progress=False)
    b = find_bragg_disks_classical(
        frac_cube, min_snr=5, min_relative_intensity=1e-6, counts_per_unit=1e4, progress=False
    )
    assert len(a.peaks) == len(b.peaks) and np.allclose(a.peaks["row"], b.peaks["row"])
    with pytest.raises(AnalysisError, match="counts_per_unit"):
        find_bragg_disks_classical(frac_cube, min_snr=5, progress=False)
    with pytest.raises(AnalysisError, match="cross-correlation"):
        find_bragg_disks_classical(counts_cube, min_snr=5, corr_power=0.5, progress=False)
