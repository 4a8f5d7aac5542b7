"""Accuracy and speed of Bragg disk finding, strain and orientation mapping: ML versus classical, side by side.

Held-out synthetic scans (``stemforge.sim.synthetic_scan``, ``multilayer`` profile) of the structures no shipped
training set contains (``stemforge.sim.structures.HELD_OUT_STRUCTURES``: Au [110], Al2O3 [0001], MoS2-2H [0001]
— fcc cubic, trigonal, hexagonal layered) at 300 kV and α = 2 mrad, with two strain bands along the scan rows (0
and +1 % εxx) and thickness steps along the columns (20–150 nm; one multislice pass records them all), are made
noisy at 1e3, 1e4 and 1e5 electrons per pattern and analysed by both methods through
:func:`stemforge.analysis.workflow.analyse`. For every (structure, thickness, dose) the table gives:

* disk F1, precision, recall, position RMSE (px) and the mean radial offset (px, found − true along g) against the
  reflections *present* in the dynamical pattern at that dose (:func:`stemforge.analysis.validation.
  true_reflections`; matched within 2 px; ``--truth kinematic`` scores against the earlier kinematic flag); where
  nothing is present and nothing was found (thick Au at 1e3 e⁻) F1 is NaN and left out of the means;
* strain RMSE (εxx, εyy, εxy together, %) against the ground-truth maps, the reference being the unstrained band
  of the same thickness step;
* patterns per second of each disk finder on this machine (after one untimed warm-up pass of each on the first
  scan: oneDNN's kernels for a batch shape and the FFT plans are made once per process);

and the scan's orientation error (degrees, mean misorientation with symmetry, ACOM on the classical peaks).

Every method's peaks are first cleaned as a user would before strain mapping: the lattice is chosen on the
reference band and fitted at every position, and peaks more than ``--lattice-filter-px`` (default 1.5 px; 0 = off)
from their position's lattice are dropped (:func:`stemforge.analysis.lattice.keep_on_lattice`). At high dose the
classical correlation also peaks on the structured diffuse scattering between disks; those peaks are real
correlation maxima but no Bragg disks.

The ML method uses ``--model`` (default :data:`stemforge.analysis.inference.DEFAULT_BRAGG_MODEL`) from ``--store``
(default ``$STEMFORGE_STORE`` or the default store, seeded with the pretrained models shipped in
``stemforge/registry/pretrained``); ``--min-probability`` sets a centre model's heat-map threshold. Without a
loadable model the script stops with one line before simulating anything.

With ``--py4dstem-python PATH`` (default ``$STEMFORGE_PY4DSTEM_PYTHON``) py4DSTEM's classical ``find_Bragg_disks``
runs side by side on exactly the same noisy scan: py4DSTEM 0.14 needs numpy<2, so it runs in a separate environment
(never a stemforge dependency) whose python executes ``benchmarks/py4dstem_side.py``; scan, vacuum probe and
parameters go there and the peaks come back as .npy / .npz / json files in a temporary folder. Its peaks become
stemforge :class:`~stemforge.analysis.braggvectors.BraggVectors` (py4DSTEM's qx = detector row, qy = column) and are
scored
by the same functions as the other two methods (disk F1 / position RMSE, lattice fit and strain RMSE). Set up such
an environment with::

    python -m venv /work/py4dstem-venv
    /work/py4dstem-venv/bin/pip install "py4DSTEM==0.14.18" "numpy<2"

Usage: ``python benchmarks/analysis_accuracy.py [--quick] [--doses E ...] [--model REF] [--store URL]
[--truth present|kinematic] [--lattice-filter-px PX] [--py4dstem-python PATH]``; the last line is
``RESULT ml_f1=… classical_f1=…
ml_pos_rmse_px=… classical_pos_rmse_px=… ml_strain_rmse=… classical_strain_rmse=… orientation_err_deg=…
ml_patterns_per_s=… classical_patterns_per_s=… ml_radial_offset_px=… classical_radial_offset_px=…`` (means over
every condition), followed with py4DSTEM by ``py4dstem_f1=… py4dstem_pos_rmse_px=… py4dstem_strain_rmse=…
py4dstem_patterns_per_s=…``. ``--quick`` (three thicknesses, 4×6 scans) runs in about 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The classical settings of this benchmark (stemforge's find_bragg_disks_classical; its other defaults apply): a
# peak must clear 5x the shot noise of the correlation at its pixel (the Rose margin the truth uses) and 0.01 % of
# the strongest peak. py4DSTEM has no shot-noise threshold: it keeps the relative threshold of 2 %.
CLASSICAL = {"min_relative_intensity": 1e-4, "min_snr": 5.0, "min_spacing_px": 4}
PY4DSTEM_CLASSICAL = {"min_relative_intensity": 0.02, "min_spacing_px": 4}
PY4DSTEM_SIDE = ROOT / "benchmarks" / "py4dstem_side.py"


def make_scan(
    path: Path, shape, thickness_nm, strain_percent, structure: str = "Si", zone: str = "[110]", extra=()
) -> Path:
    """Simulate a held-out scan once (``stemforge-simulate`` skips a complete identical scan); ``extra``: further
    ``scan.*`` overrides (e.g. ``scan.energy_eV=2e5``)."""
    cmd = [
        sys.executable,
        "-m",
        "stemforge.cli.simulate",
        "scan=multilayer",
        f"scan.path={path}",
        f"scan.scan_shape=[{shape[0]},{shape[1]}]",
        f"scan.thickness_nm=[{','.join(f'{t:g}' for t in thickness_nm)}]",
        f"scan.band_strain_percent=[{','.join(str(v) for v in strain_percent)}]",
        f"scan.structures=[{structure}]",
        f"scan.zone_axis='{zone}'",
        *extra,
        "scan.progress=false",
        f"hydra.run.dir={path.parent}/hydra",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: simulating the benchmark scan failed: {proc.stderr.strip().splitlines()[-1:]}")
    print(f"scan {path.name}: ready in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def py4dstem_params(
    classical: dict,
    subpixel: str = "multicorr",
    upsample_factor: int = 16,
    kernel_mode: str = "sigmoid",
    kernel_radii_factors=(1.0, 2.0),
) -> dict:
    """py4DSTEM ``find_Bragg_disks`` keyword arguments matched to stemforge's classical settings ``classical``
    (with stemforge's defaults for what it leaves out), and the kernel settings for ``Probe.get_kernel``."""
    import inspect

    from stemforge.analysis.disks import find_bragg_disks_classical

    sf = {
        k: v.default
        for k, v in inspect.signature(find_bragg_disks_classical).parameters.items()
        if v.default is not inspect.Parameter.empty
    }
    sf.update(classical)
    return {
        "kernel_mode": kernel_mode,
        "kernel_radii_factors": [float(v) for v in kernel_radii_factors],  # × py4DSTEM's probe radius
        "find_Bragg_disks": {
            "corrPower": float(sf["corr_power"]),
            "sigma_dp": 0.0,
            "sigma_cc": float(sf["sigma_px"]),  # py4DSTEM's default 2 px smoothing would differ from stemforge's
            "subpixel": subpixel,
            "upsample_factor": int(upsample_factor),
            "minAbsoluteIntensity": float(sf["min_absolute_intensity"]),
            "minRelativeIntensity": float(sf["min_relative_intensity"]),
            "relativeToPeak": 0,
            "minPeakSpacing": float(sf["min_spacing_px"]),
            "edgeBoundary": int(sf["edge_px"]),
            "maxNumPeaks": int(sf["max_peaks"]),
        },
    }


def py4dstem_to_bragg(scan_shape, detector_shape, counts, qx, qy, intensity, calibration=None, info=None):
    """stemforge :class:`BraggVectors` from py4DSTEM-style peaks, concatenated over the scan in row-major order.

    ``counts`` (Rx·Ry or (Rx, Ry)) peaks per position; ``qx`` / ``qy`` detector px along py4DSTEM's first / second
    detector axis (``data[rx, ry, qx, qy]``), i.e. stemforge's ``row`` / ``col``.
    """
    import numpy as np

    from stemforge.analysis.braggvectors import BraggVectors

    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    rx_n, ry_n = (int(v) for v in scan_shape)
    if len(counts) != rx_n * ry_n:
        raise ValueError(f"{len(counts)} peak counts for a {rx_n}x{ry_n} scan")
    table = np.stack([np.asarray(qx, float), np.asarray(qy, float), np.asarray(intensity, float)], 1)
    if len(table) != counts.sum():
        raise ValueError(f"{len(table)} peaks but the counts add up to {counts.sum()}")
    ends = np.cumsum(counts)
    per = {(i // ry_n, i % ry_n): table[e - n : e] for i, (n, e) in enumerate(zip(counts, ends))}
    return BraggVectors.from_lists(
        scan_shape, detector_shape, per, calibration, method="py4dstem", info=dict(info or {})
    )


def check_py4dstem(python: str) -> str:
    """py4DSTEM's version in the environment of ``python``; exits 2 with one line when it cannot be imported."""
    try:
        proc = subprocess.run(
            [python, "-c", "import py4DSTEM, numpy; print(py4DSTEM.__version__, numpy.__version__)"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.SubprocessError) as err:
        print(f"error: cannot run the py4DSTEM python {python!r}: {err}", file=sys.stderr)
        sys.exit(2)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        print(f"error: {python} cannot import py4DSTEM: {last}", file=sys.stderr)
        sys.exit(2)
    return proc.stdout.strip()


def run_py4dstem(python: str, cube, params: dict):
    """py4DSTEM's ``find_Bragg_disks`` on ``cube`` (its data and vacuum probe, as stemforge's classical method
    uses them) in the other environment. Returns ``(BraggVectors, timings, info)``."""
    import numpy as np

    from stemforge.analysis.probe import probe_from_data

    probe = cube.probe if cube.probe is not None else probe_from_data(cube)
    with tempfile.TemporaryDirectory(prefix="stemforge-py4dstem-") as tmp:
        folder = Path(tmp)
        np.save(folder / "scan.npy", np.ascontiguousarray(np.asarray(cube.data, dtype=np.float32)))
        np.save(folder / "probe.npy", np.asarray(probe, dtype=np.float32))
        (folder / "params.json").write_text(json.dumps(params, indent=1))
        proc = subprocess.run([python, str(PY4DSTEM_SIDE), str(folder)], capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
            print(f"error: py4DSTEM disk finding failed (exit {proc.returncode}): {last}", file=sys.stderr)
            sys.exit(2 if proc.returncode == 2 else 1)
        with np.load(folder / "peaks.npz") as z:
            out = {k: z[k] for k in z.files}
    info = {
        "versions": json.loads(str(out["versions"])),
        "probe_radius_px": float(out["probe_radius_px"]),
        "probe_origin_px": out["probe_origin_px"].tolist(),
        "kernel_radii_px": out["kernel_radii_px"].tolist(),
        "params": params,
    }
    bv = py4dstem_to_bragg(
        cube.scan_shape,
        cube.detector_shape,
        out["counts"],
        out["qx"],
        out["qy"],
        out["intensity"],
        cube.calibration,
        info,
    )
    n = int(np.prod(cube.scan_shape))
    t = float(out["kernel_s"]) + float(out["disks_s"])  # like stemforge's timing: template + disks
    timings = {"disks_s": t, "disks_cpu_s": float(out["disks_cpu_s"]), "patterns_per_s": n / max(t, 1e-9)}
    return bv, timings, info


def score_condition(res: dict, cube, positions, reference, dose: float, truth: str) -> dict:
    """Per-method scores of ``res`` (``analyse`` results) on the scan ``positions`` of one thickness step: disks
    against the reflections ``truth`` counts at ``dose``, strain against the ground truth with ``reference`` (the
    step's unstrained band) as the reference."""
    from stemforge.analysis.datacube import AnalysisError
    from stemforge.analysis.strain import strain_map
    from stemforge.analysis.validation import disk_scores, strain_scores, true_reflections

    gt = cube.ground_truth
    mask, meaning = true_reflections(gt, dose, truth)
    out = {}
    for name, r in res.items():
        d = disk_scores(r.bragg, gt["reflections_px"], mask, 2.0, positions=positions)
        row = {**d, "truth": meaning, "patterns_per_s": r.timings["patterns_per_s"], "strain_rmse": float("nan")}
        if r.lattice is not None:
            try:
                s = strain_scores(strain_map(r.lattice, reference=reference), gt, mask=positions)
                row["strain_rmse"] = s["rmse"]
            except AnalysisError as err:
                row["strain_error"] = str(err)
        out[name] = row
    return out


def main(argv=None) -> int:
    from stemforge.sim.structures import HELD_OUT_STRUCTURES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4x6 scans at 20, 60 and 150 nm (about 5 min on 2 cores)")
    ap.add_argument("--doses", type=float, nargs="+", default=[1e3, 1e4, 1e5], help="electrons per pattern")
    ap.add_argument("--structures", nargs="+", default=list(HELD_OUT_STRUCTURES), help="held-out structures")
    ap.add_argument("--truth", default="present", choices=["present", "kinematic"], help="which reflections count")
    ap.add_argument(
        "--lattice-filter-px",
        type=float,
        default=1.5,
        help="drop peaks farther than this from their position's fitted lattice (px; 0 = keep every peak)",
    )
    ap.add_argument("--model", default=None, help="registry reference (default: the analysis default model)")
    ap.add_argument(
        "--min-probability",
        type=float,
        default=None,
        help="centre models: heat-map probability of a disk (default: the function's)",
    )
    ap.add_argument("--store", default=None, help="registry store (default: $STEMFORGE_STORE or the default store)")
    ap.add_argument("--mc-samples", type=int, default=0, help="MC-dropout passes (default 0: the default path)")
    ap.add_argument("--workdir", default=str(ROOT / "data" / "bench"))
    ap.add_argument(
        "--py4dstem-python",
        default=os.environ.get("STEMFORGE_PY4DSTEM_PYTHON") or None,
        help="python of a separate environment with py4DSTEM 0.14 (numpy<2): also run its "
        "find_Bragg_disks on the same scans (default: $STEMFORGE_PY4DSTEM_PYTHON; else skipped)",
    )
    ap.add_argument(
        "--py4dstem-subpixel",
        default="multicorr",
        choices=["multicorr", "poly", "pixel"],
        help="py4DSTEM's sub-pixel refinement (default multicorr, upsample factor 16)",
    )
    args = ap.parse_args(argv)
    unknown = [s for s in args.structures if s not in HELD_OUT_STRUCTURES]
    if unknown:
        sys.exit(f"error: {unknown} are not held-out structures; choose from {list(HELD_OUT_STRUCTURES)}")
    py4d_version = check_py4dstem(args.py4dstem_python) if args.py4dstem_python else None

    import numpy as np
    import torch

    from stemforge import analysis
    from stemforge.analysis.datacube import AnalysisError
    from stemforge.analysis.inference import load_model
    from stemforge.analysis.workflow import MethodResult, _rect, add_dose_noise, analyse, score_disks_and_strain

    try:
        from stemforge.analysis.inference import DEFAULT_BRAGG_MODEL

        args.model = args.model or DEFAULT_BRAGG_MODEL
        model = load_model(args.model, store=args.store)  # fail before minutes of simulation
    except AnalysisError as err:
        sys.exit(
            f"error: {err} (pass --model/--store of a published model, e.g. "
            "--model bragg-fcunet-demo:stable --store data/demo/registry after `make run`)"
        )
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    thicknesses = [20.0, 60.0, 150.0] if args.quick else [20.0, 40.0, 80.0, 120.0, 150.0]
    cols_per_step = 2
    shape = (4, cols_per_step * len(thicknesses)) if args.quick else (8, 2 * cols_per_step * len(thicknesses))
    strain = [0.0, 1.0]  # two bands along the rows: the first is the reference
    rows = []
    orientation_err = []
    for name in args.structures:
        zone = HELD_OUT_STRUCTURES[name]
        tag = "".join(c for c in zone if c.isalnum() or c == "-")
        path = make_scan(
            work / f"heldout_{name}_{tag}_{shape[0]}x{shape[1]}.zarr", shape, thicknesses, strain, name, zone
        )
        clean = analysis.load(path, lazy=False)
        steps = np.round(np.asarray(clean.ground_truth["thickness_A"]) / 10.0, 1)  # nm per position
        step_values = np.unique(steps)
        if not rows:  # one untimed pass of each finder first: their one-off set-up is not throughput
            warm = add_dose_noise(clean, args.doses[0], seed=1)
            t0 = time.perf_counter()
            analysis.find_bragg_disks(warm, progress=False, **CLASSICAL)
            analysis.find_bragg_disks(warm, method="ml", model=model, mc_samples=args.mc_samples, progress=False)
            print(
                f"warm-up of both finders on {warm.data.shape[0] * warm.data.shape[1]} patterns: "
                f"{time.perf_counter() - t0:.1f} s (not timed below)",
                flush=True,
            )
        for dose in args.doses:
            cube = add_dose_noise(clean, dose, seed=0)
            torch.manual_seed(0)  # the MC-dropout masks: the same numbers on every run
            res = analyse(
                cube,
                ["classical", "ml"],
                classical=dict(CLASSICAL),
                ml={
                    "model": model,
                    "mc_samples": args.mc_samples,
                    "threshold": 0.1,
                    **({"min_probability": args.min_probability} if args.min_probability is not None else {}),
                },
                strain_reference=[0, shape[0] // 2, None, None],
                orientation={"k_max": 1.5, "direction_step_deg": 2.0, "in_plane_step_deg": 2.0},
                truth=args.truth,
                lattice_filter_px=args.lattice_filter_px or None,
                progress=False,
            )
            if args.py4dstem_python:
                params = py4dstem_params(PY4DSTEM_CLASSICAL, subpixel=args.py4dstem_subpixel)
                bv, timings, info = run_py4dstem(args.py4dstem_python, cube, params)
                res["py4dstem"] = MethodResult("py4dstem", bv, timings=timings)
                ref = _rect([0, shape[0] // 2, None, None], cube.scan_shape)
                score_disks_and_strain(
                    res["py4dstem"], cube.ground_truth, ref, 2.0, dose, args.truth, args.lattice_filter_px or None
                )
            o = res["classical"].scores.get("orientation", {})
            orientation_err.append(o.get("mean_deg", np.nan))
            for t_nm in step_values:
                positions = steps == t_nm
                cols = np.flatnonzero(positions.any(0))
                reference = np.zeros(cube.scan_shape, bool)
                reference[: shape[0] // 2, cols] = True
                for method, sc in score_condition(res, cube, positions, reference, dose, args.truth).items():
                    rows.append(
                        {
                            "structure": name,
                            "zone": zone,
                            "thickness_nm": float(t_nm),
                            "dose": dose,
                            "method": method,
                            **sc,
                        }
                    )
            done = [r for r in rows if r["structure"] == name and r["dose"] == dose]
            print(
                f"{name} {zone} at {dose:g} e⁻/pattern: "
                + ", ".join(f"{r['method']} {r['thickness_nm']:g} nm F1 {r['f1']:.3f}" for r in done),
                flush=True,
            )
    print_table(rows, args.truth, args.lattice_filter_px)
    v = summary(rows)
    v["classical_orientation_err_deg"] = float(np.nanmean(orientation_err)) if orientation_err else float("nan")
    hi = np.array([r["f1"] for r in rows if r["method"] == "classical" and r["dose"] >= 1e4], dtype=float)
    print(
        f"\nclassical F1 at ≥ 1e4 e⁻/pattern: mean {np.nanmean(hi):.3f}, min {np.nanmin(hi):.3f} over "
        f"{int(np.isfinite(hi).sum())} scored conditions"
    )
    extra = ""
    if py4d_version is None:
        print("py4DSTEM comparison: not run (py4DSTEM 0.14 needs numpy<2 in a separate environment; none is set up)")
    else:
        extra = (
            f" py4dstem_f1={v['py4dstem_f1']:.4f} py4dstem_pos_rmse_px={v['py4dstem_pos_rmse_px']:.4f} "
            f"py4dstem_strain_rmse={v['py4dstem_strain_rmse']:.6f} "
            f"py4dstem_patterns_per_s={v['py4dstem_patterns_per_s']:.2f}"
        )
    print(
        f"RESULT ml_f1={v['ml_f1']:.4f} classical_f1={v['classical_f1']:.4f} "
        f"ml_pos_rmse_px={v['ml_pos_rmse_px']:.4f} classical_pos_rmse_px={v['classical_pos_rmse_px']:.4f} "
        f"ml_strain_rmse={v['ml_strain_rmse']:.6f} classical_strain_rmse={v['classical_strain_rmse']:.6f} "
        f"orientation_err_deg={v['classical_orientation_err_deg']:.3f} "
        f"ml_patterns_per_s={v['ml_patterns_per_s']:.2f} classical_patterns_per_s={v['classical_patterns_per_s']:.2f} "
        f"ml_radial_offset_px={v['ml_radial_offset_px']:.4f} "
        f"classical_radial_offset_px={v['classical_radial_offset_px']:.4f}" + extra
    )
    return 0


def summary(rows: list[dict]) -> dict:
    """Means over every condition, per method: ``<method>_f1``, ``_pos_rmse_px``, ``_strain_rmse`` (fraction),
    ``_patterns_per_s``, ``_radial_offset_px``."""
    import numpy as np

    out = {}
    for key, field in (
        ("f1", "f1"),
        ("pos_rmse_px", "pos_rmse_px"),
        ("strain_rmse", "strain_rmse"),
        ("patterns_per_s", "patterns_per_s"),
        ("radial_offset_px", "radial_offset_px"),
    ):
        for method in sorted({r["method"] for r in rows}):
            vals = np.array([r[field] for r in rows if r["method"] == method], dtype=float)
            out[f"{method}_{key}"] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return out


def print_table(rows: list[dict], truth: str, lattice_filter_px: float | None = None) -> None:
    """The per-condition table: structure, thickness, dose, then per method F1 / precision / recall / position
    RMSE / radial offset / strain RMSE."""
    methods = sorted({r["method"] for r in rows})
    how = "reflections present at each row's dose" if truth == "present" else "the kinematic flag"
    print(f"\ndisks scored against {how} ({rows[0]['truth'].split(',')[-1].strip(' )') if rows else ''})")
    if lattice_filter_px:
        print(f"every method's peaks kept within {lattice_filter_px:g} px of their position's fitted lattice")
    head = f"{'structure':10s} {'zone':7s} {'t (nm)':>6s} {'dose':>6s}"
    for m in methods:
        head += f" | {m[:9]:>9s} F1   P     R   rmse  rad  ε%"
    print(head)
    keys = sorted(
        {(r["structure"], r["zone"], r["thickness_nm"], r["dose"]) for r in rows}, key=lambda k: (k[0], k[2], k[3])
    )
    for k in keys:
        line = f"{k[0]:10s} {k[1]:7s} {k[2]:6g} {k[3]:6.0e}"
        for m in methods:
            r = next(
                x for x in rows if (x["structure"], x["zone"], x["thickness_nm"], x["dose"]) == k and x["method"] == m
            )
            line += (
                f" | {r['f1']:5.3f} {r['precision']:5.3f} {r['recall']:5.3f} {r['pos_rmse_px']:4.2f} "
                f"{r['radial_offset_px']:+5.2f} {100 * r['strain_rmse']:5.2f}"
            )
        print(line)


if __name__ == "__main__":
    sys.exit(main())
