"""One chunk of a dataset: plan each run, simulate each specimen group with one engine, label every pattern.

A *run* is one structure in one orientation under one optics setting and one probe position; its thickness
series (``sampling.thicknesses_nm``) comes from one propagation, so a dataset of ``num_patterns`` holds
``ceil(num_patterns / len(thicknesses))`` runs. Every random choice of run ``r`` comes from
``numpy.random.default_rng([seed, r])``, so a run's result does not depend on chunking, resuming or on which
process (or cluster worker, :mod:`stemforge.sim.cluster`) computes it.

*Specimen groups* (``sampling.optics_per_specimen = k``): runs ``r`` with the same ``r // k`` share one
specimen — structure, orientation (zone axis or random rotation, in-plane angle), energy and frozen-phonon
seed, drawn from ``default_rng([seed, r // k, k])`` — while each run draws its own optics (α, defocus,
aberrations, mistilt, source size) and probe position from ``default_rng([seed, r])``. With k = 1 both come
from the run's own stream in the order they always did, so datasets with k = 1 are unchanged. A group is
simulated by one engine (:mod:`stemforge.sim.engine`): one S-matrix for all its optics and positions, or batched
multislice; ``sampling.engine`` (``auto``, ``multislice``, ``smatrix``) picks it.

:func:`simulate_chunk` is what the local loop of :func:`stemforge.sim.generate.generate_dataset` and a cluster
worker (:func:`stemforge.sim.cluster.chunk_task`) both run, so a chunk's bytes do not depend on where it was
computed. Units: lengths in Å, angles in mrad (in-plane angles in degrees), energy in eV.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np

from .config import ConfigError, draw
from .detector import Detector, resample, resampling_matrix
from .frames import rotation_z, simulation_frame_optics
from .optics import Optics, probe_spread_radius_A

log = logging.getLogger(__name__)

CRYSTAL_SYSTEMS = ["triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic"]
ABERRATION_KEYS = ["C30", "C12", "phi12", "C21", "phi21", "C23", "phi23", "C50"]


@dataclass
class CatalogEntry:
    name: str
    structure: object
    info: dict
    sigmas: dict
    zone_axes: list
    zone_labels: list
    #: per zone axis: None, or the crystal sheared slightly so that the axis has an exactly orthogonal periodic
    #: supercell (monoclinic / triclinic crystals, :func:`stemforge.sim.specimen.sheared_for_zone_axis`)
    zone_structures: list = field(default_factory=list)

    def structure_for(self, zone_axis) -> object:
        """The structure simulated (and labelled) along ``zone_axis`` (None: a random orientation)."""
        if zone_axis is not None and self.zone_structures:
            for axis, sheared in zip(self.zone_axes, self.zone_structures):
                if sheared is not None and tuple(int(v) for v in axis) == tuple(int(v) for v in zone_axis):
                    return sheared
        return self.structure


@dataclass
class RunSpec:
    """Every drawn parameter of one run (lab frame: detector axes, beam along +z)."""

    index: int
    structure_id: int
    zone_axis: tuple | None
    zone: str
    random_rotation: np.ndarray | None
    in_plane_deg: float
    optics: Optics
    position_frac: np.ndarray
    phonon_seed: int
    extra: dict = field(default_factory=dict)


def build_catalog(cfg) -> list[CatalogEntry]:
    """Load every configured structure with its symmetry data; bad input raises ConfigError."""
    from .orientations import parse_zone_axis, symmetry_distinct_zone_axes
    from .specimen import orthogonal_lattice_basis, sheared_for_zone_axis
    from .structures import StructureError, debye_waller_sigmas, load_structure, structure_info

    entries = []
    for spec in cfg.structure.names:
        try:
            st = load_structure(spec)
        except StructureError as err:
            raise ConfigError(f"structure {spec!r}: {err}") from None
        sigmas = debye_waller_sigmas(st, default=cfg.structure.debye_waller_default_A)
        sigmas.update({k: float(v) for k, v in cfg.sampling.sigmas_A.items()})
        if cfg.orientation.zone_axes:
            try:
                parsed = [parse_zone_axis(z) for z in cfg.orientation.zone_axes]
            except ValueError as err:
                raise ConfigError(f"orientation.zone_axes: {err}") from None
            axes, labels = [p[0] for p in parsed], [p[1] for p in parsed]
            candidates = axes
        else:
            # automatic axes: those with an exactly orthogonal periodic supercell (cheap, exact), or a nearly
            # orthogonal one the crystal is sheared onto (at most ~0.5 %, monoclinic / triclinic); other
            # directions are reached by random orientations or by listing them in orientation.zone_axes
            candidates = symmetry_distinct_zone_axes(st, cfg.orientation.max_index)
        max_shear = float(getattr(cfg.orientation, "max_shear", 0.0) or 0.0)
        axes, sheared = [], []
        for a in candidates:
            if orthogonal_lattice_basis(st.lattice.matrix, a) is not None:
                axes.append(a), sheared.append(None)
            else:
                s = sheared_for_zone_axis(st, a, max_cos=max_shear)[0] if max_shear > 0 else None
                if s is not None or cfg.orientation.zone_axes:  # listed axes stay (boxes when neither exists)
                    axes.append(a), sheared.append(s)
        labels = [parse_zone_axis(a)[1] for a in axes]
        entries.append(CatalogEntry(str(spec), st, structure_info(st), sigmas, list(axes), labels, sheared))
    return entries


def optics_per_specimen(cfg) -> int:
    """Runs per specimen group (``sampling.optics_per_specimen``; 1 when the config has no such field)."""
    return max(1, int(getattr(cfg.sampling, "optics_per_specimen", 1) or 1))


def engine_setting(cfg) -> str:
    """``sampling.engine`` (``auto`` when the config has no such field)."""
    return str(getattr(cfg.sampling, "engine", "auto") or "auto")


def group_mode(cfg) -> bool:
    """Whether specimens are built for optics reuse: smooth lateral repetitions and, on static zone axes, a grid
    commensurate with them (:func:`stemforge.sim.smatrix.commensurate_sampling`). Off for k = 1 unless the S-matrix
    engine is requested, so such datasets keep their specimens and grids."""
    return optics_per_specimen(cfg) > 1 or engine_setting(cfg) == "smatrix"


def plan_run(cfg, catalog: list[CatalogEntry], seed: int, r: int) -> RunSpec:
    """Draw run ``r``'s parameters: optics and position from ``default_rng([seed, r])``, the specimen
    (structure, orientation, energy, phonon seed) from its group's stream (the same one when k = 1)."""
    from .orientations import random_orientations

    k = optics_per_specimen(cfg)
    rng = np.random.default_rng([int(seed), int(r)])
    # the group's stream; [seed, g, k] never equals a run's own [seed, r], so no run's optics repeat the
    # draws of another group's specimen
    srng = rng if k == 1 else np.random.default_rng([int(seed), int(r) // k, k])
    sid = int(srng.integers(len(catalog)))
    entry = catalog[sid]
    o = cfg.optics
    aberrations = {key: draw(v, rng) for key, v in o.aberrations_A.items()}
    tilt_r = cfg.orientation.mistilt_max_mrad * math.sqrt(rng.uniform())
    tilt_a = rng.uniform(0, 2 * math.pi)
    optics = Optics(
        energy=draw(o.energy, srng),
        semiangle_mrad=draw(o.semiangle_mrad, rng),
        defocus_A=draw(o.defocus_A, rng),
        aberrations_A=aberrations,
        tilt_mrad=(tilt_r * math.cos(tilt_a), tilt_r * math.sin(tilt_a)),
        source_size_A=draw(o.source_size_A, rng),
    )
    if srng.uniform() < cfg.orientation.random_fraction or not entry.zone_axes:
        rot = random_orientations(entry.structure, 1, seed=int(srng.integers(2**31)))[0]
        zone_axis, zone, phi = None, "random", 0.0
    else:
        i = int(srng.integers(len(entry.zone_axes)))
        rot, zone_axis, zone = None, tuple(int(v) for v in entry.zone_axes[i]), entry.zone_labels[i]
        phi = draw(cfg.orientation.in_plane_deg, srng)
    position, phonon_seed = rng.uniform(size=2), int(srng.integers(2**31))
    if getattr(cfg.orientation, "mistilt_per_specimen", False):  # the group's one mistilt, drawn last from its stream
        tilt_r = cfg.orientation.mistilt_max_mrad * math.sqrt(srng.uniform())
        tilt_a = srng.uniform(0, 2 * math.pi)
        optics = replace(optics, tilt_mrad=(tilt_r * math.cos(tilt_a), tilt_r * math.sin(tilt_a)))
    if getattr(o, "semiangle_per_specimen", False):  # the group's one α, drawn after the mistilt from its stream
        optics = replace(optics, semiangle_mrad=draw(o.semiangle_mrad, srng))
    return RunSpec(r, sid, zone_axis, zone, rot, phi, optics, position, phonon_seed)


def group_specimen(
    cfg, entry: CatalogEntry, specs: list[RunSpec], detector: Detector, t_max_A: float, smooth: bool = False
):
    """The one specimen of a group of runs (same structure and orientation): a zone-axis cell, or a box wide
    enough for every run's probe. ``smooth`` rounds a zone-axis cell's lateral repetitions up to 2ᵃ3ᵇ5ᶜ7ᵈ so
    that an FFT-friendly grid can be a whole multiple of them (the S-matrix's repeat-column path)."""
    from .orientations import zone_axis_rotation
    from .specimen import oriented_box_specimen, zone_axis_specimen

    spec = specs[0]
    depth = max(t_max_A, cfg.sampling.slice_thickness_A)
    if spec.zone_axis is not None:
        # Periodic cell. Its exit wave is the periodic sum of the exit waves of the infinite crystal (the
        # specimen is periodic with the cell, propagation is linear), so the cell's pattern samples the
        # infinite crystal's CBED at 1/L: L only sets how finely each detector pixel is sampled
        # (sampling.k_oversample simulated pixels per detector pixel; see benchmarks/RESULTS.md).
        structure = entry.structure_for(spec.zone_axis)
        try:
            specimen = zone_axis_specimen(
                structure, spec.zone_axis, depth, detector.min_extent_A(cfg.sampling.k_oversample)
            )
        except ValueError:
            rotation = zone_axis_rotation(structure, spec.zone_axis)
        else:
            return _smooth_repetitions(specimen) if smooth else specimen
    else:
        rotation = spec.random_rotation
    # Non-periodic box: the probe, spread by scattering up to the detector's largest angle, never reaches an edge.
    half = 0.0
    for sp in specs:
        theta_mrad = detector.max_frequency * sp.optics.wavelength_A * 1e3
        half = max(half, probe_spread_radius_A(sp.optics, depth, theta_mrad))
    side = max(detector.min_extent_A(cfg.sampling.k_oversample), 2 * half)
    return oriented_box_specimen(entry.structure, rotation, (side, side, depth))


def _smooth_repetitions(specimen):
    from .grids import fft_friendly_size

    nx, ny, nz = specimen.info["repetitions"]
    sx, sy = fft_friendly_size(nx), fft_friendly_size(ny)
    if (sx, sy) == (nx, ny):
        return specimen
    return replace(specimen, atoms=None, info={**specimen.info, "repetitions": [sx, sy, nz]})  # built when used


def probe_position_A(specimen, spec: RunSpec) -> np.ndarray:
    """A run's probe position (x, y) in Å: within the central repeat cell of a zone-axis specimen, within 1 Å
    of a box's centre."""
    lx, ly = specimen.extent_A
    if specimen.periodic:
        ux, uy = specimen.repeat_cell.cell[0, 0], specimen.repeat_cell.cell[1, 1]
        nx, ny = specimen.info["repetitions"][:2]
        return np.array([(nx // 2 + spec.position_frac[0]) * ux, (ny // 2 + spec.position_frac[1]) * uy])
    return np.array([lx / 2, ly / 2]) + (spec.position_frac - 0.5) * 2.0


def simulate_group(
    cfg, catalog: list[CatalogEntry], specs: list[RunSpec], detector: Detector, engine: str | None = None
) -> list[dict]:
    """Simulate and label the runs of one specimen group with one engine (:mod:`stemforge.sim.engine`); returns each
    run's per-pattern arrays with a leading thickness axis. ``engine`` overrides ``sampling.engine``."""
    from .engine import GroupRun, choose_group_engine, crop_half_px, multislice_group, smatrix_group
    from .setup import Phonons, uses_frozen_phonons
    from .smatrix import commensurate_sampling

    s = cfg.sampling
    entry = catalog[specs[0].structure_id]
    if any(sp.structure_id != specs[0].structure_id or sp.zone != specs[0].zone for sp in specs):
        raise ValueError("the runs of a specimen group must share structure and orientation")
    thicknesses = np.asarray(s.thicknesses_nm, dtype=float) * 10.0
    grouped = group_mode(cfg)
    specimen = group_specimen(cfg, entry, specs, detector, float(thicknesses.max()), smooth=grouped)
    static = not uses_frozen_phonons(int(s.frozen_phonons), entry.sigmas)
    sampling_A = float(s.real_space_A)
    if grouped and static and specimen.periodic:
        sampling_A = commensurate_sampling(specimen, sampling_A)
    positions = [probe_position_A(specimen, sp) for sp in specs]
    runs = [GroupRun(simulation_frame_optics(sp.optics, sp.in_plane_deg), pos) for sp, pos in zip(specs, positions)]
    try:
        choice = choose_group_engine(
            engine or engine_setting(cfg),
            runs,
            specimen,
            sampling_A,
            len(thicknesses),
            detector,
            int(s.frozen_phonons),
            static,
        )
    except ValueError as err:
        raise ConfigError(f"sampling.engine: {err}") from None
    log.debug("runs %d-%d: %s (%s)", specs[0].index, specs[-1].index, choice.engine, choice.reason)
    phonons = Phonons(s.frozen_phonons, entry.sigmas, specs[0].phonon_seed)
    common = dict(
        sampling_A=sampling_A,
        slice_thickness_A=s.slice_thickness_A,
        phonons=phonons,
        parametrization=s.parametrization,
        device=cfg.optics.device,
    )
    if choice.engine == "smatrix":
        patterns, native_sampling, exact_t, grid = smatrix_group(
            specimen, runs, thicknesses, crop_half=crop_half_px(detector, specimen.extent_A), **common
        )
    else:
        patterns, native_sampling, exact_t, grid = multislice_group(
            specimen, runs, thicknesses, coherence_order=cfg.optics.coherence_order, **common
        )
    matrices, reflections, probes = {}, {}, {}
    out = []
    for sp, run, pos, pats in zip(specs, runs, positions, patterns):
        key = (pats.shape[1:], sp.in_plane_deg)
        if key not in matrices:
            matrices[key] = resampling_matrix(pats.shape[1:], native_sampling, detector, sp.in_plane_deg)
        det_patterns = resample(pats, matrices[key], detector)
        out.append(
            _label_run(
                cfg,
                entry,
                sp,
                specimen,
                detector,
                det_patterns,
                exact_t,
                grid,
                pos,
                run.optics,
                sampling_A,
                reflections,
                probes,
            )
        )
    return out


def _label_run(
    cfg,
    entry,
    spec,
    specimen,
    detector,
    det_patterns,
    exact_t,
    grid,
    position,
    sim_optics,
    sampling_A,
    reflections: dict,
    probes: dict,
) -> dict:
    """A run's labels and stored arrays (``reflections`` / ``probes`` cache what runs of a group share)."""
    from .labels import (
        REFERENCE_DOSE_E,
        disk_intensities,
        disk_map,
        distinct_spots,
        kinematic_reflections,
        kinematic_visible,
        present,
        vg_map,
    )
    from .multislice import vacuum_probe

    s = cfg.sampling
    lx, ly = specimen.extent_A
    pkey = (sim_optics.energy, sim_optics.semiangle_mrad)
    if pkey not in probes:
        probe_native, probe_sampling = vacuum_probe(sim_optics, (lx, ly), sampling_A, cfg.optics.device)
        mkey = ("matrix", probe_native.shape, probe_sampling)  # one binning for every probe of the group's grid
        if mkey not in probes:
            probes[mkey] = resampling_matrix(probe_native.shape, probe_sampling, detector)
        probes[pkey] = resample(probe_native, probes[mkey], detector)
    probe = probes[pkey]

    rotation = rotation_z(spec.in_plane_deg) @ specimen.rotation
    rkey = (spec.in_plane_deg, spec.optics.energy, tuple(spec.optics.tilt_mrad))
    if rkey not in reflections:
        refl = kinematic_reflections(
            entry.structure_for(spec.zone_axis),
            rotation,
            spec.optics.wavelength_A,
            detector,
            spec.optics.tilt_mrad,
            entry.sigmas,
            s.max_excitation_error,
            s.parametrization,
        )
        reflections[rkey] = (refl, vg_map(refl, detector.shape, s.blob_sigma_px), kinematic_visible(refl))
    refl, vg, visible = reflections[rkey]
    R = s.max_reflections
    m = min(R, len(refl["hkl"]))
    # what the dynamical pattern shows, per thickness: electrons in each disk core, and present at the reference dose
    disk_px = sim_optics.aperture_radius_inv_A / detector.pixel_size_inv_A
    seen = disk_intensities(det_patterns, refl["pixel"][:m], disk_px)
    shown = present(seen["intensity"], seen["background"], REFERENCE_DOSE_E) & distinct_spots(refl["pixel"][:m])
    disk_maps = np.stack([disk_map(refl["pixel"][:m][row], detector.shape, s.blob_sigma_px) for row in shown])

    def pad(a, fill, dtype):
        out = np.full((R, *a.shape[1:]), fill, dtype=dtype)
        out[:m] = a[:m]
        return out

    T = len(exact_t)
    info = entry.info
    per_run = {
        "labels/structure_id": spec.structure_id,
        "labels/formula": info["formula"],
        "labels/space_group": int(info["space_group_number"]),
        "labels/crystal_system": CRYSTAL_SYSTEMS.index(info["crystal_system"]),
        "labels/zone": spec.zone,
        "labels/zone_axis": np.asarray(spec.zone_axis or (0, 0, 0), dtype=np.int32),
        "labels/rotation": rotation,
        "labels/in_plane_deg": spec.in_plane_deg,
        "labels/mistilt_mrad": np.asarray(spec.optics.tilt_mrad),
        "labels/energy_eV": spec.optics.energy,
        "labels/semiangle_mrad": spec.optics.semiangle_mrad,
        "labels/defocus_A": spec.optics.defocus_A,
        "labels/aberrations": np.array([spec.optics.aberrations_A.get(k, 0.0) for k in ABERRATION_KEYS]),
        "labels/source_size_A": spec.optics.source_size_A,
        "labels/probe_position_A": position,
        "labels/run_index": spec.index,
        "labels/sim_grid_gpts": np.asarray(grid["gpts"], dtype=np.int32),
        "labels/vg_map": vg,
        "labels/num_reflections": m,
        "labels/reflections_hkl": pad(refl["hkl"], 0, np.int32),
        "labels/reflections_g": pad(refl["g"], np.nan, np.float32),
        "labels/reflections_px": pad(refl["pixel"], np.nan, np.float32),
        "labels/reflections_excitation_error": pad(refl["excitation_error"], np.nan, np.float32),
        "labels/reflections_F": pad(refl["F_abs"], np.nan, np.float32),
        "labels/reflections_V": pad(refl["V_abs"], np.nan, np.float32),
        "labels/reflections_visible": pad(visible, False, bool),
        "probes": probe,
    }
    out = {k: np.repeat(np.asarray(v)[None], T, axis=0) for k, v in per_run.items()}
    out["patterns"] = det_patterns
    out["labels/thickness_A"] = exact_t
    out["labels/disk_map"] = disk_maps
    out["labels/reflections_intensity"] = np.stack([pad(row, np.nan, np.float32) for row in seen["intensity"]])
    out["labels/reflections_background"] = np.stack([pad(row, np.nan, np.float32) for row in seen["background"]])
    out["labels/reflections_present"] = np.stack([pad(row, False, bool) for row in shown])
    out["labels/disk_core_px"] = np.full(T, seen["core_px"], dtype=np.float32)
    return out


def simulate_chunk(cfg, catalog: list[CatalogEntry], detector: Detector, c: int, length: int, progress=None) -> dict:
    """Every stored array of chunk ``c`` (``length`` patterns), computed group by group. The same function
    runs locally and on cluster workers (:mod:`stemforge.sim.cluster`), so both write the same bytes."""
    T = len(cfg.sampling.thicknesses_nm)
    k = optics_per_specimen(cfg)
    first = c * int(cfg.dataset.chunk_runs)
    runs = list(range(first, first + math.ceil(length / T)))
    pieces = []
    while runs:
        g = runs[0] // k
        group = [r for r in runs if r // k == g]
        runs = runs[len(group) :]
        specs = [plan_run(cfg, catalog, cfg.dataset.seed, r) for r in group]
        pieces.extend(simulate_group(cfg, catalog, specs, detector))
        if progress is not None:
            progress.update(len(group))
    return {key: np.concatenate([p[key] for p in pieces])[:length] for key in pieces[0]}
