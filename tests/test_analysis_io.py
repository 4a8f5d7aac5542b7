"""analysis.io: real detector files (RosettaSciIO test data, see ../shared/data/real/SOURCES.md), round trips,
laziness and clear errors."""

import zipfile

import numpy as np
import pytest

import analysis
from analysis.datacube import AnalysisError, Calibration, DataCube


@pytest.fixture(scope="module")
def merlin(real_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("merlin")
    with zipfile.ZipFile(real_data_dir / "Merlin_navigation4x2_ROI.zip") as z:
        z.extractall(out)
    return out


def test_blockfile(real_data_dir):
    d = analysis.load(real_data_dir / "test1.blo")
    assert d.shape == (3, 2, 144, 144) and d.data.dtype == np.uint8 and d.is_lazy
    assert d.calibration.scan_step_A == (128.0, 128.0)  # 12.8 nm
    assert d.calibration.q_pixel_size is None  # the file's detector axis is in cm (camera), not Å⁻¹
    assert d.calibration.source["format"] == "blockfile"
    assert d.pattern(0, 0).max() > 0


@pytest.mark.parametrize("name, shape", [("001_4x2_6bit.hdr", (2, 4, 256, 256)),
                                         ("001_4x2_6bit.mib", (2, 4, 256, 256)),
                                         ("002_4x2_6bit_roi128.mib", (2, 4, 128, 256))])
def test_merlin(merlin, name, shape):
    d = analysis.load(merlin / name)
    assert d.shape == shape and d.is_lazy  # 4 x 2 navigation = 2 scan rows of 4 positions
    assert int(np.asarray(d.data[1, 3]).max()) <= 63  # 6-bit counting frames


def test_prismatic_emd(real_data_dir):
    d = analysis.load(real_data_dir / "Si100_4D.emd")
    assert d.shape == (11, 11, 8, 8) and d.metadata["format"] == "prismatic"
    assert d.calibration.energy_eV == pytest.approx(100e3)
    assert d.calibration.q_pixel_size == pytest.approx(1 / 5.43, rel=1e-4)  # one reciprocal cell of Si
    assert d.calibration.scan_step_A == pytest.approx((0.5, 0.5))
    d0 = analysis.load(real_data_dir / "Si100_4D.emd", depth=0)
    assert d0.metadata["dataset"].endswith("depth0000/datacube")
    assert not np.array_equal(np.asarray(d0.data), np.asarray(d.data))
    with pytest.raises(AnalysisError, match="depth 5"):
        analysis.load(real_data_dir / "Si100_4D.emd", depth=5)


def test_py4dstem_emdfile(real_data_dir):
    d = analysis.load(real_data_dir / "py4DSTEM_size2x3x4x5.h5")
    assert d.shape == (2, 3, 4, 5) and d.data.dtype == np.float32
    assert d.calibration.q_pixel_size == pytest.approx(0.044251566616087125)
    assert d.calibration.scan_step_A == pytest.approx((1.26796875, 1.26796875))  # 0.1268 nm


def test_round_trips_and_laziness(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.random((2, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "a.npy", arr)
    lazy = analysis.load(tmp_path / "a.npy")
    assert lazy.is_lazy and np.array_equal(np.asarray(lazy.data), arr)
    cube = DataCube(arr, Calibration(q_pixel_size=0.03, energy_eV=300e3, origin_px=(4.0, 4.0)),
                    {"phases": ["Si"]}, {"exx": np.ones((2, 3))}, probe=arr[0, 0])
    analysis.save(cube, tmp_path / "c.zarr")
    back = analysis.load(tmp_path / "c.zarr")
    assert back.is_lazy and np.array_equal(np.asarray(back.data), arr)
    assert back.calibration == cube.calibration and back.metadata["phases"] == ["Si"]
    assert np.array_equal(back.probe, arr[0, 0]) and np.array_equal(back.ground_truth["exx"], np.ones((2, 3)))
    import h5py

    with h5py.File(tmp_path / "g.h5", "w") as f:
        f["some/where/scan"] = arr
    assert np.array_equal(np.asarray(analysis.load(tmp_path / "g.h5").data), arr)


def test_errors(tmp_path):
    import zarr

    with pytest.raises(AnalysisError, match="no such file"):
        analysis.load(tmp_path / "missing.npy")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(AnalysisError, match="unknown format"):
        analysis.load(tmp_path / "x.txt")
    np.save(tmp_path / "three.npy", np.zeros((2, 8, 8)))
    with pytest.raises(AnalysisError, match="3D array"):
        analysis.load(tmp_path / "three.npy")
    g = zarr.open_group(str(tmp_path / "half.zarr"), mode="w")
    g.attrs.update({"stemforge_format": "datacube/1", "complete": False})
    g.create_array("data", shape=(1, 1, 4, 4), dtype="float32")
    with pytest.raises(AnalysisError, match="incomplete"):
        analysis.load(tmp_path / "half.zarr")
