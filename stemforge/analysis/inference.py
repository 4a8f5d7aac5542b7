"""Network inference on 4D-STEM scans with models from the registry.

``find_bragg_disks_ml`` returns the same :class:`~stemforge.analysis.braggvectors.BraggVectors` as the classical disk
finder, plus a per-peak positional uncertainty from MC dropout; ``predict_property_map`` gives thickness, phase
or orientation maps from property models. Both

* check the scan's calibration against the model card: patterns are resampled onto the model's detector grid
  (its Å⁻¹/px and shape, centred on the scan's origin), and a beam energy or convergence angle outside the range
  the model was trained on is refused unless ``allow_out_of_range=True``;
* stream the scan row by row in batches of ``batch_size`` (the last partial batch too), so a lazy (dask) scan
  larger than memory never has to be loaded whole; the vacuum probe is normalised once and broadcast over the
  batch, never copied per pattern.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stemforge.core.streaming import stream_patterns
from stemforge.core.subpixel import refine_maxima

from .braggvectors import PEAK_DTYPE, BraggVectors
from .datacube import AnalysisError, Calibration, DataCube, as_datacube

DEFAULT_BRAGG_MODEL = "bragg-centrenet:stable"


# ----------------------------------------------------------------------------------------------------------------
# model and calibration
# ----------------------------------------------------------------------------------------------------------------
def load_model(model, store: str | None = None, device: str = "cpu"):
    """A :class:`stemforge.registry.RegisteredModel` from a reference (``"name:alias"``) or pass one through.

    Registry failures (unknown name, unreachable store without a cached copy, corrupt files) become one-line
    :class:`AnalysisError`\\ s.
    """
    if not isinstance(model, str):
        if not all(hasattr(model, a) for a in ("card", "net", "preprocess")):
            raise AnalysisError(
                f"model must be a registry reference like {DEFAULT_BRAGG_MODEL!r} or a loaded "
                f"registry model, got {type(model).__name__}"
            )
        return model
    from stemforge import registry
    from stemforge.registry.errors import RegistryError

    try:
        return registry.load(model, store=store, device=device)
    except RegistryError as err:
        raise AnalysisError(f"cannot load model {model!r}: {err}") from None


@dataclass(frozen=True)
class GridMap:
    """How a scan's detector pixels map onto a model's input grid (both centred on k = 0).

    A model pixel ``(r, c)`` sits at ``k = ((c - Wm//2)·pm, (r - Hm//2)·pm)`` Å⁻¹, i.e. at the scan pixel
    ``(origin_row + k_y/pd, origin_col + k_x/pd)``.
    """

    model_shape: tuple[int, int]
    model_pixel_size_inv_A: float
    data_shape: tuple[int, int]
    data_pixel_size_inv_A: float
    origin_px: tuple[float, float]

    @property
    def identity(self) -> bool:
        hm, wm = self.model_shape
        return (
            self.model_shape == self.data_shape
            and math.isclose(self.model_pixel_size_inv_A, self.data_pixel_size_inv_A, rel_tol=1e-6)
            and np.allclose(self.origin_px, (hm // 2, wm // 2), atol=1e-6)
        )

    @property
    def scale(self) -> float:
        """Scan pixels per model pixel."""
        return self.model_pixel_size_inv_A / self.data_pixel_size_inv_A

    def model_to_data(self, row, col):
        """Model-grid pixel positions → scan detector pixel positions."""
        hm, wm = self.model_shape
        return (
            self.origin_px[0] + (np.asarray(row) - hm // 2) * self.scale,
            self.origin_px[1] + (np.asarray(col) - wm // 2) * self.scale,
        )

    def matrix(self):
        """Sparse ``(Hm·Wm, H·W)`` operator: each model pixel is the mean of ``s²`` bilinear samples inside it
        (``s = ceil(scale)``), times ``scale²`` so that intensity per Å⁻² is kept."""
        import scipy.sparse as sp

        hm, wm = self.model_shape
        h, w = self.data_shape
        s = max(1, math.ceil(self.scale - 1e-9))
        sub = (np.arange(s) + 0.5) / s - 0.5  # sub-sample offsets within a model pixel (model px)
        rr, cc = np.meshgrid(np.arange(hm), np.arange(wm), indexing="ij")
        rows, cols, vals = [], [], []
        for dy in sub:
            for dx in sub:
                y, x = self.model_to_data(rr + dy, cc + dx)
                y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
                fy, fx = y - y0, x - x0
                for oy, wy in ((0, 1 - fy), (1, fy)):
                    for ox, wx in ((0, 1 - fx), (1, fx)):
                        yy, xx = y0 + oy, x0 + ox
                        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w) & (wy * wx > 0)
                        rows.append((rr * wm + cc)[ok])
                        cols.append((yy * w + xx)[ok])
                        vals.append((wy * wx)[ok] / (s * s) * self.scale**2)
        return sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(hm * wm, h * w)
        )


def check_calibration(cube: DataCube, model, allow_out_of_range: bool = False) -> GridMap:
    """Compare the scan's calibration with the model card and plan the resampling onto the model's grid.

    Raises :class:`AnalysisError` when the scan has no Å⁻¹/px calibration, when the model card records none,
    or when the scan's energy (eV) or convergence semi-angle (mrad) lies outside the trained range (beyond 2 %)
    unless ``allow_out_of_range``. An unknown energy or angle is accepted (there is nothing to compare).
    """
    spec = model.input_spec if hasattr(model, "input_spec") else model.card.get("input", {})
    cal = cube.calibration
    if not spec.get("shape") or not spec.get("pixel_size_inv_A"):
        raise AnalysisError(
            f"model card of {getattr(model, 'name', 'model')} records no input shape / "
            "pixel_size_inv_A; cannot match the scan's calibration to it"
        )
    data_pixel = cal.check_pixel_size()
    name = getattr(model, "name", "the model")
    for key, value, unit in (("energy_eV", cal.energy_eV, "eV"), ("semiangle_mrad", cal.semiangle_mrad, "mrad")):
        rng = spec.get(key)
        if value is None or not rng:
            continue
        lo, hi = float(rng[0]), float(rng[1])
        if not (lo * 0.98 <= float(value) <= hi * 1.02) and not allow_out_of_range:
            raise AnalysisError(
                f"scan {key} = {float(value):g} {unit} lies outside the range {name} was trained on "
                f"({lo:g}–{hi:g} {unit}); pass allow_out_of_range=True to use it anyway"
            )
    shape = tuple(int(v) for v in spec["shape"])
    return GridMap(
        shape,
        float(spec["pixel_size_inv_A"]),
        cube.detector_shape,
        data_pixel,
        tuple(float(v) for v in cube.origin_px),
    )


def _to_model_grid(stack: np.ndarray, grid: GridMap, matrix) -> np.ndarray:
    """``(B, H, W)`` scan patterns → ``(B, Hm, Wm)`` float32 on the model grid."""
    if matrix is None:
        return stack.astype(np.float32, copy=False)
    b = stack.shape[0]
    out = matrix @ stack.reshape(b, -1).T.astype(np.float64)
    return out.T.reshape(b, *grid.model_shape).astype(np.float32)


def _probe_image(cube: DataCube, probe) -> np.ndarray:
    if probe is None:
        probe = cube.probe
    if probe is None:  # no recorded probe: cut the direct beam out of the mean pattern
        from .probe import probe_from_data

        probe = probe_from_data(cube)
    probe = np.asarray(probe, dtype=np.float32)
    if probe.shape != cube.detector_shape:
        raise AnalysisError(f"probe shape {probe.shape} differs from the detector shape {cube.detector_shape}")
    if not np.isfinite(probe).all() or probe.max() <= 0:
        raise AnalysisError("the probe image must be finite with a positive maximum")
    return probe


# ----------------------------------------------------------------------------------------------------------------
# Bragg disks
# ----------------------------------------------------------------------------------------------------------------
PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16 in ``/proc/cpuinfo``; False elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """``"fp32"`` or ``"bf16"`` for ``precision`` (``"auto"``: bf16 on a CPU that computes it natively, else fp32)."""
    if precision not in PRECISIONS:
        raise AnalysisError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if str(device).startswith("cpu") and native_bf16() else "fp32"


class _NetView:
    """A registry model seen through another network (the BatchNorm-folded copy of its own)."""

    def __init__(self, model, net):
        self.model, self.net = model, net

    def __getattr__(self, name):
        return getattr(self.model, name)


def _sample_maps(model, pattern, probe, mc_samples: int, precision: str = "fp32", channels: slice | None = None):
    """``(n, B, Hm, Wm)`` network outputs (float32; ``(n, B, C, h, w)`` with ``channels``): one deterministic pass,
    or ``mc_samples`` passes with dropout on; ``precision="bf16"`` runs the network under bfloat16 autocast."""
    import contextlib

    import torch

    net = model.net
    device_type = "cuda" if pattern.is_cuda else "cpu"
    cast = torch.autocast(device_type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with torch.no_grad(), cast:
        pick = (lambda y: y[:, channels]) if channels is not None else (lambda y: y[:, 0])
        if mc_samples <= 1:
            return pick(net(pattern, probe).float()).cpu().numpy()[None]
        if not hasattr(net, "_mc_state"):
            raise AnalysisError(f"{type(net).__name__} has no MC dropout; use mc_samples=0")
        was_training = net.training
        net.eval()
        try:
            with net._mc_state(True):
                return np.stack([pick(net(pattern, probe).float()).cpu().numpy() for _ in range(mc_samples)])
        finally:
            net.train(was_training)


def find_bragg_disks_ml(
    data,
    model=DEFAULT_BRAGG_MODEL,
    probe=None,
    *,
    store: str | None = None,
    batch_size: int = 32,
    mc_samples: int = 0,
    threshold: float = 0.1,
    min_distance: int = 3,
    absolute_threshold: float | None = None,
    max_peaks: int = 70,
    edge_px: int = 2,
    min_probability: float | None = None,
    allow_out_of_range: bool = False,
    device: str = "cpu",
    precision: str = "auto",
    progress: bool = True,
) -> BraggVectors:
    """Bragg disks of every pattern predicted by a registry network.

    Parameters
    ----------
    data : DataCube or array (Rx, Ry, H, W)
        The scan (numpy or dask). Its calibration must give Å⁻¹/px; its origin (default the detector centre)
        is where the network's k = 0 is placed.
    model : str or RegisteredModel
        Registry reference (default ``"bragg-centrenet:stable"``, :data:`DEFAULT_BRAGG_MODEL`) or a loaded model of
        task family ``bragg``.
    probe : array (H, W), optional
        Vacuum probe image on the scan's detector grid (default: ``data.probe``, else the direct beam cut out of
        the mean pattern by :func:`stemforge.analysis.probe.probe_from_data`).
    store : str, optional
        Registry store URL (default ``$STEMFORGE_STORE`` or the local default store).
    batch_size : int
        Patterns per network call (32: bragg-centrenet on 2 cores at 673 patterns/s, 688 with 64, 624 with 16).
    mc_samples : int
        ``0`` or ``1`` (default): one deterministic pass, ``sigma_px`` NaN. More: MC-dropout passes; peaks come
        from the mean map and each peak's ``sigma_px`` is the RMS spread (scan px) of its sub-pixel position over
        the passes, at that many times the cost (the FCU-Net 2.0.0 on 2 cores: 54 patterns/s with one pass, 4.7
        with 8).
    min_probability : float
        Centre models (``net.output_kind == "centres"``, e.g. :class:`~stemforge.networks.centres.CentreNet`): the
        heat-map probability a disk centre needs (default: the card's ``labels.min_probability``, the threshold
        chosen on the model's validation split, else 0.3); its position is the cell plus the predicted sub-pixel offset
        (:func:`stemforge.networks.centres.decode_centres`), ``intensity`` its probability. ``threshold``,
        ``absolute_threshold`` and ``min_distance`` apply to map models only.
    threshold, absolute_threshold, min_distance, max_peaks :
        Map models: peak finding on the (mean) predicted map: value above ``threshold × max`` of that map (and above
        ``absolute_threshold`` in the map's units, V for |V_g| maps), local maximum over ``min_distance`` px
        (model grid), strongest ``max_peaks`` kept (see :func:`stemforge.networks.peaks.find_peaks`).
    edge_px : int
        Peaks closer than this to the model grid's edge are dropped.
    allow_out_of_range : bool
        Use the model even when the scan's energy or convergence angle is outside its trained range.
    precision : {"auto", "fp32", "bf16"}
        Arithmetic of the network pass. ``auto`` (default): bfloat16 autocast on a CPU that computes bfloat16
        natively (:func:`native_bf16`), float32 elsewhere. Centre models run BatchNorm-folded
        (:meth:`~stemforge.networks.centres.CentreNet.fused`), channels-last under bf16. Measured on a 2-core AMD
        EPYC with AVX512-BF16 (benchmarks/ml_inference.py, batch 32): bragg-centrenet 1.0.0 at 673 patterns/s
        against 234 in float32; on the held-out benchmark F1 within 0.008 and position RMSE within 0.004 px of
        float32 per condition (FCU-Net 2.0.0: 72 instead of 45 patterns/s, within 0.01).

    Returns
    -------
    BraggVectors
        Peak positions in the scan's detector pixels; ``intensity`` is the predicted map value at the peak;
        ``info`` holds the model reference, version and card's label definition.
    """
    import torch

    from stemforge.networks.centres import decode_centres
    from stemforge.networks.peaks import find_peaks

    cube = as_datacube(data)
    if batch_size < 1:
        raise AnalysisError(f"batch_size must be ≥ 1, got {batch_size}")
    arithmetic = resolve_precision(precision, device)
    reg = load_model(model, store=store, device=device)
    family = reg.card.get("task_family")
    if family != "bragg":
        raise AnalysisError(f"model {getattr(reg, 'name', model)} predicts {family!r}, not Bragg disks")
    grid = check_calibration(cube, reg, allow_out_of_range)
    matrix = None if grid.identity else grid.matrix()
    probe_img = _to_model_grid(_probe_image(cube, probe)[None], grid, matrix)
    _, probe_t = reg.preprocess(probe_img, probe_img)  # (1, 1, Hm, Wm), normalised once
    n_mc = int(mc_samples)
    centres = getattr(reg.net, "output_kind", "map") == "centres"
    if min_probability is None:
        min_probability = float((reg.card.get("labels") or {}).get("min_probability", 0.3))
    if not 0.0 < float(min_probability) < 1.0:
        raise AnalysisError(f"min_probability must lie in (0, 1), got {min_probability}")
    if hasattr(reg.net, "fused") and n_mc <= 1:
        # BatchNorm folded into the convolutions, channels-last under bf16 (benchmarks/ml_inference.py: 673 against
        # 478 patterns/s NCHW), made once per model and arithmetic
        cache = getattr(reg, "_fused_nets", None)
        if cache is None:
            cache = {}
            try:
                reg._fused_nets = cache
            except AttributeError:
                pass
        if arithmetic not in cache:
            cache[arithmetic] = reg.net.fused(channels_last=arithmetic == "bf16")
        run = _NetView(reg, cache[arithmetic])
    else:
        run = reg
    stride = int(getattr(reg.net, "stride", 1))
    parts = []
    hm, wm = grid.model_shape
    desc = f"ML disks ({reg.name if hasattr(reg, 'name') else 'model'})"
    for idx, stack in stream_patterns(cube.data, int(batch_size), progress=progress, desc=desc):
        pm = torch.from_numpy(_to_model_grid(stack, grid, matrix))
        pattern_t, probe_b = reg.preprocess(pm, probe_img)
        probe_b = probe_t.expand(pattern_t.shape[0], -1, -1, -1)  # a view: no per-pattern copy
        maps = _sample_maps(
            run,
            pattern_t.to(reg.device if hasattr(reg, "device") else "cpu"),
            probe_b.to(reg.device if hasattr(reg, "device") else "cpu"),
            n_mc,
            arithmetic,
            slice(0, 3) if centres else None,
        )
        mean = maps.mean(0)
        if centres:
            found = decode_centres(torch.from_numpy(mean), stride, min_probability, max_peaks)
        else:
            found = find_peaks(
                torch.from_numpy(mean),
                threshold=threshold,
                min_distance=min_distance,
                absolute_threshold=absolute_threshold,
                max_peaks=max_peaks,
            )
        for b, pk in enumerate(found):
            pk = pk.numpy()
            x, y = pk[:, 0], pk[:, 1]
            keep = (x >= edge_px) & (x <= wm - 1 - edge_px) & (y >= edge_px) & (y <= hm - 1 - edge_px)
            pk = pk[keep]
            p = np.zeros(len(pk), PEAK_DTYPE)
            p["rx"], p["ry"] = np.unravel_index(int(idx[b]), cube.scan_shape)
            row, col = grid.model_to_data(pk[:, 1], pk[:, 0])
            p["row"], p["col"], p["intensity"] = row, col, pk[:, 2]
            if n_mc > 1 and len(pk) and centres:  # the spread of the decoded position over the passes
                cy = np.rint((pk[:, 1] + 0.5) / stride - 0.5).astype(int)
                cx = np.rint((pk[:, 0] + 0.5) / stride - 0.5).astype(int)
                off = maps[:, b, 1:3][:, :, cy, cx]  # (n_mc, 2, P) cells
                p["sigma_px"] = np.sqrt(off[:, 0].var(0) + off[:, 1].var(0)) * stride * grid.scale
            elif n_mc > 1 and len(pk):
                rows, cols = np.rint(pk[:, 1]).astype(int), np.rint(pk[:, 0]).astype(int)
                rr, cc = refine_maxima(maps[:, b], rows, cols, log=True)  # (n_mc, P): exact for Gaussian blobs
                p["sigma_px"] = np.sqrt(rr.var(0) + cc.var(0)) * grid.scale
            else:
                p["sigma_px"] = np.nan
            parts.append(p)
    peaks = np.concatenate(parts) if parts else np.zeros(0, PEAK_DTYPE)
    info = {
        "model": f"{getattr(reg, 'name', '?')}:{getattr(reg, 'version', '?')}",
        "mc_samples": n_mc,
        "precision": arithmetic,
        "output": "centres" if centres else "map",
        **({"min_probability": float(min_probability)} if centres else {}),
        "label": reg.card.get("labels", {}).get("definition"),
        "model_pixel_size_inv_A": grid.model_pixel_size_inv_A,
        "resampled": not grid.identity,
    }
    return BraggVectors(cube.scan_shape, cube.detector_shape, peaks, cube.calibration, "ml", info)


# ----------------------------------------------------------------------------------------------------------------
# property maps
# ----------------------------------------------------------------------------------------------------------------
def predict_property_map(
    data,
    model,
    probe=None,
    *,
    store: str | None = None,
    batch_size: int = 32,
    allow_out_of_range: bool = False,
    device: str = "cpu",
    progress: bool = True,
    mc_samples: int = 0,
) -> dict:
    """Thickness, phase or orientation maps from a registry property model.

    Returns a dict of ``(Rx, Ry, ...)`` arrays by the model's task family:

    * ``thickness``: ``thickness_nm`` (nm);
    * ``phase``: ``phase`` (int index into ``class_names``), ``probability`` ``(Rx, Ry, P)``, ``class_names``;
    * ``orientation``: ``rotation`` ``(Rx, Ry, 3, 3)`` crystal→lab, defined up to the crystal's point group.

    Calibration checks, resampling and streaming as :func:`find_bragg_disks_ml`. With ``mc_samples`` > 1 (thickness
    and phase) the head runs that many times with Monte-Carlo dropout on the encoder's features: thickness is
    the mean and ``thickness_std_nm`` the spread, phase probabilities are averaged.
    """
    import torch

    cube = as_datacube(data)
    reg = load_model(model, store=store, device=device)
    family = reg.card.get("task_family")
    if family not in ("thickness", "phase", "orientation"):
        raise AnalysisError(
            f"model {getattr(reg, 'name', model)} is a {family!r} model, not a property model "
            "(thickness, phase or orientation)"
        )
    n_mc = int(mc_samples)
    if n_mc < 0 or (family == "orientation" and n_mc > 1):
        raise AnalysisError(f"mc_samples must be >= 0 (thickness and phase models only), got {mc_samples}")
    grid = check_calibration(cube, reg, allow_out_of_range)
    matrix = None if grid.identity else grid.matrix()
    probe_img = _to_model_grid(_probe_image(cube, probe)[None], grid, matrix)
    _, probe_t = reg.preprocess(probe_img, probe_img)
    y = None
    for idx, stack in stream_patterns(cube.data, int(batch_size), progress=progress, desc=f"ML {family}"):
        pattern_t, _ = reg.preprocess(_to_model_grid(stack, grid, matrix), probe_img)
        probe_b = probe_t.expand(pattern_t.shape[0], -1, -1, -1)
        with torch.no_grad():
            if n_mc > 1:
                if not hasattr(reg.net, "mc_predict"):
                    raise AnalysisError(f"{type(reg.net).__name__} has no Monte-Carlo dropout; use mc_samples=0")
                try:
                    samples = reg.net.mc_predict(pattern_t, probe_b, n_mc).float()
                except ValueError as err:
                    raise AnalysisError(f"{err}; use mc_samples=0") from None
                if family == "phase":
                    samples = torch.softmax(samples, dim=-1)
                out = torch.stack([samples.mean(0), samples.std(0)], dim=1).cpu().numpy()
            else:
                out = reg.net(pattern_t, probe_b).float().cpu().numpy()
        if y is None:
            y = np.empty((int(np.prod(cube.scan_shape)), *out.shape[1:]), np.float32)
        y[idx] = out  # batches come in the scan's chunk order; idx places them
    y = y.reshape(*cube.scan_shape, *y.shape[1:])
    if n_mc > 1:
        y, spread = y[:, :, 0], y[:, :, 1]
    if family == "thickness":
        return {"thickness_nm": y, **({"thickness_std_nm": spread} if n_mc > 1 else {})}
    if family == "phase":
        if n_mc > 1:
            prob = y
        else:
            z = y - y.max(-1, keepdims=True)
            prob = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        names = reg.card.get("labels", {}).get("class_names") or [str(i) for i in range(y.shape[-1])]
        return {"phase": prob.argmax(-1).astype(np.int32), "probability": prob, "class_names": list(names)}
    return {"rotation": y}


__all__ = [
    "DEFAULT_BRAGG_MODEL",
    "GridMap",
    "Calibration",
    "check_calibration",
    "find_bragg_disks_ml",
    "load_model",
    "predict_property_map",
]
