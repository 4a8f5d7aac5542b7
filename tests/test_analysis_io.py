"""stemforge.analysis.io: the real detector files (RosettaSciIO test data, see ../shared/data/real/SOURCES.md) with
their
shapes and calibrations checked against the files' own headers; laziness; round trips; clear errors."""

import math
import pickle
import shutil
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from stemforge import analysis
from stemforge.analysis.datacube import AnalysisError, Calibration, DataCube
from stemforge.analysis.io_formats import FileArray
from stemforge.analysis.io_rsciio import cube_from_signals
from stemforge.core.units import length_to_A, reciprocal_to_inv_A

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
LAMBDA_100KEV_A = 0.0370143  # relativistic electron wavelength at 100 keV
LAMBDA_200KEV_A = 0.0250793


@pytest.fixture(scope="module")
def real():
    if not REAL.is_dir():
        pytest.skip(f"{REAL} is not present")
    return REAL


@pytest.fixture(scope="module")
def merlin(real, tmp_path_factory):
    out = tmp_path_factory.mktemp("merlin")
    with zipfile.ZipFile(real / "Merlin_navigation4x2_ROI.zip") as z:
        z.extractall(out)
    return out


def _mib_frames(path):
    """Raw frames and frame-header timestamps of a Merlin .mib, read without rosettasciio."""
    raw = Path(path).read_bytes()
    head = raw[:384].decode("ascii", "replace").split(",")
    hdr_len, w, h = int(head[2]), int(head[4]), int(head[5])
    size = hdr_len + w * h
    frames = [
        np.frombuffer(raw[i * size + hdr_len : (i + 1) * size], np.uint8).reshape(h, w) for i in range(len(raw) // size)
    ]
    stamps = [
        np.datetime64(raw[i * size : i * size + hdr_len].decode("ascii", "replace").split(",")[9].strip())
        for i in range(len(raw) // size)
    ]
    return np.stack(frames), np.array(stamps), hdr_len, size


# ------------------------------------------------------------------------------------------------ real files
def test_blockfile_matches_its_header(real):
    raw = (real / "test1.blo").read_bytes()
    dp, _, nx, ny, _ = struct.unpack_from("<5H", raw, 20)
    sx, sy = struct.unpack_from("<2d", raw, 30)
    (beam_V,) = struct.unpack_from("<I", raw, 46)
    (offset2,) = struct.unpack_from("<I", raw, 12)
    d = analysis.load(real / "test1.blo")
    assert (dp, nx, ny, sx, sy, beam_V) == (144, 2, 3, 12.8, 12.8, 200000)
    assert d.shape == (ny, nx, dp, dp) == (3, 2, 144, 144) and d.data.dtype == np.uint8 and d.is_lazy
    c = d.calibration
    assert c.scan_step_A == pytest.approx((10 * sy, 10 * sx))  # nm -> Å
    assert c.energy_eV == pytest.approx(beam_V)  # header Beam_energy in V, via rsciio's metadata mapping
    (sdp,) = struct.unpack_from("<H", raw, 50)  # detector pixels per cm × 100 on the camera plane
    (cl,) = struct.unpack_from("<I", raw, 52)  # camera length, 10 × mm
    assert (sdp, cl) == (6226, 2000)
    mrad_per_px = (10 / (sdp / 100)) / (cl / 10) * 1e3  # θ = x / L: pixel (mm) over camera length (mm)
    assert c.pixel_size_inv_A == pytest.approx(mrad_per_px * 1e-3 / LAMBDA_200KEV_A, rel=1e-4)
    assert (
        c.pixel_size_inv_A == pytest.approx(0.03202, abs=1e-5)
        and "nominal camera length 200 mm" in c.source["pixel_size_from"]
    )
    frame3 = np.frombuffer(raw, np.uint8, dp * dp, offset2 + 3 * (6 + dp * dp) + 6).reshape(dp, dp)
    assert np.array_equal(np.asarray(d.data[1, 1]), frame3)  # raster order: row 1, col 1 is the 4th frame


@pytest.mark.parametrize(
    "name, det",
    [("001_4x2_6bit.hdr", (256, 256)), ("001_4x2_6bit.mib", (256, 256)), ("002_4x2_6bit_roi128.mib", (128, 256))],
)
def test_merlin_scan_is_two_rows_of_four(merlin, name, det):
    frames, stamps, _, _ = _mib_frames((merlin / name).with_suffix(".mib"))
    gaps = np.diff(stamps).astype("timedelta64[ns]").astype(np.int64)
    assert int(np.argmax(gaps)) == 3  # the line fly-back follows the 4th frame: 4 positions per scan row
    d = analysis.load(merlin / name)
    assert d.shape == (2, 4, *det) and d.scan_shape == (2, 4) and d.data.dtype == np.uint8 and d.is_lazy
    arr = np.asarray(d.data)
    assert arr.max() == 63  # "Counter Depth (number): 6"
    for k in (0, 5, 7):  # rosettasciio flips the detector rows
        assert np.array_equal(arr[k // 4, k % 4], frames[k][::-1])
    c = d.calibration
    assert (c.pixel_size_inv_A, c.scan_step_A, c.energy_eV) == (None, None, None)  # a Merlin file records none


def test_merlin_scan_shape_option(merlin):
    d = analysis.load(merlin / "001_4x2_6bit.mib", scan_shape=(1, 8))
    assert d.shape == (1, 8, 256, 256)
    for bad in ((3,), (2, "x"), (2.5, 2), (0, 8)):
        with pytest.raises(AnalysisError, match="scan_shape must be"):
            analysis.load(merlin / "001_4x2_6bit.mib", scan_shape=bad)


def test_prismatic_emd(real):
    import h5py

    with h5py.File(real / "Si100_4D.emd", "r") as f:
        params = dict(f["4DSTEM_simulation/metadata/metadata_0/original/simulation_parameters"].attrs)
        deep = f["4DSTEM_simulation/data/datacubes/CBED_array_depth0001/datacube"][...]
        q = f["4DSTEM_simulation/data/datacubes/CBED_array_depth0001/dim3"][...]
    d = analysis.load(real / "Si100_4D.emd")
    assert d.shape == (11, 11, 8, 8) and d.data.dtype == np.float32 and d.metadata["format"] == "prismatic"
    assert d.metadata["depth_index"] == 1 and d.metadata["depth_A"] == pytest.approx(5.43, rel=1e-5)  # deepest
    assert np.array_equal(np.asarray(d.data), deep)
    c = d.calibration
    assert c.energy_eV == pytest.approx(float(params["E"]) * 1e3) == 100e3
    assert c.semiangle_mrad == pytest.approx(float(params["sa"])) == 30.0
    assert c.scan_step_A == pytest.approx((float(params["rx"]), float(params["ry"]))) == (0.5, 0.5)
    assert c.pixel_size_inv_A == pytest.approx(1 / 5.43, rel=1e-6)  # one reciprocal Si cell (16-px potential grid)
    assert c.pixel_size_inv_A == pytest.approx(q[1] - q[0], rel=1e-6) and c.origin_px == (4.0, 4.0)
    assert c.source["detector_mrad_per_px"] == pytest.approx(1e3 * LAMBDA_100KEV_A / 5.43, rel=1e-5)  # 6.82
    # physics check of the Å⁻¹ reading: the 30 mrad bright-field disk edge lies at α/λ = 4.40 px from the origin
    r_px = 30e-3 / LAMBDA_100KEV_A / c.pixel_size_inv_A
    assert r_px == pytest.approx(4.40, abs=0.01)
    pat = deep.mean((0, 1))
    rr = np.hypot(*np.meshgrid(np.arange(8) - 4.0, np.arange(8) - 4.0, indexing="ij"))
    assert (pat[rr < r_px - 0.5] > 0.5 * pat.max()).all() and (pat[rr > r_px + 0.5] < 0.5 * pat.max()).all()
    d0 = analysis.load(real / "Si100_4D.emd", depth=0, lazy=False)
    assert not d0.is_lazy and d0.metadata["dataset"].endswith("depth0000/datacube")
    assert d0.metadata["depth_A"] == pytest.approx(2.715, rel=1e-5)
    assert not np.array_equal(d0.data, deep)
    with pytest.raises(AnalysisError, match="depth 5 not among the file's 2 depths"):
        analysis.load(real / "Si100_4D.emd", depth=5)


def test_emdfile_dims_in_mrad_use_the_calibrations_beam_energy(real, tmp_path):
    """An emdfile DataCube whose detector dimension vectors are in mrad and whose calibration gives the beam energy
    but no Q pixel size: the dims are converted with that energy's wavelength (without an energy they are left
    uncalibrated, not guessed)."""
    import h5py

    path = tmp_path / "mrad.h5"
    shutil.copy(real / "py4DSTEM_size2x3x4x5.h5", path)
    with h5py.File(path, "r+") as f:
        cal = f["datacube_root/metadatabundle/calibration"]
        del cal["Q_pixel_size"], cal["Q_pixel_units"]
        cube = f["datacube_root/datacube"]
        for i, n in ((2, 4), (3, 5)):
            del cube[f"dim{i}"]
            cube.create_dataset(f"dim{i}", data=(np.arange(n) - n // 2) * 0.5)
            cube[f"dim{i}"].attrs["units"] = "mrad"
    assert analysis.load(path).calibration.pixel_size_inv_A is None  # no energy: no conversion
    with h5py.File(path, "r+") as f:
        f["datacube_root/metadatabundle/calibration"].create_dataset("beam_energy", data=200e3)
    c = analysis.load(path).calibration
    assert c.energy_eV == 200e3 and c.pixel_size_inv_A == pytest.approx(0.5e-3 / LAMBDA_200KEV_A, rel=1e-5)
    assert c.origin_px == (2.0, 2.0)


def test_py4dstem_emdfile(real):
    import h5py

    with h5py.File(real / "py4DSTEM_size2x3x4x5.h5", "r") as f:
        cal = f["datacube_root/metadatabundle/calibration"]
        q, qu = cal["Q_pixel_size"][()], cal["Q_pixel_units"][()].decode()
        r, ru = cal["R_pixel_size"][()], cal["R_pixel_units"][()].decode()
        data = f["datacube_root/datacube/data"][...]
    assert (qu, ru) == ("A^-1", "nm")
    d = analysis.load(real / "py4DSTEM_size2x3x4x5.h5")
    assert d.shape == (2, 3, 4, 5) and d.data.dtype == np.float32 and d.metadata["format"] == "emdfile"
    assert d.calibration.pixel_size_inv_A == pytest.approx(q) == 0.044251566616087125
    assert d.calibration.scan_step_A == pytest.approx((10 * r, 10 * r)) == (1.26796875, 1.26796875)
    assert d.calibration.origin_px is None and d.calibration.source["Q_pixel_units"] == "A^-1"
    assert np.array_equal(np.asarray(d.data), data)


def test_python_c_load_each_real_file(real, merlin):
    """`python -c "import stemforge.analysis; d = stemforge.analysis.load(PATH)"` on every real file (one interpreter
    for speed)."""
    paths = [
        real / "test1.blo",
        real / "Si100_4D.emd",
        real / "py4DSTEM_size2x3x4x5.h5",
        merlin / "001_4x2_6bit.hdr",
        merlin / "001_4x2_6bit.mib",
        merlin / "002_4x2_6bit_roi128.mib",
    ]
    code = (
        "import sys, stemforge.analysis\nfor PATH in sys.argv[1:]:\n    d = stemforge.analysis.load(PATH)\n"
        "    print(d.scan_shape, d.detector_shape)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:6] == [
        "(3, 2) (144, 144)",
        "(11, 11) (8, 8)",
        "(2, 3) (4, 5)",
        "(2, 4) (256, 256)",
        "(2, 4) (256, 256)",
        "(2, 4) (128, 256)",
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "test1.blo",
        "Si100_4D.emd",
        "py4DSTEM_size2x3x4x5.h5",
        "001_4x2_6bit.hdr",
        "001_4x2_6bit.mib",
        "002_4x2_6bit_roi128.mib",
    ],
)
def test_python_c_exact_command(real, merlin, name):
    path = real / name if (real / name).exists() else merlin / name
    out = subprocess.run(
        [sys.executable, "-c", f"import stemforge.analysis; d = stemforge.analysis.load({str(path)!r})"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.returncode == 0, out.stderr


def test_real_blockfile_round_trip(real, tmp_path):
    d = analysis.load(real / "test1.blo")
    back = analysis.load(analysis.save(d, tmp_path / "b.zarr"))
    assert back.shape == d.shape and np.array_equal(np.asarray(back.data), np.asarray(d.data).astype(np.float32))
    assert back.calibration == d.calibration and back.calibration.source["beam_energy_keV"] == 200.0
    assert back.metadata["saved_from"]["format"] == "blockfile"


# -------------------------------------------------------------------------------------------------- laziness
def _counting(monkeypatch):
    calls = []
    orig = FileArray.__getitem__
    monkeypatch.setattr(FileArray, "__getitem__", lambda self, i: calls.append(i) or orig(self, i))
    return calls


def test_lazy_npy_and_hdf5_read_nothing_until_computed(tmp_path, monkeypatch):
    import dask.array as da
    import h5py

    arr = np.random.default_rng(0).random((3, 4, 6, 5)).astype(np.float32)
    np.save(tmp_path / "a.npy", arr)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["scan"] = arr
    calls = _counting(monkeypatch)
    for name in ("a.npy", "a.h5"):
        d = analysis.load(tmp_path / name)
        assert isinstance(d.data, da.Array) and d.is_lazy and calls == []
        # the file is not held open: it can be rewritten after load, and compute sees the new values
        if name == "a.npy":
            np.save(tmp_path / name, arr + 1)
        else:
            with h5py.File(tmp_path / name, "r+") as f:
                f["scan"][...] = arr + 1
        assert np.array_equal(np.asarray(d.data[2, 1]), arr[2, 1] + 1) and calls
        assert np.array_equal(np.asarray(pickle.loads(pickle.dumps(d.data))), arr + 1)  # no handle in the graph
        calls.clear()
    assert not analysis.load(tmp_path / "a.npy", lazy=False).is_lazy


def test_lazy_zarr_and_rsciio(tmp_path, real, merlin):
    import dask.array as da

    arr = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    analysis.save(DataCube(arr), tmp_path / "z.zarr")
    d = analysis.load(tmp_path / "z.zarr")
    import zarr

    zarr.open_group(str(tmp_path / "z.zarr"), mode="r+")["data"][1, 2] = -1.0
    assert isinstance(d.data, da.Array) and np.all(np.asarray(d.data[1, 2]) == -1)
    shutil.copy(real / "test1.blo", tmp_path / "t.blo")
    for f in ("001_4x2_6bit.mib", "001_4x2_6bit.hdr"):
        shutil.copy(merlin / f, tmp_path / f)
    blo, mib = analysis.load(tmp_path / "t.blo"), analysis.load(tmp_path / "001_4x2_6bit.mib")
    assert isinstance(blo.data, da.Array) and isinstance(mib.data, da.Array)
    raw = bytearray((tmp_path / "t.blo").read_bytes())
    (offset2,) = struct.unpack_from("<I", raw, 12)
    start = offset2 + 5 * (6 + 144 * 144) + 6
    raw[start : start + 144 * 144] = bytes([9]) * (144 * 144)
    (tmp_path / "t.blo").write_bytes(bytes(raw))
    _, _, hdr_len, size = _mib_frames(tmp_path / "001_4x2_6bit.mib")
    raw = bytearray((tmp_path / "001_4x2_6bit.mib").read_bytes())
    raw[6 * size + hdr_len : 7 * size] = bytes([7]) * (size - hdr_len)
    (tmp_path / "001_4x2_6bit.mib").write_bytes(bytes(raw))
    assert np.all(np.asarray(blo.data[2, 1]) == 9) and np.all(np.asarray(mib.data[1, 2]) == 7)


# ---------------------------------------------------------------------------------------------- round trips
def test_zarr_round_trip_with_ground_truth(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.random((3, 2, 8, 8)).astype(np.float32)
    gt = {
        "exx": rng.normal(size=(3, 2)).astype(np.float32),
        "phase": np.arange(6, dtype=np.int32).reshape(3, 2),
        "rotation": np.tile(np.eye(3), (3, 2, 1, 1)),
        "zone_axis": np.ones((3, 2, 3), np.int32),
    }
    cal = Calibration(
        pixel_size_inv_A=0.03,
        energy_eV=300e3,
        semiangle_mrad=2.0,
        scan_step_A=(5.0, 4.0),
        origin_px=(4.0, 4.5),
        ellipticity=(1.01, 1.0, 0.3),
        rotation_deg=12.0,
    )
    cube = DataCube(
        arr,
        cal,
        {"phases": ["Si", "Cu"], "ground_truth_units": {"exx": "1"}, "config": {"a": 1}},
        gt,
        probe=arr[0, 0] * 2,
    )
    path = analysis.save(cube, tmp_path / "c.zarr")
    back = analysis.load(path)
    assert back.is_lazy and np.array_equal(np.asarray(back.data), arr) and back.calibration == cal
    assert back.metadata["phases"] == ["Si", "Cu"] and back.metadata["ground_truth_units"] == {"exx": "1"}
    assert back.metadata["config"] == {"a": 1} and np.array_equal(back.probe, arr[0, 0] * 2)
    assert set(back.ground_truth) == set(gt)
    for k, v in gt.items():
        assert back.ground_truth[k].dtype == v.dtype and np.array_equal(back.ground_truth[k], v)
    with pytest.raises(AnalysisError, match="overwrite=True"):
        analysis.save(cube, path)
    with pytest.raises(AnalysisError, match="reads from"):
        analysis.save(back, path, overwrite=True)
    analysis.save(analysis.load(path, lazy=False), path, overwrite=True)  # eager copy may replace its source
    assert np.array_equal(np.asarray(analysis.load(path).data), arr)


def test_save_streams_a_lazy_cube_in_blocks(tmp_path, monkeypatch):
    import stemforge.analysis.io_formats as fmts

    arr = np.random.default_rng(2).random((5, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "a.npy", arr)
    monkeypatch.setattr(fmts, "CHUNK_BYTES", 2 * 3 * 16 * 16 * 4)  # two scan rows per chunk
    lazy = analysis.load(tmp_path / "a.npy")
    assert lazy.data.chunks[0] == (2, 2, 1)
    calls = _counting(monkeypatch)
    analysis.save(lazy, tmp_path / "s.zarr")
    assert len(calls) == 3  # one read per chunk, none of the whole array
    back = analysis.load(tmp_path / "s.zarr")
    assert np.array_equal(np.asarray(back.data), arr)


def test_nested_ground_truth_groups_are_flattened(tmp_path):
    import zarr

    arr = np.ones((2, 3, 4, 4), np.float32)
    path = analysis.save(DataCube(arr), tmp_path / "n.zarr")
    g = zarr.open_group(path, mode="r+")
    g.create_array("ground_truth/strain/exx", data=np.full((2, 3), 0.01, np.float32))
    g.create_array("ground_truth/strain/theta_deg", data=np.zeros((2, 3), np.float32))
    g.create_array("ground_truth/phase", data=np.ones((2, 3), np.int32))
    g.create_array("ground_truth/other/theta_deg", data=np.ones((2, 3), np.float32))
    gt = analysis.load(path).ground_truth
    assert set(gt) == {"exx", "phase", "strain/theta_deg", "other/theta_deg"}
    assert gt["exx"][1, 2] == np.float32(0.01) and gt["phase"].dtype == np.int32
    assert isinstance(gt["exx"], np.ndarray) and gt["other/theta_deg"][0, 0] == 1  # read eagerly


def test_save_lazy_cube_with_ragged_chunks(tmp_path, monkeypatch):
    import dask.array as da

    import stemforge.analysis.io_formats as fmts

    arr = np.random.default_rng(3).random((5, 3, 8, 8)).astype(np.float64)
    monkeypatch.setattr(fmts, "CHUNK_BYTES", 2 * 3 * 8 * 8 * 4)  # store chunks of two scan rows
    lazy = da.from_array(arr, chunks=(3, 1, 8, 8))  # misaligned with the store on purpose
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no dask rechunk/safety warnings
        analysis.save(DataCube(lazy), tmp_path / "r.zarr")
    import zarr

    z = zarr.open_group(str(tmp_path / "r.zarr"), mode="r")
    assert z["data"].chunks == (2, 3, 8, 8) and z["data"].dtype == np.float32 and z.attrs["complete"] is True
    assert np.array_equal(np.asarray(analysis.load(tmp_path / "r.zarr").data), arr.astype(np.float32))


def test_plain_zarr_array_and_group(tmp_path):
    import zarr

    arr = np.random.default_rng(5).random((2, 2, 3, 3)).astype(np.float32)
    zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=arr.shape, dtype="f4")[...] = arr
    d = analysis.load(tmp_path / "a.zarr")
    assert d.is_lazy and np.array_equal(np.asarray(d.data), arr) and d.calibration.pixel_size_inv_A is None
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("raw/scan", data=arr)
    g.create_array("raw/mask", data=np.ones((3, 3)))
    assert analysis.load(tmp_path / "g.zarr").metadata["dataset"] == "raw/scan"
    g.create_array("raw/other", data=arr)
    with pytest.raises(AnalysisError, match="exactly one 4D array"):
        analysis.load(tmp_path / "g.zarr")
    assert np.array_equal(analysis.load(tmp_path / "g.zarr", dataset="raw/other", lazy=False).data, arr)


def test_hdf5_generic_npz_and_content_sniffing(tmp_path):
    import h5py

    arr = np.random.default_rng(3).random((2, 3, 4, 4)).astype(np.float32)
    with h5py.File(tmp_path / "g.h5", "w") as f:
        g = f.create_group("some/where")
        g["scan"] = arr
        for i, (n, unit, step) in enumerate([(2, "nm", 0.5), (3, "nm", 0.5), (4, "1/nm", 0.2), (4, "1/nm", 0.2)]):
            g[f"dim{i + 1}"] = (np.arange(n) - (n // 2 if i > 1 else 0)) * step
            g[f"dim{i + 1}"].attrs["units"] = unit
        f["other/image"] = np.zeros((4, 4))
    d = analysis.load(tmp_path / "g.h5")
    assert np.array_equal(np.asarray(d.data), arr) and d.metadata["dataset"] == "/some/where/scan"
    assert d.calibration.scan_step_A == pytest.approx((5.0, 5.0)) and d.calibration.pixel_size_inv_A == pytest.approx(
        0.02
    )
    assert d.calibration.origin_px == (2.0, 2.0)
    shutil.copy(tmp_path / "g.h5", tmp_path / "scan.bin")  # no known extension: recognised by its signature
    assert analysis.load(tmp_path / "scan.bin").shape == arr.shape
    np.save(tmp_path / "x.npy", arr)
    shutil.copy(tmp_path / "x.npy", tmp_path / "scan.dat")
    assert np.array_equal(np.asarray(analysis.load(tmp_path / "scan.dat").data), arr)
    np.savez(tmp_path / "s.npz", scan=arr, mask=np.ones((4, 4)))
    assert np.array_equal(analysis.load(tmp_path / "s.npz").data, arr)
    np.savez(tmp_path / "two.npz", a=arr, b=arr)
    with pytest.raises(AnalysisError, match="key="):
        analysis.load(tmp_path / "two.npz")
    assert analysis.load(tmp_path / "two.npz", key="b").metadata["key"] == "b"
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"], f["b"] = arr, arr + 1
    with pytest.raises(AnalysisError, match="several 4D datasets"):
        analysis.load(tmp_path / "two.h5")
    assert np.array_equal(np.asarray(analysis.load(tmp_path / "two.h5", dataset="b").data), arr + 1)


def test_rsciio_hspy_calibration_conversion(tmp_path):
    from rsciio.hspy import file_writer

    arr = np.random.default_rng(4).random((2, 3, 6, 8)).astype(np.float32)

    def axes(sig_units, sig_scale):
        return [
            {"name": "y", "size": 2, "scale": 2.0, "offset": 0.0, "units": "nm", "navigate": True},
            {"name": "x", "size": 3, "scale": 25.0, "offset": 0.0, "units": "Å", "navigate": True},
            {
                "name": "ky",
                "size": 6,
                "scale": sig_scale,
                "offset": -3 * sig_scale,
                "units": sig_units,
                "navigate": False,
            },
            {
                "name": "kx",
                "size": 8,
                "scale": sig_scale,
                "offset": -4 * sig_scale,
                "units": sig_units,
                "navigate": False,
            },
        ]

    for units, scale, expect in [("1/nm", 0.1, 0.01), ("mrad", 0.5, 0.5e-3 / LAMBDA_200KEV_A)]:
        sig = {
            "data": arr,
            "axes": axes(units, scale),
            "original_metadata": {},
            "tmp_parameters": {},
            "metadata": {
                "Acquisition_instrument": {"TEM": {"beam_energy": 200.0, "convergence_angle": 1.5}},
                "General": {"title": "t"},
                "Signal": {"signal_type": "electron_diffraction"},
            },
            "attributes": {"_lazy": False},
            "package_info": {"name": "hyperspy", "version": "2.0"},
            "learning_results": {},
            "models": {},
        }
        file_writer(str(tmp_path / "s.hspy"), sig)
        d = analysis.load(tmp_path / "s.hspy")
        c = d.calibration
        assert d.is_lazy and np.array_equal(np.asarray(d.data), arr)
        assert c.scan_step_A == pytest.approx((20.0, 25.0)) and c.energy_eV == 200e3 and c.semiangle_mrad == 1.5
        assert c.pixel_size_inv_A == pytest.approx(expect, rel=1e-5) and c.origin_px == pytest.approx((3.0, 4.0))
        assert c.source["axes"][2]["units"] == units


def test_rsciio_stack_needs_scan_shape():
    sig = {
        "data": np.zeros((6, 4, 4)),
        "axes": [
            {"size": 6, "units": ""},
            {"size": 4, "scale": 0.1, "units": "1/Å"},
            {"size": 4, "scale": 0.1, "units": "1/Å"},
        ],
        "metadata": {},
    }
    with pytest.raises(AnalysisError, match="scan_shape"):
        cube_from_signals([sig], "f.dm4", "digitalmicrograph")
    d = cube_from_signals([sig], "f.dm4", "digitalmicrograph", scan_shape=(2, 3))
    assert d.shape == (2, 3, 4, 4) and d.calibration.pixel_size_inv_A == pytest.approx(0.1)
    mapped = {
        **sig,
        "data": np.zeros((2, 3, 4, 4)),
        "axes": None,
        "original_metadata": {"h": {"V": 300000}},
        "mapping": {"h.V": ("Acquisition_instrument.TEM.beam_energy", lambda v: v / 1e3)},
    }
    assert cube_from_signals([mapped], "f.dm4", "digitalmicrograph").calibration.energy_eV == 300e3


def test_unit_conversions():
    assert length_to_A(1.5, "nm") == 15.0 and length_to_A(2, "µm") == 2e4 and length_to_A(3, "Å") == 3.0
    assert length_to_A(0.1, "A") == 0.1 and length_to_A(1, "1/nm") is None and length_to_A(1, "") is None
    for unit in ("1/nm", "nm^-1", "nm⁻¹", "1 / nm"):
        assert reciprocal_to_inv_A(0.5, unit) == pytest.approx(0.05)
    for unit in ("1/Å", "Å^-1", "A^-1", "1/A"):
        assert reciprocal_to_inv_A(0.5, unit) == pytest.approx(0.5)
    assert reciprocal_to_inv_A(1.0, "mrad", 100e3) == pytest.approx(1e-3 / LAMBDA_100KEV_A, rel=1e-5)
    assert reciprocal_to_inv_A(1.0, "mrad") is None and reciprocal_to_inv_A(1.0, "cm") is None
    assert math.isclose(Calibration(energy_eV=200e3).wavelength_A, LAMBDA_200KEV_A, rel_tol=1e-5)


# ---------------------------------------------------------------------------------------------------- errors
def test_errors(tmp_path, real, merlin):
    import h5py
    import zarr

    def fails(match, path, **kw):
        with pytest.raises(AnalysisError, match=match):
            analysis.load(path, **kw)

    fails("no such file", tmp_path / "missing.npy")
    (tmp_path / "x.txt").write_text("hi")
    fails("unknown format '.txt'", tmp_path / "x.txt")
    (tmp_path / "folder").mkdir()
    fails("not a zarr store", tmp_path / "folder")
    np.save(tmp_path / "three.npy", np.zeros((2, 8, 8)))
    fails(r"found a 3D array of shape \(2, 8, 8\); a 4D-STEM scan must be 4D", tmp_path / "three.npy")
    with h5py.File(tmp_path / "three.h5", "w") as f:
        f["stack"] = np.zeros((5, 8, 8))
    fails(
        r"no 4D dataset in the HDF5 file \(found \{'stack': \(5, 8, 8\)\}\); a 4D-STEM scan must be 4D",
        tmp_path / "three.h5",
    )
    fails("depth= applies to Prismatic output only", tmp_path / "three.h5", depth=0)
    with h5py.File(tmp_path / "three.emd", "w") as f:  # an .emd without 4D data goes on to rosettasciio (Velox...)
        f.attrs.update({"version_major": 0, "version_minor": 2})
        f.create_group("data/img").attrs["emd_group_type"] = 1
        f["data/img/data"] = np.zeros((5, 8, 8), np.float32)
        for i, n in enumerate((5, 8, 8)):
            f[f"data/img/dim{i + 1}"] = np.arange(n, dtype=float)
    fails(r"no 4D signal \(found shapes \[\(8, 8, 5\)\]\); a 4D-STEM scan must be 4D$", tmp_path / "three.emd")
    zarr.open_array(str(tmp_path / "three.zarr"), mode="w", shape=(2, 8, 8), dtype="f4")
    fails("3D array", tmp_path / "three.zarr")
    (tmp_path / "bad.h5").write_text("not hdf5")
    fails("not a readable HDF5 file", tmp_path / "bad.h5")
    (tmp_path / "bad.mib").write_bytes(b"garbage" * 10)
    fails("rosettasciio .quantumdetector. cannot read it", tmp_path / "bad.mib")
    shutil.copy(merlin / "001_4x2_6bit.hdr", tmp_path / "lonely.hdr")
    fails("Merlin data file lonely.mib is missing", tmp_path / "lonely.hdr")
    fails(r"option\(s\) \['depht'\] do not apply to hdf5 files", real / "Si100_4D.emd", depht=0)
    fails("do not apply to npy", tmp_path / "three.npy", scan_shape=(1, 2))
    for complete in (False, None):
        g = zarr.open_group(str(tmp_path / "half.zarr"), mode="w")
        g.attrs.update({"stemforge_format": "datacube/1", **({} if complete is None else {"complete": complete})})
        g.create_array("data", shape=(1, 1, 4, 4), dtype="float32")
        fails("incomplete scan", tmp_path / "half.zarr")
    g.attrs.update({"stemforge_format": "datacube/9", "complete": True})
    fails("not supported", tmp_path / "half.zarr")
    with pytest.raises(AnalysisError, match="not a zarr store; refusing"):
        analysis.save(DataCube(np.zeros((1, 1, 2, 2))), tmp_path / "x.txt")
    with pytest.raises(AnalysisError, match="maps must lead with the scan shape"):
        analysis.save(DataCube(np.zeros((2, 2, 2, 2)), ground_truth={"exx": np.zeros(3)}), tmp_path / "gt.zarr")
