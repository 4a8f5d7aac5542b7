"""Labels of a CBED pattern: Bragg reflections, structure factors, what the dynamical pattern shows, label maps.

Two questions are answered separately. *Kinematic*: which reflections does the crystal excite (Ewald weight and
|V_g|, :func:`kinematic_visible`)? *Present*: which of them carry enough electrons in the simulated (dynamical,
noise-free) pattern to be seen at a given dose (:func:`disk_intensities`, :func:`present`)? On a thick crystal
the two differ a lot (on 50 nm Si [110] ~115 kinematic reflections per pattern, ~30 with more than 0.1 % of the
beam), and only the second is a fair truth for a disk finder.

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


def vg_map(reflections: dict, shape: tuple[int, int], sigma_px: float = 1.0) -> np.ndarray:
    """crystal4D's target: Ewald-weighted |V_g| (V) rendered as a compact Gaussian blob at each Bragg position (peak
    value = |V_g|·exp(−s_g²/2σ²), σ = 0.05 Å⁻¹)."""
    amp = reflections["V_abs"] * reflections["ewald_weight"]
    return render_blobs(shape, reflections["pixel"], amp, sigma_px)


def disk_map(pixels: np.ndarray, shape: tuple[int, int], sigma_px: float = 1.0) -> np.ndarray:
    """Unit-height blobs (clipped at 1 where they overlap) at the disk centres ``pixels`` ((N, 2) x, y px)."""
    pixels = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    return np.minimum(render_blobs(shape, pixels, np.ones(len(pixels)), sigma_px), 1.0)


def label_maps(
    reflections: dict,
    shape: tuple[int, int],
    sigma_px: float = 1.0,
    min_disk_weight: float = 0.1,
    min_relative_V: float = 0.01,
):
    """The kinematic pair of label maps: :func:`vg_map` and the :func:`disk_map` of the reflections
    :func:`kinematic_visible` counts (datasets store the disk map of the *present* reflections instead)."""
    visible = kinematic_visible(reflections, min_disk_weight, min_relative_V)
    return vg_map(reflections, shape, sigma_px), disk_map(reflections["pixel"][visible], shape, sigma_px)


def kinematic_visible(reflections: dict, min_disk_weight: float = 0.1, min_relative_V: float = 0.01) -> np.ndarray:
    """Boolean mask of reflections the kinematic model counts as visible disks (Ewald weight ≥ ``min_disk_weight``
    and weighted |V_g| ≥ ``min_relative_V`` of the strongest diffracted beam; the direct beam always). Stored as
    ``reflections_visible``; it ignores dynamical scattering, thickness and dose (see :func:`present`)."""
    amp = reflections["V_abs"] * reflections["ewald_weight"]
    diffracted = np.any(reflections["hkl"] != 0, axis=1)
    ref = amp[diffracted].max() if diffracted.any() else 1.0
    return (reflections["ewald_weight"] >= min_disk_weight) & ((amp >= min_relative_V * ref) | ~diffracted)


#: The "present" rule's margin (the Rose criterion): a reflection is present at a dose when the net counts of its
#: disk core clear their Poisson noise by this factor (S / √(S + B) ≥ 5, i.e. S ≥ 5√B on a bright background and
#: S ≥ 25 electrons on a dark one). 5σ rather than 3σ because a pattern holds a few hundred disk-sized areas
#: (128² px / ~37 px per disk): at 3σ about one of them per pattern would pass on noise alone (one-sided
#: p = 1.3e-3 × ~440), at 5σ one in ~10⁴ patterns.
PRESENT_SNR = 5.0
#: Dose (e⁻ per pattern) at which a dataset's ``reflections_present`` and ``disk_map`` are computed by default.
REFERENCE_DOSE_E = 1e4


def distinct_spots(pixels: np.ndarray, tol_px: float = 0.5) -> np.ndarray:
    """Mask keeping the first of reflections that fall on the same detector spot (within ``tol_px``).

    Reflections that differ only along the beam (e.g. ``(1-10)`` and ``(1-11)`` on a c-axis zone of a layered
    crystal, both within the excitation-error cut) project onto one pixel: they are one disk on the detector, to be
    found and counted once. NaN rows (padding) are never kept.
    """
    pts = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    keep = np.isfinite(pts).all(1)
    idx = np.flatnonzero(keep)
    for a_pos, a in enumerate(idx):
        if keep[a]:
            later = idx[a_pos + 1 :]
            near = later[np.hypot(*(pts[later] - pts[a]).T) <= tol_px]
            keep[near] = False
    return keep


def core_radius_px(pixels: np.ndarray, disk_radius_px: float, margin_px: float = 1.0) -> float:
    """Radius (px) of the disk core whose electrons are counted for each reflection.

    At most the disk radius, and small enough that the core stays ``margin_px`` inside the nearest neighbour's
    rim: ``min(r_disk, d_nn − r_disk − margin)``, with ``d_nn`` the lattice spacing on the detector (px): the median
    over reflections of the distance to the nearest other one (robust to the odd higher-order-Laue-zone reflection
    projected next to a zero-order one). At least 1 px: overlapping disks share pixels, and their cores then still
    do not reach a neighbour's centre.
    """
    pts = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    pts = pts[distinct_spots(pts)]  # one spot per disk, coincident projections counted once
    r = float(disk_radius_px)
    if len(pts) >= 2:
        d = np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1))
        d[np.diag_indices(len(pts))] = np.inf
        r = min(r, float(np.median(d.min(1))) - float(disk_radius_px) - margin_px)
    return max(1.0, r)


def disk_intensities(
    patterns: np.ndarray, pixels: np.ndarray, disk_radius_px: float, core_px: float | None = None
) -> dict:
    """Electrons in each reflection's disk core, and the background under it, from noise-free patterns.

    Parameters
    ----------
    patterns : array (H, W) or (T, H, W)
        Noise-free patterns in fractions of the incident beam per pixel (as simulated), e.g. a thickness series.
    pixels : array (M, 2)
        Reflection positions ``(x = col, y = row)`` in px, integer values at pixel centres.
    disk_radius_px : float
        Radius of a Bragg disk (α/λ in px).
    core_px : float, optional
        Core radius (px); default :func:`core_radius_px`.

    Returns
    -------
    dict
        ``intensity`` (T, M): fraction of the beam on the core pixels (pixel centres within ``core_px``);
        ``background`` (T, M): the fraction a smooth background would put on the same pixels (the median pixel of
        the annulus from ``disk_radius_px + 1`` to ``disk_radius_px + 3`` px, times the core's pixel count);
        ``core_px``; ``core_pixels`` (M,) the number of core pixels on the detector. Leading axis dropped for a
        single (H, W) pattern.
    """
    pats = np.asarray(patterns, dtype=np.float64)
    single = pats.ndim == 2
    pats = pats[None] if single else pats
    T, H, W = pats.shape
    pts = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    core = core_radius_px(pts, disk_radius_px) if core_px is None else float(core_px)
    r_in, r_out = float(disk_radius_px) + 1.0, float(disk_radius_px) + 3.0
    reach = int(math.ceil(max(core, r_out)))
    inten = np.zeros((T, len(pts)))
    bg = np.zeros((T, len(pts)))
    n_core = np.zeros(len(pts), dtype=np.int64)
    for m, (x, y) in enumerate(pts):
        if not (np.isfinite(x) and np.isfinite(y)):
            inten[:, m] = bg[:, m] = np.nan
            continue
        cx, cy = int(round(x)), int(round(y))
        x0, x1, y0, y1 = max(cx - reach, 0), min(cx + reach + 1, W), max(cy - reach, 0), min(cy + reach + 1, H)
        if x0 >= x1 or y0 >= y1:
            continue
        rr = np.hypot(np.arange(y0, y1)[:, None] - y, np.arange(x0, x1)[None, :] - x)
        window = pats[:, y0:y1, x0:x1]
        in_core = rr <= core
        ring = (rr >= r_in) & (rr <= r_out)
        n_core[m] = int(in_core.sum())
        inten[:, m] = window[:, in_core].sum(-1)
        if ring.any():
            bg[:, m] = np.median(window[:, ring], axis=-1) * n_core[m]
    out = {"intensity": inten, "background": bg, "core_px": core, "core_pixels": n_core}
    if single:
        out["intensity"], out["background"] = inten[0], bg[0]
    return out


def present(intensity, background, dose_e: float, snr: float = PRESENT_SNR) -> np.ndarray:
    """Which reflections a detector would show at ``dose_e`` electrons per pattern.

    With ``S = dose·(intensity − background)`` the expected net electrons in a disk core and ``S + B =
    dose·intensity`` all electrons counted there, a reflection is present when ``S > 0`` and ``S / √(S + B) ≥
    snr`` (:data:`PRESENT_SNR` = 5, the Rose criterion): its counts clear the shot noise of the background under
    it by ``snr`` standard deviations, and with no background it needs at least ``snr²`` electrons. Arrays
    broadcast; NaN (padding) is never present.
    """
    if not dose_e > 0:
        raise ValueError(f"dose must be positive (electrons per pattern), got {dose_e}")
    i = np.asarray(intensity, dtype=np.float64)
    b = np.asarray(background, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        net = dose_e * (i - b)
        total = dose_e * i
        ok = (net > 0) & (net >= snr * np.sqrt(np.maximum(total, 0.0)))
    return np.where(np.isfinite(i) & np.isfinite(b), ok, False)
