"""Open 4D-STEM data as a :class:`~stemforge.analysis.datacube.DataCube` (lazily) and save it in stemforge's zarr
layout.

``load(path)`` recognises, by extension and else by the file's first bytes:

* ``.npy`` (read chunk by chunk through a memory map when lazy) and ``.npz`` (read into memory) — a 4D array
  ``(Rx, Ry, H, W)``;
* zarr stores: stemforge's ``datacube/1`` layout (written by :func:`save` and :mod:`stemforge.sim.synthetic_scan`: data,
  probe, ground-truth maps, phases, calibration; a group without ``complete: true`` is refused) or a plain 4D zarr
  array (or a group holding one);
* HDF5 ``.h5/.hdf5/.emd``: py4DSTEM / emdfile DataCubes, Prismatic output (choose the depth with ``depth=``,
  default the deepest), any file holding one 4D dataset (``dataset=`` picks one of several); other ``.emd``
  files (Velox) through rosettasciio;
* through rosettasciio: Quantum Detectors Merlin ``.mib`` (or its ``.hdr``), NanoMegas ``.blo``, Gatan
  ``.dm3/.dm4``, HyperSpy ``.hspy``; ``scan_shape=(rows, cols)`` sets the scan of a Merlin file or reshapes a
  stack of frames.

Calibration travels with the data: scan step in Å, detector pixel size in Å⁻¹/px, beam energy in eV, convergence
semi-angle in mrad and the origin where the file records them (``None`` otherwise); what the file said, in its own
units, is kept in ``calibration.source``. With ``lazy=True`` the data are a dask array and nothing is read until
computed (``.npz`` excepted).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stemforge.core.jsonable import to_jsonable

from .datacube import AnalysisError, Calibration, DataCube, as_datacube
from .io_formats import MAX_ATTR_ITEMS, FileArray, check_4d, load_hdf5, scan_chunks
from .io_rsciio import load_rsciio

FORMAT = "datacube/1"
_EXT = {
    ".npy": "npy",
    ".npz": "npz",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".emd": "hdf5",
    ".mib": "merlin",
    ".hdr": "merlin",
    ".blo": "blockfile",
    ".dm3": "dm",
    ".dm4": "dm",
    ".hspy": "hspy",
}
_OPTIONS = {
    "npy": (),
    "npz": ("key",),
    "zarr": ("dataset",),
    "hdf5": ("depth", "dataset"),
    "merlin": ("scan_shape",),
    "blockfile": ("scan_shape",),
    "dm": ("scan_shape",),
    "hspy": ("scan_shape",),
}
_MAGIC = [
    (b"\x89HDF\r\n\x1a\n", "hdf5"),
    (b"\x93NUMPY", "npy"),
    (b"PK\x03\x04", "npz"),
    (b"MQ1,", "merlin"),
    (b"IMGBLO", "blockfile"),
]
_SAVED_KEYS = ("phases", "ground_truth_units", "config", "versions", "units", "unique_sets")


def detect_format(path) -> str:
    """The reader :func:`load` uses for ``path``: ``zarr``, ``npy``, ``npz``, ``hdf5``, ``merlin``, ``blockfile``,
    ``dm`` or ``hspy``. Raises :class:`AnalysisError` for a missing path or an unknown format."""
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise AnalysisError(f"{p}: no such file or folder")
    if p.is_dir():
        if any((p / n).exists() for n in ("zarr.json", ".zgroup", ".zarray")):
            return "zarr"
        raise AnalysisError(f"{p}: a folder that is not a zarr store (no zarr.json, .zgroup or .zarray)")
    ext = p.suffix.lower()
    if ext in _EXT:
        return _EXT[ext]
    with open(p, "rb") as fh:
        head = fh.read(2048 + 8)
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if any(head[o : o + 8] == _MAGIC[0][0] for o in (512, 1024, 2048)):  # HDF5 with a user block
        return "hdf5"
    raise AnalysisError(
        f"{p}: unknown format {ext or '(no extension)'!r}; expected .npy/.npz, a zarr folder, "
        ".h5/.hdf5/.emd, .mib/.hdr, .blo, .dm3/.dm4 or .hspy"
    )


def load(path, lazy: bool = True, **options) -> DataCube:
    """Open a 4D-STEM scan (formats: module docstring) as a :class:`DataCube` with its calibration.

    Parameters
    ----------
    path : str or Path
        File or zarr folder.
    lazy : bool
        Return a dask array that reads on compute (default); ``False`` reads everything now.
    **options
        ``depth`` (Prismatic: output depth index, default -1 = deepest), ``dataset`` (HDF5 or zarr path of the 4D
        array when there are several), ``key`` (``.npz`` member), ``scan_shape`` ``(rows, cols)`` (Merlin and
        other rosettasciio formats).
    """
    p = Path(os.fspath(path)).expanduser()
    fmt = detect_format(p)
    unknown = sorted(set(options) - set(_OPTIONS[fmt]))
    if unknown:
        raise AnalysisError(
            f"{p}: option(s) {unknown} do not apply to {fmt} files (options: {list(_OPTIONS[fmt]) or 'none'})"
        )
    if "scan_shape" in options and options["scan_shape"] is not None:
        ss = options["scan_shape"]
        try:
            ok = np.ndim(ss) == 1 and len(ss) == 2 and all(int(v) == v >= 1 for v in ss)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise AnalysisError(f"scan_shape must be (rows, cols) with integer sizes ≥ 1, got {ss!r}")
    if fmt == "zarr":
        return _load_zarr(p, lazy, **options)
    if fmt == "npy":
        return _load_npy(p, lazy)
    if fmt == "npz":
        return _load_npz(p, **options)
    if fmt == "hdf5":
        cube = load_hdf5(p, lazy, **options)
        return cube if cube is not None else load_rsciio(p, lazy, "emd")
    if fmt == "merlin":
        mib = p.with_suffix(".mib") if p.suffix.lower() == ".hdr" else p
        if not mib.exists():
            raise AnalysisError(f"{p}: the Merlin data file {mib.name} is missing")
        return load_rsciio(mib, lazy, "merlin", **options)
    return load_rsciio(p, lazy, fmt, **options)


# ------------------------------------------------------------------------------------------------------ numpy
def _load_npy(p: Path, lazy: bool) -> DataCube:
    try:
        arr = np.load(p, mmap_mode="r")
    except (ValueError, OSError) as err:
        raise AnalysisError(f"{p}: not a readable .npy file ({err})") from None
    check_4d(arr.shape, p)
    data = FileArray(p, "npy", None, arr.shape, arr.dtype).dask() if lazy else np.array(arr)
    return DataCube(data, Calibration(source={"format": "npy"}), {"path": str(p), "format": "npy"})


def _load_npz(p: Path, key: str | None = None) -> DataCube:
    try:
        with np.load(p) as z:
            names = list(z.files)
            if key is None:  # each z[n] reads (and decompresses) the whole member: read each at most once
                four = {n: a for n in names if (a := z[n]).ndim == 4}
                if len(four) != 1:
                    raise AnalysisError(f"{p}: {len(four)} 4D arrays among {names}; choose one with key=")
                key, data = next(iter(four.items()))
            elif key not in names:
                raise AnalysisError(f"{p}: no array {key!r} (arrays: {names})")
            else:
                data = z[key]
    except (ValueError, OSError) as err:
        raise AnalysisError(f"{p}: not a readable .npz file ({err})") from None
    check_4d(data.shape, p)
    return DataCube(data, Calibration(source={"format": "npz"}), {"path": str(p), "format": "npz", "key": key})


# ------------------------------------------------------------------------------------------------------- zarr
def _load_zarr(p: Path, lazy: bool, dataset: str | None = None) -> DataCube:
    import dask.array as da
    import zarr

    try:
        node = zarr.open(str(p), mode="r")
        if dataset is not None:
            node = node[dataset]
    except Exception as err:  # noqa: BLE001 - zarr raises many kinds
        raise AnalysisError(f"{p}: cannot open {dataset or 'it'} as zarr: {type(err).__name__}: {err}") from None
    meta = {"path": str(p), "format": "zarr"}
    if isinstance(node, zarr.Array):
        check_4d(node.shape, p)
        return DataCube(
            da.from_zarr(node) if lazy else node[...],
            Calibration(source={"format": "zarr"}),
            {**meta, "dataset": dataset},
        )
    attrs = dict(node.attrs)
    if "stemforge_format" not in attrs:
        arrays = [(n, a) for n, a in node.members(max_depth=None) if isinstance(a, zarr.Array) and a.ndim == 4]
        if len(arrays) != 1:
            raise AnalysisError(
                f"{p}: a zarr group that is not a stemforge datacube must hold exactly one 4D array "
                f"(found {[n for n, _ in arrays]}; choose one with dataset=)"
            )
        name, arr = arrays[0]
        return DataCube(
            da.from_zarr(arr) if lazy else arr[...], Calibration(source={"format": "zarr"}), {**meta, "dataset": name}
        )
    if attrs["stemforge_format"] != FORMAT:
        raise AnalysisError(f"{p}: stemforge format {attrs['stemforge_format']!r} is not supported (expected {FORMAT})")
    if attrs.get("complete") is not True:
        raise AnalysisError(f"{p}: incomplete scan (attrs complete is not true: its writer did not finish); rewrite it")
    if not isinstance(node.get("data"), zarr.Array):
        raise AnalysisError(f"{p}: stemforge datacube without a 'data' array")
    data = node["data"]
    check_4d(data.shape, p)
    gt = _ground_truth(node.get("ground_truth"), p)
    probe = np.asarray(node["probe"][...], dtype=np.float32) if isinstance(node.get("probe"), zarr.Array) else None
    meta = {
        **meta,
        "format": FORMAT,
        **{k: v for k, v in attrs.items() if k not in ("stemforge_format", "complete", "calibration")},
    }
    cal = Calibration.from_dict(attrs.get("calibration") or {})
    return DataCube(da.from_zarr(data) if lazy else np.asarray(data[...]), cal, meta, gt, probe)


def _ground_truth(group, p: Path) -> dict:
    """The arrays of ``ground_truth/`` read into memory, nested groups flattened: an array is keyed by its own
    name (its path under ``ground_truth/`` when two share a name)."""
    import zarr

    if not isinstance(group, zarr.Group):
        return {}
    arrays = sorted((path, a) for path, a in group.members(max_depth=None) if isinstance(a, zarr.Array))
    names = [path.rsplit("/", 1)[-1] for path, _ in arrays]
    return {(name if names.count(name) == 1 else path): np.asarray(a[...]) for name, (path, a) in zip(names, arrays)}


def save(cube, path, *, overwrite: bool = False, progress: bool | None = None) -> str:
    """Write a scan in the ``datacube/1`` zarr layout; ``load(save(cube, p))`` gives it back.

    ``data`` is stored as float32 ``(Rx, Ry, H, W)`` and streamed: a dask cube chunk by chunk with
    ``dask.array.store`` into chunks aligned with the store's, a numpy cube block of scan rows by block. Then
    ``probe``, ``ground_truth/*``, calibration and metadata (``phases``, ``ground_truth_units``, ``config``,
    ``versions``, ``units``); ``complete: true`` is set last.

    Parameters
    ----------
    cube : DataCube or array
        The scan (a 4D array is wrapped with an empty calibration).
    path : str or Path
        Folder to write (conventionally ``*.zarr``).
    overwrite : bool
        Replace an existing zarr store at ``path`` (never a file or a non-zarr folder).
    progress : bool or None
        tqdm bar over the row blocks; ``None``: only for scans over 1 GiB.
    """
    import zarr
    from tqdm.auto import tqdm

    cube = as_datacube(cube)
    p = Path(os.fspath(path)).expanduser()
    if p.exists():
        if not p.is_dir() or not any((p / n).exists() for n in ("zarr.json", ".zgroup", ".zarray")):
            raise AnalysisError(f"{p} exists and is not a zarr store; refusing to replace it")
        if not overwrite:
            raise AnalysisError(f"{p} exists; pass overwrite=True to replace it")
        src = cube.metadata.get("path")
        if cube.is_lazy and src and Path(src).resolve() == p.resolve():
            raise AnalysisError(f"{p}: cannot overwrite the store this lazy scan reads from; save elsewhere")
    Rx, Ry, H, W = cube.shape
    gt = {}
    for name, arr in (cube.ground_truth or {}).items():
        arr = np.asarray(arr)
        if arr.shape[:2] != (Rx, Ry):
            raise AnalysisError(
                f"ground_truth[{name!r}] has shape {arr.shape}; maps must lead with the scan shape {(Rx, Ry)}"
            )
        gt[name] = arr
    if cube.probe is not None and np.shape(cube.probe) != (H, W):
        raise AnalysisError(f"probe has shape {np.shape(cube.probe)}; expected the detector shape {(H, W)}")
    g = zarr.open_group(str(p), mode="w")
    g.attrs.update({"stemforge_format": FORMAT, "complete": False})
    chunks = scan_chunks(cube.shape, 4)
    out = g.create_array("data", shape=cube.shape, chunks=chunks, dtype="float32")
    show = progress if progress is not None else Rx * Ry * H * W * 4 > 2**30
    if cube.is_lazy and hasattr(cube.data, "dask"):  # a dask array: stream it chunk by chunk into the store
        import dask.array as da
        from dask.diagnostics import ProgressBar

        # rechunked to the store's chunks, each dask task writes whole zarr chunks (no two tasks share one), so
        # da.store (what da.to_zarr calls) needs no lock; to_zarr itself would re-chunk to dask's 'auto' size
        lazy = cube.data.astype(np.float32).rechunk(chunks)
        if show:
            with ProgressBar():
                da.store(lazy, out, lock=False)
        else:
            da.store(lazy, out, lock=False)
    else:
        step = chunks[0]
        for r0 in tqdm(range(0, Rx, step), desc="saving scan rows", unit="block", disable=not show):
            out[r0 : r0 + step] = np.asarray(cube.data[r0 : r0 + step], dtype=np.float32)
    if cube.probe is not None:
        g.create_array("probe", data=np.asarray(cube.probe, dtype=np.float32))
    for name, arr in gt.items():
        g.create_array(f"ground_truth/{name}", data=arr)
    attrs = {k: to_jsonable(cube.metadata[k], MAX_ATTR_ITEMS) for k in _SAVED_KEYS if k in cube.metadata}
    attrs["calibration"] = to_jsonable(cube.calibration.as_dict(), MAX_ATTR_ITEMS)
    attrs["saved_from"] = to_jsonable(
        {k: cube.metadata.get(k) for k in ("path", "format", "dataset") if cube.metadata.get(k) is not None},
        MAX_ATTR_ITEMS,
    )
    g.attrs.update(attrs)
    g.attrs["complete"] = True
    return str(p)
