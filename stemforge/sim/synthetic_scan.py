"""Synthetic 4D-STEM scans (Rx, Ry, H, W) with ground-truth maps, for validating the analysis stage.

A profile (:mod:`stemforge.sim.scan_profiles`: ``multilayer``, ``smooth``, ``grains``) gives every scan position a
phase,
an in-plane strain ε (detector frame), a rotation θ and a thickness. Each position is a *locally homogeneous*
crystal: the zone-axis crystal of its phase deformed by ``F = (I + ε)·Rθ`` (beam direction unchanged),
simulated by dynamical multislice (:func:`stemforge.sim.multislice.simulate_cbed`).

How a position is simulated (exactly, not linearised):

* ``F = Rθ·U`` with the right stretch ``U = Rθᵀ(I + ε)Rθ``. The crystal strained by ``U`` is simulated, then
  its pattern is rotated by θ on the detector (:func:`stemforge.sim.detector.resampling_matrix`, as the dataset
  generator
  does; the scan's probe has only defocus, which is rotationally symmetric, so this equals rotating the crystal).
* ``U`` diagonal in the zone-axis cell's frame (e.g. multilayer bands without rotation, grains): the periodic
  orthogonal zone-axis supercell (:func:`stemforge.sim.specimen.zone_axis_specimen`) is stretched with its atoms
  (``(1+Uxx, 1+Uyy)``) — still orthogonal and periodic. Otherwise (shear in the cell frame): the strained
  crystal (lattice deformed by ``Qᵀ U Q``) is cut into a non-periodic box
  (:func:`stemforge.sim.specimen.oriented_box_specimen`)
  at least ``2·stemforge.sim.optics.probe_spread_radius_A`` wide, the probe at its centre.

What is reused (dedupe). Positions with equal (phase, ``U``) share one multislice pass, which records every
thickness of the scan through exit planes; positions with equal (phase, ``U``, θ) share one detector pattern.
The probe sits at one fixed place in the crystal (the centre of a repeat cell, or of the box) for every scan
position: this assumes the CBED disks do not overlap (2α below the smallest Bragg angle), where the probe's
position within the unit cell does not change the pattern. Frozen-phonon snapshots use ``scan.seed`` for
every set. ``scan.dedupe=false`` simulates every position on its own (same bytes; for checking only).

Output: the ``datacube/1`` zarr layout that :func:`stemforge.analysis.load` reads — ``data`` (Rx, Ry, H, W) float32 in
fractions of the incident beam per pixel (noise-free), ``probe`` (H, W), ``ground_truth/`` with ``exx, eyy,
exy`` (detector-frame strain), ``theta_deg``, ``thickness_A`` (the exit plane simulated: the requested thickness
rounded to a slice boundary), ``phase`` (index into attrs ``phases``), ``rotation`` (crystal → lab, ``Rz(θ)·Q``
of the unstrained crystal), ``zone_axis``, and the kinematic reflections of each position's strained, rotated
crystal (``reflections_px`` x=col, y=row, NaN padded; ``reflections_visible``, the kinematic flag;
``reflections_hkl``) with what the noise-free pattern puts in each disk core (``reflections_intensity`` and
``reflections_background``, fractions of the beam, :func:`stemforge.sim.labels.disk_intensities`), from which
:func:`stemforge.sim.labels.present` says which reflections a detector shows at a given dose. The group is
written to ``<path>.partial``, ``complete: true`` is set last, and only then is it renamed to ``path``: an
interrupted run never leaves anything at ``path``. A complete scan with the same configuration is left as it is;
one with another configuration, or anything else at ``path``, is refused.
"""

from __future__ import annotations

import logging

import numpy as np

from stemforge.core.calibration import Calibration

from .config import ConfigError, ScanConfig, build_detector, validate  # noqa: F401 (ScanConfig re-exported)
from .frames import rotation_z
from .provenance import software_versions as _versions  # module attribute: tests interrupt the write here
from .scan_profiles import PROFILES, crystal_frame_strain, position_parameters, strain_tensor, validate_scan  # noqa: F401

log = logging.getLogger(__name__)
FORMAT = "datacube/1"
_SHEAR_TOL = 1e-12  # |Uxy| below which the periodic (stretched orthogonal cell) path is exact
_SAMPLING_KEYS = (
    "real_space_A",
    "k_oversample",
    "slice_thickness_A",
    "frozen_phonons",
    "sigmas_A",
    "parametrization",
    "max_excitation_error",
    "max_reflections",
)


def scan_optics(sc):
    """The scan's :class:`stemforge.sim.optics.Optics` (energy eV, semiangle mrad, defocus Å; no other aberrations)."""
    from .optics import Optics

    return Optics(energy=float(sc.energy_eV), semiangle_mrad=float(sc.semiangle_mrad), defocus_A=float(sc.defocus_A))


def zone_rotation(structure, uvw) -> np.ndarray:
    """Crystal → simulation-frame rotation of the unstrained, unrotated crystal: that of the orthogonal zone-axis
    cell (:func:`stemforge.sim.specimen.orthogonal_lattice_basis`) when one exists, else
    :func:`stemforge.sim.orientations.zone_axis_rotation`."""
    from .orientations import zone_axis_rotation
    from .specimen import orthogonal_lattice_basis

    P = orthogonal_lattice_basis(structure.lattice.matrix, uvw)
    if P is None:
        return zone_axis_rotation(structure, uvw)
    v = P @ structure.lattice.matrix
    return v / np.linalg.norm(v, axis=1)[:, None]


def strained_structure(structure, Q: np.ndarray, U: np.ndarray):
    """The structure deformed in-plane by ``I + U`` (2×2, simulation frame of rotation ``Q``; z unchanged)."""
    from pymatgen.core import Lattice, Structure

    D = np.eye(3)
    D[:2, :2] += np.asarray(U, dtype=float)
    M = Q.T @ D @ Q  # the deformation in the crystal's Cartesian frame
    return Structure(Lattice(structure.lattice.matrix @ M.T), structure.species, structure.frac_coords)


def strained_specimen(cfg, structure, uvw, Q, U, depth_A: float, detector):
    """Specimen of the crystal strained by ``U`` and the probe position (x, y) Å in it (see module docstring)."""
    from .optics import probe_spread_radius_A
    from .specimen import oriented_box_specimen, zone_axis_specimen

    s = cfg.sampling
    min_extent = detector.min_extent_A(s.k_oversample)
    if abs(U[0, 1]) < _SHEAR_TOL:
        try:
            spec = zone_axis_specimen(structure, uvw, depth_A, min_extent)
        except ValueError:
            spec = None
        if spec is not None and np.allclose(spec.rotation, Q, atol=1e-9):
            for atoms in (spec.atoms, spec.repeat_cell):
                cell = np.array(atoms.cell)
                atoms.set_cell(
                    np.diag([cell[0, 0] * (1 + U[0, 0]), cell[1, 1] * (1 + U[1, 1]), cell[2, 2]]), scale_atoms=True
                )
            ux, uy = spec.repeat_cell.cell[0, 0], spec.repeat_cell.cell[1, 1]
            nx, ny = spec.info["repetitions"][:2]
            return spec, np.array([(nx // 2 + 0.5) * ux, (ny // 2 + 0.5) * uy])
    optics = scan_optics(cfg.scan)
    theta_mrad = detector.max_frequency * optics.wavelength_A * 1e3
    side = max(min_extent, 2 * probe_spread_radius_A(optics, depth_A, theta_mrad))
    spec = oriented_box_specimen(strained_structure(structure, Q, U), Q, (side, side, depth_A))
    return spec, np.array([side / 2, side / 2])


def simulate_strained(cfg, structure, sigmas, uvw, Q, U, thicknesses_A, detector):
    """One multislice pass of the crystal strained by ``U``: native patterns ``(T, ny, nx)``, their sampling
    ``(dky, dkx)`` Å⁻¹, the exact exit-plane thicknesses (Å) and the specimen."""
    from .multislice import Phonons, simulate_cbed

    s = cfg.sampling
    depth = max(float(np.max(thicknesses_A)), float(s.slice_thickness_A))
    spec, position = strained_specimen(cfg, structure, uvw, Q, U, depth, detector)
    patterns, native, exact_t, _ = simulate_cbed(
        spec,
        scan_optics(cfg.scan),
        position,
        np.asarray(thicknesses_A),
        sampling_A=s.real_space_A,
        slice_thickness_A=s.slice_thickness_A,
        phonons=Phonons(s.frozen_phonons, sigmas, int(cfg.scan.seed)),
        parametrization=s.parametrization,
        device=cfg.optics.device,
    )
    return patterns, native, np.asarray(exact_t, dtype=float), spec


def position_labels(cfg, structure, sigmas, Q, U, theta_deg: float, detector):
    """Crystal → lab rotation ``Rz(θ)·Q`` and the kinematic reflections of the strained, rotated crystal."""
    from .labels import kinematic_reflections, kinematic_visible

    rotation = rotation_z(theta_deg) @ Q
    refl = kinematic_reflections(
        strained_structure(structure, Q, U),
        rotation,
        scan_optics(cfg.scan).wavelength_A,
        detector,
        (0.0, 0.0),
        sigmas,
        cfg.sampling.max_excitation_error,
        cfg.sampling.parametrization,
    )
    return rotation, refl, kinematic_visible(refl)


def identity(cfg) -> dict:
    """What defines a scan's content (not where it lives, how it reports, or whether sets are shared)."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    return {
        "scan": {k: v for k, v in c["scan"].items() if k not in ("path", "progress", "dedupe")},
        "sampling": {k: c["sampling"][k] for k in _SAMPLING_KEYS},
        "detector": c["detector"],
        "debye_waller_default_A": c["structure"]["debye_waller_default_A"],
    }


def generate_scan(cfg) -> str:
    """Write (or confirm) the synthetic scan of ``cfg.scan`` at ``cfg.scan.path``; returns the path.

    Raises :class:`ConfigError` (one line) before any compute for bad values, an unknown structure or zone axis,
    or a ``path`` holding anything but a complete scan of the same configuration.
    """
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
    shutil.rmtree(tmp, ignore_errors=True)  # a stale sibling of an interrupted run of ours
    try:
        _write(cfg, tmp, detector, position_parameters(sc), structures, uvw, ident)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing is left behind by a failed or interrupted run
        raise
    tmp.rename(path)
    return str(path)


def _set_keys(params: dict, dedupe: bool):
    """Per position: the index of its multislice set (phase, rounded U) and the set list."""
    eps = strain_tensor(params["exx"], params["eyy"], params["exy"])
    U = np.round(crystal_frame_strain(eps, params["theta_deg"]), 12) + 0.0  # + 0.0: no −0.0 (unique compares bytes)
    rows = np.concatenate([params["phase"][..., None].astype(float), U.reshape(*U.shape[:2], 4)], -1).reshape(-1, 5)
    if dedupe:
        unique, inverse = np.unique(rows, axis=0, return_inverse=True)
        return unique, inverse.reshape(params["phase"].shape)
    return rows, np.arange(len(rows)).reshape(params["phase"].shape)


def _write(cfg, tmp, detector, params, structures, uvw, ident) -> None:
    """Simulate every set and write the scan to ``tmp`` (``complete`` set last)."""
    import zarr
    from tqdm.auto import tqdm

    from .detector import resample, resampling_matrix
    from .labels import disk_intensities
    from .multislice import vacuum_probe
    from .structures import debye_waller_sigmas

    sc = cfg.scan
    Rx, Ry = (int(v) for v in sc.scan_shape)
    H, W = detector.shape
    R = int(cfg.sampling.max_reflections)
    sets, set_of = _set_keys(params, bool(sc.dedupe))
    thick = np.unique(params["thickness_A"])
    t_index = np.searchsorted(thick, params["thickness_A"])
    sigmas = [
        {
            **debye_waller_sigmas(str(name), default=cfg.structure.debye_waller_default_A),
            **{k: float(v) for k, v in cfg.sampling.sigmas_A.items()},
        }
        for name in sc.structures
    ]
    Qs = [zone_rotation(st, uvw) for st in structures]
    disk_px = scan_optics(sc).aperture_radius_inv_A / detector.pixel_size_inv_A
    patterns = {}  # (set, θ) -> (T, H, W) detector patterns
    gt = {
        n: np.full((Rx, Ry, *shp), fill, dtype=dt)
        for n, shp, fill, dt in [
            ("reflections_px", (R, 2), np.nan, np.float32),
            ("reflections_visible", (R,), False, bool),
            ("reflections_intensity", (R,), np.nan, np.float32),
            ("reflections_background", (R,), np.nan, np.float32),
            ("reflections_hkl", (R, 3), 0, np.int32),
            ("rotation", (3, 3), np.nan, np.float64),
        ]
    }
    thickness_A = np.full((Rx, Ry), np.nan)
    probe = None
    for k in tqdm(range(len(sets)), desc="multislice sets", unit="set", disable=not sc.progress):
        ph, U = int(sets[k, 0]), sets[k, 1:].reshape(2, 2)
        native, sampling, exact_t, spec = simulate_strained(
            cfg, structures[ph], sigmas[ph], uvw, Qs[ph], U, thick, detector
        )
        if probe is None:
            p_native, p_sampling = vacuum_probe(
                scan_optics(sc), spec.extent_A, cfg.sampling.real_space_A, cfg.optics.device
            )
            probe = resample(p_native, resampling_matrix(p_native.shape, p_sampling, detector), detector)
        members = set_of == k
        for theta in np.unique(params["theta_deg"][members]):
            where = members & (params["theta_deg"] == theta)
            patterns[k, theta] = resample(
                native, resampling_matrix(native.shape[1:], sampling, detector, theta), detector
            )
            rot, refl, vis = position_labels(cfg, structures[ph], sigmas[ph], Qs[ph], U, theta, detector)
            m = min(R, len(refl["hkl"]))
            gt["reflections_px"][where, :m] = refl["pixel"][:m]
            gt["reflections_visible"][where, :m] = vis[:m]
            seen = disk_intensities(patterns[k, theta], refl["pixel"][:m], disk_px)  # per thickness (T, m)
            gt["reflections_intensity"][where, :m] = seen["intensity"][t_index[where]]
            gt["reflections_background"][where, :m] = seen["background"][t_index[where]]
            gt["reflections_hkl"][where, :m] = refl["hkl"][:m]
            gt["rotation"][where] = rot
        thickness_A[members] = exact_t[t_index[members]]  # the exit plane reached (slice boundary nearest)
    g = zarr.open_group(str(tmp), mode="w")
    g.attrs.update({"stemforge_format": FORMAT, "complete": False})
    data = g.create_array("data", shape=(Rx, Ry, H, W), chunks=(1, Ry, H, W), dtype="float32")
    for rx in range(Rx):
        data[rx] = np.stack(
            [patterns[set_of[rx, ry], params["theta_deg"][rx, ry]][t_index[rx, ry]] for ry in range(Ry)]
        )
    g.create_array("probe", data=probe.astype(np.float32))
    maps = {
        "exx": params["exx"],
        "eyy": params["eyy"],
        "exy": params["exy"],
        "theta_deg": params["theta_deg"],
        "thickness_A": thickness_A,
        "phase": params["phase"].astype(np.int32),
        "zone_axis": np.broadcast_to(np.asarray(uvw, dtype=np.int32), (Rx, Ry, 3)),
        **gt,
    }
    for name, arr in maps.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype == np.float64 and name != "rotation":
            arr = arr.astype(np.float32)
        g.create_array(f"ground_truth/{name}", data=arr)
    g.attrs.update(
        {
            "calibration": detector.calibration.with_(
                energy_eV=float(sc.energy_eV),
                semiangle_mrad=float(sc.semiangle_mrad),
                scan_step_A=(float(sc.step_A), float(sc.step_A)),
            ).as_dict(),
            "phases": [str(n) for n in sc.structures],
            "ground_truth_units": {
                "exx": "1",
                "eyy": "1",
                "exy": "1",
                "theta_deg": "degree",
                "thickness_A": "Å",
                "phase": "index into phases",
                "rotation": "crystal→lab",
                "zone_axis": "[uvw]",
                "reflections_px": "px (x=col, y=row)",
                "reflections_intensity": "fraction of incident beam in the disk core",
                "reflections_background": "fraction of incident beam a smooth background puts in the core",
            },
            "strain_convention": "F = (I + ε)·Rθ of the unstrained zone-axis crystal; ε detector frame (x=col, y=row)",
            "multislice_sets": int(len(sets)),
            "config": ident,
            "versions": _versions(),
            "units": {"data": "fraction of incident beam per pixel"},
        }
    )
    g.attrs["complete"] = True


def scan_summary(path) -> str:
    """A few lines describing a complete scan at ``path`` (shape, ranges of its maps, size on disk)."""
    from pathlib import Path

    import zarr

    g = zarr.open_group(str(path), mode="r")
    a, gt = dict(g.attrs), g["ground_truth"]
    cal = Calibration.from_dict(a["calibration"])  # also a scan written before 0.2.0 (q_pixel_size)
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())

    def span(name, scale=1.0, unit=""):
        v = np.asarray(gt[name][...], dtype=float) * scale
        return f"{name} {v.min():.3g}…{v.max():.3g}{unit}"

    c = a["config"]["scan"]
    lines = [
        f"{c['profile']} scan {tuple(g['data'].shape)} of {'/'.join(a['phases'])} {c['zone_axis']} at {path} "
        f"({a.get('multislice_sets', '?')} multislice sets, {size / 2**20:.1f} MiB)",
        "  "
        + ", ".join(
            [span("exx", 100, " %"), span("eyy", 100, " %"), span("exy", 100, " %"), span("theta_deg", 1, "°")]
        ),
        f"  thickness_A {sorted({float(t) for t in np.round(np.asarray(gt['thickness_A'][...], float), 2).ravel()})}, "
        f"step {cal.scan_step_A[0]:g} Å, detector {tuple(g['data'].shape[2:])} at {cal.pixel_size_inv_A:g} Å⁻¹/px",
    ]
    return "\n".join(lines)
