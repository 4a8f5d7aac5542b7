"""What an analysis run writes: the ``maps.zarr`` results store, its figures and ``report.txt``.

``maps.zarr`` (zarr v3 group) — the schema ``stemforge-analysis-maps/1``:

==================================  =====================================================================
``virtual_bf``, ``virtual_adf``     ``(Rx, Ry)`` float32: virtual bright field (disk of H/16 px about the
                                    origin) and annular dark field (H/8 to H/2 px), data units × pixels
``<method>/num_peaks``              ``(Rx, Ry)`` int32: Bragg disks found per pattern
``<method>/peaks``                  ``(P, 6)`` float32: ``rx, ry, row, col, intensity, sigma_px`` (detector
                                    px; ``sigma_px`` NaN without an uncertainty)
``<method>/strain/<k>``             ``(Rx, Ry)``: ``exx, eyy, exy`` (1), ``theta_deg`` (°), ``valid`` (bool)
``<method>/orientation/<k>``        ACOM maps (:meth:`~stemforge.analysis.orientation.OrientationMap.as_dict`)
``<method>/phase/phase``            ``(Rx, Ry)`` int32 phase index (−1: none / unknown); attrs ``phase_names``
``properties/phase/probability``    ``(Rx, Ry, P)`` float32 class probabilities of the ML phase model
``properties/thickness/<k>``        ``thickness_nm``, ``uncertainty_nm`` (nm), ``valid`` (bool); attrs
                                    ``thickness_info`` (model, PACBED window, structure check)
attrs                               ``schema``, ``scan_shape``, ``calibration`` (Å⁻¹/px, eV, mrad, Å),
                                    ``complete`` (False until every array is written); per method ``scores``
                                    (against the ground truth of a synthetic scan) and ``timings`` (s)
==================================  =====================================================================
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stemforge.core.jsonable import to_jsonable

__all__ = ["MAPS_SCHEMA", "overview_images", "write_maps", "save_figures", "write_results"]

MAPS_SCHEMA = "stemforge-analysis-maps/1"
_PEAK_COLUMNS = ("rx", "ry", "row", "col", "intensity", "sigma_px")


def overview_images(cube) -> dict[str, np.ndarray]:
    """Virtual BF (disk of H/16 px, at least 2) and ADF (H/8 to H/2 px) images, computed once for maps and
    figures."""
    from .virtual import virtual_adf, virtual_bf

    H = cube.detector_shape[0]
    return {"virtual_bf": virtual_bf(cube, max(2, H // 16)), "virtual_adf": virtual_adf(cube, H // 8, H // 2 - 1)}


def write_maps(cube, results: dict, images: dict, path: str | Path) -> Path:
    """Write ``maps.zarr`` (see the module docstring) for ``results`` (method -> ``MethodResult``)."""
    import zarr

    path = Path(path)
    g = zarr.open_group(str(path), mode="w")
    g.attrs.update(
        {
            "schema": MAPS_SCHEMA,
            "scan_shape": list(cube.scan_shape),
            "calibration": to_jsonable(cube.calibration.as_dict()),
            "complete": False,
        }
    )
    for name, image in images.items():
        g.create_array(name, data=np.asarray(image, dtype="float32"))
    for name, r in results.items():
        m = g.require_group(name)
        if r.bragg is not None:
            m.create_array("num_peaks", data=r.bragg.counts().astype("int32"))
            m.create_array("peaks", data=np.stack([r.bragg.peaks[k].astype("float32") for k in _PEAK_COLUMNS], 1))
        if r.thickness is not None:
            m.create_array("thickness/thickness_nm", data=r.thickness.thickness_nm.astype("float32"))
            m.create_array("thickness/uncertainty_nm", data=r.thickness.uncertainty_nm.astype("float32"))
            m.create_array("thickness/valid", data=np.asarray(r.thickness.valid, dtype=bool))
            m.attrs["thickness_info"] = to_jsonable(r.thickness.info)
        for k, v in (r.strain or {}).items():
            m.create_array(f"strain/{k}", data=np.asarray(v, dtype="float32" if v.dtype != bool else bool))
        if r.orientation is not None:
            for k, v in r.orientation.as_dict().items():
                v = np.asarray(v)
                m.create_array(f"orientation/{k}", data=v.astype("float32") if v.dtype.kind == "f" else v)
        if r.phase is not None:
            m.create_array("phase/phase", data=np.asarray(r.phase.phase, dtype="int32"))
            m.attrs["phase_names"] = list(r.phase.names)
            if r.phase.info.get("method") == "ml":
                m.create_array("phase/probability", data=np.asarray(r.phase.scores, dtype="float32"))
        m.attrs["scores"] = to_jsonable(r.scores)
        m.attrs["timings"] = to_jsonable(r.timings)
    g.attrs["complete"] = True
    return path


def save_figures(cube, results: dict, images: dict, out: str | Path, dpi: int = 110) -> list[str]:
    """PNG figures into ``out``: virtual images and the mean pattern, one pattern with each method's peaks (and
    the true reflections of a synthetic scan), strain, orientation and phase maps. Returns the file names."""
    from matplotlib.figure import Figure

    from .strain import plot_strain_maps
    from .virtual import mean_pattern

    out = Path(out)
    written = []
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    ax = fig.subplots(1, 3)
    for a, key, title in ((ax[0], "virtual_bf", "virtual BF"), (ax[1], "virtual_adf", "virtual ADF")):
        a.imshow(images[key], cmap="gray")
        a.set(title=title, xlabel="scan column", ylabel="scan row")
    m = mean_pattern(cube)
    ax[2].imshow(np.log10(np.clip(m, m.max() * 1e-5, None)), cmap="magma")
    ax[2].set(title="mean pattern (log10)", xlabel="detector column (px)", ylabel="detector row (px)")
    fig.savefig(out / "virtual.png", dpi=dpi)
    written.append("virtual.png")

    gt = cube.ground_truth or {}
    if "reflections_px" in gt:
        from .validation import true_reflections

        truth_mask, _ = true_reflections(gt, cube.metadata.get("dose_e_per_pattern"))
    rx, ry = cube.scan_shape[0] // 2, cube.scan_shape[1] // 2
    finders = {k: r for k, r in results.items() if r.bragg is not None}
    fig = Figure(figsize=(4.2 * max(1, len(finders)), 4.3), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(finders))))
    img = np.asarray(cube.data[rx, ry], dtype=float)
    for a, (name, r) in zip(axes, finders.items()):
        a.imshow(np.log10(np.clip(img, img.max() * 1e-4, None)), cmap="gray")
        if "reflections_px" in gt:
            t = np.asarray(gt["reflections_px"][rx, ry])
            shown = truth_mask[rx, ry]
            rest = np.isfinite(t[..., 0]) & ~shown
            a.scatter(t[rest, 0], t[rest, 1], s=30, facecolors="none", edgecolors="0.5", lw=0.5, label="kinematic only")
            a.scatter(t[shown, 0], t[shown, 1], s=60, facecolors="none", edgecolors="lime", lw=1, label="present")
        p = r.bragg.at(rx, ry)
        a.scatter(p["col"], p["row"], s=12, c="red", marker="x", lw=1, label=f"{name} ({len(p)})")
        a.set(title=f"{name} peaks at ({rx}, {ry})", xlabel="detector column (px)", ylabel="detector row (px)")
        a.legend(loc="lower right", fontsize=7)
    fig.savefig(out / "disks.png", dpi=dpi)
    written.append("disks.png")

    for name, r in results.items():
        if r.thickness is not None:
            r.thickness.figure().savefig(out / f"thickness_{name}.png", dpi=dpi)
            written.append(f"thickness_{name}.png")
        if r.strain is not None:
            truth = {k: gt[k] for k in ("exx", "eyy", "exy", "theta_deg") if k in gt} or None
            fig = plot_strain_maps(r.strain, truth, title=f"strain by the {name} method")
            fig.savefig(out / f"strain_{name}.png", dpi=dpi)
            written.append(f"strain_{name}.png")
        if r.phase is not None:
            from .phase import plot_phase_map

            plot_phase_map(r.phase).savefig(out / f"phase_{name}.png", dpi=dpi)
            written.append(f"phase_{name}.png")
        elif r.orientation is not None:
            r.orientation.figure().savefig(out / f"orientation_{name}.png", dpi=dpi)
            written.append(f"orientation_{name}.png")
    return written


def write_results(cube, results: dict, out: str | Path) -> tuple[str, list[str]]:
    """Everything an analysis run leaves in folder ``out``: ``maps.zarr``, the figures and ``report.txt``.

    Returns the report text and the names of the files written.
    """
    from .workflow import report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = overview_images(cube)
    write_maps(cube, results, images, out / "maps.zarr")
    figures = save_figures(cube, results, images, out)
    text = report(results, cube)
    (out / "report.txt").write_text(text + "\n")
    return text, ["maps.zarr", *figures, "report.txt"]
