"""Per-position parameters of synthetic 4D-STEM scans (profiles) and the in-plane strain algebra they use.

Conventions (those of the stemforge ``datacube/1`` ground truth). Frames are the detector's: x = column,
y = row. A position's crystal is the unstrained zone-axis crystal (the ``rotation`` of ``stemforge.sim.specimen``)
deformed
in-plane by ``F = (I + ε) · Rθ`` (2×2, the beam direction z is left unchanged):

* ``θ`` (``theta_deg``): rotation, counter-clockwise from x towards y;
* ``ε`` (``exx``, ``eyy``, ``exy``): symmetric strain *in the detector frame* — the left stretch ``V = I + ε``
  of the polar decomposition ``F = V·Rθ``. Exact (finite), not linearised.

The reciprocal lattice transforms with ``F⁻ᵀ = (I + ε)⁻¹ Rθ``: a reflection g of the unstrained crystal is
rotated by θ, then mapped by ``(I + ε)⁻¹``. Equivalently ``F = Rθ · U`` with the right stretch
``U = Rθᵀ (I + ε) Rθ`` — the same strain seen in the crystal's own (unrotated) frame — so that ``F⁻ᵀ = Rθ U⁻¹``:
``(I + ε_crystal)⁻ᵀ`` followed by the rotation. :mod:`stemforge.sim.synthetic_scan` simulates ``U`` and rotates the
pattern by θ on the detector, so positions differing only in θ at equal ``U`` share one multislice.

Profiles (``scan.profile``), all seeded and pure:

* ``multilayer`` — a Si/SiGe-like stack: bands along the scan rows (``band_strain_percent``: εxx in the detector
  frame, i.e. along the interfaces, and ``εyy = −ν·εxx`` with ν = ``poisson_ratio``, εxy = 0), a rotation per band
  (``band_rotation_deg``) and thickness steps along the scan columns (``thickness_nm``);
* ``smooth`` — a Gaussian bump of a fixed crystal-frame strain tensor ``a·[[1, s], [s, −ν]]`` (s =
  ``shear_ratio``) of peak amplitude a = ``strain_amplitude_percent`` and width ``bump_width`` (fraction of the
  scan), its amplitude quantised to ``strain_levels`` equal steps from 0 (so a few multislices serve the whole
  scan: the stored maps are the quantised values actually simulated), under a continuous lattice-bending
  rotation ``θ = rotation_amplitude_deg · sin(π·v)`` across the columns (v ∈ (−½, ½)). In the detector frame
  ``ε = Rθ ε_crystal Rθᵀ``, so all three components and θ vary smoothly;
* ``grains`` — Voronoi grains (seeded) of the listed ``structures`` (phases cycled over the grains) with random
  in-plane rotations up to ±``grain_rotation_deg`` (0.1° steps), unstrained: for orientation and phase mapping.

Thickness: ``thickness_nm`` is banded along the scan columns for every profile (one value: uniform).
"""

from __future__ import annotations

import math

import numpy as np

from .config import ConfigError

PROFILES = ("none", "multilayer", "smooth", "grains")
MAX_STRAIN = 0.2  # |ε| at or beyond this is refused (no locally homogeneous crystal model means much there)


def rotation_2d(theta_deg) -> np.ndarray:
    """``Rθ`` (…, 2, 2), counter-clockwise from x towards y, for scalar or array ``theta_deg``."""
    t = np.radians(np.asarray(theta_deg, dtype=float))
    c, s = np.cos(t), np.sin(t)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def strain_tensor(exx, eyy, exy) -> np.ndarray:
    """Symmetric (…, 2, 2) tensor from its components."""
    exx, eyy, exy = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (exx, eyy, exy)))
    return np.stack([np.stack([exx, exy], -1), np.stack([exy, eyy], -1)], -2)


def crystal_frame_strain(eps_detector: np.ndarray, theta_deg) -> np.ndarray:
    """``U − I = Rθᵀ ε Rθ``: the detector-frame strain seen in the unrotated crystal's frame."""
    R = rotation_2d(theta_deg)
    return np.swapaxes(R, -1, -2) @ np.asarray(eps_detector, dtype=float) @ R


def detector_frame_strain(eps_crystal: np.ndarray, theta_deg) -> np.ndarray:
    """``ε = Rθ ε_crystal Rθᵀ`` (inverse of :func:`crystal_frame_strain`)."""
    R = rotation_2d(theta_deg)
    return R @ np.asarray(eps_crystal, dtype=float) @ np.swapaxes(R, -1, -2)


def reciprocal_map(exx: float, eyy: float, exy: float, theta_deg: float) -> np.ndarray:
    """2×2 map of in-plane reciprocal vectors (Å⁻¹, x/y) of the unstrained, unrotated crystal to those of the
    position's crystal: ``F⁻ᵀ = (I + ε)⁻¹ Rθ``. Disk positions on the detector move by the same map about k = 0."""
    return np.linalg.inv(np.eye(2) + strain_tensor(exx, eyy, exy)) @ rotation_2d(theta_deg)


def validate_scan(s) -> None:
    """One-line :class:`ConfigError` for impossible scan settings (cheap; no abTEM)."""
    if s.profile not in PROFILES:
        raise ConfigError(f"scan.profile must be one of {list(PROFILES)}, got {s.profile!r}")
    if len(s.scan_shape) != 2 or min(int(v) for v in s.scan_shape) < 1:
        raise ConfigError(f"scan.scan_shape must be two sizes ≥ 1, got {list(s.scan_shape)}")
    if not s.step_A > 0:
        raise ConfigError(f"scan.step_A must be > 0 Å, got {s.step_A}")
    if not s.structures:
        raise ConfigError("scan.structures must list at least one structure")
    if not 0 <= s.poisson_ratio < 0.5:
        raise ConfigError(f"scan.poisson_ratio must lie in [0, 0.5), got {s.poisson_ratio}")
    if not s.thickness_nm or min(s.thickness_nm) <= 0 or not np.all(np.isfinite(list(s.thickness_nm))):
        raise ConfigError(f"scan.thickness_nm must list thicknesses > 0 nm, got {list(s.thickness_nm)}")
    if not s.energy_eV >= 1e3 or not s.semiangle_mrad > 0 or not np.isfinite(s.defocus_A):
        raise ConfigError("scan.energy_eV must be ≥ 1 keV (in eV), scan.semiangle_mrad > 0, scan.defocus_A finite")
    if s.profile == "multilayer" and (not s.band_strain_percent or not s.band_rotation_deg):
        raise ConfigError("scan.band_strain_percent and scan.band_rotation_deg must list at least one band each")
    if s.profile == "smooth" and (int(s.strain_levels) < 2 or not s.bump_width > 0):
        raise ConfigError(
            f"scan.strain_levels must be ≥ 2 and scan.bump_width > 0, got {s.strain_levels}, {s.bump_width}"
        )
    if s.profile == "grains" and int(s.num_grains) < 1:
        raise ConfigError(f"scan.num_grains must be ≥ 1, got {s.num_grains}")
    for name in (
        "band_strain_percent",
        "band_rotation_deg",
        "strain_amplitude_percent",
        "rotation_amplitude_deg",
        "shear_ratio",
        "grain_rotation_deg",
        "bump_width",
    ):
        if not np.all(np.isfinite(np.asarray(getattr(s, name), dtype=float))):
            raise ConfigError(f"scan.{name} must be finite")
    if s.profile == "none":
        return
    p = position_parameters(s)
    worst = max(float(np.max(np.abs(p[k]))) for k in ("exx", "eyy", "exy"))
    if worst >= MAX_STRAIN:
        raise ConfigError(
            f"scan strain reaches |ε| = {100 * worst:.3g} %; it must stay below "
            f"{100 * MAX_STRAIN:g} % (check band_strain_percent / strain_amplitude_percent)"
        )


def position_parameters(s) -> dict:
    """Per-position maps (Rx, Ry) of a profile: ``phase`` (int32), ``exx, eyy, exy`` (detector frame),
    ``theta_deg`` and ``thickness_A`` (requested; the simulation rounds it to a slice boundary)."""
    Rx, Ry = (int(v) for v in s.scan_shape)
    ii, jj = np.mgrid[:Rx, :Ry]
    th = np.asarray(s.thickness_nm, dtype=float) * 10.0
    out = {"thickness_A": th[(jj * len(th)) // Ry], "phase": np.zeros((Rx, Ry), np.int32)}
    zero = np.zeros((Rx, Ry))
    if s.profile == "multilayer":
        bands = (ii * len(s.band_strain_percent)) // Rx
        exx = np.asarray(s.band_strain_percent, dtype=float)[bands] / 100.0
        rot = np.asarray(s.band_rotation_deg, dtype=float)
        out.update(exx=exx, eyy=-s.poisson_ratio * exx, exy=zero, theta_deg=rot[(ii * len(rot)) // Rx])
    elif s.profile == "smooth":
        u, v = (ii + 0.5) / Rx - 0.5, (jj + 0.5) / Ry - 0.5
        levels = int(s.strain_levels) - 1
        bump = np.exp(-(u**2 + v**2) / (2 * float(s.bump_width) ** 2))
        a = np.rint(bump * levels) / levels * float(s.strain_amplitude_percent) / 100.0
        crystal = a[..., None, None] * np.array([[1.0, s.shear_ratio], [s.shear_ratio, -s.poisson_ratio]])
        theta = float(s.rotation_amplitude_deg) * np.sin(math.pi * v)
        eps = detector_frame_strain(crystal, theta)
        out.update(exx=eps[..., 0, 0], eyy=eps[..., 1, 1], exy=eps[..., 0, 1], theta_deg=theta)
    elif s.profile == "grains":
        rng = np.random.default_rng(int(s.seed))
        seeds = rng.uniform([0, 0], [Rx, Ry], size=(int(s.num_grains), 2))
        grain = np.argmin((ii[..., None] - seeds[:, 0]) ** 2 + (jj[..., None] - seeds[:, 1]) ** 2, axis=-1)
        angles = np.round(rng.uniform(-s.grain_rotation_deg, s.grain_rotation_deg, int(s.num_grains)), 1)
        phases = np.arange(int(s.num_grains)) % len(s.structures)
        out.update(
            phase=phases[grain].astype(np.int32), exx=zero, eyy=zero.copy(), exy=zero.copy(), theta_deg=angles[grain]
        )
    else:
        raise ConfigError(f"scan.profile {s.profile!r} has no positions")
    return out
