"""Kinematic labels of a CBED pattern: Bragg reflections, structure factors and label maps.

Units: reciprocal vectors g in Å⁻¹ (k = 1/d), excitation errors in Å⁻¹, electron scattering factors and
structure factors F_g in Å, Fourier coefficients of the crystal potential V_g in volts, detector positions in
pixels ``(x = col, y = row)``. Reflections are expressed in the lab frame of the detector: ``g_lab = R @ g``
with ``R`` the full rotation (specimen rotation followed by the in-plane rotation).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

#: h² / (2π m₀ e) in V·Å²: V_g = this · F_g / Ω  (Ω in Å³, F_g in Å).
VG_PREFACTOR = 47.87801

#: crystal4D's Ewald weight width σ (Å⁻¹): weight = exp(−s_g² / 2σ²).
EWALD_SIGMA = 0.05


@cache
def _scattering_factor(symbol: str, parametrization: str):
    from abtem.parametrizations import validate_parametrization

    return validate_parametrization(parametrization).scattering_factor(symbol)


def electron_scattering_factor(symbol: str, g: np.ndarray, parametrization: str = "lobato") -> np.ndarray:
    """Electron scattering factor f_e(|g|) in Å of a neutral atom (abTEM's parametrisations; |g| in Å⁻¹)."""
    g = np.asarray(g, dtype=float)
    return np.asarray(_scattering_factor(symbol, parametrization)(g**2), dtype=float)


def structure_factors(structure, hkl: np.ndarray, sigmas: dict | None = None, parametrization: str = "lobato"):
    """Electron structure factors F_hkl = Σ_j f_j(|g|) exp(−2π²σ_j²|g|²) exp(2πi hkl·r_j) in Å.

    ``sigmas`` are per-element RMS displacements (Å) for the Debye–Waller factor (B = 8π²σ²).
    """
    hkl = np.atleast_2d(np.asarray(hkl, dtype=float))
    recip = structure.lattice.reciprocal_lattice_crystallographic.matrix
    gabs = np.linalg.norm(hkl @ recip, axis=1)
    frac = np.array([site.frac_coords for site in structure])
    phases = np.exp(2j * np.pi * hkl @ frac.T)  # (M, atoms)
    F = np.zeros(len(hkl), dtype=complex)
    symbols = [site.specie.symbol for site in structure]
    for sym in sorted(set(symbols)):
        mask = np.array([s == sym for s in symbols])
        sigma = (sigmas or {}).get(sym, 0.0)
        f = electron_scattering_factor(sym, gabs, parametrization) * np.exp(-2 * np.pi**2 * sigma**2 * gabs**2)
        F += f * phases[:, mask].sum(axis=1)
    return F


def excitation_errors(g_lab: np.ndarray, wavelength_A: float, tilt_mrad=(0.0, 0.0)) -> np.ndarray:
    """Excitation error s_g (Å⁻¹, positive inside the Ewald sphere) for an incident beam along +z tilted by
    ``tilt_mrad`` (x, y): ``s = (K² − |k₀+g|²) / (2|k₀+g|)`` with ``K = 1/λ``."""
    K = 1.0 / wavelength_A
    tx, ty = (t * 1e-3 for t in tilt_mrad)
    k0 = K * np.array([math.sin(tx), math.sin(ty), math.sqrt(max(0.0, 1 - math.sin(tx) ** 2 - math.sin(ty) ** 2))])
    kg = np.asarray(g_lab) + k0
    n = np.linalg.norm(kg, axis=-1)
    return (K**2 - n**2) / (2 * n)


def kinematic_reflections(
    structure,
    rotation: np.ndarray,
    wavelength_A: float,
    detector,
    tilt_mrad=(0.0, 0.0),
    sigmas: dict | None = None,
    max_excitation_error: float = 0.1,
    parametrization: str = "lobato",
    min_relative_F: float = 1e-4,
):
    """Bragg reflections that land on the detector, with kinematic quantities.

    Keeps reflections whose projected g lies on the detector, whose |s_g| ≤ ``max_excitation_error`` Å⁻¹,
    and whose |F_g| is not (systematically) zero. The direct beam 000 is included (V_000 is the mean inner
    potential). Sorted by Ewald-weighted |V_g|, strongest first.

    Returns
    -------
    dict of ndarray
        ``hkl`` (M,3) int, ``g`` (M,3) Å⁻¹ lab frame, ``pixel`` (M,2) (x=col, y=row), ``excitation_error``
        (M,) Å⁻¹, ``F_abs`` (M,) Å, ``V_abs`` (M,) V, ``ewald_weight`` (M,).
    """
    lat = structure.lattice
    recip = lat.reciprocal_lattice_crystallographic.matrix
    kmax = detector.max_frequency
    hmax = [int(math.ceil(kmax * length)) + 1 for length in lat.abc]  # |h| ≤ kmax·|a| (+ tilt out of plane)
    grids = np.meshgrid(*[np.arange(-m, m + 1) for m in hmax], indexing="ij")
    hkl = np.stack([g.ravel() for g in grids], axis=1)
    g_lab = hkl @ recip @ np.asarray(rotation).T
    s = excitation_errors(g_lab, wavelength_A, tilt_mrad)
    keep = np.abs(s) <= max_excitation_error
    px = detector.to_pixels(g_lab[:, :2])
    h, w = detector.shape
    keep &= (px[:, 0] >= -0.5) & (px[:, 0] < w - 0.5) & (px[:, 1] >= -0.5) & (px[:, 1] < h - 0.5)
    hkl, g_lab, s, px = hkl[keep], g_lab[keep], s[keep], px[keep]
    F = np.abs(structure_factors(structure, hkl, sigmas, parametrization))
    nonzero = F > min_relative_F * F.max()
    hkl, g_lab, s, px, F = hkl[nonzero], g_lab[nonzero], s[nonzero], px[nonzero], F[nonzero]
    V = VG_PREFACTOR * F / lat.volume
    wgt = np.exp(-(s**2) / (2 * EWALD_SIGMA**2))
    order = np.argsort(-(V * wgt), kind="stable")
    return {
        "hkl": hkl[order].astype(np.int32),
        "g": g_lab[order],
        "pixel": px[order],
        "excitation_error": s[order],
        "F_abs": F[order],
        "V_abs": V[order],
        "ewald_weight": wgt[order],
    }


def render_blobs(shape: tuple[int, int], pixels: np.ndarray, amplitudes: np.ndarray, sigma_px: float = 1.0):
    """Sum of Gaussian blobs (peak value = amplitude, standard deviation ``sigma_px``) at sub-pixel positions
    ``pixels`` (x=col, y=row); each blob is evaluated in a ±4σ window."""
    out = np.zeros(shape, dtype=np.float64)
    r = int(math.ceil(4 * sigma_px))
    h, w = shape
    for (x, y), a in zip(np.asarray(pixels), np.asarray(amplitudes)):
        cx, cy = int(round(x)), int(round(y))
        x0, x1, y0, y1 = max(cx - r, 0), min(cx + r + 1, w), max(cy - r, 0), min(cy + r + 1, h)
        if x0 >= x1 or y0 >= y1:
            continue
        xx = np.arange(x0, x1) - x
        yy = np.arange(y0, y1) - y
        out[y0:y1, x0:x1] += a * np.exp(-(yy[:, None] ** 2 + xx[None, :] ** 2) / (2 * sigma_px**2))
    return out.astype(np.float32)


def label_maps(
    reflections: dict,
    shape: tuple[int, int],
    sigma_px: float = 1.0,
    min_disk_weight: float = 0.1,
    min_relative_V: float = 0.01,
):
    """The two label maps of a pattern.

    * ``vg_map`` — crystal4D's target: Ewald-weighted |V_g| (V) rendered as a compact Gaussian blob at each
      Bragg position (peak value = |V_g|·exp(−s_g²/2σ²), σ = 0.05 Å⁻¹).
    * ``disk_map`` — unit-height blobs at the centres of the disks a detector would show: Ewald weight ≥
      ``min_disk_weight`` and weighted |V_g| ≥ ``min_relative_V`` of the strongest diffracted beam.
    """
    amp = reflections["V_abs"] * reflections["ewald_weight"]
    vg = render_blobs(shape, reflections["pixel"], amp, sigma_px)
    visible = disk_visible(reflections, min_disk_weight, min_relative_V)
    disk = render_blobs(shape, reflections["pixel"][visible], np.ones(visible.sum()), sigma_px)
    return vg, np.minimum(disk, 1.0)


def disk_visible(reflections: dict, min_disk_weight: float = 0.1, min_relative_V: float = 0.01) -> np.ndarray:
    """Boolean mask of reflections counted as visible disks (see :func:`label_maps`)."""
    amp = reflections["V_abs"] * reflections["ewald_weight"]
    diffracted = np.any(reflections["hkl"] != 0, axis=1)
    ref = amp[diffracted].max() if diffracted.any() else 1.0
    return (reflections["ewald_weight"] >= min_disk_weight) & ((amp >= min_relative_V * ref) | ~diffracted)
