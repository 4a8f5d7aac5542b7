"""Analyse a 4D-STEM scan classically and with registry models: ``python scripts/analyze.py data.path=SCAN``.

Writes into ``output.dir``: ``maps.zarr`` (virtual images; per method: peak counts, lattice, strain, orientation /
phase maps), PNG figures (virtual images, strain and orientation maps, a pattern with its peaks), and
``report.txt`` (the comparison, also printed; against the ground truth when the scan is synthetic). Bad input
(missing file, wrong rank, NaN, mismatched calibration, unknown model): one line on stderr, exit 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra

os.environ.setdefault("WANDB_MODE", "offline")


def _virtual(cube) -> dict:
    """Virtual BF (disk of H/16 px) and ADF (H/8 to H/2 px) images, computed once for the maps and the figures."""
    from stemforge.analysis.virtual import virtual_adf, virtual_bf

    H = cube.detector_shape[0]
    return {"virtual_bf": virtual_bf(cube, max(2, H // 16)), "virtual_adf": virtual_adf(cube, H // 8, H // 2 - 1)}


def _figures(cube, results, virtual: dict, out: Path) -> list[str]:
    import numpy as np
    from matplotlib.figure import Figure

    from stemforge.analysis.strain import plot_strain_maps
    from stemforge.analysis.virtual import mean_pattern

    written = []
    bf, adf = virtual["virtual_bf"], virtual["virtual_adf"]
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    ax = fig.subplots(1, 3)
    ax[0].imshow(bf, cmap="gray"), ax[0].set_title("virtual BF")
    ax[1].imshow(adf, cmap="gray"), ax[1].set_title("virtual ADF")
    m = mean_pattern(cube)
    ax[2].imshow(np.log10(np.clip(m, m.max() * 1e-5, None)), cmap="magma"), ax[2].set_title("mean pattern (log)")
    fig.savefig(out / "virtual.png", dpi=110)
    written.append("virtual.png")
    gt = cube.ground_truth or {}
    rx, ry = cube.scan_shape[0] // 2, cube.scan_shape[1] // 2
    fig = Figure(figsize=(4.2 * len(results), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(results)))
    img = np.asarray(cube.data[rx, ry], dtype=float)
    for a, (name, r) in zip(axes, results.items()):
        a.imshow(np.log10(np.clip(img, img.max() * 1e-4, None)), cmap="gray")
        if "reflections_px" in gt:
            t = np.asarray(gt["reflections_px"][rx, ry])
            vis = (
                np.asarray(gt["reflections_visible"][rx, ry], bool)
                if "reflections_visible" in gt
                else np.isfinite(t[..., 0])
            )
            a.scatter(t[vis, 0], t[vis, 1], s=60, facecolors="none", edgecolors="lime", lw=1, label="truth")
        p = r.bragg.at(rx, ry)
        a.scatter(p["col"], p["row"], s=12, c="red", marker="x", lw=1, label=f"{name} ({len(p)})")
        a.set_title(f"{name} peaks at ({rx}, {ry})")
        a.legend(loc="lower right", fontsize=7)
    fig.savefig(out / "disks.png", dpi=110)
    written.append("disks.png")
    for name, r in results.items():
        if r.strain is not None:
            truth = {k: gt[k] for k in ("exx", "eyy", "exy", "theta_deg") if k in gt} or None
            plot_strain_maps(r.strain, truth, title=f"strain by the {name} method").savefig(
                out / f"strain_{name}.png", dpi=110
            )
            written.append(f"strain_{name}.png")
        if r.phase is not None:
            from stemforge.analysis.phase import plot_phase_map

            plot_phase_map(r.phase).savefig(out / f"phase_{name}.png", dpi=110)
            written.append(f"phase_{name}.png")
        elif r.orientation is not None:
            r.orientation.figure().savefig(out / f"orientation_{name}.png", dpi=110)
            written.append(f"orientation_{name}.png")
    return written


def _write_maps(cube, results, virtual: dict, path: Path) -> None:
    import numpy as np
    import zarr

    g = zarr.open_group(str(path), mode="w")
    g.attrs.update({"scan_shape": list(cube.scan_shape), "calibration": cube.calibration.as_dict(), "complete": False})
    for name, image in virtual.items():
        g.create_array(name, data=np.asarray(image, dtype="float32"))
    for name, r in results.items():
        m = g.require_group(name)
        m.create_array("num_peaks", data=r.bragg.counts().astype("int32"))
        m.create_array(
            "peaks",
            data=np.stack(
                [r.bragg.peaks[k].astype("float32") for k in ("rx", "ry", "row", "col", "intensity", "sigma_px")], 1
            ),
        )
        for k, v in (r.strain or {}).items():
            m.create_array(f"strain/{k}", data=np.asarray(v, dtype="float32" if v.dtype != bool else bool))
        if r.orientation is not None:
            for k, v in r.orientation.as_dict().items():
                v = np.asarray(v)
                m.create_array(f"orientation/{k}", data=v.astype("float32") if v.dtype.kind == "f" else v)
        if r.phase is not None:
            m.create_array("phase/phase", data=np.asarray(r.phase.phase, dtype="int32"))
        m.attrs["scores"] = _jsonable(r.scores)
        m.attrs["timings"] = _jsonable(r.timings)
    g.attrs["complete"] = True


def _jsonable(obj):
    import numpy as np

    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    return obj


@hydra.main(version_base="1.3", config_path="pkg://stemforge.conf", config_name="analyze")
def main(cfg) -> None:
    from omegaconf import OmegaConf

    from stemforge import analysis
    from stemforge.analysis.datacube import AnalysisError
    from stemforge.analysis.workflow import add_dose_noise, analyse, report

    out = Path(cfg.output.dir)
    try:
        cube = analysis.load(cfg.data.path, **OmegaConf.to_container(cfg.data.options, resolve=True))
        overrides = {k: v for k, v in OmegaConf.to_container(cfg.data.calibration, resolve=True).items()}
        if overrides:
            cube.calibration = cube.calibration.with_(**overrides)
        if cfg.data.dose_e_per_pattern:
            cube = add_dose_noise(cube, float(cfg.data.dose_e_per_pattern), int(cfg.data.noise_seed))
        results = analyse(
            cube,
            list(cfg.methods),
            classical=OmegaConf.to_container(cfg.classical, resolve=True),
            ml=OmegaConf.to_container(cfg.ml, resolve=True),
            strain_reference=OmegaConf.to_container(cfg.strain, resolve=True).get("reference"),
            orientation=OmegaConf.to_container(cfg.orientation, resolve=True),
            truth_tolerance_px=float(cfg.truth_tolerance_px),
            progress=bool(cfg.progress),
        )
    except (AnalysisError, TypeError) as err:
        print(f"error: {err}".replace("\n", " "), file=sys.stderr)
        sys.exit(2)
    out.mkdir(parents=True, exist_ok=True)
    virtual = _virtual(cube)
    _write_maps(cube, results, virtual, out / "maps.zarr")
    figures = _figures(cube, results, virtual, out)
    text = report(results, cube)
    (out / "report.txt").write_text(text + "\n")
    print(text)
    print(f"\nwrote {out / 'maps.zarr'}, {', '.join(figures)} and report.txt in {out}")


if __name__ == "__main__":
    main()
