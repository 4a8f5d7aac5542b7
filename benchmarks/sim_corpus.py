"""Time the training corpus recipe (``dataset=corpus``) on a representative slice and check its patterns against
plain multislice.

The slice is every ``G/n``-th specimen group of the corpus's own plan (the same random draws of structure, zone
axis, energy, mistilt, α, optics and position as the real run; ``n`` = 16 with ``--quick``, 40 otherwise), written
into a store laid out for the whole corpus exactly as ``stemforge-simulate dataset=corpus`` does (two local worker
processes, one FFTW thread each, the engine chosen per group, labels, zarr; chunks outside the slice stay
unwritten). The groups' costs are heavy-tailed (a few low-symmetry axes fall back to multislice and take ~10x the
median group), so the corpus's *first* groups are not a fair slice: with them (one such group among 8) this
benchmark projected 205 min where the real run took 38 min. Reported:

* patterns per second (wall), with the workers' start-up time measured apart; the projected minutes for 50,000
  patterns (start-up + 50,000 / rate);
* peak memory (the resident set of this process and its workers together, sampled every 0.5 s) and the compressed
  bytes per pattern on disk (projected to the full corpus);
* a sample of runs recomputed by plain multislice (:func:`stemforge.sim.multislice.simulate_cbed`, one pass per
  run, same specimen, optics and grid) and binned onto the same detector: the largest deviation relative to the
  pattern's maximum.

Usage: ``python benchmarks/sim_corpus.py [--quick] [--groups N] [--check-runs N] [--workdir DIR]``; the last line
is ``RESULT patterns_per_s=<f> projected_minutes_50k=<f> max_rel_dev=<f>``. ``--quick`` (16 groups, 4,096
patterns, 3 runs checked) takes about 5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _rss_sampler(stop: threading.Event, peak: list) -> None:
    """Largest resident set (bytes) of this process plus its children, sampled every 0.5 s."""
    import psutil

    me = psutil.Process()
    while not stop.is_set():
        total = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        peak[0] = max(peak[0], total)
        stop.wait(0.5)


def check_against_multislice(cfg, path: Path, runs: list[int]) -> float:
    """Largest |corpus − multislice| / max(multislice) over every thickness of ``runs`` of the dataset at ``path``."""
    import zarr

    from stemforge.sim.chunks import build_catalog, group_specimen, plan_run, probe_position_A
    from stemforge.sim.config import build_detector
    from stemforge.sim.detector import resample, resampling_matrix
    from stemforge.sim.frames import simulation_frame_optics
    from stemforge.sim.multislice import simulate_cbed
    from stemforge.sim.setup import Phonons
    from stemforge.sim.smatrix import commensurate_sampling

    g = zarr.open_group(str(path), mode="r")
    det = build_detector(cfg.detector)
    catalog = build_catalog(cfg)
    k = int(cfg.sampling.optics_per_specimen)
    thick = list(cfg.sampling.thicknesses_nm)
    worst = 0.0
    for r in runs:
        specs = [plan_run(cfg, catalog, cfg.dataset.seed, i) for i in range((r // k) * k, (r // k + 1) * k)]
        spec = specs[r % k]
        entry = catalog[spec.structure_id]
        specimen = group_specimen(cfg, entry, specs, det, max(thick) * 10.0, smooth=True)
        sampling = commensurate_sampling(specimen, cfg.sampling.real_space_A)
        optics = simulation_frame_optics(spec.optics, spec.in_plane_deg)
        t0 = time.perf_counter()
        ref, native_sampling, _, _ = simulate_cbed(
            specimen,
            optics,
            probe_position_A(specimen, spec),
            [t * 10.0 for t in thick],
            sampling_A=sampling,
            slice_thickness_A=cfg.sampling.slice_thickness_A,
            phonons=Phonons(0),
            parametrization=cfg.sampling.parametrization,
        )
        ref = resample(ref, resampling_matrix(ref.shape[1:], native_sampling, det, spec.in_plane_deg), det)
        stored = np.asarray(g["patterns"][r * len(thick) : (r + 1) * len(thick)])
        dev = max(float(np.abs(a - b).max() / b.max()) for a, b in zip(stored, ref))
        worst = max(worst, dev)
        print(
            f"run {r}: {entry.name} {spec.zone} {spec.optics.energy / 1e3:.0f} kV α={spec.optics.semiangle_mrad:.2f} "
            f"mrad tilt={np.hypot(*spec.optics.tilt_mrad):.1f} mrad: max deviation {dev:.2e} of the pattern maximum "
            f"(multislice {time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 specimen groups (4,096 patterns), 3 runs checked")
    ap.add_argument(
        "--groups",
        type=int,
        default=None,
        help="specimen groups in the slice, spread evenly over the corpus (default 16 quick, 40 full)",
    )
    ap.add_argument("--check-runs", type=int, default=None, help="runs recomputed by multislice (default 3 / 6)")
    ap.add_argument("--workdir", default=None, help="where the slice is written (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the slice's dataset")
    args = ap.parse_args(argv)
    groups = args.groups or (16 if args.quick else 40)
    n_check = args.check_runs or (3 if args.quick else 6)

    from tqdm.auto import tqdm

    from stemforge.sim.chunks import build_catalog
    from stemforge.sim.cluster import run_chunks, start_local
    from stemforge.sim.config import build_detector, compose_simulate, validate
    from stemforge.sim.dataset import DatasetWriter
    from stemforge.sim.generate import array_specs, identity_config
    from stemforge.sim.setup import configure_abtem

    work = Path(args.workdir or tempfile.mkdtemp(prefix="stemforge-corpus-"))
    work.mkdir(parents=True, exist_ok=True)
    path = work / "corpus_slice.zarr"
    shutil.rmtree(path, ignore_errors=True)
    cfg = compose_simulate("dataset=corpus", f"dataset.path={path}", "dataset.progress=false")
    validate(cfg)
    k = int(cfg.sampling.optics_per_specimen)
    T = len(cfg.sampling.thicknesses_nm)
    runs_per_chunk = int(cfg.dataset.chunk_runs)
    per_chunk = runs_per_chunk * T
    total_chunks = int(cfg.dataset.num_patterns) // per_chunk
    chunks = sorted({int(i * total_chunks / groups) for i in range(groups)})
    n = len(chunks) * per_chunk
    catalog = build_catalog(cfg)
    detector = build_detector(cfg.detector)
    writer = DatasetWriter(
        path,
        int(cfg.dataset.num_patterns),
        per_chunk,
        array_specs(cfg, detector),
        {"config": identity_config(cfg), "slice_chunks": chunks},
    )
    configure_abtem(fftw_threads=cfg.sampling.fftw_threads)
    peak = [0]
    stop = threading.Event()
    sampler = threading.Thread(target=_rss_sampler, args=(stop, peak), daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    client = start_local(cfg.cluster)
    startup = time.perf_counter() - t0
    try:
        t1 = time.perf_counter()
        bar = tqdm(total=len(chunks) * runs_per_chunk, desc="slice runs", unit="run", disable=True)
        run_chunks(client, cfg, catalog, writer, chunks, bar)
        steady = time.perf_counter() - t1
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()
        stop.set()
        sampler.join()
    wall = startup + steady
    rate = n / steady
    projected = (startup + 50_000 / rate) / 60.0
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    print(
        f"slice: {len(chunks)} of the corpus's {total_chunks} chunks (every {total_chunks / groups:g}th; "
        f"{runs_per_chunk // k} specimen group(s) x {k} optics x {T} thicknesses each) = {n} "
        f"patterns in {wall:.1f} s wall ({startup:.1f} s starting {cfg.cluster.local_workers} workers, "
        f"{steady:.1f} s simulating and writing): {rate:.2f} patterns/s",
        flush=True,
    )
    print(
        f"memory: peak {peak[0] / 2**30:.2f} GiB (this process and its workers); disk: {size / 2**20:.1f} MiB, "
        f"{size / n / 1024:.1f} KiB per pattern -> {size / n * cfg.dataset.num_patterns / 2**30:.1f} GiB for the "
        f"corpus's {cfg.dataset.num_patterns} patterns",
        flush=True,
    )
    rng = np.random.default_rng(0)
    slice_runs = np.concatenate([np.arange(c * runs_per_chunk, (c + 1) * runs_per_chunk) for c in chunks])
    runs = sorted(rng.choice(slice_runs, size=n_check, replace=False).tolist())
    dev = check_against_multislice(cfg, path, runs)
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    print(f"projected: {projected:.1f} min for 50,000 patterns ({projected * 51_200 / 50_000:.1f} min for the corpus)")
    print(f"RESULT patterns_per_s={rate:.2f} projected_minutes_50k={projected:.1f} max_rel_dev={dev:.3e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
