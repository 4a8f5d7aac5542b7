#!/usr/bin/env python3
"""Throughput of the augmentation pipeline: patterns per second per CPU core.

Builds the preset ``stemforge/conf/augment/<preset>.yaml`` through Hydra (exactly what a
training run instantiates), feeds it 256 x 256 samples (stand-ins from
:func:`stemforge.augment.synthetic_sample`, or the first patterns of a ``--dataset`` zarr
group) through :func:`stemforge.augment.augment_sample` on one thread (OpenCV, BLAS and
OpenMP pools limited to 1), and reports

* patterns per second per core from process CPU time (robust on a shared machine)
  and from wall time, median over repeats;
* the time share of each transform and of albumentations' own bookkeeping;
* with ``--sampler-table``, the Poisson samplers' time per pattern at several doses;
* with ``--compare REV``, the same measurement of this checkout and of git revision
  ``REV`` side by side: two worker processes (one per package, exported with
  ``git archive``) take turns on batches of patterns, so a host whose speed drifts
  (this VM's does, by up to 40 %) slows both alike; it prints both rates and
  their ratio per round and the median ratio.

The process is set up with :func:`stemforge.augment.configure_worker` exactly as a training
DataLoader worker should be (one thread for OpenCV and BLAS/OpenMP; glibc malloc
thresholds raised, see ``stemforge/augment/runtime.py``); ``--default-malloc`` measures
without the malloc tuning.  ShotNoise's sampler uses its numba backend when numba
imports (compiled or loaded from its cache during the warm-up).

The last line is ``RESULT patterns_per_s_per_core=<float>`` (CPU-time based).

Usage::

    python benchmarks/augment_throughput.py --quick
    python benchmarks/augment_throughput.py --preset crystal4d --repeats 5 --patterns 3000
    python benchmarks/augment_throughput.py --compare HEAD~1
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if "--worker" in sys.argv:  # a --compare worker imports the augment package of the tree it is given (the only
    _TREE = Path(sys.argv[sys.argv.index("--worker") + 1])  # sys.path edit: it times another revision's code)
    sys.path.insert(0, str(_TREE))
    if (_TREE / "stemforge").is_dir():
        from stemforge import augment
    else:  # a revision from before the stemforge.* namespace (top-level augment/ and conf/)
        import augment
else:
    from stemforge import augment


def conf_dir(tree: str | Path) -> Path:
    """The Hydra config folder of a source tree (``stemforge/conf``, or ``conf`` before the namespace)."""
    tree = Path(tree)
    return tree / "stemforge" / "conf" if (tree / "stemforge").is_dir() else tree / "conf"


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_samples(dataset: str | None, n: int, size: int) -> list[dict]:
    """``n`` samples from a zarr group following the data contract, or synthetic stand-ins."""
    if dataset is None:
        return [augment.synthetic_sample(i, shape=(size, size)) for i in range(n)]
    import zarr

    count = zarr.open_group(dataset, mode="r")["patterns"].shape[0]
    return augment.read_samples(dataset, range(min(n, count)))


def run_once(pipeline, samples: list[dict], n_patterns: int) -> tuple[float, float]:
    """Augment ``n_patterns`` patterns (cycling over samples); return (cpu_s, wall_s)."""
    c0, w0 = time.process_time(), time.perf_counter()
    for i in range(n_patterns):
        s = samples[i % len(samples)]
        augment.augment_sample(
            pipeline,
            s["pattern"],
            s["probe"],
            s["labels"],
            s.get("reflections_px"),
            s.get("num_reflections"),
            pixel_size_inv_A=s["calibration"]["pixel_size_inv_A"],
        )
    return time.process_time() - c0, time.perf_counter() - w0


def per_transform_shares(pipeline, samples: list[dict], n_patterns: int) -> tuple[dict[str, float], float]:
    """CPU seconds per transform, replaying Compose's loop; returns (per-transform, total incl. bookkeeping)."""
    names = [f"{i}:{type(t).__name__}" for i, t in enumerate(pipeline.transforms)]
    acc = dict.fromkeys(names, 0.0)
    total = 0.0
    for i in range(n_patterns):
        s = samples[i % len(samples)]
        data = {"image": s["pattern"], "probe": s["probe"], **s["labels"]}
        if s.get("reflections_px") is not None:
            data["keypoints"] = s["reflections_px"][: s["num_reflections"]]
        data["pixel_size_inv_A"] = s["calibration"]["pixel_size_inv_A"]
        t_start = time.process_time()
        pipeline.preprocess(data)
        for name, t in zip(names, pipeline.transforms, strict=False):
            t0 = time.process_time()
            data = t(**data)
            data = pipeline.check_data_post_transform(data)
            acc[name] += time.process_time() - t0
        pipeline.postprocess(data)
        total += time.process_time() - t_start
    return acc, total


def sampler_table(size: int, repeats: int = 7, calls: int = 20) -> None:
    """Print ms per pattern of the Poisson samplers at several doses (best of ``repeats`` x ``calls`` calls)."""
    from stemforge.augment.poisson import _kernels

    pattern = augment.synthetic_sample(0, shape=(size, size))["pattern"]
    rng = np.random.Generator(np.random.SFC64(0))
    cases = [(f"{d:.0e} e-/pattern", pattern * np.float32(d)) for d in (1e3, 1e4, 1e5, 1e6, 1e7)]
    cases.append(("25 counts in every pixel", np.full((size, size), 25.0, np.float32)))
    samplers = {"numpy": lambda lam: augment.poisson_counts(lam, rng, backend="numpy")}
    if _kernels() is not None:
        samplers["numba"] = lambda lam: augment.poisson_counts(lam, rng, backend="numba")
    samplers["Generator.poisson"] = lambda lam: rng.poisson(lam)
    print(f"Poisson samplers on one {size}x{size} synthetic pattern (ms per pattern, best of {repeats} x {calls}):")
    print(
        f"  {'mean counts':<26s} {'1-10 counts':>11s} {'>=10 counts':>11s} " + " ".join(f"{k:>17s}" for k in samplers)
    )
    for name, lam in cases:
        for f in samplers.values():
            f(lam)  # warm-up (tables, numba compilation or cache)
        best = {}
        for k, f in samplers.items():
            times = []
            for _ in range(repeats):
                t0 = time.process_time()
                for _ in range(calls):
                    f(lam)
                times.append((time.process_time() - t0) / calls * 1e3)
            best[k] = min(times)
        mid, high = np.mean((lam >= 1) & (lam < 10)), np.mean(lam >= 10)
        print(f"  {name:<26s} {100 * mid:10.0f}% {100 * high:10.0f}% " + " ".join(f"{v:17.3f}" for v in best.values()))


def worker(root: str, preset: str, dataset: str | None, n_samples: int, size: int, seed: int) -> int:
    """``--compare`` worker: set up like a training worker, then augment ``N`` patterns per line read from stdin.

    Prints ``ready`` once warmed up, then for each line ``N`` one JSON line: ``rate`` (patterns/s, process
    CPU time, through :func:`stemforge.augment.augment_sample`) and ``stages`` (ms per pattern of each transform and of
    Compose's bookkeeping, from a second run of ``N`` patterns replaying Compose's loop).
    """
    augment.configure_worker(threads=1)
    pipeline = augment.load_preset(preset, conf_dir=str(conf_dir(root)), seed=seed)
    samples = load_samples(dataset, n_samples, size)
    run_once(pipeline, samples, 50)  # warm-up (numba compilation or cache, tables)
    print("ready", flush=True)
    for line in sys.stdin:
        n = int(line)
        cpu_s, _ = run_once(pipeline, samples, n)
        acc, total = per_transform_shares(pipeline, samples, n)
        stages = {k.split(":", 1)[1]: 1e3 * v / n for k, v in acc.items()}
        stages["compose pre/post"] = 1e3 * (total - sum(acc.values())) / n
        print(json.dumps({"rate": n / cpu_s, "stages": stages}), flush=True)
    return 0


def compare(rev: str, args: argparse.Namespace) -> int:
    """Time this checkout and revision ``rev`` side by side (alternating batches); print rates and ratios."""
    label = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True, text=True, check=False
    )
    if label.returncode != 0:
        print(f"error: --compare {rev!r} is not a git revision of {ROOT}: {label.stderr.strip()}", file=sys.stderr)
        return 2
    n_pat = args.patterns or 100  # short batches: the host's speed drifts within seconds
    rounds = args.rounds
    with tempfile.TemporaryDirectory(prefix="augment_base_") as base:
        namespaced = (
            subprocess.run(
                ["git", "-C", str(ROOT), "cat-file", "-e", f"{rev}:stemforge"], capture_output=True
            ).returncode
            == 0
        )
        paths = ["stemforge"] if namespaced else ["augment", "conf"]
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, *paths], capture_output=True)
        if archive.returncode != 0:
            print(f"error: git archive {rev} failed: {archive.stderr.decode().strip()}", file=sys.stderr)
            return 2
        subprocess.run(["tar", "-x", "-C", base], input=archive.stdout, check=True)
        short = label.stdout.strip()
        roots = {rev if rev == short else f"{rev} ({short})": base, "this checkout": str(ROOT)}
        extra = ["--dataset", args.dataset] if args.dataset else []
        procs = {}
        for name, root in roots.items():
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", root, "--preset", args.preset]
            cmd += ["--samples", str(args.samples), "--size", str(args.size), "--seed", str(args.seed), *extra]
            procs[name] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            for name, p in procs.items():
                if p.stdout.readline().strip() != "ready":
                    print(f"error: the worker for {name} did not start", file=sys.stderr)
                    return 2
            names = list(procs)
            rates: dict[str, list[float]] = {k: [] for k in names}
            print(f"machine: nproc={os.cpu_count()} cpu='{cpu_model()}' load_avg={os.getloadavg()}")
            print(f"preset={args.preset} patterns/batch={n_pat} rounds={rounds} (the order alternates per round)")
            stages: dict[str, list[dict[str, float]]] = {k: [] for k in names}
            for r in range(rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    procs[name].stdin.write(f"{n_pat}\n")
                    procs[name].stdin.flush()
                    reply = json.loads(procs[name].stdout.readline())
                    rates[name].append(reply["rate"])
                    stages[name].append(reply["stages"])
                a, b = rates[names[0]][-1], rates[names[1]][-1]
                print(f"round {r}: {names[0]} {a:7.1f}  {names[1]} {b:7.1f}  ratio {b / a:.3f}")
        finally:
            for p in procs.values():
                if p.stdin:
                    p.stdin.close()
                p.wait(timeout=60)
    ratios = [b / a for a, b in zip(rates[names[0]], rates[names[1]], strict=True)]
    print("time per pattern by stage (CPU time, median over rounds, ms):")
    print(f"  {'stage':<24s} {names[0]:>16s} {names[1]:>16s} {'speed-up':>9s}")
    for stage in stages[names[1]][0]:
        old_ms = [st[stage] for st in stages[names[0]] if stage in st]
        new_ms = statistics.median(st[stage] for st in stages[names[1]])
        if old_ms:
            old_med = statistics.median(old_ms)
            print(f"  {stage:<24s} {old_med:16.3f} {new_ms:16.3f} {old_med / new_ms if new_ms else float('nan'):9.2f}")
        else:
            print(f"  {stage:<24s} {'-':>16s} {new_ms:16.3f}")
    for name in names:
        print(f"median {name}: {statistics.median(rates[name]):.1f} patterns/s/core (CPU time)")
    print(
        f"ratio this checkout / {rev}: median {statistics.median(ratios):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
    )
    print(
        f"RESULT patterns_per_s_per_core={statistics.median(rates[names[1]]):.1f} "
        f"ratio_vs_{label.stdout.strip()}={statistics.median(ratios):.3f}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the report; the last line is the RESULT line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run (< 1 min): 3 x 400 patterns")
    ap.add_argument("--preset", default="default", help="stemforge/conf/augment/<preset>.yaml (default: default)")
    ap.add_argument("--dataset", default=None, help="zarr group of the simulator (default: synthetic stand-ins)")
    ap.add_argument("--size", type=int, default=256, help="pattern side in px for synthetic samples (default 256)")
    ap.add_argument("--samples", type=int, default=16, help="distinct samples cycled through (default 16)")
    ap.add_argument("--patterns", type=int, default=None, help="patterns per repeat (default 400 quick, 2000 full)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats (default 3 quick, 5 full)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--sampler-table",
        action="store_true",
        help="also time stemforge.augment.poisson_counts (numba and numpy backends) and Generator.poisson per dose",
    )
    ap.add_argument(
        "--default-malloc",
        action="store_true",
        help="skip stemforge.augment.configure_worker's glibc malloc tuning (threads are still limited to 1)",
    )
    ap.add_argument(
        "--compare",
        metavar="REV",
        default=None,
        help="also time git revision REV, alternating batches with this checkout; print the ratio",
    )
    ap.add_argument("--rounds", type=int, default=30, help="--compare: batches per version (default 30 of 100)")
    ap.add_argument("--worker", metavar="ROOT", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.preset, args.dataset, args.samples, args.size, args.seed)
    if args.compare:
        return compare(args.compare, args)
    setup = augment.configure_worker(threads=1, tune_malloc=not args.default_malloc)
    n_pat = args.patterns or (400 if args.quick else 2000)
    repeats = args.repeats or (3 if args.quick else 5)

    pipeline = augment.load_preset(args.preset, seed=args.seed)
    samples = load_samples(args.dataset, args.samples, args.size)
    shape = samples[0]["pattern"].shape
    import albumentations
    import scipy

    from stemforge.augment.poisson import _kernels

    numba_version = _kernels().numba.__version__ if _kernels() is not None else "unavailable"

    print(f"machine: nproc={os.cpu_count()} cpu='{cpu_model()}' load_avg={os.getloadavg()}")
    print(
        f"versions: python={platform.python_version()} numpy={np.__version__} scipy={scipy.__version__} "
        f"opencv={cv2.__version__} albumentations={albumentations.__version__} numba={numba_version}"
    )
    print(
        f"preset={args.preset} shape={shape} samples={'synthetic' if args.dataset is None else args.dataset} "
        f"threads=1 malloc_tuned={setup['malloc_tuned']} patterns/repeat={n_pat} repeats={repeats}"
    )
    print("pipeline:", " -> ".join(type(t).__name__ for t in pipeline.transforms) or "(identity)")

    run_once(pipeline, samples, min(50, n_pat))  # warm-up (tables, caches)
    cpu_rates, wall_rates = [], []
    for r in range(repeats):
        cpu_s, wall_s = run_once(pipeline, samples, n_pat)
        cpu_rates.append(n_pat / cpu_s)
        wall_rates.append(n_pat / wall_s)
        print(f"repeat {r}: {n_pat / cpu_s:8.1f} patterns/s (CPU time)  {n_pat / wall_s:8.1f} patterns/s (wall)")

    acc, total = per_transform_shares(pipeline, samples, max(n_pat // 2, 100))
    n_share = max(n_pat // 2, 100)
    print("time per pattern by stage (CPU time, one call of each transform incl. parameter sampling):")
    for name, sec in acc.items():
        print(f"  {name:<24s} {sec / n_share * 1e3:7.3f} ms  {100 * sec / total:5.1f} %")
    other = total - sum(acc.values())
    print(f"  {'compose pre/post':<24s} {other / n_share * 1e3:7.3f} ms  {100 * other / total:5.1f} %")
    if args.sampler_table:
        sampler_table(args.size)
    cpu_med, wall_med = statistics.median(cpu_rates), statistics.median(wall_rates)
    print(f"median: {cpu_med:.1f} patterns/s/core (CPU time), {wall_med:.1f} patterns/s (wall); target >= 500")
    print(f"RESULT patterns_per_s_per_core={cpu_med:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
