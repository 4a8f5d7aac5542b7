"""What every simulation engine sets up the same way: grid, slicing, exit planes, potential, probe, abTEM options.

The multislice path (:func:`stemforge.sim.multislice.simulate_cbed`, :func:`stemforge.sim.multislice.vacuum_probe`),
the batched multislice path (:func:`stemforge.sim.engine.multislice_group`) and the S-matrix path
(:func:`stemforge.sim.smatrix.build_smatrix`) all start here, so that they simulate the same grid, the same slices
and the same exit planes of a specimen and their patterns can be compared (and exchanged) pixel by pixel:

* :func:`simulation_setup` -> :class:`SimulationSetup`: grid points (:func:`grid_gpts`), slice thickness and
  number of slices (:func:`slicing`), the exit plane of each requested thickness (:func:`exit_plane_indices`).
* :func:`build_potential`: abTEM's potential of the atoms or of their frozen-phonon snapshots
  (:func:`phonon_source`) with the set-up's explicit slices.
* :func:`build_probe`: abTEM's probe of an :class:`stemforge.sim.optics.Optics`.
* :func:`ensure_abtem`: abTEM's FFT options (:func:`configure_abtem`) and the device check, once per process.

Units: lengths in Å, spatial frequencies in Å⁻¹, angles in mrad, energy in eV.
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


def ensure_abtem(device: str = "cpu") -> None:
    """Make abTEM ready for a simulation on ``device`` (``"cpu"`` or ``"gpu"``).

    Applies :func:`configure_abtem`'s defaults unless it was called before in this process (a caller's own
    settings, e.g. ``sampling.fftw_threads``, are kept), and refuses ``"gpu"`` without CuPy in one line.
    """
    if device == "gpu":
        try:
            import cupy  # noqa: F401
        except ImportError as err:  # pragma: no cover - depends on the machine
            raise RuntimeError("sim device 'gpu' needs CuPy (pip install cupy-cuda12x)") from err
    if not _ABTEM_CONFIGURED:
        configure_abtem()


@dataclass(frozen=True)
class Phonons:
    """Frozen-phonon settings: ``num_configs`` snapshots (0 = static lattice), per-element RMS displacement
    ``sigmas`` in Å along each axis, and the snapshot seed."""

    num_configs: int = 1
    sigmas: dict | None = None
    seed: int = 0

    @property
    def active(self) -> bool:
        """Whether the atoms are displaced (:func:`uses_frozen_phonons`)."""
        return uses_frozen_phonons(self.num_configs, self.sigmas)

    @property
    def active_configs(self) -> int:
        """Number of frozen-phonon configurations simulated: ``num_configs`` when :attr:`active`, else 0."""
        return int(self.num_configs) if self.active else 0


def uses_frozen_phonons(num_configs: int, sigmas: dict | None) -> bool:
    """Whether frozen phonons displace the atoms: ``num_configs > 0`` and some RMS displacement (Å) > 0."""
    return bool(num_configs > 0 and sigmas and any(v > 0 for v in sigmas.values()))


def phonon_source(atoms, phonons: Phonons | None):
    """What the potential is built from: ``abtem.FrozenPhonons`` snapshots of ``atoms`` (``ase.Atoms``, Å) when
    ``phonons`` displace them (:attr:`Phonons.active`), else ``atoms`` themselves."""
    if phonons is None or not phonons.active:
        return atoms
    import abtem

    return abtem.FrozenPhonons(atoms, num_configs=phonons.num_configs, sigmas=dict(phonons.sigmas), seed=phonons.seed)


def grid_gpts(extent_A: tuple[float, float], sampling_A: float) -> tuple[int, int]:
    """Grid points (x, y) covering a cell of ``extent_A`` (Å) at a real-space sampling no coarser than
    ``sampling_A`` (Å): on each axis the smallest 2ᵃ3ᵇ5ᶜ7ᵈ size reaching it
    (:func:`stemforge.sim.grids.grid_points`)."""
    return grid_points(extent_A[0], sampling_A), grid_points(extent_A[1], sampling_A)


def slicing(specimen, slice_thickness_A: float) -> tuple[float, int]:
    """Slice thickness ``dz`` (Å) and number of slices of a specimen for a target slice thickness (Å).

    A periodic specimen with a beam period divides each period into ``round(period / target)`` equal slices
    (at least one), so every period is sliced the same way; any other specimen is divided into
    ``ceil(thickness / target)`` equal slices. The number of slices is ``round(thickness / dz)``: the ratio may
    miss the integer by a rounding error (e.g. 6.000000000000001), which must not add a slice.
    """
    if specimen.periodic and specimen.period_A:
        per_period = max(1, round(specimen.period_A / slice_thickness_A))
        dz = specimen.period_A / per_period
    else:
        dz = specimen.thickness_A / max(1, math.ceil(specimen.thickness_A / slice_thickness_A))
    return dz, int(round(specimen.thickness_A / dz))


def exit_plane_indices(thicknesses_A, slice_thickness_A: float, num_slices: int) -> tuple[tuple[int, ...], np.ndarray]:
    """abTEM exit-plane indices (−1 = entrance surface) nearest to the requested thicknesses (Å), and the exact
    thicknesses (Å) they stand for. Requested values beyond the specimen are refused (ValueError)."""
    t = np.asarray(thicknesses_A, dtype=float)
    idx = np.rint(t / slice_thickness_A).astype(int) - 1
    if idx.max() > num_slices - 1:
        raise ValueError(f"thickness {t.max():.1f} Å exceeds the specimen ({num_slices * slice_thickness_A:.1f} Å)")
    return tuple(int(i) for i in idx), (idx + 1) * slice_thickness_A


@dataclass(frozen=True)
class SimulationSetup:
    """Grid, slicing and exit planes of one specimen, shared by every engine (see :func:`simulation_setup`).

    Attributes
    ----------
    gpts : tuple of int
        Grid points (x, y).
    extent_A : tuple of float
        Lateral cell size (x, y) in Å.
    slice_thickness_A : float
        Slice thickness dz in Å.
    num_slices : int
        Number of slices through the whole specimen.
    planes : tuple of int
        abTEM exit-plane index of each requested thickness, in request order (−1 = entrance surface).
    unique_planes : tuple of int
        The distinct exit planes, ascending: the ones a multislice pass records.
    exit_thicknesses_A : tuple of float
        Exact thickness (Å) of each requested thickness's exit plane, in request order.
    """

    gpts: tuple[int, int]
    extent_A: tuple[float, float]
    slice_thickness_A: float
    num_slices: int
    planes: tuple[int, ...]
    unique_planes: tuple[int, ...]
    exit_thicknesses_A: tuple[float, ...]

    @property
    def sampling_A(self) -> tuple[float, float]:
        """Real-space sampling (x, y) in Å per grid point."""
        return self.extent_A[0] / self.gpts[0], self.extent_A[1] / self.gpts[1]

    @property
    def thicknesses_A(self) -> np.ndarray:
        """Exact thickness (Å) of each requested thickness's exit plane (float64 array, request order)."""
        return np.array(self.exit_thicknesses_A, dtype=np.float64)

    @property
    def plane_rows(self) -> list[int]:
        """For each requested thickness, its row among :attr:`unique_planes` (to pick a pass's exit planes)."""
        lookup = {p: i for i, p in enumerate(self.unique_planes)}
        return [lookup[p] for p in self.planes]

    def grid_facts(self, **extra) -> dict:
        """The grid facts recorded with every pattern: ``gpts``, ``sampling_A`` (Å), ``slice_thickness_A`` (Å),
        ``num_slices``, then ``extra`` (e.g. ``frozen_phonon_configs``, ``coherence_points``) in the given order."""
        return {
            "gpts": list(self.gpts),
            "sampling_A": list(self.sampling_A),
            "slice_thickness_A": self.slice_thickness_A,
            "num_slices": self.num_slices,
            **extra,
        }


def simulation_setup(
    specimen, thicknesses_A, sampling_A: float = 0.1, slice_thickness_A: float = 2.0
) -> SimulationSetup:
    """The set-up of a thickness series of ``specimen`` (:class:`stemforge.sim.specimen.Specimen`).

    Parameters
    ----------
    specimen : stemforge.sim.specimen.Specimen
        Orthogonal cell; its extent (Å), thickness (Å) and, for zone axes, beam period (Å) matter here.
    thicknesses_A : sequence of float
        Thicknesses (Å) to record; each is rounded to the nearest slice boundary.
    sampling_A : float
        Upper bound on the real-space sampling in Å (:func:`grid_gpts`).
    slice_thickness_A : float
        Target slice thickness in Å (:func:`slicing`).
    """
    extent = (float(specimen.extent_A[0]), float(specimen.extent_A[1]))
    dz, num_slices = slicing(specimen, slice_thickness_A)
    planes, exact_t = exit_plane_indices(thicknesses_A, dz, num_slices)
    return SimulationSetup(
        gpts=grid_gpts(extent, sampling_A),
        extent_A=extent,
        slice_thickness_A=dz,
        num_slices=num_slices,
        planes=planes,
        unique_planes=tuple(sorted(set(planes))),
        exit_thicknesses_A=tuple(float(t) for t in exact_t),
    )


def build_potential(
    source,
    setup: SimulationSetup,
    parametrization: str = "lobato",
    device: str = "cpu",
    *,
    exit_planes: bool = False,
    gpts: tuple[int, int] | None = None,
):
    """abTEM's potential of ``source`` sliced as ``setup`` says (lazy; nothing is computed here).

    Parameters
    ----------
    source : ase.Atoms or abtem.FrozenPhonons
        The atoms (Å) or their snapshots (:func:`phonon_source`); the cell sets the extent.
    setup : SimulationSetup
        Slice thickness and number of slices; grid points unless ``gpts`` is given.
    parametrization : str
        abTEM's scattering-factor parametrization (``"lobato"``, ``"kirkland"``, …).
    device : {"cpu", "gpu"}
        abTEM device.
    exit_planes : bool
        Record the set-up's :attr:`SimulationSetup.unique_planes` when a wave is propagated through it (abTEM's
        ``multislice``); False for engines that walk the slices themselves.
    gpts : tuple of int, optional
        Grid points for a ``source`` other than the set-up's cell (the S-matrix's repeat column).
    """
    import abtem

    return abtem.Potential(
        source,
        gpts=setup.gpts if gpts is None else gpts,
        # explicit slices: abTEM would make ceil(t/dz) slices, one extra when t/dz rounds to n + 1e-15
        slice_thickness=(setup.slice_thickness_A,) * setup.num_slices,
        exit_planes=setup.unique_planes if exit_planes else None,
        projection="infinite",
        parametrization=parametrization,
        device=device,
    )


def build_probe(
    optics: Optics,
    device: str = "cpu",
    *,
    potential=None,
    extent_A: tuple[float, float] | None = None,
    gpts: tuple[int, int] | None = None,
    phase: bool = True,
):
    """abTEM's probe of ``optics``: energy (eV), convergence semi-angle α (mrad), defocus (Å), aberrations (Å,
    rad) and beam tilt (mrad).

    The grid is the ``potential``'s (``probe.grid.match``) or ``extent_A`` (Å) with ``gpts``. ``phase=False``
    leaves out defocus, aberrations and tilt (the probe's diffraction image in vacuum, which only α sets).
    """
    import abtem

    kwargs = {}
    if phase:
        kwargs = {
            "defocus": optics.defocus_A,
            "aberrations": {k: float(v) for k, v in optics.aberrations_A.items()},
            "tilt": tuple(float(v) for v in optics.tilt_mrad),
        }
    probe = abtem.Probe(
        energy=optics.energy,
        semiangle_cutoff=optics.semiangle_mrad,
        extent=None if extent_A is None else tuple(extent_A),
        gpts=gpts,
        device=device,
        **kwargs,
    )
    if potential is not None:
        probe.grid.match(potential)
    return probe
