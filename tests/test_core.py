"""stemforge.core: units, the calibration type, JSON values, sub-pixel refinement and the scan streamer, each
checked against a case whose answer is known."""

import math

import numpy as np
import pytest

from stemforge.core import Calibration, DataError, parabola_offset, refine_maxima, stream_patterns, stream_scan
from stemforge.core.jsonable import to_jsonable
from stemforge.core.units import (
    inv_A_to_mrad,
    length_to_A,
    mrad_to_inv_A,
    reciprocal_to_inv_A,
    relativistic_mass_factor,
    wavelength_A,
)


# ------------------------------------------------------------------------------------------------------ units
@pytest.mark.parametrize(("energy_eV", "lam_A"), [(100e3, 0.037013), (200e3, 0.025079), (300e3, 0.019687)])
def test_wavelength_matches_tabulated_values(energy_eV, lam_A):
    """Relativistic electron wavelengths as tabulated (e.g. Williams & Carter, Table 1.1), to 5 digits."""
    assert wavelength_A(energy_eV) == pytest.approx(lam_A, abs=6e-6)


def test_unit_conversions_are_consistent():
    assert relativistic_mass_factor(511e3) == pytest.approx(2.0, rel=1e-3)  # E = m0c2 doubles the mass
    k = mrad_to_inv_A(2.0, 300e3)
    assert k == pytest.approx(2e-3 / wavelength_A(300e3)) and inv_A_to_mrad(k, 300e3) == pytest.approx(2.0)
    assert reciprocal_to_inv_A(1.0, "mrad", 300e3) == pytest.approx(k / 2)
    assert reciprocal_to_inv_A(0.5, "1/nm") == pytest.approx(0.05) and reciprocal_to_inv_A(1, "[n_m^-1]") is None
    assert length_to_A(2, b"nm") == 20.0 and length_to_A(1, "[Å]") == 1.0
    with pytest.raises(ValueError, match="positive"):
        wavelength_A(0)


# ------------------------------------------------------------------------------------------------ calibration
def test_calibration_reads_every_name_stemforge_wrote():
    new = Calibration(pixel_size_inv_A=0.03, energy_eV=300e3, semiangle_mrad=2.0, origin_px=(64.0, 64.0))
    assert Calibration.from_dict(new.as_dict()) == new
    old_scan = {"q_pixel_size": 0.03, "energy_eV": 300e3, "semiangle_mrad": 2.0, "origin_px": [64, 64]}
    assert Calibration.from_dict(old_scan) == new
    old_dataset = {"pixel_size": 0.03, "pixel_size_unit": "1/Angstrom", "center_px": [64, 64], "shape": [128, 128]}
    assert Calibration.from_dict(old_dataset) == Calibration(pixel_size_inv_A=0.03, origin_px=(64.0, 64.0))
    assert Calibration().with_(q_pixel_size=0.02).pixel_size_inv_A == 0.02
    assert new.wavelength_A == pytest.approx(0.019687, abs=6e-6)
    assert new.disk_radius_px() == pytest.approx(2e-3 / new.wavelength_A / 0.03)
    assert new.pixel_size_mrad == pytest.approx(0.03 * new.wavelength_A * 1e3)
    assert Calibration().wavelength_A is None and Calibration().disk_radius_px() is None


@pytest.mark.parametrize(("value", "message"), [(None, "no detector pixel size in Å⁻¹/px"), (-1.0, "positive")])
def test_calibration_refuses_a_missing_pixel_size(value, message):
    with pytest.raises(DataError, match=message):
        Calibration(pixel_size_inv_A=value).check_pixel_size()


def test_analysis_error_is_the_shared_data_error():
    from stemforge.analysis import AnalysisError

    assert AnalysisError is DataError and issubclass(DataError, ValueError)


# ------------------------------------------------------------------------------------------------------- json
def test_to_jsonable_gives_strict_json():
    import json

    import torch

    obj = {
        1: np.float32(0.5),
        "nan": float("nan"),
        "inf": np.float64(np.inf),
        "i": np.int64(3),
        "b": np.bool_(True),
        "t": (1, 2),
        "bytes": b"nm",
        "arr": np.arange(3),
        "big": np.zeros((100, 100)),
        "tensor": torch.tensor([1.5, 2.5]),
        "scalar_tensor": torch.tensor(4),
        "other": object,
    }
    out = to_jsonable(obj, max_items=1000)
    json.dumps(out, allow_nan=False)  # strict JSON
    assert out["1"] == 0.5 and out["nan"] is None and out["inf"] is None and out["i"] == 3 and out["b"] is True
    assert out["t"] == [1, 2] and out["bytes"] == "nm" and out["arr"] == [0, 1, 2]
    assert out["big"] == "<array (100, 100) float64>" and out["tensor"] == [1.5, 2.5] and out["scalar_tensor"] == 4
    assert type(to_jsonable(np.float64(1.0))) is float and to_jsonable(np.zeros((100, 100)))[0][0] == 0.0


# ------------------------------------------------------------------------------------------------- sub-pixel
@pytest.mark.parametrize("x0", [-0.45, -0.2, 0.0, 0.13, 0.49])
def test_parabola_offset_is_exact_for_a_parabola_and_log_for_a_gaussian(x0):
    x = np.array([-1.0, 0.0, 1.0])
    f = 5.0 - 2.0 * (x - x0) ** 2
    assert parabola_offset(*f) == pytest.approx(x0, abs=1e-12)
    g = 3.0 * np.exp(-((x - x0) ** 2) / (2 * 0.8**2))
    assert parabola_offset(*g, log=True) == pytest.approx(x0, abs=1e-12)
    assert abs(parabola_offset(*g) - x0) > 1e-4 or x0 == 0.0  # the plain parabola is biased on a Gaussian


def test_parabola_offset_edge_cases():
    assert parabola_offset(1.0, 1.0, 1.0) == 0.0  # flat: no maximum
    assert parabola_offset(1.0, 0.0, 1.0) == 0.0  # a minimum
    assert parabola_offset(0.0, 2.0, 3.0) == 0.5  # vertex at +1.5: clipped
    assert parabola_offset(0.0, 2.0, 1.0, log=True) == pytest.approx(parabola_offset(0.0, 2.0, 1.0))  # no log of 0


def test_refine_maxima_finds_gaussian_blobs_to_machine_precision():
    rr, cc = np.mgrid[:32, :40]
    truth = [(10.3, 7.8), (20.6, 30.45), (0.2, 39.0)]
    img = sum(np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * 1.2**2)) for r, c in truth)
    rows, cols = refine_maxima(img, [10, 21, 0], [8, 30, 39], log=True)
    np.testing.assert_allclose(rows[:2], [10.3, 20.6], atol=1e-3)  # neighbours' tails: ~1e-4 px
    np.testing.assert_allclose(cols[:2], [7.8, 30.45], atol=1e-3)
    assert rows[2] == pytest.approx(1.0 + parabola_offset(img[0, 38], img[1, 38], img[2, 38], True))  # edge: clipped
    stack = np.stack([img, np.roll(img, 1, axis=0)])
    rs, _ = refine_maxima(stack, [10], [8], log=True)
    assert rs.shape == (2, 1) and rs[1, 0] == pytest.approx(10.0 + parabola_offset(*img[8:11, 8], log=True))
    wrapped = np.roll(img, -10, axis=0)  # the blob at row 0.3 now straddles the edge
    rw, _ = refine_maxima(wrapped, [0], [8], log=True, wrap=True)
    assert rw[0] == pytest.approx(0.3, abs=1e-3)


# ------------------------------------------------------------------------------------------------- streaming
def _scan(rx=5, ry=7, h=4, w=3):
    return np.arange(rx * ry * h * w, dtype=np.float32).reshape(rx, ry, h, w)


@pytest.mark.parametrize("lazy", ["numpy", "dask_rows", "dask_blocks"])
@pytest.mark.parametrize("batch", [1, 4, 35, 100])
def test_stream_patterns_covers_every_position_once_in_full_batches(lazy, batch):
    data = _scan()
    if lazy != "numpy":
        import dask.array as da

        data_in = da.from_array(data, chunks=(2, 7, 4, 3) if lazy == "dask_rows" else (2, 3, 4, 3))
    else:
        data_in = data
    seen, sizes = [], []
    for idx, pats in stream_patterns(data_in, batch):
        assert pats.dtype == np.float32 and pats.shape[1:] == (4, 3)
        np.testing.assert_array_equal(pats, data.reshape(-1, 4, 3)[idx])
        seen.extend(idx.tolist())
        sizes.append(len(idx))
    assert sorted(seen) == list(range(35))
    assert all(s == batch for s in sizes[:-1]) and 0 < sizes[-1] <= batch


def test_stream_scan_blocks_follow_dask_chunks_and_refuse_nan():
    import dask.array as da

    data = _scan()
    blocks = [b for b, _ in stream_scan(da.from_array(data, chunks=(2, 3, 4, 3)), max_patterns=1)]
    assert all((r1 - r0) <= 2 and (c1 - c0) <= 3 for r0, r1, c0, c1 in blocks)
    bad = data.copy()
    bad[3, 5, 0, 0] = np.nan
    with pytest.raises(DataError, match=r"scan position \(3, 5\) holds NaN"):
        list(stream_patterns(bad, 4))
    assert len(list(stream_scan(bad, finite=False))) > 0
    with pytest.raises(DataError, match="batch_size"):
        list(stream_patterns(data, 0))


def test_wavelength_is_computed_in_one_place():
    """sim.optics and the calibration use core.units' wavelength (no second formula)."""
    from stemforge.sim.optics import Optics

    assert Optics(300e3, 2.0).wavelength_A == wavelength_A(300e3) == Calibration(energy_eV=300e3).wavelength_A
    assert Optics(300e3, 2.0).aperture_radius_inv_A == pytest.approx(mrad_to_inv_A(2.0, 300e3))
    assert math.isclose(wavelength_A(200e3), 0.0250793, rel_tol=1e-5)
