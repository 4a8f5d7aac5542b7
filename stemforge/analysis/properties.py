"""Property maps from registry models: thickness (PACBED) and phase (with an "unknown" outcome).

* :func:`thickness_map` averages every pattern with its scan neighbours (position-averaged CBED, PACBED, over a
  small window, as the thickness-CNN literature does) and asks a thickness model; the model is valid only for the
  structures its card lists, so another structure is refused and an unnamed one flagged.
* :func:`phase_map_ml` (``stemforge.analysis.phase_map(data, method="ml")``) classifies every pattern over the
  card's structures and calls a prediction whose softmax probability is below ``min_confidence`` unknown (−1), in
  the same :class:`~stemforge.analysis.phase.PhaseMap` the template-matching phase map returns.

Both check the scan's calibration against the card and resample onto the model's grid as
:func:`~stemforge.analysis.inference.find_bragg_disks_ml` does; per-position confidence comes from Monte-Carlo
dropout of the model's head (the features are computed once per pattern).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from .datacube import AnalysisError, Calibration, DataCube, as_datacube

DEFAULT_THICKNESS_MODEL = "thickness-pacbed:stable"
DEFAULT_PHASE_MODEL = "phase-net:stable"

__all__ = [
    "DEFAULT_THICKNESS_MODEL",
    "DEFAULT_PHASE_MODEL",
    "ThicknessMap",
    "thickness_map",
    "phase_map_ml",
    "window_average",
    "plot_thickness_map",
]


def _box_mean(block: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from scipy.ndimage import uniform_filter

    block = np.asarray(block, dtype=np.float32)
    full = (*size, *([1] * (block.ndim - 2)))
    ones = np.ones(block.shape[:2], dtype=np.float32)
    counts = uniform_filter(ones, size=size, mode="constant", cval=0.0)  # partial windows at the edges
    summed = uniform_filter(block, size=full, mode="constant", cval=0.0)
    return summed / counts.reshape(*counts.shape, *([1] * (block.ndim - 2)))


def window_average(data, window: tuple[int, int] | int):
    """Mean of every pattern with its scan neighbours: a ``(wr, wc)`` box centred on each position (odd sizes),
    shrunk at the scan's edges. ``data`` is ``(Rx, Ry, H, W)``, numpy or dask (then computed lazily, block by
    block with the needed overlap); returns float32 of the same shape."""
    wr, wc = (int(window), int(window)) if np.isscalar(window) else (int(window[0]), int(window[1]))
    if wr < 1 or wc < 1 or wr % 2 == 0 or wc % 2 == 0:
        raise AnalysisError(f"window must be odd sizes >= 1 (scan rows, cols), got {window!r}")
    if (wr, wc) == (1, 1):
        return data
    if hasattr(data, "map_overlap"):  # dask
        return data.astype(np.float32).map_overlap(
            _box_mean, depth={0: wr // 2, 1: wc // 2, 2: 0, 3: 0}, boundary="none", size=(wr, wc), dtype=np.float32
        )
    return _box_mean(np.asarray(data), (wr, wc))


def _averaged_cube(cube: DataCube, window) -> DataCube:
    from dataclasses import replace

    return replace(cube, data=window_average(cube.data, window))


# --------------------------------------------------------------------------------------------------- thickness
@dataclass
class ThicknessMap:
    """Specimen thickness at every scan position.

    Attributes
    ----------
    thickness_nm : (Rx, Ry) float
        Predicted thickness (nm).
    uncertainty_nm : (Rx, Ry) float
        Standard deviation of the Monte-Carlo-dropout predictions (nm); NaN with ``mc_samples=0``.
    valid : (Rx, Ry) bool
        Within the thickness range the model was trained on (a prediction outside it is an extrapolation).
    info : dict
        Model, window, structure, trained range, ``structure_checked`` (False when no structure was named).
    """

    thickness_nm: np.ndarray
    uncertainty_nm: np.ndarray
    valid: np.ndarray
    calibration: Calibration = field(repr=False, default_factory=Calibration)
    info: dict = field(default_factory=dict)

    @property
    def scan_shape(self) -> tuple[int, int]:
        return tuple(self.thickness_nm.shape)

    def figure(self):
        """See :func:`plot_thickness_map`."""
        return plot_thickness_map(self)


def _has_mc_dropout(net) -> bool:
    from stemforge.networks.layers import MCDropout

    return hasattr(net, "mc_predict") and any(isinstance(m, MCDropout) and m.p > 0 for m in net.modules())


def _card_structures(reg) -> list[str]:
    labels = reg.card.get("labels", {}) or {}
    return list(labels.get("structures") or reg.card.get("training", {}).get("structures") or [])


def thickness_map(
    data,
    model=DEFAULT_THICKNESS_MODEL,
    probe=None,
    *,
    structure: str | None = None,
    window: tuple[int, int] | int | None = None,
    mc_samples: int | None = None,
    store: str | None = None,
    batch_size: int = 32,
    allow_out_of_range: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> ThicknessMap:
    """Thickness (nm) at every scan position from a thickness model of the registry.

    Parameters
    ----------
    data : DataCube, array or path
        The scan (calibrated: Å⁻¹/px; energy and convergence angle are checked against the card).
    model : str or RegisteredModel
        Default :data:`DEFAULT_THICKNESS_MODEL`.
    structure : str, optional
        What the specimen is. Thickness fringes are specific to the crystal: a structure outside the card's list is
        refused (unless ``allow_out_of_range``); without a name the map is computed but flagged
        (``info["structure_checked"] = False``) and a warning says which structures the model knows.
    window : int or (int, int), optional
        Scan positions averaged into each pattern's PACBED (odd box, rows × cols); default 3 × 3 when the model
        was trained on PACBED, else 1. Use (n, 1) or (1, n) where thickness changes quickly along one direction.
    mc_samples : int, optional
        Monte-Carlo-dropout passes of the model's head for ``uncertainty_nm`` (0: none); default 16 when the
        model's head has dropout, else 0.
    allow_out_of_range : bool
        Use the model outside its card's energy / α range or on an unlisted structure; recorded in ``info``.
    """
    from .inference import load_model, predict_property_map

    cube = as_datacube(data)
    reg = load_model(model, store=store, device=device)
    if reg.card.get("task_family") != "thickness":
        raise AnalysisError(
            f"model {getattr(reg, 'name', model)} is a {reg.card.get('task_family')!r} model, not a thickness model"
        )
    known = _card_structures(reg)
    name = getattr(reg, "name", str(model))
    if structure is not None and known and structure not in known:
        if not allow_out_of_range:
            raise AnalysisError(
                f"{name} measures thickness only for the structures it was trained on ({', '.join(known)}), not "
                f"{structure!r}; pass allow_out_of_range=True to use it anyway"
            )
    if structure is None:
        warnings.warn(
            f"thickness_map: no structure given; {name} is valid only for {', '.join(known) or 'its training set'} "
            "(pass structure=... to check)",
            stacklevel=2,
        )
    if mc_samples is None:
        mc_samples = 16 if _has_mc_dropout(reg.net) else 0
    average = int(reg.card.get("labels", {}).get("pacbed_average", 1) or 1)
    if window is None:
        window = (3, 3) if average > 1 else (1, 1)
    averaged = _averaged_cube(cube, window)
    out = predict_property_map(
        averaged,
        reg,
        probe if probe is not None else cube.probe,
        store=store,
        batch_size=batch_size,
        allow_out_of_range=allow_out_of_range,
        device=device,
        progress=progress,
        mc_samples=mc_samples,
    )
    t = out["thickness_nm"].astype(np.float64)
    lo, hi = (reg.card.get("labels", {}) or {}).get("trained_range_nm") or (0.0, np.inf)
    valid = np.isfinite(t) & (t >= float(lo) - 1.0) & (t <= float(hi) + 1.0)
    wr, wc = (window, window) if np.isscalar(window) else window
    info = {
        "model": f"{name}:{getattr(reg, 'version', '?')}",
        "window": [int(wr), int(wc)],
        "structure": structure,
        "structure_checked": structure is not None and (not known or structure in known),
        "trained_structures": known,
        "trained_range_nm": [float(lo), float(hi)],
        "mc_samples": int(mc_samples),
        "allow_out_of_range": bool(allow_out_of_range),
    }
    return ThicknessMap(t, out.get("thickness_std_nm", np.full_like(t, np.nan)), valid, cube.calibration, info)


def _scan_extent(calibration: Calibration, shape) -> tuple[list | None, str]:
    step = calibration.scan_step_A
    if step is None:
        return None, "scan px"
    rows, cols = shape
    return [0, cols * float(step[1]) / 10.0, rows * float(step[0]) / 10.0, 0], "nm"


def plot_thickness_map(tmap: ThicknessMap):
    """A matplotlib Figure: thickness and its uncertainty (nm), scan axes in nm when the step is calibrated."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4), layout="constrained")
    axs = fig.subplots(1, 2)
    extent, unit = _scan_extent(tmap.calibration, tmap.scan_shape)
    for ax, arr, title, label in (
        (axs[0], np.where(tmap.valid, tmap.thickness_nm, np.nan), "thickness", "thickness (nm)"),
        (axs[1], tmap.uncertainty_nm, "MC-dropout spread", "σ (nm)"),
    ):
        im = ax.imshow(arr, cmap="viridis", extent=extent, interpolation="nearest")
        fig.colorbar(im, ax=ax, label=label)
        ax.set_title(title)
        ax.set_xlabel(f"scan y ({unit})")
        ax.set_ylabel(f"scan x ({unit})")
    fig.suptitle(f"{tmap.info.get('model', '')}, PACBED window {tmap.info.get('window')}")
    return fig


# ------------------------------------------------------------------------------------------------------- phase
def phase_map_ml(
    data,
    model=DEFAULT_PHASE_MODEL,
    probe=None,
    *,
    min_confidence: float | None = None,
    mc_samples: int = 0,
    store: str | None = None,
    batch_size: int = 32,
    allow_out_of_range: bool = False,
    device: str = "cpu",
    progress: bool = True,
):
    """Phase at every scan position from a phase model; ``phase`` is −1 ("unknown") where the winning softmax
    probability is below ``min_confidence`` (default: the card's ``labels.min_confidence``, chosen on validation).

    Returns a :class:`~stemforge.analysis.phase.PhaseMap` (``scores`` = class probabilities, ``best_score`` the
    winner's, ``margin`` its lead over the runner-up; no orientations). With ``mc_samples`` the probabilities are
    the mean over Monte-Carlo-dropout passes of the head.
    """
    from .inference import load_model, predict_property_map
    from .phase import PhaseMap

    cube = as_datacube(data)
    reg = load_model(model, store=store, device=device)
    if reg.card.get("task_family") != "phase":
        raise AnalysisError(
            f"model {getattr(reg, 'name', model)} is a {reg.card.get('task_family')!r} model, not a phase model"
        )
    if min_confidence is None:
        min_confidence = float((reg.card.get("labels", {}) or {}).get("min_confidence", 0.5))
    if not 0.0 <= float(min_confidence) < 1.0:
        raise AnalysisError(f"min_confidence must lie in [0, 1), got {min_confidence!r}")
    out = predict_property_map(
        cube,
        reg,
        probe,
        store=store,
        batch_size=batch_size,
        allow_out_of_range=allow_out_of_range,
        device=device,
        progress=progress,
        mc_samples=mc_samples,
    )
    prob = out["probability"]
    order = np.argsort(-prob, axis=-1)
    best = np.take_along_axis(prob, order[..., :1], axis=-1)[..., 0]
    second = np.take_along_axis(prob, order[..., 1:2], axis=-1)[..., 0]
    phase = np.where(best >= float(min_confidence), order[..., 0], -1).astype(np.int32)
    info = {
        "method": "ml",
        "model": f"{getattr(reg, 'name', model)}:{getattr(reg, 'version', '?')}",
        "min_confidence": float(min_confidence),
        "unknown_fraction": float(np.mean(phase < 0)),
        "allow_out_of_range": bool(allow_out_of_range),
    }
    return PhaseMap(list(out["class_names"]), tuple(cube.scan_shape), phase, prob, best, best - second, {}, info)
