"""One scan analysed end to end by one or more methods, compared with the ground truth when there is one.

:func:`analyse` is what ``scripts/analyze.py`` runs (and the analysis benchmark): Bragg disks by each method
(``classical`` template correlation or ``ml`` registry network), lattice fit and strain against a reference region,
orientation (and phase, with several candidate structures) by ACOM on each method's Bragg vectors, and — for
synthetic scans — disk F1 / position RMSE, strain RMSE and orientation error against the stored ground truth.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .datacube import AnalysisError, DataCube


@dataclass
class MethodResult:
    """What one method produced: Bragg vectors, lattice, strain, orientation / phase maps, scores and timings."""

    method: str
    bragg: object
    lattice: dict | None = None
    strain: dict | None = None
    orientation: object = None
    thickness: object = None
    phase: object = None
    scores: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


def add_dose_noise(cube: DataCube, dose_e_per_pattern: float, seed: int = 0) -> DataCube:
    """Poisson counting noise at ``dose_e_per_pattern`` electrons per pattern (patterns in fraction of the beam).

    The noisy scan is returned in the same units (counts / dose), so thresholds and models see the same scale.
    """
    from dataclasses import replace

    if not dose_e_per_pattern > 0:
        raise AnalysisError(f"dose_e_per_pattern must be > 0 electrons, got {dose_e_per_pattern}")
    rng = np.random.default_rng(seed)
    data = np.asarray(cube.data, dtype=np.float64)
    noisy = rng.poisson(np.clip(data, 0, None) * dose_e_per_pattern) / dose_e_per_pattern
    return replace(
        cube, data=noisy.astype(np.float32), metadata={**cube.metadata, "dose_e_per_pattern": float(dose_e_per_pattern)}
    )


def _rect(reference, scan_shape):
    if reference is None:
        return None
    r = list(reference)
    if len(r) != 4:
        raise AnalysisError(f"strain.reference must be [r0, r1, c0, c1] (scan positions), got {reference}")
    full = [0, scan_shape[0], 0, scan_shape[1]]
    return [full[i] if v is None else int(v) for i, v in enumerate(r)]


def libraries_for(cube: DataCube, structures, settings: dict) -> dict:
    """Orientation libraries (one per structure name) at the scan's energy."""
    from .orientation_library import build_orientation_library

    energy = cube.calibration.energy_eV
    if energy is None:
        raise AnalysisError("orientation mapping needs the beam energy (calibration.energy_eV)")
    return {str(s): build_orientation_library(str(s), float(energy), **settings) for s in structures}


def score_disks_and_strain(
    res: MethodResult,
    gt: dict,
    reference,
    tolerance_px: float = 2.0,
    dose_e: float | None = None,
    truth: str = "present",
    lattice_filter_px: float | None = None,
) -> None:
    """Fill ``res`` from its Bragg vectors: the lattice and strain map (reference region ``reference``) and their
    scores (a lattice that cannot be chosen or fitted is recorded as ``res.scores["strain_error"]``), then disk
    scores against the ground truth (``gt``: the reflections ``truth`` says count at ``dose_e`` e⁻/pattern,
    :func:`stemforge.analysis.validation.true_reflections`; matched within ``tolerance_px`` px). With
    ``lattice_filter_px`` the peaks off each position's fitted lattice by more than that are dropped first
    (:func:`stemforge.analysis.lattice.keep_on_lattice`; ``res.bragg`` becomes the kept peaks)."""
    from .lattice import choose_lattice_vectors, fit_lattice, keep_on_lattice
    from .strain import strain_map
    from .validation import disk_scores, strain_scores, true_reflections

    try:
        g1, g2 = choose_lattice_vectors(res.bragg, region=reference)
        res.lattice = fit_lattice(res.bragg, g1, g2)
        if lattice_filter_px is not None:
            res.bragg = keep_on_lattice(res.bragg, res.lattice, lattice_filter_px)
        res.strain = strain_map(res.lattice, reference=reference)
        if all(k in gt for k in ("exx", "eyy", "exy")):
            res.scores["strain"] = strain_scores(res.strain, gt)
    except AnalysisError as err:
        res.scores["strain_error"] = str(err)
    if "reflections_px" in gt:
        mask, meaning = true_reflections(gt, dose_e, truth)
        res.scores["disks"] = {**disk_scores(res.bragg, gt["reflections_px"], mask, tolerance_px), "truth": meaning}


def analyse(
    cube: DataCube,
    methods=("classical", "ml"),
    *,
    classical: dict | None = None,
    ml: dict | None = None,
    strain_reference=None,
    orientation: dict | None = None,
    truth_tolerance_px: float = 2.0,
    truth: str = "present",
    lattice_filter_px: float | None = None,
    ml_models: dict | None = None,
    properties: dict | None = None,
    progress: bool = True,
) -> dict[str, MethodResult]:
    """Run every method on ``cube``; see the module docstring. Returns ``{method: MethodResult}``.

    ``ml_models``: further ML methods by name, each the ``ml`` settings with these overrides (e.g.
    ``{"shipped": {"model": "bragg-centrenet:stable", "store": None}}`` and ``methods=["classical", "ml",
    "shipped"]`` to put the shipped model beside a freshly trained one).

    ``properties``: ``{"enabled": True, "thickness_model": ..., "phase_model": ..., "structure": ..., "window":
    ..., "store": ...}`` adds a ``"properties"`` entry whose ``thickness`` (:class:`~stemforge.analysis.properties.
    ThicknessMap`) and ``phase`` (ML :class:`~stemforge.analysis.phase.PhaseMap`) come from the registry's property
    models (either model may be null), scored against the scan's ground truth (thickness MAE in nm, phase
    accuracy, unknown fraction).

    ``lattice_filter_px``: keep only the peaks within that distance (px) of the lattice fitted at their position
    (:func:`stemforge.analysis.lattice.keep_on_lattice`), for every method, before scoring and mapping.

    Disks are scored against the reflections ``truth`` says count (:func:`stemforge.analysis.validation.
    true_reflections`: by default those present at the scan's dose, ``cube.metadata["dose_e_per_pattern"]`` after
    :func:`add_dose_noise`, else as if noise-free)."""
    from .disks import find_bragg_disks
    from .validation import orientation_scores

    gt = cube.ground_truth or {}
    ref = _rect(strain_reference, cube.scan_shape)
    orientation = dict(orientation or {})
    structures = orientation.pop("structures", None) or cube.metadata.get("phases")
    want_orientation = orientation.pop("enabled", True) and bool(structures)
    libs = libraries_for(cube, structures, orientation) if want_orientation else {}
    results = {}
    ml_models = dict(ml_models or {})
    for method in methods:
        kw = dict(classical or {}) if method == "classical" else dict(ml or {})
        if method in ml_models:
            kw.update(ml_models[method] or {})
        elif method not in ("classical", "ml"):
            raise AnalysisError(
                f"unknown method {method!r}: use classical, ml or a name of ml_models {sorted(ml_models)}"
            )
        res = MethodResult(method, None)
        t0 = time.perf_counter()
        if method != "classical":
            model = kw.pop("model", None)
            res.bragg = find_bragg_disks(cube, method="ml", model=model, progress=progress, **kw)
        else:
            res.bragg = find_bragg_disks(cube, progress=progress, **kw)
        n = int(np.prod(cube.scan_shape))
        res.timings["disks_s"] = time.perf_counter() - t0
        res.timings["patterns_per_s"] = n / max(res.timings["disks_s"], 1e-9)
        score_disks_and_strain(
            res, gt, ref, truth_tolerance_px, cube.metadata.get("dose_e_per_pattern"), truth, lattice_filter_px
        )
        if libs:
            t1 = time.perf_counter()
            if len(libs) == 1:
                from .orientation import orientation_map

                res.orientation = orientation_map(res.bragg, next(iter(libs.values())), progress=progress)
            else:
                from .phase import phase_map

                res.phase = phase_map(res.bragg, libs, progress=progress)
                if "phase" in gt:
                    res.scores["phase_accuracy"] = float(np.mean(res.phase.phase == np.asarray(gt["phase"])))
            res.timings["orientation_s"] = time.perf_counter() - t1
            if "rotation" in gt and res.orientation is not None and len(libs) == 1:
                res.scores["orientation"] = orientation_scores(res.orientation, gt["rotation"])
        results[method] = res
    props = dict(properties or {})
    if props.pop("enabled", False):
        results["properties"] = property_maps(cube, progress=progress, **props)
    return results


def property_maps(
    cube: DataCube,
    *,
    thickness_model=None,
    phase_model=None,
    structure: str | None = None,
    window=None,
    store: str | None = None,
    progress: bool = True,
) -> MethodResult:
    """Thickness and ML phase maps of ``cube`` (see :func:`analyse`'s ``properties``) in a :class:`MethodResult`
    named ``"properties"`` (no Bragg vectors), scored against the ground truth when the scan has one."""
    from .phase import phase_map
    from .properties import thickness_map

    gt = cube.ground_truth or {}
    res = MethodResult("properties", None)
    if structure is None and len(cube.metadata.get("phases") or []) == 1:
        structure = cube.metadata["phases"][0]
    if thickness_model:
        t0 = time.perf_counter()
        res.thickness = thickness_map(
            cube, thickness_model, structure=structure, window=window, store=store, progress=progress
        )
        res.timings["thickness_s"] = time.perf_counter() - t0
        if "thickness_A" in gt:
            res.scores["thickness_mae_nm"] = float(
                np.mean(np.abs(res.thickness.thickness_nm - np.asarray(gt["thickness_A"]) / 10.0))
            )
    if phase_model:
        t0 = time.perf_counter()
        res.phase = phase_map(cube, method="ml", model=phase_model, store=store, progress=progress)
        res.timings["phase_s"] = time.perf_counter() - t0
        res.scores["unknown_fraction"] = float(np.mean(res.phase.phase < 0))
        phases = list(cube.metadata.get("phases") or [])
        if "phase" in gt and phases:
            names = [phases[int(i)] if 0 <= int(i) < len(phases) else None for i in np.asarray(gt["phase"]).ravel()]
            want = np.asarray([res.phase.names.index(n) if n in res.phase.names else -1 for n in names])
            res.scores["phase_accuracy"] = float(np.mean(res.phase.phase.ravel() == want))
    return res


def report(results: dict[str, MethodResult], cube: DataCube) -> str:
    """A short plain-text comparison of the methods (and of each with the ground truth when there is one)."""
    lines = [
        f"scan {cube.scan_shape} x detector {cube.detector_shape}, calibration: "
        f"{cube.calibration.pixel_size_inv_A} Å⁻¹/px, {cube.calibration.energy_eV} eV, "
        f"{cube.calibration.semiangle_mrad} mrad"
        + (
            f", dose {cube.metadata['dose_e_per_pattern']:g} e⁻/pattern"
            if "dose_e_per_pattern" in cube.metadata
            else ""
        )
    ]
    props = results.get("properties")
    results = {k: r for k, r in results.items() if r.bragg is not None}
    header = f"{'':28s}" + "".join(f"{m:>14s}" for m in results)
    lines += ["", header]

    def row(label, fn, fmt="{:14.4f}"):
        vals = []
        for r in results.values():
            try:
                v = fn(r)
                vals.append(fmt.format(v) if v is not None else f"{'—':>14s}")
            except (KeyError, TypeError):
                vals.append(f"{'—':>14s}")
        lines.append(f"{label:28s}" + "".join(vals))

    row("peaks per pattern", lambda r: len(r.bragg) / max(1, np.prod(r.bragg.scan_shape)), "{:14.1f}")
    row("patterns/s (disks)", lambda r: r.timings["patterns_per_s"], "{:14.1f}")
    row("disk F1", lambda r: r.scores["disks"]["f1"])
    row("disk precision", lambda r: r.scores["disks"]["precision"])
    row("disk recall", lambda r: r.scores["disks"]["recall"])
    row("disk position RMSE (px)", lambda r: r.scores["disks"]["pos_rmse_px"])
    row("disk radial offset (px)", lambda r: r.scores["disks"]["radial_offset_px"], "{:14.3f}")
    row("strain RMSE (%)", lambda r: 100 * r.scores["strain"]["rmse"])
    row("  εxx RMSE (%)", lambda r: 100 * r.scores["strain"]["rmse_exx"])
    row("  εyy RMSE (%)", lambda r: 100 * r.scores["strain"]["rmse_eyy"])
    row("  εxy RMSE (%)", lambda r: 100 * r.scores["strain"]["rmse_exy"])
    row("  θ RMSE (°)", lambda r: r.scores["strain"]["rmse_theta_deg"])
    row("  positions fitted", lambda r: r.scores["strain"]["valid_fraction"], "{:14.2f}")
    row("orientation error mean (°)", lambda r: r.scores["orientation"]["mean_deg"], "{:14.2f}")
    row("orientation error median (°)", lambda r: r.scores["orientation"]["median_deg"], "{:14.2f}")
    row("phase accuracy", lambda r: r.scores["phase_accuracy"], "{:14.3f}")
    truths = {r.scores["disks"]["truth"] for r in results.values() if "disks" in r.scores}
    if truths:
        lines.append(f"disks scored against: {'; '.join(sorted(truths))}")
    for name, r in results.items():
        if "strain_error" in r.scores:
            lines.append(f"{name}: strain not mapped: {r.scores['strain_error']}")
        if r.method != "classical" and r.bragg is not None:
            info = r.bragg.info
            lines.append(f"{name}: model {info.get('model')} ({info.get('output', 'map')}, {info.get('precision')})")
            sig = r.bragg.peaks["sigma_px"]
            if np.isfinite(sig).any():
                lines.append(f"{name}: median MC-dropout peak uncertainty {np.nanmedian(sig):.3f} px")
    if props is not None:
        lines += ["", "property models (thickness, phase):"]
        if props.thickness is not None:
            t = props.thickness
            line = (
                f"  thickness {np.nanmin(t.thickness_nm):.1f}–{np.nanmax(t.thickness_nm):.1f} nm "
                f"({t.info['model']}, PACBED window {t.info['window']}, "
                f"median σ {np.nanmedian(t.uncertainty_nm):.2f} nm)"
            )
            if "thickness_mae_nm" in props.scores:
                line += f"; MAE against the ground truth {props.scores['thickness_mae_nm']:.2f} nm"
            lines.append(line)
        if props.phase is not None:
            fr = props.phase.fractions()
            top = ", ".join(f"{k} {v:.2f}" for k, v in sorted(fr.items(), key=lambda kv: -kv[1]) if v > 0)
            conf = props.phase.info["min_confidence"]
            line = f"  phase ({props.phase.info['model']}): {top} (none = unknown, below {conf:.2f})"
            if "phase_accuracy" in props.scores:
                line += f"; accuracy against the ground truth {props.scores['phase_accuracy']:.3f}"
            lines.append(line)
    return "\n".join(lines)
