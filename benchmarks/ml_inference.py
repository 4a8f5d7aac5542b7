"""Speed of ML disk finding on CPU, end to end, in each form the network can run, beside the classical finder.

Times :func:`stemforge.analysis.find_bragg_disks` (``method="ml"``: resampling check, normalisation, network, peak
decoding, BraggVectors) on a held-out noisy scan tiled to ``--patterns`` patterns, for the forms of the network that
matter on a CPU, each run twice (interleaved, best kept) after one untimed warm-up:

* ``fp32`` -- the network as trained (BatchNorm separate), float32;
* ``fp32-fused`` -- BatchNorm folded into the convolutions (``net.fused()``), float32;
* ``bf16-fused`` -- the same under bfloat16 autocast (what ``precision="auto"`` picks on a CPU with native bf16);
* ``bf16-fused-cl`` -- and channels-last memory format;
* ``bf16-fused-compiled`` -- channels-last and ``torch.compile`` (with ``--compile``; compile time reported, not
  timed);

at ``--batch-sizes``. The default path (``find_bragg_disks(cube, method="ml")`` with no other argument) is timed too,
and the classical finder with the accuracy benchmark's settings, side by side. Last line::

    RESULT ml_patterns_per_s=... classical_patterns_per_s=... ratio=... best_form=...

Usage: ``python benchmarks/ml_inference.py [--model REF] [--store URL] [--patterns N] [--batch-sizes 16 32 64]
[--compile]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _forms(model, compile_too: bool) -> dict:
    import torch

    from stemforge.analysis.inference import _NetView  # a registry model seen through another network

    class Plain(torch.nn.Module):  # hides .fused so find_bragg_disks_ml runs the net as given
        def __init__(self, net):
            super().__init__()
            self.inner = net
            self.output_kind, self.stride = getattr(net, "output_kind", "map"), getattr(net, "stride", 1)

        def forward(self, pattern, probe):
            return self.inner(pattern, probe)

    net = model.net.eval()
    forms = {"fp32": (Plain(net), "fp32")}
    if hasattr(net, "fused"):
        fused = net.fused()
        forms["fp32-fused"] = (Plain(fused), "fp32")
        forms["bf16-fused"] = (Plain(fused), "bf16")
        forms["bf16-fused-cl"] = (Plain(net.fused(channels_last=True)), "bf16")
        if compile_too:
            forms["bf16-fused-compiled"] = (Plain(torch.compile(net.fused(channels_last=True))), "bf16")
    else:
        forms["bf16"] = (Plain(net), "bf16")
    return {k: (_NetView(model, n), p) for k, (n, p) in forms.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="registry reference (default: the analysis default model)")
    ap.add_argument("--store", default=None)
    ap.add_argument("--patterns", type=int, default=480, help="patterns per timed call (the scan tiled)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compiling)")
    ap.add_argument("--scan", default=str(ROOT / "data" / "bench" / "heldout_Al2O3_0001_4x6.zarr"))
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from analysis_accuracy import CLASSICAL

    from stemforge import analysis
    from stemforge.analysis.datacube import AnalysisError, DataCube
    from stemforge.analysis.inference import DEFAULT_BRAGG_MODEL, load_model
    from stemforge.analysis.workflow import add_dose_noise

    try:
        model = load_model(args.model or DEFAULT_BRAGG_MODEL, store=args.store)
    except AnalysisError as err:
        sys.exit(f"error: {err}")
    if not Path(args.scan).exists():
        sys.exit(f"error: no scan at {args.scan} (run benchmarks/analysis_accuracy.py --quick once to make it)")
    cube = add_dose_noise(analysis.load(args.scan, lazy=False), 1e4, seed=0)
    n0 = int(np.prod(cube.scan_shape))
    reps = max(1, -(-args.patterns // n0))
    data = np.tile(np.asarray(cube.data), (reps, 1, 1, 1))
    big = DataCube(data, cube.calibration, probe=cube.probe, metadata=dict(cube.metadata))
    n = int(np.prod(big.scan_shape))
    print(
        f"model {model.name}:{model.version} ({type(model.net).__name__}), {n} patterns of {big.detector_shape} px, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )

    def timed(**kw) -> float:
        t = time.perf_counter()
        analysis.find_bragg_disks(big, progress=False, **kw)
        return n / (time.perf_counter() - t)

    forms = _forms(model, args.compile)
    runs = {}
    for name, (variant, precision) in forms.items():
        for bs in args.batch_sizes:
            t = time.perf_counter()
            analysis.find_bragg_disks(
                big, method="ml", model=variant, precision=precision, batch_size=bs, progress=False
            )
            if name.endswith("compiled"):
                print(f"{name} bs {bs}: first call (compiling) {time.perf_counter() - t:.0f} s", flush=True)
            runs[(name, bs)] = (variant, precision)
    best: dict = {}
    default_speed = classical_speed = 0.0
    for _ in range(2):  # interleaved repeats, best of two
        for (name, bs), (variant, precision) in runs.items():
            v = timed(method="ml", model=variant, precision=precision, batch_size=bs)
            best[(name, bs)] = max(best.get((name, bs), 0.0), v)
        timed(method="ml", model=model)  # the default path's own warm-up (its fused copy is made once)
        default_speed = max(default_speed, timed(method="ml", model=model))
        classical_speed = max(classical_speed, timed(**CLASSICAL))
    print(f"\n{'form':22s} " + " ".join(f"bs {bs:>3d}" for bs in args.batch_sizes) + "   (patterns/s, best of 2)")
    for name in forms:
        print(f"{name:22s} " + " ".join(f"{best[(name, bs)]:6.0f}" for bs in args.batch_sizes))
    top = max(best, key=best.get)
    print(f"default path find_bragg_disks(cube, method='ml'): {default_speed:.0f} patterns/s")
    print(f"classical (accuracy benchmark settings): {classical_speed:.0f} patterns/s")
    print(
        f"RESULT ml_patterns_per_s={default_speed:.1f} classical_patterns_per_s={classical_speed:.1f} "
        f"ratio={default_speed / classical_speed:.3f} best_form={top[0]}@bs{top[1]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
