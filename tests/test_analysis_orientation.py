"""Orientation mapping (ACOM): template library, matching, labels, errors, and a dynamical check."""

import math

import numpy as np
import pytest

from stemforge.analysis import AnalysisError, BraggVectors, Calibration
from stemforge.analysis.disks import flat_disk_peaks
from stemforge.analysis.orientation import (
    OrientationMap,
    _misorientation,
    ipf_colors,
    orientation_map,
    score_orientations,
    template_correlation,
    zone_axis_labels,
)
from stemforge.analysis.orientation_library import (
    _MEMORY_CACHE,
    build_orientation_library,
    fundamental_directions,
    kinematic_bragg_vectors,
    reduce_directions,
)
from stemforge.sim.orientations import proper_point_group, random_orientations, zone_axis_rotation

E = 200e3
TWIN = np.diag([-1.0, -1.0, 1.0])  # Rz(180°): the Friedel twin of a kinematic pattern


@pytest.fixture(scope="module")
def si_lib():
    return build_orientation_library("Si", E, 1.5, direction_step_deg=2.0, cache=False)


@pytest.fixture(scope="module")
def si_lib2():
    return build_orientation_library("Si", E, 2.0, direction_step_deg=2.0, cache=False)


def _detector_px(k_max, p=0.03):
    return (int(2 * k_max / p) + 8,) * 2


# --------------------------------------------------------------------------- library
@pytest.mark.parametrize("name, k", [("Si", 24), ("GaAs", 12), ("GaN", 6), ("TiO2-rutile", 8), ("ZrO2-monoclinic", 2)])
def test_fundamental_directions_cover_one_zone(name, k):
    from stemforge.sim.structures import load_structure

    st = load_structure(name)
    ops = proper_point_group(st)
    assert len(ops) == k
    step = 4.0
    dirs = fundamental_directions(st, ops, step, zone_max_index=1)
    # one fundamental region has 1/K of the sphere: the count matches 4π/(K·step²) within the added exact axes
    expected = 4 * math.pi / math.radians(step) ** 2 / k
    assert 0.8 * expected < len(dirs) < 1.2 * expected + 30
    # every direction of the sphere has a symmetry image within ~one step of a library direction
    rng = np.random.default_rng(0)
    d = rng.normal(size=(2000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    images = np.einsum("kij,nj->nki", ops, d)
    best = np.max(np.einsum("nki,mi->nkm", images, dirs), axis=(1, 2))
    assert np.degrees(np.arccos(np.clip(best, -1, 1))).max() < 0.9 * step
    # reduction is idempotent and lands on a symmetry image
    red = reduce_directions(d, ops)
    assert np.allclose(reduce_directions(red, ops), red)


def test_library_cache_and_report(tmp_path):
    kw = dict(direction_step_deg=6.0, in_plane_step_deg=4.0, cache_dir=tmp_path)
    lib = build_orientation_library("Cu", E, 1.0, **kw)
    assert lib.info["source"] == "built" and lib.info["build_time_s"] > 0
    assert lib.info["memory_bytes"] == lib.nbytes > 0 and lib.n_angles == 90
    assert build_orientation_library("Cu", E, 1.0, **kw) is lib  # memory cache
    _MEMORY_CACHE.clear()
    again = build_orientation_library("Cu", E, 1.0, **kw)  # disk cache
    assert again is not lib and again.info["source"].endswith(".npz")
    np.testing.assert_array_equal(again.templates, lib.templates)
    np.testing.assert_array_equal(again.directions, lib.directions)
    other = build_orientation_library("Cu", 300e3, 1.0, **kw)  # another energy is another library
    assert other.info["source"] == "built" and other.wavelength_A < lib.wavelength_A


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k_max=-1), "k_max"),
        (dict(energy_eV=0), "energy_eV"),
        (dict(direction_step_deg=0), "direction_step"),
        (dict(sigma_q=0), "sigma_q"),
        (dict(q_min=5.0), "q_min"),
        (dict(structure="Unobtainium"), "orientation library"),
    ],
)
def test_library_bad_settings(kwargs, match):
    args = dict(structure="Si", energy_eV=E, k_max=1.0, direction_step_deg=10.0, cache=False)
    args.update(kwargs)
    with pytest.raises(AnalysisError, match=match):
        build_orientation_library(args.pop("structure"), args.pop("energy_eV"), args.pop("k_max"), **args)


# --------------------------------------------------------------------------- matching
def test_grid_orientation_is_the_correlation_maximum(si_lib):
    """Peaks of a library grid orientation put the coarse maximum on that grid point (sign conventions)."""
    rng = np.random.default_rng(3)
    picks = rng.choice(len(si_lib.directions), 6, replace=False)
    ks = rng.integers(0, si_lib.n_angles, 6)
    R = np.stack([zr @ si_lib.frames[i] for i, zr in zip(picks, [_rz(k * si_lib.in_plane_step_deg) for k in ks])])
    # intensities with the library's own excitation weighting (exp(-s²/2σ²) with σ_s)
    bv = kinematic_bragg_vectors(
        "Si", R[None], E, _detector_px(1.5), sigma_excitation=si_lib.sigma_excitation, min_weight=1e-3, k_max=1.5
    )
    om = orientation_map(bv, si_lib, refine=False, resolve_twin=False, progress=False)
    err = om.misorientation_deg(R[None])[0]
    assert np.all(err < 0.3), err
    assert np.all(om.score[0] > 0.95) and np.all(om.coarse_score[0] > 0.8)


def _rz(deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def test_random_orientations_recovered_from_noisy_kinematic_peaks(si_lib2):
    """k_max 2 Å⁻¹, 0.5 px position noise, 20 % intensity noise, data with another excitation width (0.03 Å⁻¹)
    than the library (0.02 Å⁻¹): mean error below 1°, 90 % within 1°."""
    R = random_orientations("Si", 40, seed=7)
    bv = kinematic_bragg_vectors(
        "Si",
        R[None],
        E,
        _detector_px(2.0),
        sigma_excitation=0.03,
        k_max=2.0,
        position_noise_px=0.5,
        intensity_noise=0.2,
        seed=8,
    )
    om = orientation_map(bv, si_lib2, progress=False)
    err = om.misorientation_deg(R[None])[0]
    print(
        f"k_max 2.0: mean {err.mean():.2f}°, median {np.median(err):.2f}°, p90 {np.percentile(err, 90):.2f}°, "
        f"max {err.max():.2f}°, {om.info['patterns_per_s']:.0f} patterns/s"
    )
    assert om.valid.all()
    assert err.mean() < 1.0 and np.mean(err < 1.0) >= 0.9
    assert np.all((om.score > 0.3) & (om.score <= 1.0 + 1e-6))
    # the coarse grid alone is within about a grid step; refinement does better
    coarse = orientation_map(bv, si_lib2, refine=False, progress=False).misorientation_deg(R[None])[0]
    assert np.median(coarse) < 2.0 and np.median(err) < np.median(coarse)


def test_refinement_is_exact_for_consistent_data(si_lib2):
    """Data whose intensities follow the library's own weighting: refinement lands on the truth."""
    R = random_orientations("Si", 8, seed=2)
    bv = kinematic_bragg_vectors(
        "Si", R[None], E, _detector_px(2.0), sigma_excitation=si_lib2.sigma_excitation, min_weight=1e-4, k_max=2.0
    )
    om = orientation_map(bv, si_lib2, progress=False)
    err = om.misorientation_deg(R[None])[0]
    assert err.max() < 0.1, err
    assert np.all(om.score > 0.98)
    direct = score_orientations(R[:, None], *_peaks(bv, si_lib2), si_lib2)[:, 0]
    assert np.allclose(direct, om.score[0], atol=0.01)


def _peaks(bv, lib):
    from stemforge.analysis.orientation import _padded, _prepare_peaks

    q, r, th, a, off = _prepare_peaks(bv, lib, 64)
    (qb, ab), _ = _padded(off, np.arange(int(np.prod(bv.scan_shape))), q, a)
    return qb, ab


def test_zone_axis_labels_and_in_plane_angle(si_lib):
    cases = [((0, 0, 1), 17.0), ((1, 1, 0), 30.0), ((1, 1, 1), 100.0), ((2, 1, 1), 320.0)]
    R = np.stack([zone_axis_rotation("Si", z, phi) for z, phi in cases])
    bv = kinematic_bragg_vectors("Si", R[None], E, _detector_px(1.5), position_noise_px=0.3, k_max=1.5, seed=1)
    om = orientation_map(bv, si_lib, progress=False)
    expect_axis = [(1, 0, 0), (1, 1, 0), (1, 1, 1), (2, 1, 1)]  # stemforge.sim.orientations representatives
    np.testing.assert_array_equal(om.zone_axis[0], expect_axis)
    assert np.all(om.zone_axis_offset_deg[0] < 1.0)
    np.testing.assert_allclose(om.in_plane_period_deg[0], [90, 180, 120, 360])
    true_axis, _, true_phi, period = zone_axis_labels(R, si_lib)
    np.testing.assert_array_equal(true_axis, expect_axis)
    np.testing.assert_allclose(true_phi[:2], [17.0, 30.0], atol=1e-6)
    # axes with an even-fold rotation about the beam have no Friedel twin; [111] and [211] do (a 180° in-plane
    # turn gives the same kinematic zone-axis pattern): their angle is only defined modulo 180° (60° for [111])
    half = np.where(np.isin(period, [90, 180]), period, np.gcd(period.astype(int), 180))
    d = np.abs((om.in_plane_deg[0] - true_phi + half / 2) % half - half / 2)
    assert np.all(d < 1.0), (om.in_plane_deg, true_phi)
    err = om.misorientation_deg(R[None])[0]
    twin = _misorientation(om.rotation[0], TWIN @ R, si_lib.ops)
    assert np.all(np.minimum(err, twin) < 1.0)
    assert err[0] < 1.0 and err[1] < 1.0


def test_map_outputs_misorientation_and_figure(si_lib):
    R = np.stack([zone_axis_rotation("Si", (1, 1, 0), phi) for phi in (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)])
    bv = kinematic_bragg_vectors("Si", R.reshape(2, 3, 3, 3), E, _detector_px(1.5), k_max=1.5, seed=0)
    # make position (1, 2) empty: it is left unmatched
    peaks = bv.peaks[~((bv.peaks["rx"] == 1) & (bv.peaks["ry"] == 2))]
    bv = BraggVectors(bv.scan_shape, bv.detector_shape, peaks, bv.calibration)
    om = orientation_map(bv, si_lib, progress=False)
    assert isinstance(om, OrientationMap) and om.scan_shape == (2, 3)
    assert om.rotation.shape == (2, 3, 3, 3) and om.zone_axis.shape == (2, 3, 3)
    assert not om.valid[1, 2] and np.isnan(om.rotation[1, 2]).all() and om.num_peaks[1, 2] == 0
    assert om.valid.sum() == 5
    mis = om.misorientation_deg((0, 0))  # against the first position
    np.testing.assert_allclose(mis[om.valid], [0, 5, 10, 15, 20], atol=0.6)
    assert np.isnan(mis[1, 2])
    np.testing.assert_allclose(om.misorientation_deg(R[0])[om.valid], [0, 5, 10, 15, 20], atol=0.6)
    assert np.all(om.margin[om.valid] > 0) and np.all(om.second_score[om.valid] < om.coarse_score[om.valid])
    assert set(om.as_dict()) >= {"rotation", "zone_axis", "in_plane_deg", "score", "margin", "twin_score"}
    with pytest.raises(AnalysisError, match="reference"):
        om.misorientation_deg(np.eye(4))
    fig = om.figure(si_lib)
    assert len(fig.axes) >= 4
    rgb = ipf_colors(np.array([[0, 0, 1.0], [1, 1, 0] / np.sqrt(2), [1, 1, 1] / np.sqrt(3)]), si_lib)
    np.testing.assert_allclose(rgb, np.eye(3), atol=1e-9)  # [001] red, [011] green, [111] blue


def test_template_correlation_shape_and_peak(si_lib):
    R = zone_axis_rotation("Si", (1, 1, 0), 44.0)
    bv = kinematic_bragg_vectors("Si", R[None, None], E, _detector_px(1.5), k_max=1.5)
    q, a = _peaks(bv, si_lib)
    corr = template_correlation(si_lib, np.hypot(q[..., 0], q[..., 1]), np.arctan2(q[..., 1], q[..., 0]), a)
    assert corr.shape == (1, len(si_lib.directions), si_lib.n_angles) and corr.dtype == np.float32
    i, k = np.unravel_index(np.argmax(corr[0]), corr[0].shape)
    d110 = reduce_directions(np.array([1, 1, 0]) / np.sqrt(2), si_lib.ops)
    assert si_lib.directions[i] @ d110 > math.cos(math.radians(1.0))
    assert corr.max() <= 1.05


# --------------------------------------------------------------------------- errors
def test_bad_inputs_are_refused(si_lib):
    R = zone_axis_rotation("Si", (0, 0, 1))
    bv = kinematic_bragg_vectors("Si", R[None, None], E, _detector_px(1.5), k_max=1.5)
    uncal = BraggVectors(bv.scan_shape, bv.detector_shape, bv.peaks, Calibration())
    with pytest.raises(AnalysisError, match="pixel_size_inv_A"):
        orientation_map(uncal, si_lib, progress=False)
    other_energy = BraggVectors(bv.scan_shape, bv.detector_shape, bv.peaks, bv.calibration.with_(energy_eV=300e3))
    with pytest.raises(AnalysisError, match="300 keV"):
        orientation_map(other_energy, si_lib, progress=False)
    om = orientation_map(other_energy, si_lib, allow_energy_mismatch=True, progress=False)
    assert om.valid.all()
    no_energy = BraggVectors(bv.scan_shape, bv.detector_shape, bv.peaks, bv.calibration.with_(energy_eV=None))
    assert orientation_map(no_energy, si_lib, progress=False).valid.all()
    with pytest.raises(AnalysisError, match="BraggVectors"):
        orientation_map(np.zeros((3, 2)), si_lib, progress=False)
    with pytest.raises(AnalysisError, match="OrientationLibrary"):
        orientation_map(bv, {"Si": si_lib}, progress=False)
    with pytest.raises(AnalysisError, match="min_peaks"):
        orientation_map(bv, si_lib, min_peaks=0, progress=False)
    small = BraggVectors(bv.scan_shape, (40, 40), bv.peaks, bv.calibration.with_(origin_px=(20.0, 20.0)))
    with pytest.warns(UserWarning, match="detector reaches only"):
        orientation_map(small, si_lib, progress=False)
    with pytest.raises(AnalysisError, match="rotations"):
        kinematic_bragg_vectors("Si", np.eye(3)[None, None, None], E)


# --------------------------------------------------------------------------- dynamical check
def _dynamical_bragg_vectors(cases, thickness_A, semiangle_mrad=2.0):
    """Si zone-axis CBED patterns (abTEM multislice) rotated in-plane onto a 64×64 detector at 0.05 Å⁻¹/px."""
    from stemforge.sim.detector import Detector, resample, resampling_matrix
    from stemforge.sim.multislice import simulate_cbed
    from stemforge.sim.optics import Optics
    from stemforge.sim.specimen import zone_axis_specimen
    from stemforge.sim.structures import load_structure

    si = load_structure("Si")
    det = Detector((64, 64), 0.05, 2)
    optics = Optics(energy=E, semiangle_mrad=semiangle_mrad)
    per, truth = {}, []
    for k, (uvw, phi) in enumerate(cases):
        spec = zone_axis_specimen(si, uvw, thickness_A, det.min_extent_A(1.0))
        pats, sampling, _, _ = simulate_cbed(
            spec, optics, np.array(spec.extent_A) / 2 + 0.3, [thickness_A], sampling_A=0.14
        )
        image = resample(pats, resampling_matrix(pats.shape[1:], sampling, det, phi), det)[0]
        per[(0, k)] = flat_disk_peaks(image, semiangle_mrad * 1e-3 / optics.wavelength_A / det.pixel_size_inv_A)
        truth.append(_rz(phi) @ spec.rotation)  # the sim labels' rotation
    cal = Calibration(pixel_size_inv_A=det.pixel_size_inv_A, energy_eV=E, origin_px=(32.0, 32.0))
    return BraggVectors.from_lists((1, len(cases)), det.shape, per, cal), np.stack(truth)


def test_dynamical_zone_axis_patterns(si_lib):
    """Multislice Si [001] and [110] CBED (10 nm, α = 2 mrad), rotated in-plane, peaks from a disk finder."""
    bv, R = _dynamical_bragg_vectors([((0, 0, 1), 20.0), ((1, 1, 0), -35.0)], 100.0)
    om = orientation_map(bv, si_lib, progress=False)
    np.testing.assert_array_equal(om.zone_axis[0], [(1, 0, 0), (1, 1, 0)])
    _, _, true_phi, _ = zone_axis_labels(R, si_lib)
    d = np.abs(
        (om.in_plane_deg[0] - true_phi + om.in_plane_period_deg[0] / 2) % om.in_plane_period_deg[0]
        - om.in_plane_period_deg[0] / 2
    )
    err = om.misorientation_deg(R[None])[0]
    print("dynamical 10 nm: misorientation", err.round(2), "in-plane error", d.round(2), "score", om.score.round(2))
    assert np.all(d < 1.0) and np.all(err < 1.5)  # measured: 0.34° and 0.81° (the tilt of a thin ZOLZ pattern)


@pytest.mark.slow
def test_dynamical_zone_axes_thick():
    """Four Si zone axes at 20 and 50 nm: zone axis right, in-plane angle right up to the Friedel twin."""
    lib = build_orientation_library("Si", E, 1.5, cache=False)
    cases = [((0, 0, 1), 20.0), ((1, 1, 0), -35.0), ((1, 1, 1), 50.0), ((1, 1, 2), 10.0)]
    for t in (200.0, 500.0):
        bv, R = _dynamical_bragg_vectors(cases, t)
        om = orientation_map(bv, lib, progress=False)
        err = om.misorientation_deg(R[None])[0]
        twin = _misorientation(om.rotation[0], TWIN @ R, lib.ops)
        print(f"dynamical {t / 10:.0f} nm: misorientation {err.round(2)}, twin-blind {np.minimum(err, twin).round(2)}")
        np.testing.assert_array_equal(om.zone_axis[0], [(1, 0, 0), (1, 1, 0), (1, 1, 1), (2, 1, 1)])
        assert np.all(np.minimum(err, twin) < 5.0)


@pytest.mark.slow
@pytest.mark.parametrize("k_max, max_mean_twin_blind, max_mean", [(1.0, 2.5, 15.0), (1.5, 1.0, 4.0), (2.0, 0.5, 1.0)])
def test_full_accuracy_random_orientations(k_max, max_mean_twin_blind, max_mean):
    """300 random Si orientations, noisy kinematic peaks (see benchmarks/orientation_accuracy.py)."""
    lib = build_orientation_library("Si", E, k_max, cache=False)
    R = random_orientations("Si", 300, seed=11)
    bv = kinematic_bragg_vectors(
        "Si",
        R[None],
        E,
        _detector_px(k_max),
        sigma_excitation=0.03,
        k_max=k_max,
        position_noise_px=0.5,
        intensity_noise=0.2,
        seed=3,
    )
    om = orientation_map(bv, lib, progress=False)
    err = om.misorientation_deg(R[None])[0]
    blind = np.minimum(err, _misorientation(om.rotation[0], TWIN @ R, lib.ops))
    print(f"k_max {k_max}: mean {err.mean():.2f}° (twin-blind {blind.mean():.2f}°), median {np.median(err):.2f}°")
    assert blind.mean() < max_mean_twin_blind and err.mean() < max_mean
