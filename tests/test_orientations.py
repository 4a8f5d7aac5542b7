"""Tests for stemforge.sim.orientations: zone axes, point groups, fundamental zone, uniform sampling."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from scipy import stats
from scipy.spatial.transform import Rotation

from stemforge.sim.orientations import (
    Orientation,
    miller_bravais_to_miller,
    misorientation_deg,
    parse_zone_axis,
    proper_point_group,
    random_orientations,
    reduce_to_fundamental_zone,
    sample_mistilt,
    symmetry_distinct_zone_axes,
    zone_axis_rotation,
)
from stemforge.sim.structures import list_structures, load_structure

Z = np.array([0.0, 0.0, 1.0])
P_CRIT = 1e-4  # chi-square tests reject at this p-value (fixed seeds make them deterministic)


@pytest.fixture(scope="module")
def si():
    return load_structure("Si")


@pytest.fixture(scope="module")
def si_ops(si):
    return proper_point_group(si)


@pytest.fixture(scope="module")
def si_random(si, si_ops):
    raw = random_orientations(si, 20000, seed=12345, in_fundamental_zone=False)
    return raw, reduce_to_fundamental_zone(raw, si_ops)


def cart(structure, uvw):
    return np.asarray(uvw, dtype=float) @ structure.lattice.matrix


def unit(v):
    return np.asarray(v, dtype=float) / np.linalg.norm(v)


def angle_deg(mats):
    return np.degrees(np.arccos(np.clip((np.trace(mats, axis1=-2, axis2=-1) - 1) / 2, -1, 1)))


def assert_proper(r):
    assert np.allclose(r @ r.T, np.eye(3), atol=1e-10)
    assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-10)


# --------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(
    "spec, uvw, label",
    [
        ("110", (1, 1, 0), "[110]"),
        ("[1-10]", (1, -1, 0), "[1-10]"),
        ("<111>", (1, 1, 1), "[111]"),
        ("1,1,0", (1, 1, 0), "[110]"),
        (" 2 2 0 ", (1, 1, 0), "[110]"),
        ((0, 0, 3), (0, 0, 1), "[001]"),
        (np.array([2, -1, -1]), (2, -1, -1), "[2-1-1]"),
        ("[2-1-10]", (1, 0, 0), "[2-1-10]"),
        ((2, -1, -1, 0), (1, 0, 0), "[2-1-10]"),
        ("[0001]", (0, 0, 1), "[0001]"),
        ("[1-100]", (1, -1, 0), "[1-100]"),
        ("[4-2-20]", (1, 0, 0), "[2-1-10]"),
        ("10,0,1", (10, 0, 1), "[10,0,1]"),
        ((1.0, 1.0, 0.0), (1, 1, 0), "[110]"),
    ],
)
def test_parse_zone_axis(spec, uvw, label):
    assert parse_zone_axis(spec) == (uvw, label)


@pytest.mark.parametrize(
    "bad",
    [
        "000",
        "[0000]",
        (0, 0, 0),
        "[1-1]",
        "abc",
        "1.5,1,0",
        (0.5, 1, 0),
        True,
        "[1111]",
        (1, 1, 1, 1),
        [[1, 1, 0]],
        "",
        (1, 2, 3, 4, 5),
        7,
    ],
)
def test_parse_zone_axis_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        parse_zone_axis(bad)


def test_miller_bravais_to_miller():
    assert miller_bravais_to_miller((2, -1, -1, 0)) == (1, 0, 0)
    assert miller_bravais_to_miller((0, 0, 0, 1)) == (0, 0, 1)
    assert miller_bravais_to_miller((1, -1, 0, 0)) == (1, -1, 0)
    assert miller_bravais_to_miller((1, 1, -2, 0)) == (1, 1, 0)
    assert miller_bravais_to_miller((0, 1, -1, 0)) == (1, 2, 0)
    assert miller_bravais_to_miller((1, 1, -2, 3)) == (1, 1, 1)
    with pytest.raises(ValueError, match="U \\+ V \\+ T"):
        miller_bravais_to_miller((1, 0, 0, 0))
    with pytest.raises(ValueError):
        miller_bravais_to_miller((1, 0, 0))


# --------------------------------------------------------------------------- zone-axis rotations
@pytest.mark.parametrize("uvw", [(1, 1, 0), (1, 1, 1), (0, 0, 1), (1, 0, 0), (2, -1, 1), (1, 2, 3)])
def test_silicon_zone_axis_along_beam(si, uvw):
    r = zone_axis_rotation(si, uvw)
    assert_proper(r)
    assert np.allclose(r @ unit(cart(si, uvw)), Z, atol=1e-12)
    assert np.allclose(r[2], unit(cart(si, uvw)))  # beam direction in crystal frame = zone axis


def test_default_in_plane_reference(si):
    # [110]: shortest perpendicular lattice vector is c = [001] (5.43 A) -> +x
    assert np.allclose(zone_axis_rotation(si, "110") @ unit(cart(si, (0, 0, 1))), [1, 0, 0])
    # [001]: [100], [010], [-100], [0-10] tie; [100] wins deterministically
    assert np.allclose(zone_axis_rotation(si, "001") @ unit(cart(si, (1, 0, 0))), [1, 0, 0])
    # [111]: <1-10> ties; the reference is perpendicular and one of them
    x_crys = zone_axis_rotation(si, "111").T @ [1, 0, 0] * 5.43102 * math.sqrt(2)
    assert np.allclose(x_crys @ np.linalg.inv(si.lattice.matrix), (1, 0, -1), atol=1e-9)


def test_in_plane_rotation_turns_reference_by_phi(si):
    r0 = zone_axis_rotation(si, "110")
    x_crys = unit(cart(si, (0, 0, 1)))
    for phi in (0.0, 37.0, -90.0, 180.0):
        r = zone_axis_rotation(si, "110", in_plane_deg=phi)
        p = math.radians(phi)
        assert np.allclose(r @ x_crys, [math.cos(p), math.sin(p), 0], atol=1e-12)
        assert np.allclose(r @ unit(cart(si, (1, 1, 0))), Z, atol=1e-12)
        c, s = math.cos(p), math.sin(p)
        assert np.allclose(r, np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ r0)


def test_explicit_x_direction(si):
    r = zone_axis_rotation(si, "001", x_direction=(1, 1, 0))
    assert np.allclose(r @ unit(cart(si, (1, 1, 0))), [1, 0, 0])
    # only the component perpendicular to the zone axis matters
    assert np.allclose(zone_axis_rotation(si, "001", x_direction=(1, 1, 1)), r)
    with pytest.raises(ValueError, match="parallel"):
        zone_axis_rotation(si, "001", x_direction=(0, 0, 2))


def test_hexagonal_four_index_axes():
    gan, mos2 = load_structure("GaN"), load_structure("MoS2-2H")
    r4 = zone_axis_rotation(gan, "[2-1-10]")
    assert np.allclose(r4, zone_axis_rotation(gan, (1, 0, 0)))
    assert np.allclose(r4 @ unit(gan.lattice.matrix[0]), Z)  # along a
    r = zone_axis_rotation(gan, "[01-10]")  # = [120] = a + 2b, perpendicular to a
    assert np.allclose(r @ unit(cart(gan, (1, 2, 0))), Z)
    assert abs(cart(gan, (1, 2, 0)) @ gan.lattice.matrix[0]) < 1e-9
    r = zone_axis_rotation(mos2, "[0001]")
    assert np.allclose(r @ unit(mos2.lattice.matrix[2]), Z)
    assert np.allclose(r @ unit(mos2.lattice.matrix[0]), [1, 0, 0])  # a preferred among six ties


@pytest.mark.parametrize("name", list_structures())
def test_all_distinct_zone_axes_of_library(name):
    s = load_structure(name)
    for uvw in symmetry_distinct_zone_axes(s, 1):
        r = zone_axis_rotation(s, uvw, in_plane_deg=12.5)
        assert_proper(r)
        assert np.allclose(r @ unit(cart(s, uvw)), Z, atol=1e-10)


def test_no_exactly_perpendicular_lattice_vector_falls_back_to_projection():
    lat = Lattice.from_parameters(4.1, 5.3, 6.7, 77.3, 84.1, 101.9)
    s = Structure(lat, ["Cu"], [[0, 0, 0]])
    z = unit(lat.matrix[2])
    rng = range(-6, 7)
    grid = np.array([v for v in itertools.product(rng, rng, rng) if any(v)]) @ lat.matrix
    assert np.min(np.abs(grid @ z) / np.linalg.norm(grid, axis=1)) > 1e-6  # precondition
    r = zone_axis_rotation(s, (0, 0, 1))
    assert_proper(r)
    assert np.allclose(r @ z, Z)
    ax = r @ lat.matrix[0]  # a = shortest lattice vector -> its projection lies along +x
    assert abs(ax[1]) < 1e-12 and ax[0] > 0


def test_zone_axis_rotation_bad_input(si):
    with pytest.raises(ValueError):
        zone_axis_rotation(si, "000")
    with pytest.raises(ValueError):
        zone_axis_rotation(si, "110", in_plane_deg=float("nan"))


# --------------------------------------------------------------------------- point groups
PROPER_ORDER = {
    "Si": 24,
    "Fe": 24,
    "SrTiO3": 24,
    "GaAs": 12,
    "MoS2-2H": 12,
    "GaN": 6,
    "Al2O3": 6,
    "TiO2-rutile": 8,
    "P-black": 4,
    "Mg2SiO4-forsterite": 4,
    "ZrO2-monoclinic": 2,
}


def _is_crystal_symmetry(structure, op):
    """True if x -> op @ x + t maps the structure onto itself for some translation t."""
    frac = structure.frac_coords
    species = [site.specie for site in structure]
    inv = np.linalg.inv(structure.lattice.matrix)
    rotated = (structure.cart_coords @ op.T) @ inv
    for j in (j for j in range(len(structure)) if species[j] == species[0]):
        shift = frac[j] - rotated[0]
        moved = rotated + shift
        ok = True
        for i in range(len(structure)):
            d = frac - moved[i]
            d -= np.round(d)
            match = np.linalg.norm(d @ structure.lattice.matrix, axis=1) < 1e-3
            if not any(match[k] and species[k] == species[i] for k in range(len(structure))):
                ok = False
                break
        if ok:
            return True
    return False


@pytest.mark.parametrize("name, order", sorted(PROPER_ORDER.items()))
def test_proper_point_group(name, order):
    s = load_structure(name)
    ops = proper_point_group(s)
    assert ops.shape == (order, 3, 3)
    assert np.allclose(ops[0], np.eye(3))
    for op in ops:
        assert_proper(op)
        idx = np.linalg.solve(s.lattice.matrix.T, op @ s.lattice.matrix.T)  # action on [uvw] indices
        assert np.allclose(idx, np.round(idx), atol=1e-6)
        assert _is_crystal_symmetry(s, op)
    products = np.einsum("aij,bjk->abik", ops, ops).reshape(-1, 9)
    for p in products:  # closed under multiplication
        assert np.min(np.linalg.norm(ops.reshape(-1, 9) - p, axis=1)) < 1e-9


def test_point_group_follows_the_cartesian_frame(si, si_ops):
    q = Rotation.from_euler("zyz", [20, 33, -71], degrees=True).as_matrix()
    turned = Structure(Lattice(si.lattice.matrix @ q.T), si.species, si.frac_coords)
    ops = proper_point_group(turned)
    expected = np.einsum("ij,kjl,ml->kim", q, si_ops, q).reshape(-1, 9)
    for op in ops.reshape(-1, 9):
        assert np.min(np.linalg.norm(expected - op, axis=1)) < 1e-9


# --------------------------------------------------------------------------- fundamental zone
def test_reduction_is_equivalent_and_minimal(si_ops):
    gan_ops = proper_point_group(load_structure("GaN"))
    for ops in (si_ops, gan_ops):
        r = Rotation.random(300, rng=np.random.default_rng(7)).as_matrix()
        red = reduce_to_fundamental_zone(r, ops)
        assert red.shape == r.shape
        for a, b in zip(r, red):
            assert_proper(b)
            rel = a.T @ b  # must be one of the crystal-side symmetry operations
            assert np.min(np.linalg.norm(ops - rel, axis=(1, 2))) < 1e-9
            assert angle_deg(b) <= np.min(angle_deg(a @ ops)) + 1e-7
        assert np.allclose(reduce_to_fundamental_zone(red, ops), red)
    one = reduce_to_fundamental_zone(r[0], gan_ops)
    assert one.shape == (3, 3) and np.allclose(one, red[0])
    for s in si_ops:  # a pure symmetry operation is the identity orientation
        assert np.allclose(reduce_to_fundamental_zone(s, si_ops), np.eye(3))


def test_left_and_right_cosets_differ(si_ops):
    # sanity check of the test above: for a general R the left coset {S @ R} is not {R @ S}, so
    # choosing the minimum-angle member of the wrong coset fails the equivalence check
    r = Rotation.from_euler("xyz", [10, 50, 70], degrees=True).as_matrix()
    left = reduce_to_fundamental_zone(r.T, si_ops).T  # minimum-angle member of {S @ R}
    assert np.min(np.linalg.norm(si_ops - r.T @ left, axis=(1, 2))) > 1e-3
    assert np.min(np.linalg.norm(si_ops - r.T @ reduce_to_fundamental_zone(r, si_ops), axis=(1, 2))) < 1e-9


def test_cubic_fundamental_zone_geometry(si_random):
    raw, red = si_random
    rot = Rotation.from_matrix(red).as_rotvec()
    ang = np.linalg.norm(rot, axis=1)
    rodrigues = rot / np.where(ang > 0, ang, 1)[:, None] * np.tan(ang / 2)[:, None]
    assert np.all(np.abs(rodrigues) <= math.sqrt(2) - 1 + 1e-9)  # cube faces, tan(pi/8)
    assert np.all(np.abs(rodrigues).sum(axis=1) <= 1 + 1e-9)  # octahedral corners cut off
    fz_max = 2 * math.degrees(math.acos((2 + math.sqrt(2)) / 4))  # 62.80 deg
    assert angle_deg(red).max() <= fz_max + 1e-6
    assert angle_deg(red).max() > 58.0


def test_fz_angle_distribution_matches_haar_times_group_order(si_random):
    """Haar measure: P(angle < w) = (w - sin w) / pi. Inside the ball w <= 45 deg that lies in the cubic
    FZ, the reduced density is |G| = 24 times larger; chi-square over 6 bins, p > 1e-4."""
    raw, red = si_random
    cdf = lambda w: (np.radians(w) - np.sin(np.radians(w))) / np.pi  # noqa: E731
    edges = np.array([0.0, 15.0, 25.0, 32.0, 38.0, 45.0])
    probs = 24 * np.diff(cdf(edges))
    probs = np.append(probs, 1 - probs.sum())
    counts = np.histogram(angle_deg(red), bins=np.append(edges, 180.0))[0]
    chi2 = np.sum((counts - len(red) * probs) ** 2 / (len(red) * probs))
    assert stats.chi2.sf(chi2, len(probs) - 1) > P_CRIT, (counts, len(red) * probs)
    # before reduction the same region holds 24x less
    frac_raw = np.mean(angle_deg(raw) < 45.0)
    p = cdf(45.0)
    assert abs(frac_raw - p) < 5 * math.sqrt(p * (1 - p) / len(raw))
    assert np.mean(angle_deg(red) < 45.0) == pytest.approx(24 * p, abs=0.02)


def test_beam_direction_uniform_on_sphere_before_reduction(si_random):
    raw, _ = si_random
    d = raw[:, 2, :]  # R.T @ z
    cos_bins = np.clip(((d[:, 2] + 1) / 2 * 10).astype(int), 0, 9)
    phi_bins = np.clip(((np.arctan2(d[:, 1], d[:, 0]) + np.pi) / (2 * np.pi) * 8).astype(int), 0, 7)
    counts = np.bincount(cos_bins * 8 + phi_bins, minlength=80)  # 80 equal-area cells
    expected = len(d) / 80
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert stats.chi2.sf(chi2, 79) > P_CRIT


def _fold_into_standard_triangle(d):
    """m-3m folding of unit vectors into 0 <= x <= y <= z (triangle [001]-[011]-[111])."""
    return np.sort(np.abs(d), axis=1)


@pytest.mark.parametrize("which", [0, 1])
def test_beam_direction_in_stereographic_triangle(si_random, which):
    """Caps of 15 deg around the triangle corners [001] (45 deg corner), [011] (90 deg) and [111] (60 deg)
    hold 3, 6 and 4 times (1 - cos 15 deg) of the triangle area; chi-square over 4 cells, p > 1e-4."""
    d = _fold_into_standard_triangle(si_random[which][:, 2, :])
    assert np.all(d[:, 0] <= d[:, 1] + 1e-12) and np.all(d[:, 1] <= d[:, 2] + 1e-12)
    cap = 1 - math.cos(math.radians(15))
    corners = [unit([0, 0, 1]), unit([0, 1, 1]), unit([1, 1, 1])]
    probs = np.array([3 * cap, 6 * cap, 4 * cap])
    probs = np.append(probs, 1 - probs.sum())
    near = np.stack([d @ c > math.cos(math.radians(15)) for c in corners], axis=1)
    assert not np.any(near.sum(axis=1) > 1)
    counts = np.append(near.sum(axis=0), np.sum(~near.any(axis=1)))
    chi2 = np.sum((counts - len(d) * probs) ** 2 / (len(d) * probs))
    assert stats.chi2.sf(chi2, 3) > P_CRIT, (counts, len(d) * probs)


def test_hexagonal_fundamental_zone_slab():
    gan = load_structure("GaN")  # proper group 6: FZ is the slab |rho_c| <= tan(15 deg)
    red = random_orientations(gan, 5000, seed=3)
    rot = Rotation.from_matrix(red).as_rotvec()
    ang = np.linalg.norm(rot, axis=1)
    c_hat = unit(gan.lattice.matrix[2])
    rho_c = (rot @ c_hat) / np.where(ang > 0, ang, 1) * np.tan(ang / 2)
    assert np.all(np.abs(rho_c) <= math.tan(math.radians(15)) + 1e-9)
    assert np.abs(rho_c).max() > 0.95 * math.tan(math.radians(15))


def test_random_orientations_reproducible(si):
    a = random_orientations(si, 50, seed=1)
    assert np.array_equal(a, random_orientations(si, 50, seed=1))
    assert not np.allclose(a, random_orientations(si, 50, seed=2))
    assert random_orientations(si, 0, seed=1).shape == (0, 3, 3)
    g = random_orientations(si, 5, seed=np.random.default_rng(1))
    assert g.shape == (5, 3, 3)
    for r in a:
        assert_proper(r)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError):
            random_orientations(si, bad, seed=0)


# --------------------------------------------------------------------------- zone-axis classes
def test_symmetry_distinct_zone_axes_cubic(si):
    assert symmetry_distinct_zone_axes(si, 1) == [(1, 0, 0), (1, 1, 0), (1, 1, 1)]
    assert len(symmetry_distinct_zone_axes(si, 2)) == 6  # 100 110 111 210 211 221
    gaas = symmetry_distinct_zone_axes(load_structure("GaAs"), 2)  # proper group 23: [210] != [120]
    assert len(gaas) == 7 and (2, 1, 0) in gaas and (2, 0, 1) in gaas


def test_symmetry_distinct_zone_axes_hexagonal():
    gan = load_structure("GaN")
    axes = symmetry_distinct_zone_axes(gan, 1)
    assert axes == [(1, 0, 0), (0, 0, 1), (1, -1, 0), (1, 0, 1), (1, -1, 1)]
    lengths = [np.linalg.norm(cart(gan, a)) for a in axes]
    assert lengths == sorted(lengths)


@pytest.mark.parametrize("name", ["Si", "GaN", "Al2O3", "ZrO2-monoclinic"])
def test_zone_axis_classes_partition_all_directions(name):
    s = load_structure(name)
    ops = proper_point_group(s)
    reps = [unit(cart(s, a)) for a in symmetry_distinct_zone_axes(s, 1)]
    for v in itertools.product(range(-1, 2), repeat=3):
        if not any(v):
            continue
        t = unit(cart(s, v))
        hits = [i for i, rep in enumerate(reps) if np.any(np.abs(np.abs(ops @ t @ rep) - 1) < 1e-9)]
        assert len(hits) == 1, (v, hits)


# --------------------------------------------------------------------------- misorientation
def test_misorientation(si, si_ops):
    r1 = Rotation.from_euler("zxz", [10, 20, 30], degrees=True).as_matrix()
    about_c = lambda deg: Rotation.from_rotvec([0, 0, math.radians(deg)]).as_matrix()  # noqa: E731
    assert misorientation_deg(r1, r1 @ about_c(10), si_ops) == pytest.approx(10)
    assert misorientation_deg(r1, r1 @ about_c(50), si_ops) == pytest.approx(40)  # 4-fold about c
    for s in si_ops:
        assert misorientation_deg(r1, r1 @ s, si_ops) == pytest.approx(0, abs=1e-5)
    a = Rotation.random(40, rng=np.random.default_rng(3)).as_matrix()
    b = Rotation.random(40, rng=np.random.default_rng(4)).as_matrix()
    m = misorientation_deg(a, b, si_ops)
    assert m.shape == (40,)
    assert np.allclose(m, misorientation_deg(b, a, si_ops))
    assert np.all(m <= 62.81)
    brute = [min(angle_deg((x @ s1).T @ (y @ s2)) for s1 in si_ops for s2 in si_ops) for x, y in zip(a[:5], b[:5])]
    assert np.allclose(m[:5], brute, atol=1e-6)
    red_a = reduce_to_fundamental_zone(a, si_ops)
    assert np.allclose(misorientation_deg(a, red_a, si_ops), 0, atol=1e-5)


# --------------------------------------------------------------------------- mistilt
def test_sample_mistilt():
    rng = np.random.default_rng(0)
    tilts = np.array([sample_mistilt(rng, 2.0) for _ in range(20000)])
    r = np.linalg.norm(tilts, axis=1)
    assert r.max() <= 2.0
    assert abs(np.mean(r < 1.0) - 0.25) < 5 * math.sqrt(0.25 * 0.75 / len(r))  # uniform in the disk
    assert abs(np.mean(tilts[:, 0] > 0) - 0.5) < 0.02
    assert sample_mistilt(np.random.default_rng(5), 1.0) == sample_mistilt(np.random.default_rng(5), 1.0)
    assert sample_mistilt(np.random.default_rng(5), 0.0) == (0.0, 0.0)
    with pytest.raises(ValueError):
        sample_mistilt(rng, -1.0)


# --------------------------------------------------------------------------- Orientation record
def test_orientation_record_round_trip():
    gan = load_structure("GaN")
    o = Orientation.from_zone_axis(gan, "[2-1-10]", in_plane_deg=30, mistilt_mrad=(0.5, -1))
    assert o.zone == "[2-1-10]" and o.zone_axis == (1, 0, 0)
    assert np.allclose(o.rotation, zone_axis_rotation(gan, (1, 0, 0), 30))
    assert np.allclose(o.beam_direction_crystal, unit(gan.lattice.matrix[0]))
    d = json.loads(json.dumps(o.as_dict()))
    assert d["zone_axis"] == [1, 0, 0] and d["mistilt_mrad"] == [0.5, -1.0]
    back = Orientation.from_dict(d)
    assert back == o and hash(back) == hash(o)
    with pytest.raises(ValueError):
        o.rotation[0, 0] = 2.0  # read-only
    rnd = Orientation(random_orientations(gan, 1, seed=0)[0], "random", None)
    assert rnd.as_dict()["zone_axis"] is None and rnd != o
    with pytest.raises(ValueError):
        Orientation(-np.eye(3), "random", None)
    with pytest.raises(ValueError):
        Orientation(np.eye(3) * 2, "random", None)
    with pytest.raises(ValueError):
        Orientation(np.eye(3), "[0001]", (0, 0, 0, 1))
