"""Open 4D-STEM data as a :class:`~analysis.datacube.DataCube` (lazily) and save it in stemforge's zarr layout.

``load(path)`` recognises

* ``.npy`` (memory-mapped when lazy) — a 4D array ``(Rx, Ry, H, W)``;
* zarr folders: stemforge's ``datacube/1`` layout (written by :func:`save` and :mod:`sim.synthetic_scan`: data,
  probe, ground truth and calibration) or a plain 4D zarr array;
* HDF5 ``.h5/.hdf5/.emd``: py4DSTEM / emdfile DataCubes (with their ``Q_pixel_size`` / ``R_pixel_size``
  calibration), Prismatic output (``4DSTEM_simulation``; choose the depth with ``depth=``), or any file holding
  exactly one 4D dataset; other ``.emd`` files (Velox) through rosettasciio;
* experimental formats through rosettasciio: Quantum Detectors Merlin ``.mib`` / ``.hdr``, NanoMegas ``.blo``,
  Gatan ``.dm3/.dm4``.

Calibration travels with the data: scan step in Å, detector pixel size in Å⁻¹/px, beam energy in eV and
convergence semi-angle in mrad where the file records them (``None`` otherwise; the original axes are kept in
``calibration.source``). Data are returned as dask arrays when ``lazy`` (nothing is read until computed).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .datacube import AnalysisError, Calibration, DataCube

FORMAT = "datacube/1"
_LENGTH_A = {"a": 1.0, "å": 1.0, "angstrom": 1.0, "nm": 10.0, "n_m": 10.0, "um": 1e4, "µm": 1e4, "pm": 0.01, "m": 1e10}
_INV_A = {"1/a": 1.0, "a^-1": 1.0, "1/å": 1.0, "å^-1": 1.0, "1/nm": 0.1, "nm^-1": 0.1, "n_m^-1": 0.1}


def _str(v) -> str:
    return v.decode() if isinstance(v, (bytes, np.bytes_)) else str(v)


def _check4d(shape, path) -> None:
    if len(shape) != 4:
        raise AnalysisError(f"{path}: found a {len(shape)}D array of shape {tuple(shape)}; a 4D-STEM scan must be "
                            "4D (scan rows, scan cols, detector rows, detector cols)")


def load(path, lazy: bool = True, **options) -> DataCube:
    """Open a 4D-STEM scan; see the module docstring for the formats. Options: ``depth`` (Prismatic), ``dataset``
    (HDF5 path of the 4D array when a file holds several)."""
    p = Path(os.fspath(path))
    if not p.exists():
        raise AnalysisError(f"{p}: no such file or folder")
    ext = p.suffix.lower()
    if p.is_dir() and ((p / "zarr.json").exists() or (p / ".zgroup").exists() or (p / ".zarray").exists()):
        return _load_zarr(p, lazy)
    if ext == ".npy":
        arr = np.load(p, mmap_mode="r" if lazy else None)
        _check4d(arr.shape, p)
        return DataCube(_lazy(arr) if lazy else np.asarray(arr), Calibration(), {"path": str(p), "format": "npy"})
    if ext in (".h5", ".hdf5", ".emd"):
        cube = _load_hdf5(p, lazy, **options)
        if cube is not None:
            return cube
        return _load_rsciio(p, lazy, "emd")
    if ext in (".mib", ".hdr"):
        mib = p.with_suffix(".mib")
        if not mib.exists():
            raise AnalysisError(f"{p}: the Merlin data file {mib.name} is missing")
        return _load_rsciio(mib, lazy, "quantumdetector")
    if ext == ".blo":
        return _load_rsciio(p, lazy, "blockfile")
    if ext in (".dm3", ".dm4"):
        return _load_rsciio(p, lazy, "digitalmicrograph")
    raise AnalysisError(f"{p}: unknown format {ext or '(no extension)'!r}; expected .npy, a zarr folder, "
                        ".h5/.hdf5/.emd, .mib/.hdr, .blo or .dm3/.dm4")


def _lazy(arr):
    import dask.array as da

    chunks = (1, -1, *arr.shape[2:]) if arr.ndim == 4 else "auto"
    return da.from_array(arr, chunks=chunks)


# ------------------------------------------------------------------------------------------------------- zarr
def _load_zarr(p: Path, lazy: bool) -> DataCube:
    import zarr

    try:
        node = zarr.open(str(p), mode="r")
    except Exception as err:  # noqa: BLE001 - zarr raises many kinds
        raise AnalysisError(f"{p}: cannot open as zarr: {err}") from None
    if isinstance(node, zarr.Array):
        _check4d(node.shape, p)
        return DataCube(_dask_zarr(node) if lazy else node[...], Calibration(), {"path": str(p), "format": "zarr"})
    attrs = dict(node.attrs)
    if attrs.get("stemforge_format") != FORMAT:
        arrays = [a for _, a in node.arrays() if a.ndim == 4]
        if len(arrays) != 1:
            raise AnalysisError(f"{p}: a zarr group that is not a stemforge datacube must hold exactly one 4D array "
                                f"(found {len(arrays)})")
        return DataCube(_dask_zarr(arrays[0]) if lazy else arrays[0][...], Calibration(), {"path": str(p)})
    if not attrs.get("complete"):
        raise AnalysisError(f"{p}: incomplete scan (its writer did not finish: attrs complete is not true)")
    data = node["data"]
    _check4d(data.shape, p)
    gt = {}
    if "ground_truth" in node:
        gt = {name: np.asarray(arr[...]) for name, arr in node["ground_truth"].arrays()}
    probe = np.asarray(node["probe"][...], dtype=np.float32) if "probe" in node else None
    meta = {"path": str(p), "format": FORMAT, **{k: attrs[k] for k in ("phases", "ground_truth_units", "config",
                                                                       "versions") if k in attrs}}
    return DataCube(_dask_zarr(data) if lazy else np.asarray(data[...]), Calibration.from_dict(attrs.get("calibration") or {}),
                    meta, gt, probe)


def _dask_zarr(arr):
    import dask.array as da

    return da.from_zarr(arr)


def save(cube: DataCube, path) -> str:
    """Write ``cube`` in the ``datacube/1`` zarr layout (data streamed row by row; ``complete`` set last)."""
    import zarr

    p = Path(os.fspath(path))
    g = zarr.open_group(str(p), mode="w")
    g.attrs.update({"stemforge_format": FORMAT, "complete": False, "calibration": cube.calibration.as_dict()})
    for k in ("phases", "ground_truth_units", "config", "versions"):
        if k in cube.metadata:
            g.attrs[k] = cube.metadata[k]
    Rx, Ry, H, W = cube.shape
    out = g.create_array("data", shape=cube.shape, chunks=(1, Ry, H, W), dtype="float32")
    for rx in range(Rx):
        out[rx] = np.asarray(cube.data[rx], dtype=np.float32)
    if cube.probe is not None:
        g.create_array("probe", data=np.asarray(cube.probe, dtype=np.float32))
    for name, arr in (cube.ground_truth or {}).items():
        g.create_array(f"ground_truth/{name}", data=np.asarray(arr))
    g.attrs["complete"] = True
    return str(p)


# ------------------------------------------------------------------------------------------------------- HDF5
def _load_hdf5(p: Path, lazy: bool, depth: int = -1, dataset: str | None = None) -> DataCube | None:
    import h5py

    try:
        f = h5py.File(p, "r")
    except OSError as err:
        raise AnalysisError(f"{p}: not a readable HDF5 file ({err})") from None
    if dataset is not None:
        if dataset not in f:
            raise AnalysisError(f"{p}: no dataset {dataset!r}")
        return _cube_from_h5(f[dataset], Calibration(), p, lazy, "hdf5")
    if "4DSTEM_simulation" in f:  # Prismatic
        cubes = sorted(k for k in f["4DSTEM_simulation/data/datacubes"])
        if not cubes:
            raise AnalysisError(f"{p}: Prismatic file without datacubes")
        try:
            name = cubes[depth]
        except IndexError:
            raise AnalysisError(f"{p}: depth {depth} not in the file's {len(cubes)} depths") from None
        grp = f["4DSTEM_simulation/data/datacubes"][name]
        params = dict(f["4DSTEM_simulation/metadata/metadata_0/original/simulation_parameters"].attrs)
        # Prismatic writes its probe step and detector sampling in Å and Å⁻¹ (matching its parameters rx and the
        # cell), although the axis labels read "[n_m]" / "[n_m^-1]".
        r = grp["dim1"][:]
        q = grp["dim3"][:]
        energy = float(params["E"]) * 1e3 if "E" in params else None
        cal = Calibration(q_pixel_size=float(q[1] - q[0]), energy_eV=energy,
                          semiangle_mrad=float(params["sa"]) if "sa" in params else None,
                          scan_step_A=(float(r[1] - r[0]), float(grp["dim2"][1] - grp["dim2"][0])),
                          origin_px=(float(np.argmin(np.abs(q))), float(np.argmin(np.abs(grp["dim4"][:])))),
                          source={"format": "prismatic", "depth": name, "labels": [_str(grp[d].attrs.get("units", ""))
                                                                                  for d in ("dim1", "dim3")]})
        return _cube_from_h5(grp["datacube"], cal, p, lazy, "prismatic", {"depths": cubes})
    found = []
    f.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) and o.ndim == 4 else None)
    if not found:
        return None if p.suffix.lower() == ".emd" else _raise(f"{p}: no 4D dataset in the HDF5 file")
    if len(found) > 1:
        raise AnalysisError(f"{p}: several 4D datasets {found}; choose one with dataset=")
    ds = f[found[0]]
    cal = Calibration()
    grp = ds.parent
    if _str(grp.attrs.get("python_class", "")) == "DataCube":  # py4DSTEM / emdfile
        cal = _emdfile_calibration(f, grp)
    return _cube_from_h5(ds, cal, p, lazy, "emdfile" if cal.source else "hdf5")


def _raise(msg):
    raise AnalysisError(msg)


def _emdfile_calibration(f, grp) -> Calibration:
    root = grp.parent
    c = None
    for key in ("metadatabundle/calibration",):
        if key in root:
            c = root[key]
    if c is None:
        return Calibration()
    vals = {k: c[k][()] for k in c if hasattr(c[k], "shape")}
    q, qu = vals.get("Q_pixel_size"), _str(vals.get("Q_pixel_units", "pixels")).lower()
    r, ru = vals.get("R_pixel_size"), _str(vals.get("R_pixel_units", "pixels")).lower()
    q_A = float(q) * _INV_A[qu] if q is not None and qu in _INV_A else None
    r_A = float(r) * _LENGTH_A[ru] if r is not None and ru in _LENGTH_A else None
    return Calibration(q_pixel_size=q_A, scan_step_A=(r_A, r_A) if r_A else None,
                       source={"format": "emdfile", "Q_pixel_size": float(q) if q is not None else None,
                               "Q_pixel_units": qu, "R_pixel_size": float(r) if r is not None else None,
                               "R_pixel_units": ru})


def _cube_from_h5(ds, cal, p, lazy, fmt, extra=None) -> DataCube:
    _check4d(ds.shape, p)
    data = _lazy(ds) if lazy else ds[...]
    return DataCube(data, cal, {"path": str(p), "format": fmt, "dataset": ds.name, **(extra or {})})


# ------------------------------------------------------------------------------------------------------- rsciio
def _load_rsciio(p: Path, lazy: bool, plugin: str) -> DataCube:
    import importlib

    reader = importlib.import_module(f"rsciio.{plugin}").file_reader
    try:
        signals = reader(str(p), lazy=lazy)
    except Exception as err:  # noqa: BLE001 - readers raise many kinds on bad files
        raise AnalysisError(f"{p}: rosettasciio ({plugin}) cannot read it: {type(err).__name__}: {err}") from None
    four = [s for s in signals if np.ndim(s["data"]) == 4 or len(getattr(s["data"], "shape", ())) == 4]
    if not four:
        shapes = [tuple(s["data"].shape) for s in signals]
        raise AnalysisError(f"{p}: no 4D signal (found shapes {shapes}); a 4D-STEM scan must be 4D")
    s = four[0]
    axes = sorted(s["axes"], key=lambda a: a["index_in_array"])
    meta = s.get("metadata", {})
    energy = _get(meta, "Acquisition_instrument", "TEM", "beam_energy")
    alpha = _get(meta, "Acquisition_instrument", "TEM", "convergence_angle")
    energy_eV = float(energy) * 1e3 if energy else None  # hyperspy stores keV
    nav, sig = axes[:2], axes[2:]
    step = [_length_A(a) for a in nav]
    q = _inv_A(sig[1], energy_eV)
    cal = Calibration(q_pixel_size=q, energy_eV=energy_eV, semiangle_mrad=float(alpha) if alpha else None,
                      scan_step_A=tuple(step) if all(v is not None for v in step) else None,
                      source={"format": plugin, "axes": [{k: (float(v) if isinstance(v, (np.floating,)) else v)
                                                          for k, v in a.items()} for a in axes]})
    data = s["data"]
    return DataCube(data, cal, {"path": str(p), "format": plugin, "original_metadata_keys":
                                list(s.get("original_metadata", {}))})


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _length_A(axis) -> float | None:
    u = str(axis.get("units") or "").strip().lower()
    return float(axis["scale"]) * _LENGTH_A[u] if u in _LENGTH_A else None


def _inv_A(axis, energy_eV) -> float | None:
    u = str(axis.get("units") or "").strip().lower()
    if u in _INV_A:
        return float(axis["scale"]) * _INV_A[u]
    if u == "mrad" and energy_eV:
        lam = 12398.419843 / math.sqrt(energy_eV * (2 * 510998.95 + energy_eV))
        return float(axis["scale"]) * 1e-3 / lam
    return None
