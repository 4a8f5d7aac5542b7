"""S-matrix thickness series (stemforge.sim.smatrix) against multislice, and the automatic engine choice."""

import numpy as np
import pytest

from stemforge.sim.multislice import Phonons, simulate_cbed
from stemforge.sim.optics import Optics
from stemforge.sim.smatrix import beam_count, build_smatrix, choose_engine, commensurate_sampling
from stemforge.sim.specimen import zone_axis_specimen

THICK = [0.0, 7.7, 23.0, 40.0]


@pytest.fixture(scope="module")
def si110_smatrix(silicon):
    spec = zone_axis_specimen(silicon, (1, 1, 0), thickness_A=40.0, min_extent_A=20.0)
    S = build_smatrix(spec, 300e3, 2.5, THICK, sampling_A=0.12)
    return spec, S


@pytest.mark.parametrize(
    "optics, pos",
    [
        (Optics(300e3, 2.0), None),
        (Optics(300e3, 2.5, defocus_A=80.0, aberrations_A={"C30": 1e6, "C12": 20.0, "phi12": 0.7}), (3.3, 7.1)),
        (Optics(300e3, 1.2, defocus_A=-150.0), (11.0, 0.4)),
    ],
)
def test_smatrix_thickness_series_equals_multislice(si110_smatrix, optics, pos):
    spec, S = si110_smatrix
    pos = np.array(spec.extent_A) / 2 if pos is None else np.asarray(pos)
    ref, sampling, t, grid = simulate_cbed(spec, optics, pos, THICK, sampling_A=0.12, phonons=Phonons(0))
    out = S.patterns(optics, pos[None])[:, 0]
    assert S.sampling == sampling and np.allclose(S.thicknesses_A, t) and S.grid["gpts"] == grid["gpts"]
    assert len(set(np.round(t, 6))) == len(THICK)  # several distinct exit planes
    for i in range(len(THICK)):
        assert np.abs(out[i] - ref[i]).max() <= 1e-3 * ref[i].max()
    # many positions at once equal one by one
    many = S.patterns(optics, np.stack([pos, pos + 1.3]), thickness_index=2)
    assert np.allclose(many[0, 0], out[2], rtol=0, atol=1e-6 * out[2].max())


def test_smatrix_crop_is_the_centre_of_the_full_pattern(si110_smatrix, silicon):
    spec, S = si110_smatrix
    C = build_smatrix(spec, 300e3, 2.5, [23.0], sampling_A=0.12, crop_half_px=40)
    optics = Optics(300e3, 2.0, defocus_A=30.0)
    full = S.patterns(optics, [(1.0, 2.0)], thickness_index=2)[0, 0]
    crop = C.patterns(optics, [(1.0, 2.0)])[0, 0]
    cy, cx = full.shape[0] // 2, full.shape[1] // 2
    assert crop.shape == (81, 81)
    assert np.allclose(crop, full[cy - 40 : cy + 41, cx - 40 : cx + 41], atol=1e-6 * full.max())


def test_smatrix_refuses_what_it_cannot_do(si110_smatrix):
    _, S = si110_smatrix
    with pytest.raises(ValueError, match="exceeds"):
        S.coefficients(Optics(300e3, 3.0))
    with pytest.raises(ValueError, match="tilt"):  # an S-matrix is propagated for one tilt
        S.coefficients(Optics(300e3, 2.0, tilt_mrad=(0.5, 0.0)))
    with pytest.raises(ValueError, match="energy"):
        S.coefficients(Optics(200e3, 2.0))


@pytest.mark.parametrize("bloch", [True, False], ids=["bloch", "supercell"])
def test_tilted_smatrix_equals_tilted_multislice(silicon, bloch):
    """A mistilt (abTEM's tilted propagator) in the S-matrix, on the repeat-cell (Bloch) and the supercell path:
    patterns within 1e-3 of abTEM multislice with the same probe tilt, an error far below what the tilt changes."""
    thick = [0.0, 100.0, 200.0]
    spec = zone_axis_specimen(silicon, (1, 1, 0), thickness_A=200.0, min_extent_A=20.0)
    s = commensurate_sampling(spec, 0.12)  # a grid that is a whole number of repeat cells (Bloch path)
    tilt = (15.0, -10.0)
    S = build_smatrix(spec, 300e3, 2.0, thick, sampling_A=s, tilt_mrad=tilt, bloch=bloch)
    optics = Optics(300e3, 2.0, defocus_A=40.0, tilt_mrad=tilt)
    pos = np.array(spec.extent_A) / 2
    ref, *_ = simulate_cbed(spec, optics, pos, thick, sampling_A=s, phonons=Phonons(0))
    flat, *_ = simulate_cbed(spec, Optics(300e3, 2.0, defocus_A=40.0), pos, thick, sampling_A=s, phonons=Phonons(0))
    out = S.patterns(optics, pos[None])[:, 0]
    for i in range(len(thick)):
        err = np.abs(out[i] - ref[i]).max()
        assert err <= 1e-3 * ref[i].max()
        if i:  # the tilt changes the pattern by far more than the S-matrix's error
            assert np.abs(flat[i] - ref[i]).max() > 20 * err


def test_sparse_bloch_planes_equal_the_dense_supercell_ones(silicon):
    """The repeat-cell path stores sparse exit planes; the same S-matrix on the supercell path (dense) gives the
    same patterns, and the sparse one holds far fewer bytes."""
    spec = zone_axis_specimen(silicon, (1, 1, 0), thickness_A=40.0, min_extent_A=20.0)
    s = commensurate_sampling(spec, 0.12)
    sparse = build_smatrix(spec, 300e3, 2.0, THICK, sampling_A=s, bloch=True)
    dense = build_smatrix(spec, 300e3, 2.0, THICK, sampling_A=s, bloch=False)
    assert not isinstance(sparse.planes, np.ndarray) and isinstance(dense.planes, np.ndarray)
    assert sparse.crop_shape == dense.crop_shape and sparse.nbytes * 5 < dense.nbytes
    optics = Optics(300e3, 1.8, defocus_A=-60.0, aberrations_A={"C30": 5e5})
    a = sparse.patterns(optics, [(2.0, 3.0), (5.5, 1.0)])
    b = dense.patterns(optics, [(2.0, 3.0), (5.5, 1.0)])
    assert np.abs(a - b).max() <= 1e-4 * b.max()


def test_beam_count_is_pi_alpha_L_over_lambda_squared(si110_smatrix):
    spec, S = si110_smatrix
    est = beam_count(2.5, spec.extent_A, 300e3)
    k_alpha = 2.5e-3 / Optics(300e3, 2.5).wavelength_A
    inside = int(np.sum(np.linalg.norm(S.k_beams, axis=1) <= k_alpha))
    assert abs(inside - est) <= 0.3 * est
    assert S.num_beams >= inside  # plus a one-pixel margin for abTEM's soft aperture edge


def test_choose_engine_picks_the_cheaper_path():
    # reference sweep (α = 2 mrad, 50 Å cell, 300 kV): ~80 beams vs 1760 patterns in 160 passes -> S-matrix
    b2 = beam_count(2.0, (50.0, 50.0), 300e3)
    assert 60 < b2 < 100
    assert choose_engine(b2, 1760, num_thicknesses=11) == "smatrix"
    # at 10 mrad the beams (~2000) outnumber the passes of a typical sweep -> multislice
    b10 = beam_count(10.0, (50.0, 50.0), 300e3)
    assert b10 > 1500
    assert choose_engine(b10, 1760, num_thicknesses=11) == "multislice"
    # a single pattern is one multislice pass; an S-matrix would need ~b2 passes
    assert choose_engine(b2, 11, num_thicknesses=11) == "multislice"
    # the switch sits where the passes saved equal the beams propagated
    assert choose_engine(50, 60 * 11, num_thicknesses=11) == "smatrix"
    assert choose_engine(50, 45 * 11, num_thicknesses=11) == "multislice"
    # on the Bloch path a beam costs about a repeat cell's share of the grid: the S-matrix wins much earlier
    assert choose_engine(b10, 1760, num_thicknesses=11, beam_cost=1 / 70) == "smatrix"
    assert choose_engine(b2, 11, num_thicknesses=11, beam_cost=1 / 70) == "multislice"
    with pytest.raises(ValueError):
        choose_engine(0, 10)


def test_bloch_repeat_cell_path_equals_multislice(silicon):
    """On a grid commensurate with the repetitions, each plane wave is propagated on one repeat cell."""
    from stemforge.sim.smatrix import commensurate_sampling

    spec = zone_axis_specimen(silicon, (1, 1, 0), thickness_A=40.0, min_extent_A=20.0)
    s = commensurate_sampling(spec, 0.12)
    assert s <= 0.12
    S = build_smatrix(spec, 300e3, 2.5, THICK, sampling_A=s, crop_half_px=60)
    assert S.grid["bloch_repetitions"] == spec.info["repetitions"][:2]
    optics = Optics(300e3, 2.5, defocus_A=80.0, aberrations_A={"C30": 1e6, "C12": 20.0, "phi12": 0.7})
    pos = np.array([3.3, 7.1])
    ref, _, _, _ = simulate_cbed(spec, optics, pos, THICK, sampling_A=s, phonons=Phonons(0))
    cy, cx = ref.shape[1] // 2, ref.shape[2] // 2
    ref = ref[:, cy - 60 : cy + 61, cx - 60 : cx + 61]
    out = S.patterns(optics, pos[None])[:, 0]
    for i in range(len(THICK)):
        assert np.abs(out[i] - ref[i]).max() <= 1e-3 * ref[i].max()


def test_non_periodic_specimen_uses_the_supercell_path(silicon):
    from stemforge.sim.smatrix import commensurate_sampling
    from stemforge.sim.specimen import oriented_box_specimen

    box = oriented_box_specimen(silicon, np.eye(3), (12.0, 12.0, 6.0))
    assert commensurate_sampling(box, 0.15) == 0.15
    S = build_smatrix(box, 300e3, 2.0, [6.0], sampling_A=0.15)
    assert S.grid["bloch_repetitions"] is None
    with pytest.raises(ValueError, match="bloch=True"):
        build_smatrix(box, 300e3, 2.0, [6.0], sampling_A=0.15, bloch=True)
