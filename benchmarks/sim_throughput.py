"""Throughput of the S-matrix thickness-series engine (stemforge.sim.smatrix) against one abTEM multislice per pattern.

Reference sweep: Si[110], 11 thicknesses 0–50 nm (whole beam periods), 10 defoci (−200…200 Å), 16 probe
positions (4×4 in one repeat cell), α = 2 mrad, 300 keV, 256² detector (stemforge.sim.detector, 0.02 Å⁻¹/px). Both
engines use the same grid (periodic cell ≥ 1/pixel = 50 Å, sampling ≤ 0.092 Å for the detector's corners,
commensurate with the cell repetitions), the same slices (half a beam period, atoms shifted a quarter slice off
the slice boundaries) and static atoms.

* **S-matrix**: :func:`stemforge.sim.smatrix.build_smatrix` (one propagation of every plane wave within α, every exit
  plane kept) then :meth:`~stemforge.sim.smatrix.ThicknessSMatrix.patterns` for all 1760 patterns, binned onto the
  detector.
* **Baseline**: abTEM at its default engine settings (lazy dask graph, FFTW_MEASURE planning, 1 FFTW thread,
  float32), one ``Probe.multislice`` per pattern through a specimen of that pattern's thickness, binned onto the
  same detector. Its rate is measured on a subset (one pattern per thickness in ``--quick``, ``--baseline N``
  otherwise), each with a defocus and position of the sweep; the deviation is measured on those patterns.

Rates are labelled patterns per CPU-second (``time.process_time``, all threads of this process). The FFT share
is the S-matrix engine's wall time in FFTs over its total wall time.

Usage: ``python benchmarks/sim_throughput.py [--quick] [--baseline N]``; last line
``RESULT ratio=<float> max_rel_dev=<float> fft_share=<float>``.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="baseline on one pattern per thickness (< 5 min)")
    ap.add_argument("--baseline", type=int, default=33, help="baseline patterns without --quick")
    args = ap.parse_args()

    import abtem
    from pymatgen.core import Lattice, Structure

    from stemforge.sim.detector import Detector, resample, resampling_matrix
    from stemforge.sim.optics import Optics
    from stemforge.sim.setup import configure_abtem, slicing
    from stemforge.sim.smatrix import beam_count, build_smatrix, choose_engine, commensurate_sampling
    from stemforge.sim.specimen import zone_axis_specimen

    energy, alpha = 300e3, 2.0
    det = Detector(shape=(256, 256), pixel_size_inv_A=0.02, supersample=4)
    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.431), ["Si"], [[0, 0, 0]])
    extent = det.min_extent_A(1.0)
    spec = zone_axis_specimen(si, (1, 1, 0), 500.0, extent)
    period = spec.period_A
    thick = np.array([round(t / period) * period for t in np.linspace(0.0, 500.0, 11)])
    defoci = np.linspace(-200.0, 200.0, 10)
    ux, uy = spec.repeat_cell.cell[0, 0], spec.repeat_cell.cell[1, 1]
    nx, ny = spec.info["repetitions"][:2]
    f = (np.arange(4) + 0.5) / 4
    positions = np.array([((nx // 2 + a) * ux, (ny // 2 + b) * uy) for a in f for b in f])
    sampling = commensurate_sampling(spec, 2 / 3 / (2 * det.max_frequency))
    det.check_sampling(sampling)
    dz, _ = slicing(spec, 2.0)

    def off_boundaries(atoms):
        # Si[110] has atom layers exactly on the slice boundaries (z = 0 and half a period), where abTEM's
        # slice assignment is decided by float rounding that differs between specimens of different
        # thicknesses; a quarter-slice shift along the beam makes every specimen slice the same way
        atoms = atoms.copy()
        atoms.positions[:, 2] += 0.25 * dz
        atoms.wrap()
        return atoms

    spec.atoms, spec.repeat_cell = off_boundaries(spec.atoms), off_boundaries(spec.repeat_cell)
    n_patterns = len(thick) * len(defoci) * len(positions)
    beams = beam_count(alpha, spec.extent_A, energy)
    print(
        f"sweep: Si[110] {len(thick)} thicknesses {thick[0] / 10:.1f}-{thick[-1] / 10:.1f} nm x {len(defoci)} "
        f"defoci x {len(positions)} positions = {n_patterns} patterns; cell {spec.extent_A[0]:.2f}x"
        f"{spec.extent_A[1]:.2f} A, sampling {sampling:.4f} A, slice {dz:.3f} A, ~{beams} beams"
    )
    print(f"choose_engine({beams}, {n_patterns}, {len(thick)}) = {choose_engine(beams, n_patterns, len(thick))}")

    # ---------------- S-matrix engine ----------------
    configure_abtem(fftw_threads=2)
    dk = 1.0 / min(spec.extent_A)
    h = math.ceil((max(det.shape) // 2 + 1) * det.pixel_size_inv_A / dk) + 1
    c0, w0 = time.process_time(), time.perf_counter()
    timer = []
    S = build_smatrix(
        spec, energy, alpha, thick, sampling_A=sampling, slice_thickness_A=2.0, crop_half_px=h, fft_timer=timer
    )
    build_w = time.perf_counter() - w0
    matrix = resampling_matrix(S.crop_shape, S.sampling, det)
    sm = np.empty((len(thick), len(defoci), len(positions), *det.shape), dtype=np.float32)
    for j, df in enumerate(defoci):
        sm[:, j] = resample(S.patterns(Optics(energy, alpha, defocus_A=float(df)), positions), matrix, det)
    sm_cpu, sm_wall = time.process_time() - c0, time.perf_counter() - w0
    fft_share = timer[0] / sm_wall
    sm_rate = n_patterns / sm_cpu
    print(
        f"S-matrix: {S.num_beams} beams, grid {S.grid['gpts']} (repeat cell {S.grid['bloch_repetitions']}), "
        f"build {build_w:.1f} s wall (FFT {timer[0]:.1f} s), all {n_patterns} patterns {sm_wall:.1f} s wall "
        f"{sm_cpu:.1f} CPU-s -> {sm_rate:.2f} patterns/CPU-s"
    )

    # ---------------- baseline: one abTEM multislice per pattern, default engine settings ----------------
    abtem.config.set({"fftw.threads": 1, "fftw.planning_effort": "FFTW_MEASURE", "diagnostics.progress_bar": False})
    rng = np.random.default_rng(0)
    if args.quick:
        subset = [(i, int(rng.integers(len(defoci))), int(rng.integers(len(positions)))) for i in range(len(thick))]
    else:
        subset = [
            (i % len(thick), int(rng.integers(len(defoci))), int(rng.integers(len(positions))))
            for i in range(args.baseline)
        ]
    gpts = tuple(S.gpts)
    base_matrix = None

    def baseline_pattern(i, j, k):
        t = thick[i]
        probe = abtem.Probe(energy=energy, semiangle_cutoff=alpha, defocus=float(defoci[j]))
        if t == 0:
            probe.grid.match(abtem.Potential(spec.repeat_cell, gpts=gpts, slice_thickness=dz))
            probe.grid.extent, probe.grid.gpts = spec.extent_A, gpts
            waves = probe.build(scan=positions[k][None])
        else:
            atoms = off_boundaries(zone_axis_specimen(si, (1, 1, 0), t - 0.01, extent).atoms)  # t: whole periods
            assert abs(atoms.cell[2, 2] - t) < 1e-6
            n = round(t / dz)  # explicit slices: abTEM's ceil(t / dz) can give n + 1 from float rounding
            pot = abtem.Potential(
                atoms, gpts=gpts, slice_thickness=(t / n,) * n, projection="infinite", parametrization="lobato"
            )
            probe.grid.match(pot)
            waves = probe.multislice(pot, scan=positions[k][None])
        dp = waves.diffraction_patterns(max_angle=None).compute()
        return np.swapaxes(np.asarray(dp.array, dtype=np.float64).reshape(gpts), -1, -2), dp.sampling

    _warm = baseline_pattern(1, 0, 0)  # FFTW planning of the grid (MEASURE) is not counted
    devs = []
    c0, w0 = time.process_time(), time.perf_counter()
    for i, j, k in subset:
        p, s = baseline_pattern(i, j, k)
        if base_matrix is None:
            base_matrix = resampling_matrix(p.shape, (float(s[1]), float(s[0])), det)
        img = resample(p, base_matrix, det)
        devs.append(float(np.abs(sm[i, j, k] - img).max() / img.max()))
        print(
            f"  t={thick[i] / 10:.1f} nm df={defoci[j]:.0f} A pos={k}: rel dev {devs[-1]:.2e}, detector sums "
            f"{sm[i, j, k].sum():.5f} (S-matrix) {img.sum():.5f} (multislice)",
            flush=True,
        )
    base_cpu, base_wall = time.process_time() - c0, time.perf_counter() - w0
    base_rate = len(subset) / base_cpu
    ts = [thick[i] / 10 for i, _, _ in subset]
    print(
        f"baseline: {len(subset)} patterns (thicknesses {min(ts):.1f}-{max(ts):.1f} nm) "
        f"{base_wall:.1f} s wall {base_cpu:.1f} CPU-s "
        f"-> {base_rate:.3f} patterns/CPU-s"
    )
    ratio = sm_rate / base_rate
    max_dev = max(devs)
    print(
        f"S-matrix {sm_rate:.2f} patterns/CPU-s vs baseline {base_rate:.3f} patterns/CPU-s: ratio {ratio:.1f}x; "
        f"max relative deviation (max|diff|/max, 256^2 detector) {max_dev:.2e}; FFT share {fft_share:.2f}"
    )
    print(f"RESULT ratio={ratio:.3f} max_rel_dev={max_dev:.3e} fft_share={fft_share:.3f}")


if __name__ == "__main__":
    main()
