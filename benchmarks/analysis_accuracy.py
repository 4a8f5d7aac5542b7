"""Accuracy and speed of Bragg disk finding, strain and orientation mapping: ML versus classical, side by side.

Held-out synthetic scans (``stemforge.sim.synthetic_scan``: a Si [110] multilayer, thicker than anything in the default
training set — 50 nm quick, 50 and 80 nm full — with ground-truth strain, rotation and reflection positions) are
made noisy at a low dose and analysed by both methods through :func:`stemforge.analysis.workflow.analyse`:

* disk F1 and position RMSE (px) against the kinematic reflections of the strained crystal
  (``ground_truth/reflections_visible``, matched within 2 px);
* strain RMSE (εxx, εyy, εxy together, dimensionless) against the ground-truth maps, reference = the first band;
* orientation error (degrees, mean misorientation with symmetry) of ACOM on the classical Bragg vectors;
* patterns per second of each disk finder on this machine.

The ML method uses ``--model`` (default ``bragg-fcunet:stable``) from ``--store`` (default ``$STEMFORGE_STORE`` or
the default store, seeded with the pretrained model shipped in ``stemforge/registry/pretrained``). Without a
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

Usage: ``python benchmarks/analysis_accuracy.py [--quick] [--dose E] [--model REF] [--store URL]
[--py4dstem-python PATH]``; the last line is ``RESULT ml_f1=… classical_f1=… ml_pos_rmse_px=…
classical_pos_rmse_px=… ml_strain_rmse=… classical_strain_rmse=… orientation_err_deg=… ml_patterns_per_s=…
classical_patterns_per_s=…``, followed with py4DSTEM by ``py4dstem_f1=… py4dstem_pos_rmse_px=…
py4dstem_strain_rmse=… py4dstem_patterns_per_s=…``.
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

# The classical settings of this benchmark (stemforge's find_bragg_disks_classical; its other defaults apply).
CLASSICAL = {"min_relative_intensity": 0.02, "min_spacing_px": 4}
PY4DSTEM_SIDE = ROOT / "benchmarks" / "py4dstem_side.py"


def make_scan(path: Path, shape, thickness_nm: float, strain_percent) -> Path:
    """Simulate the held-out scan once (scripts/simulate.py resumes / skips a complete identical scan)."""
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "simulate.py"),
        "scan=multilayer",
        f"scan.path={path}",
        f"scan.scan_shape=[{shape[0]},{shape[1]}]",
        f"scan.thickness_nm=[{thickness_nm}]",
        f"scan.band_strain_percent=[{','.join(str(v) for v in strain_percent)}]",
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one 8x8 scan at 50 nm (< 10 min on 2 cores)")
    ap.add_argument("--dose", type=float, default=2e4, help="electrons per pattern (default 2e4: low dose)")
    ap.add_argument("--model", default="bragg-fcunet:stable")
    ap.add_argument("--store", default=None, help="registry store (default: $STEMFORGE_STORE or the default store)")
    ap.add_argument("--mc-samples", type=int, default=4)
    ap.add_argument("--workdir", default=str(ROOT / "data" / "bench"))
    ap.add_argument(
        "--py4dstem-python",
        default=os.environ.get("STEMFORGE_PY4DSTEM_PYTHON") or None,
        help="python of a separate environment with py4DSTEM 0.14 (numpy<2): also run its "
        "find_Bragg_disks on the same scan (default: $STEMFORGE_PY4DSTEM_PYTHON; else skipped)",
    )
    ap.add_argument(
        "--py4dstem-subpixel",
        default="multicorr",
        choices=["multicorr", "poly", "pixel"],
        help="py4DSTEM's sub-pixel refinement (default multicorr, upsample factor 16)",
    )
    args = ap.parse_args(argv)
    py4d_version = check_py4dstem(args.py4dstem_python) if args.py4dstem_python else None

    import numpy as np
    import torch

    from stemforge import analysis
    from stemforge.analysis.datacube import AnalysisError
    from stemforge.analysis.inference import load_model
    from stemforge.analysis.workflow import add_dose_noise, analyse, report

    try:
        model = load_model(args.model, store=args.store)  # fail before minutes of simulation
    except AnalysisError as err:
        sys.exit(
            f"error: {err} (pass --model/--store of a published model, e.g. "
            "--model bragg-fcunet-demo:stable --store data/demo/registry after `make run`)"
        )
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cases = [((8, 8), 50.0)] if args.quick else [((16, 16), 50.0), ((16, 16), 80.0)]
    strain = [0.0, 1.0, 0.0, -0.5]
    totals: dict[str, list] = {}
    for shape, t_nm in cases:
        path = make_scan(work / f"multilayer_{shape[0]}x{shape[1]}_{t_nm:g}nm.zarr", shape, t_nm, strain)
        cube = add_dose_noise(analysis.load(path, lazy=False), args.dose, seed=0)
        print(f"\n=== {path.name}: {cube.shape}, {t_nm:g} nm, dose {args.dose:g} e⁻/pattern", flush=True)
        torch.manual_seed(0)  # the MC-dropout masks: the same numbers on every run
        reference = [0, max(1, shape[0] // 4), None, None]
        res = analyse(
            cube,
            ["classical", "ml"],
            classical=dict(CLASSICAL),
            ml={"model": model, "mc_samples": args.mc_samples, "threshold": 0.1},
            strain_reference=reference,
            orientation={"k_max": 1.5, "direction_step_deg": 2.0, "in_plane_step_deg": 2.0},
            progress=False,
        )
        if args.py4dstem_python:
            from stemforge.analysis.workflow import MethodResult, _rect, score_disks_and_strain

            params = py4dstem_params(CLASSICAL, subpixel=args.py4dstem_subpixel)
            bv, timings, info = run_py4dstem(args.py4dstem_python, cube, params)
            res["py4dstem"] = MethodResult("py4dstem", bv, timings=timings)
            score_disks_and_strain(res["py4dstem"], cube.ground_truth or {}, _rect(reference, cube.scan_shape))
            v4 = info["versions"]
            print(
                f"py4DSTEM {v4['py4DSTEM']} (numpy {v4['numpy']}, scipy {v4['scipy']}, python {v4['python']}): "
                f"kernel {params['kernel_mode']} radii {', '.join(f'{r:.2f}' for r in info['kernel_radii_px'])} px "
                f"(probe radius {info['probe_radius_px']:.2f} px), {json.dumps(params['find_Bragg_disks'])}; "
                f"disks {timings['disks_s']:.2f} s wall, {timings['disks_cpu_s']:.2f} s CPU",
                flush=True,
            )
        print(report(res, cube), flush=True)
        for m, r in res.items():
            d, s = r.scores.get("disks", {}), r.scores.get("strain", {})
            totals.setdefault(f"{m}_f1", []).append(d.get("f1", np.nan))
            totals.setdefault(f"{m}_pos_rmse_px", []).append(d.get("pos_rmse_px", np.nan))
            totals.setdefault(f"{m}_strain_rmse", []).append(s.get("rmse", np.nan))
            totals.setdefault(f"{m}_patterns_per_s", []).append(r.timings["patterns_per_s"])
            o = r.scores.get("orientation", {})
            totals.setdefault(f"{m}_orientation_err_deg", []).append(o.get("mean_deg", np.nan))
    v = {k: float(np.nanmean(x)) if np.isfinite(x).any() else float("nan") for k, x in totals.items()}
    extra = ""
    if py4d_version is None:
        print("\npy4DSTEM comparison: not run (py4DSTEM 0.14 needs numpy<2 in a separate environment; none is set up)")
    else:
        print(
            f"\npy4DSTEM comparison (py4DSTEM {py4d_version.split()[0]}, same noisy scan, same scoring): "
            f"F1 {v['py4dstem_f1']:.4f}, position RMSE {v['py4dstem_pos_rmse_px']:.4f} px, "
            f"strain RMSE {v['py4dstem_strain_rmse']:.6f}, {v['py4dstem_patterns_per_s']:.2f} patterns/s"
        )
        extra = (
            f" py4dstem_f1={v['py4dstem_f1']:.4f} py4dstem_pos_rmse_px={v['py4dstem_pos_rmse_px']:.4f} "
            f"py4dstem_strain_rmse={v['py4dstem_strain_rmse']:.6f} "
            f"py4dstem_patterns_per_s={v['py4dstem_patterns_per_s']:.2f}"
        )
    print(f"ml orientation error (ACOM on ML peaks): {v.get('ml_orientation_err_deg', float('nan')):.2f} deg")
    print(
        f"RESULT ml_f1={v['ml_f1']:.4f} classical_f1={v['classical_f1']:.4f} "
        f"ml_pos_rmse_px={v['ml_pos_rmse_px']:.4f} classical_pos_rmse_px={v['classical_pos_rmse_px']:.4f} "
        f"ml_strain_rmse={v['ml_strain_rmse']:.6f} classical_strain_rmse={v['classical_strain_rmse']:.6f} "
        f"orientation_err_deg={v['classical_orientation_err_deg']:.3f} "
        f"ml_patterns_per_s={v['ml_patterns_per_s']:.2f} classical_patterns_per_s={v['classical_patterns_per_s']:.2f}"
        + extra
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
