"""Kinematic template library for orientation mapping (ACOM) over a crystal's fundamental zone.

Method (after the idea of Ophus et al., Microsc. Microanal. 28 (2022) 390; own implementation)
---------------------------------------------------------------------------------------------
An orientation is ``R = Rz(φ) @ R0(d)``: a beam direction ``d`` (unit vector in the crystal Cartesian frame,
``R.T @ ẑ``) with a base frame ``R0(d)``, then an in-plane rotation ``φ`` about the beam (the conventions of
:mod:`stemforge.sim.orientations`). Beam directions are sampled on a near-uniform (Fibonacci) grid of spacing
``direction_step_deg`` over one fundamental region of the sphere under the proper point group (the Dirichlet
cell of a generic direction, area 4π/K), plus the exact low-index zone axes. For each direction the kinematic
reflections (g in Å⁻¹, |F_g| in Å with Debye–Waller damping, excitation error s_g on the Ewald sphere at the
library energy) give a template on polar coordinates (|g_xy|, angle):

``t_d(r, θ) = Σ_g w_g exp(−(r − r_g)²/2σ_q²) exp(−(θ − θ_g)²/2σ_θ(r)²)``,
``w_g = (|F_g|² · exp(−s_g²/2σ_s,eff²))^intensity_power · r_g^radial_power``,

stored as its Fourier series along the angle (coefficients ``m = 0..M`` on radial shells ``r_j``). A measured
pattern (peaks q_p with intensities I_p, weights ``a_p = I_p^intensity_power · |q_p|^radial_power``) correlates
with every template at every in-plane angle at once: ``C_d(φ) = Σ_p a_p t_d(r_p, θ_p − φ)`` is one sum over
shells per Fourier coefficient and one inverse FFT along the angle (see :mod:`stemforge.analysis.orientation`).

Widths: σ_θ(r) = max(σ_q / r, in-plane step) keeps the angular correlation smooth on the φ grid; σ_s,eff =
sqrt(σ_s² + (|g|·δ/2)²) widens the excitation-error tolerance by the tilt δ between neighbouring grid directions,
so that the coarse search does not miss orientations between grid points. The refinement in
:mod:`stemforge.analysis.orientation` then uses the true σ_s and a 2D Gaussian of width σ_q.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .datacube import AnalysisError

__all__ = [
    "OrientationLibrary",
    "build_orientation_library",
    "fundamental_directions",
    "base_frames",
    "library_cache_dir",
    "kinematic_bragg_vectors",
]

_FORMAT = 2  # bump when the template definition changes (invalidates disk caches)
_GENERIC = np.array([0.137, 0.291, 0.947])  # generic direction: trivial stabiliser in every point group
_MEMORY_CACHE: dict[str, OrientationLibrary] = {}


# --------------------------------------------------------------------------- directions
def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    rho = np.sqrt(1.0 - z**2)
    return np.stack([rho * np.cos(phi), rho * np.sin(phi), z], axis=1)


def reduce_directions(d: np.ndarray, ops: np.ndarray) -> np.ndarray:
    """Map unit beam directions (crystal Cartesian, (..., 3)) into the fundamental region: of all ``S @ d``
    (``S`` a proper point-group rotation; ``R @ S.T`` has beam direction ``S @ d``) keep the one closest to a fixed
    generic direction."""
    d = np.asarray(d, dtype=np.float64)
    images = np.einsum("kij,...j->...ki", ops, d)  # (..., K, 3)
    v = _GENERIC / np.linalg.norm(_GENERIC)
    best = np.argmax(images @ v, axis=-1)
    return np.take_along_axis(images, best[..., None, None], axis=-2)[..., 0, :]


def fundamental_directions(structure, ops: np.ndarray, step_deg: float, zone_max_index: int = 2) -> np.ndarray:
    """Beam directions (crystal Cartesian unit vectors) covering one fundamental region of the sphere under the
    proper point group ``ops`` at spacing ``step_deg`` (degrees), plus every low-index zone axis [uvw]
    (|indices| ≤ ``zone_max_index``) mapped into that region. Returns (N, 3)."""
    if not (0.1 <= step_deg <= 20):
        raise AnalysisError(f"direction_step_deg must lie in [0.1, 20] degrees, got {step_deg}")
    n = int(math.ceil(4 * math.pi / math.radians(step_deg) ** 2))
    pts = _fibonacci_sphere(n)
    v = _GENERIC / np.linalg.norm(_GENERIC)
    identity = int(np.argmin(np.abs(ops - np.eye(3)).reshape(len(ops), -1).sum(axis=1)))
    inside = np.einsum("kij,nj->nki", ops, pts) @ v  # (n, K): (S @ d) · v
    pts = pts[np.argmax(inside, axis=1) == identity]
    from stemforge.sim.orientations import symmetry_distinct_zone_axes

    axes = np.array(symmetry_distinct_zone_axes(structure, zone_max_index), dtype=np.float64)
    cart = axes @ structure.lattice.matrix
    cart = np.concatenate([cart, -cart])
    cart /= np.linalg.norm(cart, axis=1, keepdims=True)
    exact = reduce_directions(cart, ops)
    keep = []
    for e in exact:  # one copy of each (an axis and its reverse may be the same after reduction)
        if not any(np.dot(e, k) > 1 - 1e-9 for k in keep):
            keep.append(e)
    # drop grid points that nearly duplicate an exact axis (keeps the spacing near the axes even)
    near = np.max(pts @ np.array(keep).T, axis=1) > math.cos(math.radians(0.3 * step_deg))
    return np.concatenate([np.array(keep), pts[~near]])


def base_frames(directions: np.ndarray) -> np.ndarray:
    """Base rotations ``R0(d)`` (N, 3, 3) with third row ``d``: ``R0 @ d = ẑ``; the first row is the crystal
    Cartesian axis least parallel to ``d``, made perpendicular to it."""
    d = np.asarray(directions, dtype=np.float64)
    e = np.eye(3)[np.argmin(np.abs(d), axis=1)]
    x = e - np.sum(e * d, axis=1, keepdims=True) * d
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.stack([x, np.cross(d, x), d], axis=1)


# --------------------------------------------------------------------------- library
@dataclass(eq=False)
class OrientationLibrary:
    """Kinematic templates of one crystal over its fundamental zone (see the module docstring).

    Attributes
    ----------
    name : str
        Phase name (structure name or formula).
    structure : pymatgen Structure
    energy_eV, wavelength_A : float
        Beam energy (eV) and relativistic wavelength (Å) the excitation errors were computed at.
    k_max, q_min, sigma_q, sigma_excitation : float
        Largest and smallest |g_xy| used (Å⁻¹), peak-position tolerance σ_q (Å⁻¹), excitation-error width σ_s (Å⁻¹).
    intensity_power, radial_power : float
        Weight exponents (per side: template and measured peaks).
    direction_step_deg, in_plane_step_deg : float
        Grid spacing of the beam directions and of the in-plane angle (degrees).
    directions : (N, 3) float
        Beam directions, crystal Cartesian unit vectors.
    frames : (N, 3, 3) float
        Base rotations ``R0`` (crystal → lab) of each direction; orientation = ``Rz(φ) @ R0``.
    radii : (J,) float
        Radial shells (Å⁻¹).
    templates : (M + 1, N, J) complex64
        Fourier coefficients along the angle of each direction's template on each shell.
    template_norm : (N,) float
        sqrt(Σ w_g²) of each template (for the normalised score).
    ops : (K, 3, 3) float
        Proper point-group rotations (crystal Cartesian).
    g_crystal, hkl, f_weight : arrays
        Every reflection with |g| ≤ 1.02·k_max: g (Å⁻¹, crystal Cartesian), Miller indices, and
        ``(|F_g|²)^intensity_power`` (used by the refinement).
    info : dict
        Build time (s), memory (bytes), counts.
    """

    name: str
    structure: object
    energy_eV: float
    wavelength_A: float
    k_max: float
    q_min: float
    sigma_q: float
    sigma_excitation: float
    intensity_power: float
    radial_power: float
    direction_step_deg: float
    in_plane_step_deg: float
    directions: np.ndarray
    frames: np.ndarray
    radii: np.ndarray
    templates: np.ndarray
    template_norm: np.ndarray
    ops: np.ndarray
    g_crystal: np.ndarray
    hkl: np.ndarray
    f_weight: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def n_angles(self) -> int:
        return int(round(360.0 / self.in_plane_step_deg))

    @property
    def nbytes(self) -> int:
        return int(
            sum(
                a.nbytes
                for a in (
                    self.directions,
                    self.frames,
                    self.radii,
                    self.templates,
                    self.template_norm,
                    self.g_crystal,
                    self.hkl,
                    self.f_weight,
                )
            )
        )

    def settings(self) -> dict:
        return {
            k: getattr(self, k)
            for k in (
                "energy_eV",
                "k_max",
                "q_min",
                "sigma_q",
                "sigma_excitation",
                "intensity_power",
                "radial_power",
                "direction_step_deg",
                "in_plane_step_deg",
            )
        }

    def __repr__(self) -> str:
        return (
            f"OrientationLibrary({self.name!r}, {len(self.directions)} directions × {self.n_angles} in-plane "
            f"angles, k_max={self.k_max} Å⁻¹, {self.energy_eV / 1e3:g} keV, {self.nbytes / 2**20:.1f} MiB)"
        )


def library_cache_dir(cache_dir=None) -> Path:
    """Disk cache of libraries: ``cache_dir``, else ``$STEMFORGE_CACHE``, else ``$XDG_CACHE_HOME/stemforge``
    (``~/.cache/stemforge``), sub-folder ``orientation_libraries``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser().absolute()
    base = os.environ.get("STEMFORGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "stemforge"
    )
    return Path(base, "orientation_libraries").expanduser().absolute()


def _structure_key(structure) -> dict:
    lat = np.round(structure.lattice.matrix, 6).tolist()
    sites = sorted((s.specie.symbol, *np.round(np.mod(s.frac_coords, 1.0), 6).tolist()) for s in structure)
    return {"lattice": lat, "sites": sites}


def _check_positive(name: str, value: float, upper: float | None = None) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0 and (upper is None or value <= upper)):
        bound = f" and ≤ {upper}" if upper is not None else ""
        raise AnalysisError(f"{name} must be a finite number > 0{bound}, got {value!r}")
    return value


def build_orientation_library(
    structure,
    energy_eV: float,
    k_max: float = 2.0,
    *,
    name: str | None = None,
    sigma_excitation: float = 0.02,
    sigma_q: float = 0.02,
    q_min: float = 0.1,
    direction_step_deg: float = 2.0,
    in_plane_step_deg: float = 2.0,
    intensity_power: float = 0.25,
    radial_power: float = 0.5,
    zone_max_index: int = 2,
    debye_waller: bool = True,
    parametrization: str = "lobato",
    cache: bool = True,
    cache_dir=None,
    progress: bool = False,
) -> OrientationLibrary:
    """Build (or load from the cache) the kinematic template library of a crystal.

    Parameters
    ----------
    structure : pymatgen Structure or any :func:`stemforge.sim.structures.load_structure` specification
    energy_eV : float
        Beam energy (eV); the Ewald sphere and so the excitation errors depend on it.
    k_max : float
        Largest projected reflection radius |g_xy| used (Å⁻¹); peaks beyond it are ignored when matching.
    sigma_excitation : float
        σ_s (Å⁻¹) of the excitation-error weight exp(−s²/2σ_s²) of the kinematic intensity. Match it to the data:
        thin crystals show reflections over a wider range of s (of order 1/thickness); a library σ_s well below
        the data's biases the refined tilt (see benchmarks/RESULTS.md, "Orientation and phase mapping").
    sigma_q : float
        Peak-position tolerance σ_q (Å⁻¹): Gaussian width of the template spots.
    q_min : float
        Reflections and peaks with |q| < q_min (Å⁻¹) are ignored (the direct beam).
    direction_step_deg, in_plane_step_deg : float
        Spacing (degrees) of the beam-direction grid and of the in-plane angle.
    intensity_power, radial_power : float
        Weights ``(|F|²)^intensity_power · r^radial_power`` (template) and ``I^intensity_power · r^radial_power``
        (measured peaks).
    zone_max_index : int
        Low-index zone axes (|indices| ≤ this) added exactly to the direction grid.
    debye_waller : bool
        Damp |F_g| with the room-temperature Debye–Waller factors of
        :func:`stemforge.sim.structures.debye_waller_sigmas`.
    cache, cache_dir
        Reuse a library with the same crystal and settings from memory (the 8 most recent), else from
        ``cache_dir`` (see :func:`library_cache_dir`); a newly built one is stored there.

    Returns
    -------
    OrientationLibrary
        ``info`` holds ``build_time_s`` (0 when loaded), ``memory_bytes``, ``num_directions``, ``source``.
    """
    from stemforge.sim.orientations import proper_point_group
    from stemforge.sim.structures import debye_waller_sigmas, load_structure

    try:
        st = load_structure(structure)
    except ValueError as err:
        raise AnalysisError(f"orientation library: {err}") from None
    energy_eV = _check_positive("energy_eV", energy_eV)
    k_max = _check_positive("k_max (Å⁻¹)", k_max, 10.0)
    sigma_excitation = _check_positive("sigma_excitation (Å⁻¹)", sigma_excitation, 1.0)
    sigma_q = _check_positive("sigma_q (Å⁻¹)", sigma_q, 0.5)
    in_plane_step_deg = _check_positive("in_plane_step_deg", in_plane_step_deg, 20.0)
    if not 0 <= float(q_min) < k_max:
        raise AnalysisError(f"q_min must lie in [0, k_max={k_max}) Å⁻¹, got {q_min!r}")
    n_angles = int(round(360.0 / in_plane_step_deg))
    in_plane_step_deg = 360.0 / n_angles
    label = name or (structure if isinstance(structure, str) else st.composition.reduced_formula)
    settings = dict(
        energy_eV=energy_eV,
        k_max=k_max,
        q_min=float(q_min),
        sigma_q=sigma_q,
        sigma_excitation=sigma_excitation,
        intensity_power=float(intensity_power),
        radial_power=float(radial_power),
        direction_step_deg=float(direction_step_deg),
        in_plane_step_deg=in_plane_step_deg,
    )
    key_data = {
        "format": _FORMAT,
        "structure": _structure_key(st),
        "zone_max_index": int(zone_max_index),
        "debye_waller": bool(debye_waller),
        "parametrization": parametrization,
        **settings,
    }
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:24]
    if cache:
        if key in _MEMORY_CACHE:
            lib = _MEMORY_CACHE[key]
            return lib if lib.name == label else replace(lib, name=label)  # arrays shared
        path = library_cache_dir(cache_dir) / f"{key}.npz"
        if path.is_file():
            lib = _load(path, st, label, settings)
            _remember(key, lib)
            return lib

    t0 = time.perf_counter()
    from stemforge.core.units import wavelength_A
    from stemforge.sim.labels import structure_factors

    lam = wavelength_A(energy_eV)
    ops = proper_point_group(st)
    directions = fundamental_directions(st, ops, float(direction_step_deg), int(zone_max_index))
    frames = base_frames(directions)

    # every reflection that can appear within k_max
    recip = st.lattice.reciprocal_lattice_crystallographic.matrix
    hmax = [int(math.ceil(1.02 * k_max * length)) + 1 for length in st.lattice.abc]  # |h| ≤ |g|·|a|
    grids = np.meshgrid(*[np.arange(-m, m + 1) for m in hmax], indexing="ij")
    hkl = np.stack([g.ravel() for g in grids], axis=1)
    g = hkl @ recip
    gabs = np.linalg.norm(g, axis=1)
    keep = (gabs <= 1.02 * k_max) & (gabs > 0)
    hkl, g, gabs = hkl[keep], g[keep], gabs[keep]
    sigmas = debye_waller_sigmas(st) if debye_waller else None
    F = np.abs(structure_factors(st, hkl, sigmas, parametrization))
    nz = F > 1e-4 * F.max()
    hkl, g, gabs, F = hkl[nz], g[nz], gabs[nz], F[nz]
    f_weight = (F**2) ** float(intensity_power)

    # radial shells and angular kernel widths
    dr = sigma_q / 1.5
    radii = np.arange(max(0.0, q_min - 3 * sigma_q), k_max + 3 * sigma_q + dr, dr)
    M = n_angles // 2 - 1
    m = np.arange(M + 1)
    sig_theta = np.clip(sigma_q / np.maximum(radii, 1e-6), math.radians(in_plane_step_deg), 0.5)
    ang = (sig_theta / math.sqrt(2 * math.pi))[:, None] * np.exp(-0.5 * np.outer(sig_theta**2, m**2))  # (J, M+1)
    sig_eff2 = sigma_excitation**2 + (gabs * math.radians(float(direction_step_deg)) / 2) ** 2  # (G,)

    N, J = len(directions), len(radii)
    templates = np.zeros((M + 1, N, J), dtype=np.complex64)
    norms = np.zeros(N)
    K = 1.0 / lam
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    chunk = 64
    # many small matrix products: threaded BLAS only adds synchronisation (10x slower on a busy machine)
    with threadpool_limits(1, user_api="blas"):
        for start in tqdm(range(0, N, chunk), desc=f"library {label}", unit="chunk", disable=not progress):
            fr = frames[start : start + chunk]
            gl = np.einsum("nij,gj->ngi", fr, g)  # (n, G, 3) lab frame
            kz = K + gl[..., 2]
            kn = np.sqrt(gl[..., 0] ** 2 + gl[..., 1] ** 2 + kz**2)
            s = (K**2 - kn**2) / (2 * kn)
            r = np.hypot(gl[..., 0], gl[..., 1])
            ewald = np.exp(-0.5 * float(intensity_power) * s**2 / sig_eff2)  # (exp(−s²/2σ²))^intensity_power
            w = f_weight * ewald * r ** float(radial_power)
            w[(r < q_min) | (r > k_max) | (ewald < 1e-3)] = 0.0
            theta = np.arctan2(gl[..., 1], gl[..., 0])
            for i in range(len(fr)):
                sel = np.nonzero(w[i])[0]
                if not len(sel):
                    continue
                wi, ri, ti = w[i, sel], r[i, sel], theta[i, sel]
                norms[start + i] = math.sqrt(float(np.sum(wi**2)))
                radial = wi[None, :] * np.exp(-0.5 * ((radii[:, None] - ri[None, :]) / sigma_q) ** 2)  # (J, n)
                arg = np.outer(ti, m)  # (n, M+1); e^{-imθ}, as two real products (small complex matmuls are slow)
                coef = (radial @ np.cos(arg) - 1j * (radial @ np.sin(arg))) * ang
                templates[:, start + i, :] = coef.T
    empty = norms == 0
    if empty.all():
        raise AnalysisError(f"no reflection of {label} lies within q_min={q_min}..k_max={k_max} Å⁻¹")
    norms[empty] = np.inf  # a direction without reflections never matches
    build = time.perf_counter() - t0
    lib = OrientationLibrary(
        label,
        st,
        energy_eV,
        lam,
        k_max,
        float(q_min),
        sigma_q,
        sigma_excitation,
        float(intensity_power),
        float(radial_power),
        float(direction_step_deg),
        in_plane_step_deg,
        directions,
        frames,
        radii,
        templates,
        norms,
        ops,
        g,
        hkl.astype(np.int32),
        f_weight,
    )
    lib.info = {
        "build_time_s": build,
        "memory_bytes": lib.nbytes,
        "num_directions": N,
        "num_reflections": len(g),
        "source": "built",
        "key": key,
    }
    if cache:
        _remember(key, lib)
        try:
            _save(lib, library_cache_dir(cache_dir) / f"{key}.npz")
        except OSError:  # a read-only cache only costs a rebuild next time
            pass
    return lib


def _remember(key: str, lib: OrientationLibrary, keep: int = 8) -> None:
    """Keep the ``keep`` most recently built or loaded libraries in memory."""
    _MEMORY_CACHE.pop(key, None)
    _MEMORY_CACHE[key] = lib
    while len(_MEMORY_CACHE) > keep:
        _MEMORY_CACHE.pop(next(iter(_MEMORY_CACHE)))


_ARRAYS = ("directions", "frames", "radii", "templates", "template_norm", "ops", "g_crystal", "hkl", "f_weight")


def _save(lib: OrientationLibrary, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(
        tmp,
        **{k: getattr(lib, k) for k in _ARRAYS},
        wavelength_A=lib.wavelength_A,
        build_time_s=lib.info["build_time_s"],
    )
    os.replace(tmp, path)


def _load(path: Path, st, label: str, settings: dict) -> OrientationLibrary:
    t0 = time.perf_counter()
    with np.load(path) as z:
        arrays = {k: z[k] for k in _ARRAYS}
        lam, built = float(z["wavelength_A"]), float(z["build_time_s"])
    lib = OrientationLibrary(label, st, wavelength_A=lam, **settings, **arrays)
    lib.info = {
        "build_time_s": built,
        "load_time_s": time.perf_counter() - t0,
        "memory_bytes": lib.nbytes,
        "num_directions": len(lib.directions),
        "num_reflections": len(lib.g_crystal),
        "source": str(path),
        "key": path.stem,
    }
    return lib


# --------------------------------------------------------------------------- synthetic peaks
def kinematic_bragg_vectors(
    structure,
    rotations,
    energy_eV: float,
    detector_shape=(128, 128),
    pixel_size_inv_A: float = 0.03,
    *,
    sigma_excitation: float = 0.03,
    min_weight: float = 0.1,
    k_max: float | None = None,
    position_noise_px: float = 0.0,
    intensity_noise: float = 0.0,
    direct_beam: bool = True,
    debye_waller: bool = True,
    seed=0,
):
    """Bragg vectors of kinematic patterns at known orientations (a test and benchmark source).

    Each pattern holds the reflections of :func:`stemforge.sim.labels.kinematic_reflections` whose excitation weight
    exp(−s²/2σ²) (σ = ``sigma_excitation`` Å⁻¹) is at least ``min_weight``, with intensity |F_g|²·weight
    (|F| with Debye–Waller damping), optionally limited to |g_xy| ≤ ``k_max`` (Å⁻¹), moved by Gaussian position
    noise (``position_noise_px`` px per axis) and scaled by log-normal intensity noise (σ = ``intensity_noise``).
    ``rotations`` is (Rx, Ry, 3, 3) or (n, 3, 3) (a 1 × n scan). The calibration records ``pixel_size_inv_A``,
    ``energy_eV`` and the origin (H//2, W//2).
    """
    from stemforge.core.units import wavelength_A
    from stemforge.sim.detector import Detector
    from stemforge.sim.labels import kinematic_reflections
    from stemforge.sim.structures import debye_waller_sigmas, load_structure

    from .braggvectors import BraggVectors
    from .datacube import Calibration

    st = load_structure(structure)
    rot = np.asarray(rotations, dtype=np.float64)
    if rot.ndim == 3:
        rot = rot[None]
    if rot.ndim != 4 or rot.shape[-2:] != (3, 3):
        raise AnalysisError(f"rotations must have shape (Rx, Ry, 3, 3) or (n, 3, 3), got {np.shape(rotations)}")
    det = Detector(tuple(int(v) for v in detector_shape), float(pixel_size_inv_A), 1)
    lam = wavelength_A(float(energy_eV))
    sigmas = debye_waller_sigmas(st) if debye_waller else None
    rng = np.random.default_rng(seed)
    per_position = {}
    for rx in range(rot.shape[0]):
        for ry in range(rot.shape[1]):
            refl = kinematic_reflections(
                st, rot[rx, ry], lam, det, sigmas=sigmas, max_excitation_error=4 * sigma_excitation
            )
            wgt = np.exp(-0.5 * (refl["excitation_error"] / sigma_excitation) ** 2)
            direct = np.all(refl["hkl"] == 0, axis=1)
            keep = (wgt >= min_weight) & (~direct | bool(direct_beam))
            if k_max is not None:
                keep &= np.hypot(refl["g"][:, 0], refl["g"][:, 1]) <= k_max
            px = refl["pixel"][keep] + rng.normal(0.0, position_noise_px, (int(keep.sum()), 2))
            inten = refl["F_abs"][keep] ** 2 * wgt[keep]
            inten = np.where(direct[keep], 10 * inten.max(initial=1.0), inten)
            if intensity_noise > 0:
                inten = inten * rng.lognormal(0.0, intensity_noise, len(inten))
            per_position[(rx, ry)] = np.column_stack([px[:, 1], px[:, 0], inten])
    cal = Calibration(
        pixel_size_inv_A=float(pixel_size_inv_A),
        energy_eV=float(energy_eV),
        origin_px=(float(det.shape[0] // 2), float(det.shape[1] // 2)),
    )
    return BraggVectors.from_lists(rot.shape[:2], det.shape, per_position, cal, method="kinematic")
