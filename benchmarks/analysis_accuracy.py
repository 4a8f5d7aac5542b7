"""Accuracy and speed of Bragg disk finding, strain and orientation mapping: ML versus classical, side by side.

Held-out synthetic scans (``sim.synthetic_scan``: a Si [110] multilayer, thicker than anything in the default
training set — 50 nm quick, 50 and 80 nm full — with ground-truth strain, rotation and reflection positions) are
made noisy at a low dose and analysed by both methods through :func:`analysis.workflow.analyse`:

* disk F1 and position RMSE (px) against the kinematic reflections of the strained crystal
  (``ground_truth/reflections_visible``, matched within 2 px);
* strain RMSE (εxx, εyy, εxy together, dimensionless) against the ground-truth maps, reference = the first band;
* orientation error (degrees, mean misorientation with symmetry) of ACOM on the classical Bragg vectors;
* patterns per second of each disk finder on this machine.

The ML method uses ``--model`` (default ``bragg-fcunet:stable``) from ``--store`` (default ``$STEMFORGE_STORE`` or
the default store, seeded with the pretrained model shipped in ``registry/pretrained``). Without a loadable model
the script stops with one line before simulating anything. A side-by-side run of py4DSTEM's
``find_Bragg_disks`` is not implemented yet (py4DSTEM needs numpy<2, so it would run in a separate environment;
it is never a stemforge dependency).

Usage: ``python benchmarks/analysis_accuracy.py [--quick] [--dose E] [--model REF] [--store URL]``; the last line is
``RESULT ml_f1=… classical_f1=… ml_pos_rmse_px=… classical_pos_rmse_px=… ml_strain_rmse=… classical_strain_rmse=…
orientation_err_deg=… ml_patterns_per_s=… classical_patterns_per_s=…``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_scan(path: Path, shape, thickness_nm: float, strain_percent) -> Path:
    """Simulate the held-out scan once (scripts/simulate.py resumes / skips a complete identical scan)."""
    cmd = [sys.executable, str(ROOT / "scripts" / "simulate.py"), "scan=multilayer", f"scan.path={path}",
           f"scan.scan_shape=[{shape[0]},{shape[1]}]", f"scan.thickness_nm=[{thickness_nm}]",
           f"scan.band_strain_percent=[{','.join(str(v) for v in strain_percent)}]",
           f"hydra.run.dir={path.parent}/hydra"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: simulating the benchmark scan failed: {proc.stderr.strip().splitlines()[-1:]}")
    print(f"scan {path.name}: ready in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one 8x8 scan at 50 nm (< 10 min on 2 cores)")
    ap.add_argument("--dose", type=float, default=2e4, help="electrons per pattern (default 2e4: low dose)")
    ap.add_argument("--model", default="bragg-fcunet:stable")
    ap.add_argument("--store", default=None, help="registry store (default: $STEMFORGE_STORE or the default store)")
    ap.add_argument("--mc-samples", type=int, default=4)
    ap.add_argument("--workdir", default=str(ROOT / "data" / "bench"))
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    import analysis
    from analysis.workflow import add_dose_noise, analyse, report

    from analysis.datacube import AnalysisError
    from analysis.inference import load_model

    try:
        model = load_model(args.model, store=args.store)  # fail before minutes of simulation
    except AnalysisError as err:
        sys.exit(f"error: {err} (pass --model/--store of a published model, e.g. "
                 "--model bragg-fcunet-demo:stable --store data/demo/registry after `make run`)")
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
        res = analyse(cube, ["classical", "ml"], classical={"min_relative_intensity": 0.02, "min_spacing_px": 4},
                      ml={"model": model, "mc_samples": args.mc_samples, "threshold": 0.1},
                      strain_reference=[0, max(1, shape[0] // 4), None, None],
                      orientation={"k_max": 1.5, "direction_step_deg": 2.0, "in_plane_step_deg": 2.0},
                      progress=False)
        print(report(res, cube), flush=True)
        for m, r in res.items():
            d, s = r.scores.get("disks", {}), r.scores.get("strain", {})
            totals.setdefault(f"{m}_f1", []).append(d.get("f1", np.nan))
            totals.setdefault(f"{m}_pos_rmse_px", []).append(d.get("pos_rmse_px", np.nan))
            totals.setdefault(f"{m}_strain_rmse", []).append(s.get("rmse", np.nan))
            totals.setdefault(f"{m}_patterns_per_s", []).append(r.timings["patterns_per_s"])
            o = r.scores.get("orientation", {})
            totals.setdefault(f"{m}_orientation_err_deg", []).append(o.get("mean_deg", np.nan))
    print("\npy4DSTEM comparison: not run (py4DSTEM 0.14 needs numpy<2 in a separate environment; none is set up)")
    v = {k: float(np.nanmean(x)) if np.isfinite(x).any() else float("nan") for k, x in totals.items()}
    print(f"ml orientation error (ACOM on ML peaks): {v.get('ml_orientation_err_deg', float('nan')):.2f} deg")
    print(f"RESULT ml_f1={v['ml_f1']:.4f} classical_f1={v['classical_f1']:.4f} "
          f"ml_pos_rmse_px={v['ml_pos_rmse_px']:.4f} classical_pos_rmse_px={v['classical_pos_rmse_px']:.4f} "
          f"ml_strain_rmse={v['ml_strain_rmse']:.6f} classical_strain_rmse={v['classical_strain_rmse']:.6f} "
          f"orientation_err_deg={v['classical_orientation_err_deg']:.3f} "
          f"ml_patterns_per_s={v['ml_patterns_per_s']:.2f} classical_patterns_per_s={v['classical_patterns_per_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
