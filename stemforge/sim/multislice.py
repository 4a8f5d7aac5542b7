"""Dynamical CBED by abTEM multislice, a whole thickness series from one pass.

Grid, slices, exit planes, potential and probe come from :mod:`stemforge.sim.setup`, as for every engine.
Units: lengths in Å, angles in mrad, energy in eV. Returned patterns are indexed ``[..., ky, kx]`` with
k = 0 at ``(ny//2, nx//2)`` and hold the fraction of the incident beam per native pixel.
"""

from __future__ import annotations

import numpy as np

from .optics import Optics
from .setup import (
    Phonons,
    build_potential,
    build_probe,
    configure_abtem,
    ensure_abtem,
    grid_gpts,
    phonon_source,
    simulation_setup,
)

__all__ = ["Phonons", "coherence_offsets", "configure_abtem", "exit_plane_stack", "simulate_cbed", "vacuum_probe"]


def coherence_offsets(source_size_A: float, order: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Probe-position offsets (Å) and weights for a Gaussian source of standard deviation ``source_size_A``.

    A tensor-product Gauss–Hermite rule of ``order²`` points integrates the incoherent average over the
    effective source exactly for polynomials up to degree ``2·order - 1`` in each direction.
    """
    if source_size_A <= 0:
        return np.zeros((1, 2)), np.ones(1)
    x, w = np.polynomial.hermite_e.hermegauss(order)  # weight exp(-x²/2)
    w = w / w.sum()
    X, Y = np.meshgrid(x * source_size_A, x * source_size_A, indexing="ij")
    W = np.outer(w, w)
    return np.stack([X.ravel(), Y.ravel()], axis=1), W.ravel()


def exit_plane_stack(dp) -> np.ndarray:
    """abTEM diffraction patterns -> float64 array (exit plane, probe position, nx, ny) in a fixed axis order.

    Frozen-phonon configurations are averaged; the thickness and probe axes that abTEM drops when they have
    length one are restored; arrays on a GPU are brought to host memory.
    """
    arr = dp.array
    arr = arr.get() if hasattr(arr, "get") else arr
    arr = np.asarray(arr, dtype=np.float64)
    kinds = [type(ax).__name__ for ax in dp.ensemble_axes_metadata]
    if "FrozenPhononsAxis" in kinds:
        j = kinds.index("FrozenPhononsAxis")
        arr = arr.mean(axis=j)
        kinds.pop(j)
    if "ThicknessAxis" not in kinds:
        arr, kinds = arr[None], ["ThicknessAxis"] + kinds
    elif kinds.index("ThicknessAxis") != 0:
        arr = np.moveaxis(arr, kinds.index("ThicknessAxis"), 0)
    if arr.ndim == 3:  # no probe axis left (one position)
        arr = arr[:, None]
    return arr


def simulate_cbed(
    specimen,
    optics: Optics,
    position_A,
    thicknesses_A,
    sampling_A: float = 0.1,
    slice_thickness_A: float = 2.0,
    phonons: Phonons | None = None,
    parametrization: str = "lobato",
    device: str = "cpu",
    coherence_order: int = 3,
):
    """CBED patterns of one probe at several thicknesses from a single multislice pass.

    Parameters
    ----------
    specimen : stemforge.sim.specimen.Specimen
    optics : Optics
        Energy, convergence semi-angle, defocus, aberrations, beam tilt (mistilt) and source size.
    position_A : (2,) array
        Probe position (x, y) in Å in the specimen cell.
    thicknesses_A : sequence of float
        Thicknesses (Å) to record; each is rounded to the nearest slice boundary (see the returned values).
    sampling_A : float
        Upper bound on the real-space sampling in Å; the grid is the smallest 2ᵃ3ᵇ5ᶜ7ᵈ size reaching it
        (:func:`stemforge.sim.setup.grid_gpts`).
    slice_thickness_A : float
        Target slice thickness in Å; for periodic specimens it divides the beam period exactly
        (:func:`stemforge.sim.setup.slicing`).
    phonons : Phonons, optional
        Frozen-phonon configurations, averaged incoherently (None: static lattice).
    device : {"cpu", "gpu"}
        abTEM device; "gpu" needs CuPy.

    Returns
    -------
    patterns : ndarray, float64, (T, ny, nx)
        Diffraction intensities in detector orientation ([ky, kx]), fractions of the incident beam.
    sampling : tuple
        ``(dky, dkx)`` in Å⁻¹.
    thicknesses : ndarray
        Exact thickness of each pattern in Å.
    grid : dict
        Grid facts (:meth:`stemforge.sim.setup.SimulationSetup.grid_facts`: gpts, real-space sampling in Å, slice
        thickness in Å, number of slices) with ``frozen_phonon_configs`` and ``coherence_points``.
    """
    phonons = phonons or Phonons()
    ensure_abtem(device)
    setup = simulation_setup(specimen, thicknesses_A, sampling_A, slice_thickness_A)
    potential = build_potential(
        phonon_source(specimen.atoms, phonons), setup, parametrization, device, exit_planes=True
    )
    probe = build_probe(optics, device, potential=potential)

    offsets, weights = coherence_offsets(optics.source_size_A, coherence_order)
    positions = np.asarray(position_A, dtype=float)[None, :] + offsets
    waves = probe.multislice(potential, scan=positions, lazy=False)
    dp = waves.diffraction_patterns(max_angle=None)
    arr = exit_plane_stack(dp)
    # arr: (planes, positions, nx, ny) -> weighted incoherent sum over source positions
    arr = np.tensordot(arr, weights, axes=([1], [0]))
    arr = np.moveaxis(arr, -1, -2)  # -> [ky, kx]
    patterns = arr[setup.plane_rows]
    sampling = (float(dp.sampling[1]), float(dp.sampling[0]))
    grid = setup.grid_facts(frozen_phonon_configs=phonons.active_configs, coherence_points=len(weights))
    return patterns, sampling, setup.thicknesses_A, grid


def vacuum_probe(optics: Optics, extent_A: tuple[float, float], sampling_A: float, device: str = "cpu"):
    """Diffraction image of the probe in vacuum on the same native grid as :func:`simulate_cbed`
    (``[ky, kx]``, sum 1 inside the aperture); aberrations do not change it, only α does."""
    ensure_abtem(device)
    gpts = grid_gpts(extent_A, sampling_A)
    probe = build_probe(optics, device, extent_A=extent_A, gpts=gpts, phase=False)
    dp = probe.build(lazy=False).diffraction_patterns(max_angle=None)
    arr = np.asarray(dp.array, dtype=np.float64)
    return np.swapaxes(arr, -1, -2), (float(dp.sampling[1]), float(dp.sampling[0]))
