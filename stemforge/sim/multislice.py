"""Dynamical CBED by abTEM multislice, a whole thickness series from one pass.

Units: lengths in Å, angles in mrad, energy in eV. Returned patterns are indexed ``[..., ky, kx]`` with
k = 0 at ``(ny//2, nx//2)`` and hold the fraction of the incident beam per native pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .grids import grid_points
from .optics import Optics

_ABTEM_CONFIGURED = False


def configure_abtem(fftw_threads: int = 2, deterministic: bool = True) -> None:
    """Set abTEM's FFT options once per process.

    ``FFTW_ESTIMATE`` planning picks the same FFT algorithm on every run, so the same inputs give the same
    bytes; ``FFTW_MEASURE`` times candidate algorithms and can pick a different one from run to run.
    """
    global _ABTEM_CONFIGURED
    import abtem

    abtem.config.set(
        {
            "fftw.threads": int(fftw_threads),
            "fftw.planning_effort": "FFTW_ESTIMATE" if deterministic else "FFTW_MEASURE",
            "diagnostics.progress_bar": False,
        }
    )
    _ABTEM_CONFIGURED = True


@dataclass(frozen=True)
class Phonons:
    """Frozen-phonon settings: ``num_configs`` snapshots (0 = static lattice), per-element RMS displacement
    ``sigmas`` in Å along each axis, and the snapshot seed."""

    num_configs: int = 1
    sigmas: dict | None = None
    seed: int = 0


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


def exit_plane_indices(thicknesses_A, slice_thickness_A: float, num_slices: int) -> tuple[tuple[int, ...], np.ndarray]:
    """abTEM exit-plane indices (−1 = entrance surface) nearest to the requested thicknesses, and the exact
    thicknesses (Å) they stand for. Requested values beyond the specimen are refused."""
    t = np.asarray(thicknesses_A, dtype=float)
    idx = np.rint(t / slice_thickness_A).astype(int) - 1
    if idx.max() > num_slices - 1:
        raise ValueError(f"thickness {t.max():.1f} Å exceeds the specimen ({num_slices * slice_thickness_A:.1f} Å)")
    return tuple(int(i) for i in idx), (idx + 1) * slice_thickness_A


def grid_facts(
    gpts, extent_A, slice_thickness_A: float, num_slices: int, frozen_phonon_configs: int, coherence_points: int
) -> dict:
    """The simulation-grid facts recorded with every pattern (grid points, Å per point, slicing, ensembles)."""
    return {
        "gpts": list(gpts),
        "sampling_A": [extent_A[0] / gpts[0], extent_A[1] / gpts[1]],
        "slice_thickness_A": slice_thickness_A,
        "num_slices": num_slices,
        "frozen_phonon_configs": frozen_phonon_configs,
        "coherence_points": coherence_points,
    }


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
    phonons: Phonons = Phonons(),
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
        Upper bound on the real-space sampling; the grid is the smallest 2ᵃ3ᵇ5ᶜ7ᵈ size reaching it.
    slice_thickness_A : float
        Target slice thickness; for periodic specimens it divides the beam period exactly.
    phonons : Phonons
        Frozen-phonon configurations, averaged incoherently.
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
        Grid facts (gpts, real-space sampling, slice thickness, number of slices).
    """
    import abtem

    if device == "gpu":
        try:
            import cupy  # noqa: F401
        except ImportError as err:  # pragma: no cover - depends on the machine
            raise RuntimeError("sim device 'gpu' needs CuPy (pip install cupy-cuda12x)") from err
    if not _ABTEM_CONFIGURED:
        configure_abtem()

    lx, ly = specimen.extent_A
    gpts = (grid_points(lx, sampling_A), grid_points(ly, sampling_A))
    if specimen.periodic and specimen.period_A:
        per_period = max(1, round(specimen.period_A / slice_thickness_A))
        dz = specimen.period_A / per_period
    else:
        dz = specimen.thickness_A / max(1, math.ceil(specimen.thickness_A / slice_thickness_A))
    num_slices = int(round(specimen.thickness_A / dz))
    planes, exact_t = exit_plane_indices(thicknesses_A, dz, num_slices)
    unique_planes = tuple(sorted(set(planes)))

    atoms = specimen.atoms
    use_fp = phonons.num_configs > 0 and phonons.sigmas and any(v > 0 for v in phonons.sigmas.values())
    if use_fp:
        source = abtem.FrozenPhonons(
            atoms, num_configs=phonons.num_configs, sigmas=dict(phonons.sigmas), seed=phonons.seed
        )
    else:
        source = atoms
    # explicit slices: abTEM would make ceil(t/dz) slices, one extra when t/dz rounds to n + 1e-15
    potential = abtem.Potential(
        source,
        gpts=gpts,
        slice_thickness=(dz,) * num_slices,
        exit_planes=unique_planes,
        projection="infinite",
        parametrization=parametrization,
        device=device,
    )
    aberrations = {k: float(v) for k, v in optics.aberrations_A.items()}
    probe = abtem.Probe(
        energy=optics.energy,
        semiangle_cutoff=optics.semiangle_mrad,
        defocus=optics.defocus_A,
        aberrations=aberrations,
        tilt=tuple(optics.tilt_mrad),
        device=device,
    )
    probe.grid.match(potential)

    offsets, weights = coherence_offsets(optics.source_size_A, coherence_order)
    positions = np.asarray(position_A, dtype=float)[None, :] + offsets
    waves = probe.multislice(potential, scan=positions, lazy=False)
    dp = waves.diffraction_patterns(max_angle=None)
    arr = exit_plane_stack(dp)
    # arr: (planes, positions, nx, ny) -> weighted incoherent sum over source positions
    arr = np.tensordot(arr, weights, axes=([1], [0]))
    arr = np.moveaxis(arr, -1, -2)  # -> [ky, kx]
    lookup = {p: i for i, p in enumerate(unique_planes)}
    patterns = arr[[lookup[p] for p in planes]]
    sampling = (float(dp.sampling[1]), float(dp.sampling[0]))
    grid = grid_facts(gpts, (lx, ly), dz, num_slices, int(phonons.num_configs) if use_fp else 0, len(weights))
    return patterns, sampling, exact_t, grid


def vacuum_probe(optics: Optics, extent_A: tuple[float, float], sampling_A: float, device: str = "cpu"):
    """Diffraction image of the probe in vacuum on the same native grid as :func:`simulate_cbed`
    (``[ky, kx]``, sum 1 inside the aperture); aberrations do not change it, only α does."""
    import abtem

    gpts = (grid_points(extent_A[0], sampling_A), grid_points(extent_A[1], sampling_A))
    probe = abtem.Probe(
        energy=optics.energy, semiangle_cutoff=optics.semiangle_mrad, extent=tuple(extent_A), gpts=gpts, device=device
    )
    dp = probe.build(lazy=False).diffraction_patterns(max_angle=None)
    arr = np.asarray(dp.array, dtype=np.float64)
    return np.swapaxes(arr, -1, -2), (float(dp.sampling[1]), float(dp.sampling[0]))
