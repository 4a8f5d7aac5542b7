"""Engine choice and cluster engine of the dataset generator (issue 6): measured, not modelled.

1. **One specimen group, both engines.** Si[100], static lattice, no mistilt, ``optics_per_specimen`` optics
   settings (α 1.5–2.5 mrad, defocus ±100 Å, Cs, astigmatism) and probe positions at 300 keV, the default
   128² detector (0.03 Å⁻¹/px, k_oversample 2) and 6 thicknesses 5–30 nm. Prints what ``sampling.engine=auto``
   chooses (and why), then the CPU and wall time of the group with each engine (best of ``--repeats``, after one
   warm-up of each) and the largest relative deviation between them.
2. **Local vs LocalCluster.** A small dataset (Si, 64² detector, 2 thicknesses, default physics: mistilt and
   one frozen-phonon configuration, so every group is batched multislice) written by the local path and by a
   ``distributed.LocalCluster`` of ``--workers`` processes × 1 thread on loopback. Both are warmed first (one
   chunk each: imports, structure library, numba kernels, FFTW plans), then timed alternately (best of
   ``--repeats``; wall time, and CPU time of this process plus the workers'); the cluster's start-up is reported
   separately. The datasets are compared byte for byte.

Usage: ``python benchmarks/sim_engines.py [--quick] [--repeats N] [--workers N] [--fftw-threads N]``; last line
``RESULT engine=<auto choice> smatrix_cpu_s=... multislice_cpu_s=... local_s=... cluster_s=...``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from stemforge.sim.config import compose_simulate as compose


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64² detector and 2 thicknesses for the group (~2 min)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--fftw-threads", type=int, default=2, help="sampling.fftw_threads of the cluster comparison")
    ap.add_argument("--group-size", type=int, default=8)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    res = {}
    res.update(group_timing(args))
    res.update(cluster_timing(args))
    print("RESULT " + " ".join(f"{k}={v}" for k, v in res.items()))


def group_timing(args) -> dict:
    from stemforge.sim.chunks import build_catalog, group_specimen, plan_run, probe_position_A, simulate_group
    from stemforge.sim.config import build_detector
    from stemforge.sim.engine import GroupRun, choose_group_engine
    from stemforge.sim.frames import simulation_frame_optics
    from stemforge.sim.setup import configure_abtem, uses_frozen_phonons
    from stemforge.sim.smatrix import commensurate_sampling

    k = args.group_size
    det = ["detector.shape=[64,64]", "sampling.thicknesses_nm=[5.0,10.0]"] if args.quick else []
    cfg = compose(
        "structure=si",
        "orientation.zone_axes=[100]",
        "orientation.random_fraction=0",
        "orientation.mistilt_max_mrad=0",
        "sampling.frozen_phonons=0",
        "optics.energy=300e3",
        "optics.semiangle_mrad={min:1.5,max:2.5}",
        f"sampling.optics_per_specimen={k}",
        f"dataset.chunk_runs={k}",
        *det,
    )
    configure_abtem(fftw_threads=int(cfg.sampling.fftw_threads))
    catalog = build_catalog(cfg)
    detector = build_detector(cfg.detector)
    specs = [plan_run(cfg, catalog, 0, r) for r in range(k)]
    # what auto decides, with the numbers it decides on
    thick = np.asarray(cfg.sampling.thicknesses_nm) * 10
    specimen = group_specimen(cfg, catalog[0], specs, detector, float(thick.max()), smooth=True)
    sampling = commensurate_sampling(specimen, float(cfg.sampling.real_space_A))
    runs = [GroupRun(simulation_frame_optics(s.optics, s.in_plane_deg), probe_position_A(specimen, s)) for s in specs]
    static = not uses_frozen_phonons(0, catalog[0].sigmas)
    choice = choose_group_engine("auto", runs, specimen, sampling, len(thick), detector, 0, static)
    print(
        f"group: Si[100] {k} runs x {len(thick)} thicknesses, cell {specimen.extent_A[0]:.1f} x "
        f"{specimen.extent_A[1]:.1f} A (repetitions {specimen.info['repetitions'][:2]}), sampling {sampling:.4f} A, "
        f"detector {list(detector.shape)}"
    )
    print(f"auto: {choice.engine} ({choice.reason}; S-matrix ~{choice.bytes / 2**20:.0f} MiB)")
    out, cpu, wall = {}, {}, {}
    for engine in ["multislice", "smatrix"]:
        out[engine] = simulate_group(cfg, catalog, specs, detector, engine=engine)  # warm-up
    for _ in range(args.repeats):
        for engine in ["multislice", "smatrix"]:
            c0, w0 = time.process_time(), time.perf_counter()
            simulate_group(cfg, catalog, specs, detector, engine=engine)
            cpu[engine] = min(cpu.get(engine, np.inf), time.process_time() - c0)
            wall[engine] = min(wall.get(engine, np.inf), time.perf_counter() - w0)
    dev = max(
        float(np.abs(a["patterns"] - b["patterns"]).max() / b["patterns"].max())
        for a, b in zip(out["smatrix"], out["multislice"])
    )
    for engine in ["multislice", "smatrix"]:
        print(
            f"  {engine:10s}: {cpu[engine]:7.2f} CPU-s {wall[engine]:7.2f} s wall "
            f"({k * len(thick) / cpu[engine]:.2f} patterns/CPU-s)"
        )
    print(
        f"  S-matrix / multislice CPU time {cpu['smatrix'] / cpu['multislice']:.3f}; max relative deviation {dev:.2e}"
    )
    return {
        "engine": choice.engine,
        "smatrix_cpu_s": round(cpu["smatrix"], 3),
        "multislice_cpu_s": round(cpu["multislice"], 3),
        "group_max_rel_dev": f"{dev:.2e}",
    }


def cluster_timing(args) -> dict:
    import distributed
    import zarr

    from stemforge.sim.generate import generate_dataset

    base = [
        "structure=si",
        "sampling=fast",
        "detector.shape=[64,64]",
        "sampling.thicknesses_nm=[5.0,10.0]",
        "sampling.frozen_phonons=1",
        "orientation.mistilt_max_mrad=1.0",
        "dataset.chunk_runs=2",
        f"sampling.fftw_threads={args.fftw_threads}",
        "dataset.progress=false",
    ]
    n = 24 if args.quick else 48
    tmp = Path(tempfile.mkdtemp(prefix="sim_engines_"))
    try:

        def run(path, extra=(), num=n, client=None):
            """Wall seconds and CPU seconds (this process plus the workers') of one dataset."""
            shutil.rmtree(path, ignore_errors=True)
            workers = sum(client.run(time.process_time).values()) if client is not None else 0.0
            c0, w0 = time.process_time(), time.perf_counter()
            generate_dataset(compose(*base, f"dataset.num_patterns={num}", f"dataset.path={path}", *extra))
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            if client is not None:
                cpu += sum(client.run(time.process_time).values()) - workers
            return wall, cpu

        w0 = time.perf_counter()
        cluster = distributed.LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        )
        start = time.perf_counter() - w0
        client = distributed.Client(cluster, set_as_default=False)
        local, remote = (np.inf, np.inf), (np.inf, np.inf)
        try:
            addr = [f"cluster.address={cluster.scheduler_address}"]
            run(tmp / "warm_local.zarr", num=4)
            warm = run(tmp / "warm_cluster.zarr", addr, num=4 * args.workers, client=client)[0]
            for _ in range(args.repeats):  # interleaved, so both see the same background load
                local = min(local, run(tmp / "local.zarr"))
                remote = min(remote, run(tmp / "remote.zarr", addr, client=client))
        finally:
            client.close()
            cluster.close()
        a, b = zarr.open_group(str(tmp / "local.zarr"), mode="r"), zarr.open_group(str(tmp / "remote.zarr"), mode="r")
        same = all(
            np.asarray(a[k][:]).tobytes() == np.asarray(b[k][:]).tobytes()
            for k in ["patterns", "probes", "labels/thickness_A", "labels/vg_map", "labels/rotation"]
        )
        print(
            f"dataset: {n} patterns ({n // 2} runs, {n // 4} chunks), Si, 64^2 detector, mistilt + 1 frozen phonon, "
            f"fftw_threads={args.fftw_threads}"
        )
        print(f"  local (this process, warm): {local[0]:.1f} s wall, {local[1]:.1f} CPU-s")
        print(
            f"  LocalCluster {args.workers} workers x 1 thread: start {start:.1f} s, warm-up {warm:.1f} s, "
            f"dataset {remote[0]:.1f} s wall, {remote[1]:.1f} CPU-s (client + workers); "
            f"same bytes as local: {same}"
        )
        return {
            "local_s": round(local[0], 2),
            "cluster_s": round(remote[0], 2),
            "local_cpu_s": round(local[1], 2),
            "cluster_cpu_s": round(remote[1], 2),
            "cluster_start_s": round(start, 2),
            "cluster_same_bytes": same,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
