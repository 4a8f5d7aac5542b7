"""How finely must the simulation sample reciprocal space per detector pixel? (sampling.k_oversample)

Simulates Si[110] (300 keV, α = 2 mrad, 0 and 20 nm) in periodic cells sized for k_oversample = 1, 2 and 4
simulated pixels per detector pixel, bins each onto the same 96×96 detector (0.03 Å⁻¹/px), and prints the time
and the relative L1 deviation from the k_oversample = 4 reference.

Usage: ``python benchmarks/sim_sampling.py``; last line ``RESULT l1_k1=<f> l1_k2=<f> time_ratio_k2_k1=<f>``.
"""

from __future__ import annotations

import time

import numpy as np


def main() -> None:
    from pymatgen.core import Lattice, Structure

    from stemforge.sim.detector import Detector, resample, resampling_matrix
    from stemforge.sim.multislice import simulate_cbed
    from stemforge.sim.optics import Optics
    from stemforge.sim.setup import Phonons, configure_abtem
    from stemforge.sim.specimen import zone_axis_specimen

    configure_abtem(fftw_threads=2)
    si = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.431), ["Si"], [[0, 0, 0]])
    optics = Optics(energy=300e3, semiangle_mrad=2.0, defocus_A=30.0)
    det = Detector((96, 96), 0.03)
    out, times = {}, {}
    warm = zone_axis_specimen(si, (1, 1, 0), 20.0, 20.0)  # JIT compilation and FFTW set-up, untimed
    simulate_cbed(warm, optics, np.array(warm.extent_A) / 2, [20.0], sampling_A=0.12, phonons=Phonons(0))
    for k in (1, 2, 4):
        spec = zone_axis_specimen(si, (1, 1, 0), 200.0, det.min_extent_A(k))
        t0 = time.perf_counter()
        p, s, _, grid = simulate_cbed(
            spec, optics, np.array(spec.extent_A) / 2, [0.0, 200.0], sampling_A=0.12, phonons=Phonons(0)
        )
        times[k] = time.perf_counter() - t0
        out[k] = resample(p, resampling_matrix(p.shape[1:], s, det), det)
        print(f"k_oversample={k}: grid {grid['gpts']}, {times[k]:.2f} s")
    dev = {}
    for k in (1, 2):
        dev[k] = [float(np.abs(out[k][i] - out[4][i]).sum() / out[4][i].sum()) for i in range(2)]
        print(
            f"k_oversample={k}: relative L1 deviation from k_oversample=4 at 0 nm {dev[k][0]:.3f}, "
            f"20 nm {dev[k][1]:.3f}"
        )
    print(f"RESULT l1_k1={dev[1][1]:.4f} l1_k2={dev[2][1]:.4f} time_ratio_k2_k1={times[2] / times[1]:.2f}")


if __name__ == "__main__":
    main()
