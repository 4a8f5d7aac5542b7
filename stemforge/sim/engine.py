"""Simulation engines for a *specimen group*: S-matrix optics reuse or batched multislice, chosen per group.

A specimen group is ``sampling.optics_per_specimen`` consecutive runs that share one specimen (structure,
orientation, energy, frozen-phonon configuration) and differ in optics (defocus, α, aberrations, beam tilt,
source size) and probe position. Two engines compute a group's thickness series:

* **batched multislice** (:func:`multislice_group`): the potential is built once and every probe of the group
  that has the same beam tilt is propagated in ONE eager abTEM multislice call (waves stacked along an ensemble
  axis). A group of one run is exactly :func:`stemforge.sim.multislice.simulate_cbed`.
* **S-matrix** (:func:`smatrix_group`): every plane wave within the group's largest α is propagated once
  (:func:`stemforge.sim.smatrix.build_smatrix`, one repeat column on periodic static zone axes), then each run's
  patterns
  are a (1 × beams) @ (beams × pixels) product. It cannot represent beam tilt, partial spatial coherence or
  more than one frozen-phonon configuration (:func:`smatrix_blockers`).

:func:`choose_group_engine` applies :func:`stemforge.sim.smatrix.choose_engine` to a group: the S-matrix when
propagating
its beams costs less than the multislice passes its patterns need. Units: Å, Å⁻¹, mrad, eV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .optics import Optics
from .setup import (
    Phonons,
    build_potential,
    build_probe,
    ensure_abtem,
    grid_gpts,
    phonon_source,
    simulation_setup,
)

ENGINES = ("auto", "multislice", "smatrix")
#: largest S-matrix (cropped Fourier exit planes, complex64) the automatic choice accepts, in bytes; a constant, so
#: that every machine (and cluster worker) makes the same choice and writes the same bytes
SMATRIX_MAX_BYTES = 4 * 1024**3
#: largest prebuilt potential (float32 slices) kept to share between beam-tilt subgroups, in bytes
POTENTIAL_CACHE_BYTES = 1024**3


@dataclass(frozen=True)
class GroupRun:
    """One run of a group as an engine sees it: optics in the simulation frame and probe position (x, y) Å."""

    optics: Optics
    position_A: np.ndarray


@dataclass
class EngineChoice:
    """Which engine simulates a group and why (``num_beams``/``beam_cost`` are set when the S-matrix was
    considered; ``bytes`` is its estimated size)."""

    engine: str
    reason: str
    num_beams: int = 0
    beam_cost: float = 1.0
    bytes: int = 0


def smatrix_blockers(runs, frozen_phonons: int) -> list[str]:
    """What in a group the S-matrix engine cannot simulate (empty: it can)."""
    out = []
    if len({tuple(float(v) for v in r.optics.tilt_mrad) for r in runs}) > 1:
        out.append("several beam tilts (a mistilt per run; one per specimen group is fine)")
    if any(r.optics.source_size_A > 0 for r in runs):
        out.append("partial spatial coherence (source size > 0)")
    if frozen_phonons > 1:
        out.append(f"{frozen_phonons} frozen-phonon configurations")
    return out


def crop_half_px(detector, extent_A: tuple[float, float]) -> int:
    """Native pixels kept on each side of k = 0 so that binning onto ``detector`` (any in-plane rotation)
    sees every pixel it would see on the full grid (:func:`stemforge.sim.detector.resampling_matrix` uses the native
    pixels within the detector's corner frequency plus one native pixel)."""
    dkx, dky = 1.0 / extent_A[0], 1.0 / extent_A[1]
    reach = detector.max_frequency + max(dkx, dky)
    return math.ceil(reach / min(dkx, dky)) + 1


def bloch_repetitions(specimen, gpts) -> tuple[int, int] | None:
    """Lateral repetitions of a periodic zone-axis specimen when the grid is a whole multiple of them (the
    S-matrix then propagates one repeat column), else None."""
    from .smatrix import _bloch_repetitions

    return _bloch_repetitions(specimen, gpts)


def choose_group_engine(
    requested: str,
    runs,
    specimen,
    sampling_A: float,
    num_thicknesses: int,
    detector,
    frozen_phonons: int,
    static_lattice: bool,
) -> EngineChoice:
    """The engine for one group (see the module docstring).

    ``requested`` is ``sampling.engine``: ``multislice`` and ``smatrix`` are obeyed (an S-matrix request with a
    blocker raises ValueError; configurations are refused earlier by :func:`stemforge.sim.config.validate`), ``auto``
    weighs ``beams × beam_cost`` against the group's multislice passes with :func:`stemforge.sim.smatrix.choose_engine`.
    ``beam_cost`` is the repeat column's share of the grid on the Bloch path, 1 otherwise; the number of beams
    is :func:`stemforge.sim.smatrix.beam_count` at the group's largest α widened by one native pixel (the margin
    :func:`stemforge.sim.smatrix.build_smatrix` keeps for abTEM's soft aperture edge).
    """
    from .smatrix import beam_count, choose_engine

    if requested not in ENGINES:
        raise ValueError(f"unknown engine {requested!r}; choose one of {', '.join(ENGINES)}")
    if requested == "multislice":
        return EngineChoice("multislice", "requested")
    blockers = smatrix_blockers(runs, frozen_phonons)
    if blockers:
        if requested == "smatrix":
            raise ValueError(f"the S-matrix engine cannot simulate {', '.join(blockers)}")
        return EngineChoice("multislice", "S-matrix impossible: " + ", ".join(blockers))
    lx, ly = specimen.extent_A
    energy = runs[0].optics.energy
    alpha = max(r.optics.semiangle_mrad for r in runs)
    lam = runs[0].optics.wavelength_A
    margin_mrad = lam * max(1.0 / lx, 1.0 / ly) * 1e3
    beams = beam_count(alpha + margin_mrad, (lx, ly), energy)
    gpts = grid_gpts((lx, ly), sampling_A)
    reps = bloch_repetitions(specimen, gpts) if static_lattice else None
    beam_cost = 1.0 / (reps[0] * reps[1]) if reps else 1.0
    h = crop_half_px(detector, (lx, ly))
    side_x, side_y = min(2 * h + 1, gpts[0]), min(2 * h + 1, gpts[1])
    if reps:  # sparse exit planes: each beam reaches one comb k + G of the repeat cell's grid (value + index)
        size = num_thicknesses * beams * (gpts[0] // reps[0]) * (gpts[1] // reps[1]) * 12
    else:
        size = num_thicknesses * beams * side_x * side_y * 8
    patterns = len(runs) * num_thicknesses
    if requested == "smatrix":
        return EngineChoice("smatrix", "requested", beams, beam_cost, size)
    if size > SMATRIX_MAX_BYTES:
        return EngineChoice("multislice", f"S-matrix would take {size / 2**30:.1f} GiB", beams, beam_cost, size)
    engine = choose_engine(beams, patterns, num_thicknesses, beam_cost=beam_cost)
    return EngineChoice(engine, f"{beams} beams × {beam_cost:.3g} vs {len(runs)} passes", beams, beam_cost, size)


def multislice_group(
    specimen,
    runs,
    thicknesses_A,
    sampling_A: float = 0.1,
    slice_thickness_A: float = 2.0,
    phonons=None,
    parametrization: str = "lobato",
    device: str = "cpu",
    coherence_order: int = 3,
):
    """CBED thickness series of every run of a group by batched multislice.

    Same physics and conventions as :func:`stemforge.sim.multislice.simulate_cbed` (which a group of one run calls
    directly): one potential for the group (prebuilt and shared when several beam tilts need separate
    passes), and one eager abTEM multislice per beam tilt with every probe of that tilt (each run's position
    plus its source-size offsets) stacked along an ensemble axis.

    Returns
    -------
    patterns : list of ndarray, float64, (T, ny, nx)
        Per run, in detector orientation ([ky, kx]), fractions of the incident beam.
    sampling : tuple
        ``(dky, dkx)`` in Å⁻¹.
    thicknesses : ndarray
        Exact thickness of each pattern in Å.
    grid : dict
        Grid facts as :func:`stemforge.sim.multislice.simulate_cbed` returns them.
    """
    import abtem
    from abtem.core.axes import OrdinalAxis

    from . import multislice as ms

    phonons = phonons or Phonons()
    if len(runs) == 1:
        r = runs[0]
        p, sampling, exact_t, grid = ms.simulate_cbed(
            specimen,
            r.optics,
            r.position_A,
            thicknesses_A,
            sampling_A=sampling_A,
            slice_thickness_A=slice_thickness_A,
            phonons=phonons,
            parametrization=parametrization,
            device=device,
            coherence_order=coherence_order,
        )
        return [p], sampling, exact_t, grid
    ensure_abtem(device)
    setup = simulation_setup(specimen, thicknesses_A, sampling_A, slice_thickness_A)
    potential = build_potential(
        phonon_source(specimen.atoms, phonons), setup, parametrization, device, exit_planes=True
    )
    tilts = sorted({tuple(float(v) for v in r.optics.tilt_mrad) for r in runs})
    configs = max(1, phonons.active_configs)
    gpts = setup.gpts
    if len(tilts) > 1 and configs * setup.num_slices * gpts[0] * gpts[1] * 4 <= POTENTIAL_CACHE_BYTES:
        potential = potential.build(lazy=False)  # same slices, computed once for every tilt

    offsets_weights = [ms.coherence_offsets(r.optics.source_size_A, coherence_order) for r in runs]
    out = [None] * len(runs)
    sampling = None
    for tilt in tilts:
        members = [i for i, r in enumerate(runs) if tuple(float(v) for v in r.optics.tilt_mrad) == tilt]
        arrays, counts, metadata = [], [], None
        for i in members:
            probe = build_probe(runs[i].optics, device, potential=potential)
            positions = np.asarray(runs[i].position_A, dtype=float)[None, :] + offsets_weights[i][0]
            waves = probe.build(scan=positions, lazy=False)
            arrays.append(waves.array.reshape(len(positions), *gpts))
            counts.append(len(positions))
            metadata = metadata or dict(waves.metadata)
        stacked = np.concatenate(arrays) if device == "cpu" else _concat_device(arrays)
        waves = abtem.Waves(
            stacked,
            energy=runs[members[0]].optics.energy,
            extent=setup.extent_A,
            ensemble_axes_metadata=[OrdinalAxis(label="probe", values=tuple(range(len(stacked))))],
            metadata=metadata,
        )
        dp = waves.multislice(potential).diffraction_patterns(max_angle=None)
        arr = ms.exit_plane_stack(dp)
        arr = arr[setup.plane_rows]  # (T, probes, nx, ny)
        start = 0
        for i, n in zip(members, counts):
            w = offsets_weights[i][1]
            pat = np.tensordot(arr[:, start : start + n], w, axes=([1], [0]))
            out[i] = np.moveaxis(pat, -1, -2)  # -> [ky, kx]
            start += n
        sampling = (float(dp.sampling[1]), float(dp.sampling[0]))
    grid = setup.grid_facts(
        frozen_phonon_configs=phonons.active_configs,
        coherence_points=max(len(ow[1]) for ow in offsets_weights),
    )
    return out, sampling, setup.thicknesses_A, grid


def _concat_device(arrays):  # pragma: no cover - GPU only
    import cupy

    return cupy.concatenate(arrays)


def smatrix_group(
    specimen,
    runs,
    thicknesses_A,
    sampling_A: float = 0.1,
    slice_thickness_A: float = 2.0,
    phonons=None,
    parametrization: str = "lobato",
    device: str = "cpu",
    crop_half: int | None = None,
):
    """CBED thickness series of every run of a group from ONE S-matrix (:func:`stemforge.sim.smatrix.build_smatrix`).

    Same grid, slices and potential as :func:`multislice_group`. With one frozen-phonon configuration the
    S-matrix is built on abTEM's displaced atoms of that configuration (``abtem.FrozenPhonons`` with the same
    seed), on the full supercell; a static periodic specimen whose grid is a multiple of its repetitions is
    propagated on one repeat column. ``crop_half`` keeps that many native pixels on each side of k = 0
    (:func:`crop_half_px`). Returns what :func:`multislice_group` returns, patterns of shape
    ``(T, 2·crop_half + 1, 2·crop_half + 1)`` (or the full grid when that is smaller).
    """
    from .smatrix import build_smatrix

    phonons = phonons or Phonons()
    blockers = smatrix_blockers(runs, phonons.active_configs)
    if blockers:
        raise ValueError(f"the S-matrix engine cannot simulate {', '.join(blockers)}")
    energies = {float(r.optics.energy) for r in runs}
    if len(energies) != 1:
        raise ValueError(f"an S-matrix group needs one energy, got {sorted(energies)} eV")
    target = specimen
    if phonons.active:  # one configuration (more are blockers)
        snapshot = next(iter(phonon_source(specimen.atoms, phonons)))
        target = replace(specimen, atoms=snapshot, repeat_cell=None)  # displaced: supercell path
    alpha = max(r.optics.semiangle_mrad for r in runs)
    S = build_smatrix(
        target,
        energies.pop(),
        alpha,
        thicknesses_A,
        sampling_A=sampling_A,
        slice_thickness_A=slice_thickness_A,
        parametrization=parametrization,
        crop_half_px=crop_half,
        device=device,
        tilt_mrad=tuple(float(v) for v in runs[0].optics.tilt_mrad),
    )
    # one run at a time: a (1 × beams) product, so a run's bytes never depend on the other runs of its group
    out = [S.patterns(r.optics, np.asarray(r.position_A, dtype=float)[None])[:, 0] for r in runs]
    grid = S.setup.grid_facts(
        frozen_phonon_configs=phonons.active_configs,
        coherence_points=1,
        num_beams=S.num_beams,
        bloch_repetitions=S.grid["bloch_repetitions"],
    )
    return out, S.sampling, S.thicknesses_A, grid
