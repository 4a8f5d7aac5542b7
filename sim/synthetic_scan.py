"""Synthetic 4D-STEM scans with ground-truth maps, for validating the analysis stage.

A *profile* assigns every scan position a phase, an in-plane strain ``(εxx, εyy, εxy)``, an in-plane rotation θ and
a thickness:

* ``multilayer`` — a Si/SiGe-like stack: bands along the scan rows with in-plane strain ``εxx`` per band
  (``band_strain_percent``) and ``εyy = −ν·εxx`` (``poisson_ratio``), optional rotation per band; thicknesses
  banded along the scan columns (``thickness_nm``);
* ``grains`` — Voronoi grains (seeded) of the listed structures with random in-plane rotations up to
  ``grain_rotation_deg``, unstrained — for orientation and phase mapping.

Physics. Each position is a locally homogeneous crystal simulated by dynamical multislice (abTEM, through
:func:`sim.multislice.simulate_cbed`): the zone-axis cell (:func:`sim.specimen.zone_axis_specimen`) is stretched by
``(1+εxx, 1+εyy)`` along its orthogonal axes (atoms scaled with the cell: exact for strain diagonal in that frame,
which keeps the cell orthogonal and periodic), and θ is applied as the rotation of the pattern on the detector, as the
dataset generator does. Every unique (phase, strain, θ) set is simulated once with exit planes at all its
thicknesses, and positions share the result: for a periodic crystal and disks that do not overlap the probe
position inside the cell does not change the pattern (the probe sits at the centre of the cell).

Ground truth per position (``ground_truth/``): ``exx, eyy, exy`` (real-space strain in the detector frame x=col,
y=row: the symmetric left stretch of Rθ·diag(1+εxx, 1+εyy), so a rotated band has εxy ≠ 0), ``theta_deg``,
``thickness_A`` (the exit plane simulated: ``thickness_nm`` rounded to the nearest slice boundary), ``phase``
(index into attrs ``phases``), ``rotation`` (crystal → lab), ``zone_axis``, and the kinematic reflections of the
strained, rotated crystal: ``reflections_px`` (x=col, y=row; NaN padded), ``reflections_visible``,
``reflections_hkl``. Written in the ``datacube/1`` zarr layout that
:func:`analysis.load` reads; ``complete`` is set last.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from .config import ConfigError, ScanConfig, build_detector, validate  # noqa: F401 (ScanConfig re-exported)
from .generate import _rot_z, _versions

log = logging.getLogger(__name__)
PROFILES = ("none", "multilayer", "grains")
FORMAT = "datacube/1"


def validate_scan(s) -> None:
    """One-line :class:`ConfigError` for impossible scan settings (cheap; no abTEM)."""
    if s.profile not in PROFILES:
        raise ConfigError(f"scan.profile must be one of {list(PROFILES)}, got {s.profile!r}")
    if len(s.scan_shape) != 2 or min(s.scan_shape) < 1:
        raise ConfigError(f"scan.scan_shape must be two sizes ≥ 1, got {list(s.scan_shape)}")
    if not s.step_A > 0:
        raise ConfigError(f"scan.step_A must be > 0 Å, got {s.step_A}")
    if not s.structures:
        raise ConfigError("scan.structures must list at least one structure")
    for e in s.band_strain_percent:
        if not abs(e) < 20.0 or abs(e * s.poisson_ratio) >= 20.0:
            raise ConfigError(f"scan.band_strain_percent must stay below 20 % in magnitude, got {e}")
    if not 0 <= s.poisson_ratio < 0.5:
        raise ConfigError(f"scan.poisson_ratio must lie in [0, 0.5), got {s.poisson_ratio}")
    if not s.thickness_nm or min(s.thickness_nm) <= 0:
        raise ConfigError(f"scan.thickness_nm must list thicknesses > 0 nm, got {list(s.thickness_nm)}")
    if not s.energy_eV >= 1e3 or not s.semiangle_mrad > 0:
        raise ConfigError("scan.energy_eV must be ≥ 1 keV (in eV) and scan.semiangle_mrad > 0")
    if s.num_grains < 1:
        raise ConfigError(f"scan.num_grains must be ≥ 1, got {s.num_grains}")


def position_parameters(s) -> dict:
    """Per-position ``phase, exx, eyy, exy, theta_deg, thickness_A`` maps of a profile (pure, seeded)."""
    Rx, Ry = (int(v) for v in s.scan_shape)
    ii, jj = np.mgrid[:Rx, :Ry]
    th = np.asarray(s.thickness_nm, dtype=float) * 10.0
    out = {"thickness_A": th[(jj * len(th)) // Ry]}
    if s.profile == "multilayer":
        bands = (ii * len(s.band_strain_percent)) // Rx
        exx = np.asarray(s.band_strain_percent, dtype=float)[bands] / 100.0
        rot = np.asarray(s.band_rotation_deg, dtype=float)
        out.update(phase=np.zeros((Rx, Ry), np.int32), exx=exx, eyy=-s.poisson_ratio * exx, exy=np.zeros((Rx, Ry)),
                   theta_deg=rot[(ii * len(rot)) // Rx])
    elif s.profile == "grains":
        rng = np.random.default_rng(int(s.seed))
        seeds = rng.uniform([0, 0], [Rx, Ry], size=(int(s.num_grains), 2))
        grain = np.argmin((ii[..., None] - seeds[:, 0]) ** 2 + (jj[..., None] - seeds[:, 1]) ** 2, axis=-1)
        angles = np.round(rng.uniform(-s.grain_rotation_deg, s.grain_rotation_deg, int(s.num_grains)), 1)
        phases = np.arange(int(s.num_grains)) % len(s.structures)
        zero = np.zeros((Rx, Ry))
        out.update(phase=phases[grain].astype(np.int32), exx=zero, eyy=zero.copy(), exy=zero.copy(),
                   theta_deg=angles[grain])
    else:
        raise ConfigError(f"scan.profile {s.profile!r} has no positions")
    return out


def _strained_structure(structure, rotation, exx: float, eyy: float):
    """The structure deformed by diag(1+εxx, 1+εyy, 1) in the simulation frame (``rotation``: crystal → frame)."""
    from pymatgen.core import Lattice, Structure

    D = np.diag([1.0 + exx, 1.0 + eyy, 1.0])
    M = rotation.T @ D @ rotation  # the deformation in the crystal's Cartesian frame
    lattice = Lattice(structure.lattice.matrix @ M.T)
    return Structure(lattice, structure.species, structure.frac_coords)


def simulate_set(cfg, structure, sigmas, uvw, exx, eyy, theta_deg, thicknesses_A, detector):
    """Patterns ``(T, H, W)``, vacuum probe ``(H, W)``, the labels' rotation and kinematic reflections of one set."""
    from .detector import resample, resampling_matrix
    from .labels import disk_visible, kinematic_reflections
    from .multislice import Phonons, simulate_cbed, vacuum_probe
    from .optics import Optics
    from .specimen import zone_axis_specimen

    s, sc = cfg.sampling, cfg.scan
    optics = Optics(energy=float(sc.energy_eV), semiangle_mrad=float(sc.semiangle_mrad), defocus_A=float(sc.defocus_A))
    try:
        spec = zone_axis_specimen(structure, uvw, float(max(thicknesses_A)), detector.min_extent_A(s.k_oversample))
    except ValueError as err:
        raise ConfigError(f"scan.zone_axis {sc.zone_axis}: {err}") from None
    for atoms in (spec.atoms, spec.repeat_cell):
        cell = np.array(atoms.cell)
        atoms.set_cell(np.diag([cell[0, 0] * (1 + exx), cell[1, 1] * (1 + eyy), cell[2, 2]]), scale_atoms=True)
    ux, uy = spec.repeat_cell.cell[0, 0], spec.repeat_cell.cell[1, 1]
    nx, ny = spec.info["repetitions"][:2]
    position = np.array([(nx // 2 + 0.5) * ux, (ny // 2 + 0.5) * uy])
    patterns, native, exact_t, _ = simulate_cbed(
        spec, optics, position, np.asarray(thicknesses_A), sampling_A=s.real_space_A,
        slice_thickness_A=s.slice_thickness_A, phonons=Phonons(s.frozen_phonons, sigmas, int(sc.seed)),
        parametrization=s.parametrization, device=cfg.optics.device)
    det = resample(patterns, resampling_matrix(patterns.shape[1:], native, detector, theta_deg), detector)
    probe_native, probe_sampling = vacuum_probe(optics, spec.extent_A, s.real_space_A, cfg.optics.device)
    probe = resample(probe_native, resampling_matrix(probe_native.shape, probe_sampling, detector), detector)
    strained = _strained_structure(structure, spec.rotation, exx, eyy)
    rotation = _rot_z(theta_deg) @ spec.rotation
    refl = kinematic_reflections(strained, rotation, optics.wavelength_A, detector, (0.0, 0.0), sigmas,
                                 s.max_excitation_error, s.parametrization)
    return det, probe, rotation, refl, disk_visible(refl), exact_t


def _left_stretch_strain(exx, eyy, theta_deg):
    """ε of the lab-frame deformation Rθ·diag(1+εxx, 1+εyy): the left stretch V = Rθ D Rθᵀ minus I."""
    t = math.radians(theta_deg)
    R = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    V = R @ np.diag([1 + exx, 1 + eyy]) @ R.T - np.eye(2)
    return V[0, 0], V[1, 1], V[0, 1]


def identity(cfg) -> dict:
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    scan = {k: v for k, v in c["scan"].items() if k not in ("path", "progress")}
    return {"scan": scan, "sampling": c["sampling"], "detector": c["detector"]}


def generate_scan(cfg) -> str:
    """Write (or confirm) the synthetic scan of ``cfg.scan``; returns its path."""
    import shutil
    from pathlib import Path

    import zarr

    from .multislice import configure_abtem
    from .orientations import parse_zone_axis
    from .structures import StructureError, load_structure

    sc = cfg.scan
    validate_scan(sc)
    validate(cfg)
    detector = build_detector(cfg.detector)
    params = position_parameters(sc)
    ident = identity(cfg)
    path = Path(sc.path)
    if path.exists():
        try:
            attrs = dict(zarr.open_group(str(path), mode="r").attrs)
        except Exception:  # noqa: BLE001 - anything unreadable is not ours to overwrite
            raise ConfigError(f"{path} exists and is not a stemforge scan; choose another scan.path") from None
        if attrs.get("complete") and attrs.get("config") == ident:
            log.info("%s is complete with the same configuration: nothing to do", path)
            return str(path)
        if attrs.get("complete"):
            raise ConfigError(f"{path} holds a complete scan with another configuration; choose another scan.path")
        # scans are written to a sibling and renamed, so an incomplete group here is not one of ours: never delete it
        raise ConfigError(f"{path} exists and is not a complete stemforge scan; remove it or choose another scan.path")
    try:
        structures = [load_structure(n) for n in sc.structures]
        uvw = parse_zone_axis(sc.zone_axis)[0]
    except (StructureError, ValueError) as err:
        raise ConfigError(f"scan: {err}") from None
    configure_abtem(fftw_threads=cfg.sampling.fftw_threads)
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(cfg, tmp, detector, params, structures, uvw, ident)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing is left behind by a failed or interrupted run
        raise
    tmp.rename(path)
    return str(path)


def _write(cfg, tmp, detector, params, structures, uvw, ident) -> None:
    """Simulate every unique set and write the scan to ``tmp`` (``complete`` set last)."""
    import zarr
    from tqdm.auto import tqdm

    from .structures import debye_waller_sigmas

    sc = cfg.scan
    Rx, Ry = (int(v) for v in sc.scan_shape)
    H, W = detector.shape
    R = int(cfg.sampling.max_reflections)
    keys = np.stack([params["phase"], params["exx"], params["eyy"], params["theta_deg"]], -1).reshape(-1, 4)
    unique = np.unique(keys, axis=0)
    thick = np.unique(params["thickness_A"])
    g = zarr.open_group(str(tmp), mode="w")
    g.attrs.update({"stemforge_format": FORMAT, "complete": False})
    data = g.create_array("data", shape=(Rx, Ry, H, W), chunks=(1, Ry, H, W), dtype="float32")
    gt = {n: np.full((Rx, Ry, *shp), fill, dtype=dt) for n, shp, fill, dt in [
        ("reflections_px", (R, 2), np.nan, np.float32), ("reflections_visible", (R,), False, bool),
        ("reflections_hkl", (R, 3), 0, np.int32), ("rotation", (3, 3), np.nan, np.float64),
        ("zone_axis", (3,), 0, np.int32)]}
    cube = np.zeros((Rx, Ry, H, W), np.float32)
    thickness_A = np.full((Rx, Ry), np.nan)
    probe = None
    for key in tqdm(unique, desc="simulating unique positions", unit="set", disable=not sc.progress):
        ph, exx, eyy, th = int(key[0]), float(key[1]), float(key[2]), float(key[3])
        st = structures[ph]
        sigmas = debye_waller_sigmas(st, default=cfg.structure.debye_waller_default_A)
        pats, probe, rot, refl, vis, exact_t = simulate_set(cfg, st, sigmas, uvw, exx, eyy, th, thick, detector)
        where = np.all(np.stack([params["phase"], params["exx"], params["eyy"], params["theta_deg"]], -1) == key, -1)
        m = min(R, len(refl["hkl"]))
        for t_i, t in enumerate(thick):
            sel = where & (params["thickness_A"] == t)
            cube[sel] = pats[t_i]
            thickness_A[sel] = exact_t[t_i]  # the exit plane actually reached (slice boundary nearest the request)
        gt["reflections_px"][where, :m] = refl["pixel"][:m]
        gt["reflections_visible"][where, :m] = vis[:m]
        gt["reflections_hkl"][where, :m] = refl["hkl"][:m]
        gt["rotation"][where] = rot
        gt["zone_axis"][where] = np.asarray(uvw, dtype=np.int32)
    for rx in range(Rx):
        data[rx] = cube[rx]
    g.create_array("probe", data=probe.astype(np.float32))
    strain = np.vectorize(_left_stretch_strain)(params["exx"], params["eyy"], params["theta_deg"])
    maps = {"exx": strain[0], "eyy": strain[1], "exy": strain[2], "theta_deg": params["theta_deg"],
            "thickness_A": thickness_A, "phase": params["phase"], **gt}
    for name, arr in maps.items():
        arr = np.asarray(arr)
        if arr.dtype == np.float64 and name != "rotation":
            arr = arr.astype(np.float32)
        g.create_array(f"ground_truth/{name}", data=arr)
    g.attrs.update({
        "calibration": {"q_pixel_size": detector.pixel_size, "energy_eV": float(sc.energy_eV),
                        "semiangle_mrad": float(sc.semiangle_mrad), "scan_step_A": [float(sc.step_A)] * 2,
                        "origin_px": [float(H // 2), float(W // 2)], "ellipticity": None, "rotation_deg": 0.0},
        "phases": [str(n) for n in sc.structures],
        "ground_truth_units": {"exx": "1", "eyy": "1", "exy": "1", "theta_deg": "degree", "thickness_A": "Å",
                               "phase": "index into phases", "rotation": "crystal→lab", "reflections_px":
                               "px (x=col, y=row)"},
        "unique_sets": int(len(unique)), "config": ident, "versions": _versions(),
        "units": {"data": "fraction of incident beam per pixel"},
    })
    g.attrs["complete"] = True
