"""rosettasciio readers behind :func:`stemforge.analysis.io.load`: Merlin ``.mib``, NanoMegas ``.blo``, Gatan
``.dm3/.dm4``,
Velox ``.emd``, HyperSpy ``.hspy``.

A reader's signal dictionaries become a :class:`DataCube`: its ``mapping`` is applied to the original metadata (as
HyperSpy does; e.g. the blockfile beam energy), and the axes give the scan step and the detector sampling in
whatever units the file used, converted to Å and Å⁻¹/px (scattering angles need the beam energy). Laziness is
rosettasciio's (``lazy=True``: dask arrays over memory maps or HDF5).
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import numpy as np

from stemforge.core.jsonable import to_jsonable
from stemforge.core.units import length_to_A, reciprocal_to_inv_A, wavelength_A

from .datacube import AnalysisError, Calibration, DataCube
from .io_formats import MAX_ATTR_ITEMS, check_4d, num, one_pixel_size

RSCIIO_PLUGINS = {
    "merlin": "quantumdetector",
    "blockfile": "blockfile",
    "dm": "digitalmicrograph",
    "emd": "emd",
    "hspy": "hspy",
}


def load_rsciio(p: Path, lazy: bool, fmt: str, scan_shape=None) -> DataCube:
    """Read ``p`` with rosettasciio's ``fmt`` plugin (lazily: dask) and convert the 4D signal."""
    plugin = RSCIIO_PLUGINS[fmt]
    try:
        reader = importlib.import_module(f"rsciio.{plugin}").file_reader
    except ImportError as err:
        raise AnalysisError(f"{p}: rosettasciio's {plugin} reader is not available ({err})") from None
    kw = {}
    if fmt == "merlin" and scan_shape is not None:
        kw["navigation_shape"] = (int(scan_shape[1]), int(scan_shape[0]))  # rsciio: (x = cols, y = rows)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            signals = reader(str(p), lazy=lazy, **kw)
    except Exception as err:  # noqa: BLE001 - readers raise many kinds on bad files
        msg = " ".join(str(err).split())[:300]
        raise AnalysisError(f"{p}: rosettasciio ({plugin}) cannot read it: {type(err).__name__}: {msg}") from None
    return cube_from_signals(signals, p, plugin, scan_shape, reshape_hint=fmt != "emd")


def cube_from_signals(signals: list[dict], path, reader: str, scan_shape=None, reshape_hint: bool = True) -> DataCube:
    """A :class:`DataCube` from rosettasciio signal dictionaries (``data``, ``axes``, ``metadata``,
    ``original_metadata``, ``mapping``): the first 4D signal, or a 3D stack of frames reshaped to ``scan_shape``
    ``(rows, cols)``. Axes are in array order: scan rows, scan cols, detector rows, detector cols."""
    shapes = [tuple(np.shape(s["data"])) for s in signals]
    pick = [i for i, s in enumerate(shapes) if len(s) == 4]
    if scan_shape is not None:
        rows, cols = (int(v) for v in scan_shape)
        if not pick:
            pick = [i for i, s in enumerate(shapes) if len(s) == 3 and s[0] == rows * cols]
            if pick:
                s = signals[pick[0]]
                ax = _axes(s)
                signals = list(signals)
                signals[pick[0]] = {
                    **s,
                    "data": s["data"].reshape(rows, cols, *shapes[pick[0]][1:]),
                    "axes": [{"size": rows, "units": ""}, {"size": cols, "units": ""}, *ax[1:]],
                }
        elif shapes[pick[0]][:2] != (rows, cols):
            raise AnalysisError(
                f"{path}: scan_shape {(rows, cols)} does not match the file's scan {shapes[pick[0]][:2]}"
            )
    if not pick:
        stack = reshape_hint and any(len(s) == 3 for s in shapes)
        hint = "; give scan_shape=(rows, cols) to reshape a stack of frames" if stack else ""
        raise AnalysisError(f"{path}: no 4D signal (found shapes {shapes}); a 4D-STEM scan must be 4D{hint}")
    s = signals[pick[0]]
    md = _apply_mapping(s.get("metadata") or {}, s.get("original_metadata") or {}, s.get("mapping") or {})
    tem = (md.get("Acquisition_instrument") or {}).get("TEM") or {}
    energy = num(tem.get("beam_energy"))
    energy_eV = energy * 1e3 if energy else None  # HyperSpy metadata: keV
    alpha = num(tem.get("convergence_angle"))  # mrad
    axes = _axes(s)
    scales = [num(a.get("scale", 1.0)) for a in axes]  # None: a non-uniform axis
    step = [None if sc is None else length_to_A(sc, a.get("units")) for sc, a in zip(scales[:2], axes[:2])]
    q = [
        None if sc is None else reciprocal_to_inv_A(sc, a.get("units"), energy_eV)
        for sc, a in zip(scales[2:], axes[2:])
    ]
    offsets = [num(a.get("offset")) or 0.0 for a in axes[2:]]
    origin = None  # k = 0 at index -offset/scale; a zero offset means "not calibrated"
    if None not in q and any(offsets):
        origin = (-offsets[0] / scales[2], -offsets[1] / scales[3])
    source = {
        "format": reader,
        "axes": to_jsonable(
            [{k: a.get(k) for k in ("name", "size", "scale", "offset", "units", "navigate")} for a in axes],
            MAX_ATTR_ITEMS,
        ),
        "beam_energy_keV": energy,
        "convergence_angle_mrad": alpha,
        "camera_length": to_jsonable(tem.get("camera_length"), MAX_ATTR_ITEMS),
        "scan_rotation_deg": to_jsonable(tem.get("rotation"), MAX_ATTR_ITEMS),
    }
    if None in q and reader == "blockfile":
        q = _blockfile_q(s.get("original_metadata") or {}, scales[2:], axes[2:], energy_eV, source)
    if None in q and scales[3] is not None and axes[3].get("units"):
        source["detector_pixel"] = f"{scales[3]:.6g} {axes[3]['units']} (not converted to Å⁻¹)"
    cal = Calibration(
        pixel_size_inv_A=one_pixel_size(q),
        energy_eV=energy_eV,
        semiangle_mrad=alpha,
        scan_step_A=None if None in step else (step[0], step[1]),
        origin_px=origin,
        source=source,
    )
    general = md.get("General") or {}
    meta = {
        "path": str(path),
        "format": reader,
        "reader": "rosettasciio",
        "title": general.get("title"),
        "signal_type": (md.get("Signal") or {}).get("signal_type"),
        "metadata": md,
        "original_metadata": s.get("original_metadata") or {},
    }
    check_4d(np.shape(s["data"]), path)
    return DataCube(s["data"], cal, meta)


def _blockfile_q(om: dict, scales, axes, energy_eV, source: dict) -> list:
    """Å⁻¹/px of a NanoMegas blockfile's (row, col) detector axes from the pixel size on the camera plane (cm, from
    the header's ``SDP`` pixels per cm) and the header's ``Camera_length`` (stored as 10 × mm): θ = x / L (small
    angles), k = θ / λ. The camera length is the microscope's nominal one, so the result is too; ``[None, None]``
    when the header lacks either or there is no beam energy."""
    header = om.get("blockfile_header") or {}
    cl_mm = (num(header.get("Camera_length")) or 0.0) / 10.0
    lam = wavelength_A(energy_eV) if energy_eV else None
    px_mm = [None if sc is None else length_to_A(sc, a.get("units")) for sc, a in zip(scales, axes)]
    if not cl_mm or not lam or None in px_mm:
        return [None, None]
    px_mm = [v * 1e-7 for v in px_mm]  # Å -> mm
    q = [v / cl_mm / lam for v in px_mm]
    source["pixel_size_from"] = (
        f"camera-plane pixel {px_mm[1]:.6g} mm / nominal camera length {cl_mm:g} mm "
        f"= {px_mm[1] / cl_mm * 1e3:.6g} mrad/px at λ = {lam:.6g} Å"
    )
    return q


def _axes(signal) -> list[dict]:
    axes = list(signal.get("axes") or [])
    if axes and all("index_in_array" in a for a in axes):
        axes.sort(key=lambda a: a["index_in_array"])
    if len(axes) != len(np.shape(signal["data"])):
        axes = [{"size": n, "units": ""} for n in np.shape(signal["data"])]
    return axes


def _apply_mapping(md: dict, om: dict, mapping: dict) -> dict:
    """HyperSpy's metadata mapping: ``"a.b.c": ("X.Y.Z", fn)`` copies original_metadata a.b.c (through fn) to
    metadata X.Y.Z unless metadata already has it."""
    import copy

    md = copy.deepcopy(md)
    for src, spec in mapping.items():
        dst, fn = (spec if isinstance(spec, (tuple, list)) else (spec, None))[:2]
        value = om
        for k in src.split("."):
            value = value.get(k) if isinstance(value, dict) else None
        if value is None:
            continue
        node = md
        keys = dst.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if keys[-1] not in node:
            try:
                node[keys[-1]] = fn(value) if fn else value
            except Exception:  # noqa: BLE001 - a mapping that fails leaves the value out, as HyperSpy does
                pass
    return md
