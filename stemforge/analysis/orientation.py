"""Orientation mapping (ACOM): match each pattern's Bragg vectors to a kinematic template library.

For every scan position the measured peaks (from :class:`BraggVectors`, in px, calibrated to Å⁻¹ with
``pixel_size_inv_A`` and the origin) are correlated with every template of an :class:`OrientationLibrary` at every
in-plane angle (one complex matrix product per Fourier coefficient along the angle and one inverse FFT, batched
over patterns); the best (direction, angle) is then refined continuously by maximising the normalised
kinematic score

``S(R) = Σ_p Σ_g a_p w_g(R) exp(−|q_p − (R g)_xy|² / 2σ_q²) / (‖a‖ ‖w(R)‖)``,
``w_g(R) = (|F_g|² · exp(−s_g(R)² / 2σ_s²))^intensity_power · |(R g)_xy|^radial_power``,

a cosine similarity in [0, 1] (1: every weighted peak sits on a template spot with the template's relative
weight) over small rotations about the lab axes (quadratic fits on a 19-point stencil, halving the step).

Orientations follow :mod:`stemforge.sim.orientations`: ``rotation`` maps crystal Cartesian to lab coordinates (beam
along
lab +z; detector x = col, y = row), ``R`` and ``R @ S`` (S a proper point-group rotation) are the same. The lab
frame is the detector's: to express orientations in the scan frame, rotate by ``calibration.rotation_deg``. Peaks
are used as calibrated (origin, Å⁻¹/px); an elliptical distortion (``calibration.ellipticity``) is not corrected
here and should be removed from the Bragg vectors first.

Limits: a kinematic pattern R and its Friedel twin Rz(180°)·R have the same projected spots (Friedel's law), so
they differ only through the Ewald-sphere curvature (excitation errors) and higher-order Laue zones; for a zone
axis without an even-fold rotation about the beam ([111], [211] of a cubic crystal) or with few low-angle
reflections (k_max ≈ 1 Å⁻¹) the match may land on the twin — ``twin_score`` close to ``score`` flags that.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from stemforge.core.subpixel import parabola_offset

from .braggvectors import BraggVectors
from .datacube import AnalysisError
from .orientation_library import OrientationLibrary

__all__ = [
    "ML_ACOM_LIBRARY",
    "ML_ACOM_MIN_PROBABILITY",
    "OrientationMap",
    "orientation_map",
    "check_library_calibration",
    "score_orientations",
    "template_correlation",
    "zone_axis_labels",
    "ipf_colors",
    "plot_orientation_map",
]

#: relative energy difference (data vs library) refused without ``allow_energy_mismatch``
ENERGY_RTOL = 5e-3

#: ML-assisted ACOM (``orientation_map(method="ml")``): the Bragg model's heat-map threshold for the disks it
#: matches (lower than for disk finding: a missed reflection costs a match more than a spurious one) and the
#: library settings that go with presence-weighted disks (``build_orientation_library(..., **ML_ACOM_LIBRARY)``):
#: template spots weighted by |F|²·exp(−s²/2σ_s²) without the radial factor. Chosen on the held-out thick scans
#: of ``benchmarks/property_accuracy.py`` (RESULTS.md, issue 17).
ML_ACOM_MIN_PROBABILITY = 0.15
ML_ACOM_LIBRARY = {"intensity_power": 1.0, "radial_power": 0.0, "sigma_excitation": 0.02}


# --------------------------------------------------------------------------- checks
def check_library_calibration(bragg_vectors, library, allow_energy_mismatch: bool = False) -> None:
    """Refuse Bragg vectors without an Å⁻¹/px calibration, and a library built at another beam energy than the
    data's (when the data record one) unless ``allow_energy_mismatch``."""
    if not isinstance(bragg_vectors, BraggVectors):
        raise AnalysisError(f"orientation mapping needs BraggVectors, got {type(bragg_vectors).__name__}")
    if not isinstance(library, OrientationLibrary):
        raise AnalysisError(
            f"expected an OrientationLibrary (stemforge.analysis.build_orientation_library), "
            f"got {type(library).__name__}"
        )
    cal = bragg_vectors.calibration
    cal.check_pixel_size()
    e = cal.energy_eV
    if (
        e is not None
        and abs(float(e) - library.energy_eV) > ENERGY_RTOL * library.energy_eV
        and not allow_energy_mismatch
    ):
        raise AnalysisError(
            f"library {library.name!r} was built at {library.energy_eV / 1e3:g} keV but the data "
            f"were recorded at {float(e) / 1e3:g} keV; rebuild it at the data's energy or pass "
            "allow_energy_mismatch=True"
        )


# --------------------------------------------------------------------------- peaks
def _prepare_peaks(bv: BraggVectors, lib: OrientationLibrary, max_peaks: int):
    """Usable peaks sorted by position: q (Å⁻¹), polar radius and angle, weights a = I^ip · r^rp."""
    p = bv.peaks
    q = bv.q_invA().astype(np.float64)
    r = np.hypot(q[:, 0], q[:, 1])
    inten = p["intensity"].astype(np.float64)
    if len(inten) and not np.isfinite(inten).any():  # a method without intensities: equal weights
        inten = np.ones_like(inten)
    inten = np.where(np.isfinite(inten) & (inten > 0), inten, 0.0)
    a = inten**lib.intensity_power * r**lib.radial_power
    pos = p["rx"].astype(np.int64) * bv.scan_shape[1] + p["ry"]
    keep = (r >= lib.q_min) & (r <= lib.k_max) & (a > 0)
    pos, q, r, a = pos[keep], q[keep], r[keep], a[keep]
    order = np.lexsort((-a, pos))
    pos, q, r, a = pos[order], q[order], r[order], a[order]
    n_pos = bv.scan_shape[0] * bv.scan_shape[1]
    starts = np.searchsorted(pos, np.arange(n_pos))
    rank = np.arange(len(pos)) - starts[pos]
    keep = rank < max_peaks
    pos, q, r, a = pos[keep], q[keep], r[keep], a[keep]
    offsets = np.searchsorted(pos, np.arange(n_pos + 1))
    return q, r, np.arctan2(q[:, 1], q[:, 0]), a, offsets


def _padded(offsets, idx, *arrays):
    """Gather the peaks of positions ``idx`` into (B, P, ...) arrays padded with zeros; also the mask."""
    counts = offsets[idx + 1] - offsets[idx]
    P = max(1, int(counts.max()))
    rows = np.repeat(np.arange(len(idx)), counts)
    cols = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    src = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in idx]) if len(idx) else np.zeros(0, int)
    out = []
    for arr in arrays:
        o = np.zeros((len(idx), P, *arr.shape[1:]), dtype=arr.dtype)
        o[rows, cols] = arr[src]
        out.append(o)
    mask = np.zeros((len(idx), P), dtype=bool)
    mask[rows, cols] = True
    return out, mask


# --------------------------------------------------------------------------- rotations
def _rot_z(deg):
    t = np.radians(np.asarray(deg, dtype=np.float64))
    c, s = np.cos(t), np.sin(t)
    out = np.zeros((*t.shape, 3, 3))
    out[..., 0, 0], out[..., 0, 1], out[..., 1, 0], out[..., 1, 1], out[..., 2, 2] = c, -s, s, c, 1.0
    return out


def _rotvec_matrices(w: np.ndarray) -> np.ndarray:
    """Rotation matrices of rotation vectors ``w`` (..., 3) in rad (Rodrigues)."""
    from scipy.spatial.transform import Rotation

    w = np.asarray(w, dtype=np.float64)
    return Rotation.from_rotvec(w.reshape(-1, 3)).as_matrix().reshape(*w.shape[:-1], 3, 3)


_STENCIL = np.array(
    [[0, 0, 0]]
    + [s * e for e in np.eye(3) for s in (1, -1)]
    + [
        s1 * np.eye(3)[i] + s2 * np.eye(3)[j]
        for i in range(3)
        for j in range(i + 1, 3)
        for s1 in (1, -1)
        for s2 in (1, -1)
    ],
    dtype=np.float64,
)  # (19, 3)


def _quadratic_design(points: np.ndarray) -> np.ndarray:
    x, y, z = points.T
    return np.stack([np.ones_like(x), x, y, z, x * x, y * y, z * z, x * y, x * z, y * z], axis=1)


_FIT = np.linalg.pinv(_quadratic_design(_STENCIL))  # (10, 19): unit-step quadratic fit


def _misorientation(R1, R2, ops) -> np.ndarray:
    """:func:`stemforge.sim.orientations.misorientation_deg` for broadcastable stacks of any rank (degrees)."""
    from stemforge.sim.orientations import misorientation_deg

    R1, R2 = np.broadcast_arrays(np.asarray(R1, dtype=np.float64), np.asarray(R2, dtype=np.float64))
    lead = R1.shape[:-2]
    out = misorientation_deg(R1.reshape(-1, 3, 3), R2.reshape(-1, 3, 3), ops)
    return np.asarray(out, dtype=np.float64).reshape(lead)


# --------------------------------------------------------------------------- scoring
def _near_pairs(R, g, fw, q, a, lib: OrientationLibrary, reach_rad: float | None):
    """(reflection, peak) pairs that can lie within 5 σ_q of each other for orientations within ``reach_rad``
    of ``R`` (B, 3, 3); ``None``: every pair. Returns padded indices (B, N) into ``g`` and ``q`` and a mask."""
    B, G, P = len(g), g.shape[1], q.shape[1]
    if reach_rad is None:
        near = np.ones((B, G, P), dtype=bool)
    else:
        gl = np.einsum("bij,bgj->bgi", R, g)[..., :2]
        d = np.linalg.norm(q[:, None, :, :] - gl[:, :, None, :], axis=-1)
        near = d < 5 * lib.sigma_q + np.linalg.norm(g, axis=-1)[..., None] * reach_rad
    near &= (fw > 0)[:, :, None] & (a > 0)[:, None, :]
    bi, gi, pi = np.nonzero(near)
    counts = np.bincount(bi, minlength=B)
    n = max(1, int(counts.max(initial=0)))
    slot = np.arange(len(bi)) - np.repeat(np.cumsum(counts) - counts, counts)
    GI, PI, mask = np.zeros((B, n), dtype=np.int64), np.zeros((B, n), dtype=np.int64), np.zeros((B, n), bool)
    GI[bi, slot], PI[bi, slot], mask[bi, slot] = gi, pi, True
    return GI, PI, mask


def score_orientations(rotations, q, a, library: OrientationLibrary, g=None, fw=None, pairs=None) -> np.ndarray:
    """Normalised kinematic score S(R) (module docstring) of orientations ``rotations`` (B, S, 3, 3) for the
    peaks ``q`` (B, P, 2) Å⁻¹ with weights ``a`` (B, P) (0 = padding). ``g`` (B, G, 3) / ``fw`` (B, G): the
    reflections to use per pattern (default: all of the library's); ``pairs``: the (reflection, peak) pairs to
    evaluate (from ``_near_pairs``; default all). Returns (B, S)."""
    lib = library
    R = np.asarray(rotations, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    a = np.asarray(a, dtype=np.float64)
    B = R.shape[0]
    if g is None:
        g = np.broadcast_to(lib.g_crystal, (B, *lib.g_crystal.shape))
        fw = np.broadcast_to(lib.f_weight, (B, len(lib.f_weight)))
    GI, PI, mask = pairs if pairs is not None else _near_pairs(None, g, fw, q, a, lib, None)
    gl = np.einsum("bsij,bgj->bsgi", R, g)
    K = 1.0 / lib.wavelength_A
    kz = K + gl[..., 2]
    kn = np.sqrt(gl[..., 0] ** 2 + gl[..., 1] ** 2 + kz**2)
    s = (K**2 - kn**2) / (2 * kn)
    r = np.hypot(gl[..., 0], gl[..., 1])
    w = (
        fw[:, None, :]
        * np.exp(-0.5 * lib.intensity_power * (s / lib.sigma_excitation) ** 2)
        * r**lib.radial_power
        * ((r >= lib.q_min) & (r <= lib.k_max))
    )  # (B, S, G)
    idx = np.broadcast_to(GI[:, None, :], (B, R.shape[1], GI.shape[1]))
    gx = np.take_along_axis(gl[..., 0], idx, axis=2)
    gy = np.take_along_axis(gl[..., 1], idx, axis=2)
    wp = np.take_along_axis(w, idx, axis=2)
    qp = np.take_along_axis(q, PI[..., None], axis=1)  # (B, N, 2)
    ap = np.take_along_axis(a, PI, axis=1) * mask
    d2 = (qp[:, None, :, 0] - gx) ** 2 + (qp[:, None, :, 1] - gy) ** 2
    val = np.sum(ap[:, None, :] * wp * np.exp(-0.5 / lib.sigma_q**2 * d2), axis=2)
    na = np.sqrt(np.sum(a**2, axis=1))
    nw = np.sqrt(np.sum(w**2, axis=2))
    return val / np.maximum(na[:, None] * nw, 1e-300)


def _candidate_reflections(R, lib: OrientationLibrary, reach_rad: float, max_refl: int):
    """Per pattern the reflections that can be excited within ``reach_rad`` of ``R`` (B, 3, 3)."""
    gl = np.einsum("bij,gj->bgi", R, lib.g_crystal)
    K = 1.0 / lib.wavelength_A
    kz = K + gl[..., 2]
    kn = np.sqrt(gl[..., 0] ** 2 + gl[..., 1] ** 2 + kz**2)
    s = (K**2 - kn**2) / (2 * kn)
    gabs = np.linalg.norm(lib.g_crystal, axis=1)
    sig2 = lib.sigma_excitation**2 + (gabs * reach_rad) ** 2
    r = np.hypot(gl[..., 0], gl[..., 1])
    rel = lib.f_weight * np.exp(-0.5 * lib.intensity_power * s**2 / sig2) * (r <= lib.k_max + 3 * lib.sigma_q)
    n = min(max_refl, len(gabs))
    top = np.argpartition(-rel, n - 1, axis=1)[:, :n] if n < len(gabs) else np.tile(np.arange(n), (len(R), 1))
    fw = np.where(np.take_along_axis(rel, top, 1) > 1e-4 * lib.f_weight.max(), lib.f_weight[top], 0.0)
    return lib.g_crystal[top], fw


def _refine(R, q, a, lib: OrientationLibrary, n_iter: int, max_refl: int):
    """Continuous refinement of orientations ``R`` (B, 3, 3); returns refined R and their scores."""
    h0 = math.radians(max(lib.direction_step_deg, lib.in_plane_step_deg)) / 2
    g, fw = _candidate_reflections(R, lib, 2.5 * h0, max_refl)
    pairs = _near_pairs(R, g, fw, q, a, lib, 2.5 * h0)
    best = score_orientations(R[:, None], q, a, lib, g, fw, pairs)[:, 0]
    for it in range(n_iter):
        h = h0 * 0.5**it
        steps = _rotvec_matrices(_STENCIL * h)  # (19, 3, 3)
        trial = np.einsum("sij,bjk->bsik", steps, R)
        f = score_orientations(trial, q, a, lib, g, fw, pairs)  # (B, 19)
        coef = f @ _FIT.T  # (B, 10) in units of h
        grad = coef[:, 1:4]
        H = np.zeros((len(R), 3, 3))
        H[:, [0, 1, 2], [0, 1, 2]] = 2 * coef[:, 4:7]
        H[:, 0, 1] = H[:, 1, 0] = coef[:, 7]
        H[:, 0, 2] = H[:, 2, 0] = coef[:, 8]
        H[:, 1, 2] = H[:, 2, 1] = coef[:, 9]
        negdef = np.all(np.linalg.eigvalsh(H) < 0, axis=1)
        safe = np.where(negdef[:, None, None], H, -np.eye(3))
        newton = -np.linalg.solve(safe, grad[..., None])[..., 0]
        ok = negdef & (np.linalg.norm(newton, axis=1) <= 1.5)
        kbest = np.argmax(f, axis=1)
        step = np.where(ok[:, None], newton, _STENCIL[kbest])
        cand = np.einsum("bij,bjk->bik", _rotvec_matrices(step * h), R)
        fc = score_orientations(cand[:, None], q, a, lib, g, fw, pairs)[:, 0]
        fs = f[np.arange(len(R)), kbest]
        use_newton = ok & (fc >= fs)
        R_new = np.where(use_newton[:, None, None], cand, trial[np.arange(len(R)), kbest])
        f_new = np.where(use_newton, fc, fs)
        better = f_new > best
        R = np.where(better[:, None, None], R_new, R)
        best = np.where(better, f_new, best)
    return R, best


# --------------------------------------------------------------------------- labels
@lru_cache(maxsize=16)
def _zone_candidates(lib: OrientationLibrary, max_index: int):
    from stemforge.sim.orientations import symmetry_distinct_zone_axes, zone_axis_rotation

    st, ops = lib.structure, lib.ops
    axes = [np.array(a) for a in symmetry_distinct_zone_axes(st, max_index)]
    vecs, parents, sym, uvw, frames, period = [], [], [], [], [], []
    for a in axes:
        for sign in (1, -1):
            c = sign * a
            cu = c @ st.lattice.matrix
            cu = cu / np.linalg.norm(cu)
            if any(np.dot(cu, u) > 1 - 1e-9 for u in np.array(vecs).reshape(-1, 3)):
                continue  # -c is a symmetry image of c
            p = len(uvw)
            uvw.append(c)
            frames.append(zone_axis_rotation(st, c))
            period.append(360.0 / int(np.sum(np.einsum("kij,j->ki", ops, cu) @ cu > 1 - 1e-6)))
            for k, S in enumerate(ops):
                vecs.append(S @ cu)
                parents.append(p)
                sym.append(k)
    return (
        np.array(vecs),
        np.array(parents),
        np.array(sym),
        np.array(uvw, dtype=np.int32),
        np.array(frames),
        np.array(period),
    )


def zone_axis_labels(rotations, library: OrientationLibrary, max_index: int = 3):
    """Nearest low-index zone axis (|indices| ≤ ``max_index``) of orientations (..., 3, 3) and the in-plane angle.

    Returns ``zone_axis`` (..., 3) int (the representative of
    :func:`stemforge.sim.orientations.symmetry_distinct_zone_axes`,
    or its negative when that is not a symmetry image), ``offset_deg`` (angle between the beam and that axis),
    ``in_plane_deg`` (φ of ``R @ S ≈ Rz(φ) @ zone_axis_rotation(structure, zone_axis)`` reduced to
    [0, ``period_deg``)) and ``period_deg`` (360 / order of the axis's rotational symmetry)."""
    R = np.asarray(rotations, dtype=np.float64)
    lead = R.shape[:-2]
    R = R.reshape(-1, 3, 3)
    vecs, parents, sym, uvw, frames, period = _zone_candidates(library, int(max_index))
    d = R[:, 2, :]
    dots = d @ vecs.T
    best = np.argmax(dots, axis=1)
    offset = np.degrees(np.arccos(np.clip(dots[np.arange(len(R)), best], -1, 1)))
    p = parents[best]
    S = library.ops[sym[best]]
    Rp = R @ S  # beam direction S.T d ≈ the representative axis
    x = np.einsum("bij,bj->bi", Rp, frames[p][:, 0, :])  # where the frame's x axis lands in the lab
    phi = np.mod(np.degrees(np.arctan2(x[:, 1], x[:, 0])), period[p])
    bad = ~np.isfinite(R).all(axis=(1, 2))
    za = uvw[p].copy()
    za[bad], offset[bad], phi[bad] = 0, np.nan, np.nan
    return (
        za.reshape(*lead, 3),
        offset.reshape(lead),
        phi.reshape(lead),
        np.where(bad, np.nan, period[p]).reshape(lead),
    )


# --------------------------------------------------------------------------- coarse search
def template_correlation(library: OrientationLibrary, r, theta, a) -> np.ndarray:
    """Normalised correlation of peaks with every template at every in-plane angle.

    ``r`` (Å⁻¹), ``theta`` (rad, from +x = col towards +y = row) and ``a`` (weights; 0 = padding) are (B, P).
    Returns (B, N, n_angles) float32: entry ``[b, i, k]`` is ``Σ_p a_p t_i(r_p, θ_p − φ_k) / (‖a‖ ‖w_i‖)`` with
    ``φ_k = k · in_plane_step_deg``, the match of orientation ``Rz(φ_k) @ frames[i]``.
    """
    import scipy.fft
    import scipy.sparse as sp

    lib = library
    M1, N, J = lib.templates.shape
    B = len(r)
    dr = lib.radii[1] - lib.radii[0]
    bi, pi = np.nonzero(a > 0)
    u = (r[bi, pi] - lib.radii[0]) / dr
    j0 = np.clip(np.floor(u).astype(int), 0, J - 2)
    f = np.clip(u - j0, 0.0, 1.0)
    z = (a[bi, pi][:, None] * np.exp(1j * np.outer(theta[bi, pi], np.arange(M1)))).astype(np.complex64)
    rows = np.concatenate([bi * J + j0, bi * J + j0 + 1])
    spread = sp.csr_matrix((np.concatenate([1 - f, f]), (rows, np.tile(np.arange(len(bi)), 2))), shape=(B * J, len(bi)))
    E = np.ascontiguousarray((spread @ z).reshape(B, J, M1).transpose(2, 1, 0)).astype(np.complex64)  # (M+1, J, B)
    chat = lib.templates @ E  # (M+1, N, B): Σ_j c_i(r_j, m) E(r_j, m)
    corr = scipy.fft.irfft(np.conj(chat), n=lib.n_angles, axis=0) * lib.n_angles  # (n_ang, N, B)
    norm_a = np.sqrt(np.sum(np.asarray(a, dtype=np.float64) ** 2, axis=1))
    scale = 1.0 / (lib.template_norm[None, :, None] * np.maximum(norm_a, 1e-300)[:, None, None])
    return corr.transpose(2, 1, 0) * scale.astype(np.float32)


# --------------------------------------------------------------------------- result
@dataclass
class OrientationMap:
    """Per-position orientation of one phase (arrays of leading shape ``scan_shape``).

    ``rotation`` (3×3 crystal → lab, NaN where no match), ``beam_direction`` (unit, crystal Cartesian),
    ``zone_axis`` (nearest low-index [uvw], int; 0 where no match) with ``zone_axis_offset_deg``, ``in_plane_deg``
    and its symmetry period ``in_plane_period_deg`` (see :func:`zone_axis_labels`), ``score`` (refined
    normalised score in [0, 1]), ``coarse_score`` (template correlation of the best grid orientation),
    ``second_score`` (best coarse score of an orientation more than ``margin_deg`` away, symmetry considered)
    and ``margin`` = coarse_score − second_score, ``twin_score`` (refined score of the Friedel twin ``Rz(180°)·R``,
    whose projected kinematic spots coincide with those of ``R``: only the Ewald-sphere curvature separates the two,
    so ``score − twin_score`` near 0 marks a 180°-ambiguous match), ``num_peaks`` (peaks used), ``valid`` (enough
    peaks).
    """

    library_name: str
    scan_shape: tuple[int, int]
    rotation: np.ndarray
    beam_direction: np.ndarray
    zone_axis: np.ndarray
    zone_axis_offset_deg: np.ndarray
    in_plane_deg: np.ndarray
    in_plane_period_deg: np.ndarray
    score: np.ndarray
    coarse_score: np.ndarray
    second_score: np.ndarray
    margin: np.ndarray
    twin_score: np.ndarray
    num_peaks: np.ndarray
    valid: np.ndarray
    ops: np.ndarray = field(repr=False, default=None)
    info: dict = field(default_factory=dict)

    def misorientation_deg(self, reference) -> np.ndarray:
        """Misorientation (degrees, crystal symmetry considered) against ``reference``: one 3×3 rotation, a
        rotation map of shape ``(*scan_shape, 3, 3)``, or a scan position ``(rx, ry)`` of this map."""
        ref = np.asarray(reference, dtype=np.float64)
        if ref.shape == (2,):
            ref = self.rotation[int(ref[0]), int(ref[1])]
        if ref.shape not in ((3, 3), (*self.scan_shape, 3, 3)):
            raise AnalysisError(
                f"reference must be a 3×3 rotation, a {self.scan_shape} map of them or a scan "
                f"position (rx, ry), got shape {ref.shape}"
            )
        if not np.isfinite(ref).all() and ref.shape == (3, 3):
            raise AnalysisError("the reference orientation is undefined (no match at that position)")
        ok = self.valid & np.isfinite(self.rotation).all(axis=(-1, -2))
        rot = np.where(ok[..., None, None], self.rotation, np.eye(3))
        refm = np.broadcast_to(ref, rot.shape)
        refm = np.where(np.isfinite(refm).all(axis=(-1, -2))[..., None, None], refm, np.eye(3))
        out = _misorientation(rot, refm, self.ops)
        return np.where(ok & np.isfinite(np.broadcast_to(ref, rot.shape)).all(axis=(-1, -2)), out, np.nan)

    def as_dict(self) -> dict:
        """The maps as a dict of arrays (for ``stemforge.analysis.save``-style writers)."""
        return {
            k: getattr(self, k)
            for k in (
                "rotation",
                "beam_direction",
                "zone_axis",
                "zone_axis_offset_deg",
                "in_plane_deg",
                "in_plane_period_deg",
                "score",
                "coarse_score",
                "second_score",
                "margin",
                "twin_score",
                "num_peaks",
                "valid",
            )
        }

    def figure(self, library: OrientationLibrary | None = None):
        """See :func:`plot_orientation_map`."""
        return plot_orientation_map(self, library)


# --------------------------------------------------------------------------- the map
def orientation_map(
    bragg_vectors,
    library: OrientationLibrary,
    *,
    method: str = "classical",
    model=None,
    peak_weights: str = "presence",
    bragg_kwargs: dict | None = None,
    refine: bool = True,
    refine_iterations: int = 4,
    min_peaks: int = 3,
    max_peaks: int = 64,
    margin_deg: float = 5.0,
    resolve_twin: bool = True,
    batch_size: int | None = None,
    allow_energy_mismatch: bool = False,
    zone_max_index: int = 3,
    progress: bool = True,
) -> OrientationMap:
    """Best-matching orientation at every scan position.

    ``method="classical"`` matches the given Bragg vectors with their measured intensities. ``method="ml"`` is
    ML-assisted ACOM: the disks come from the Bragg model (``model``, default
    :data:`~stemforge.analysis.inference.DEFAULT_BRAGG_MODEL`, run on the scan passed as ``bragg_vectors`` with
    ``bragg_kwargs``; ML Bragg vectors are used as given) and each found disk is weighted by ``peak_weights``:
    ``"presence"`` (1 per disk: the model says where a reflection is excited, so the dynamical intensities of a
    thick crystal no longer bias the match) or ``"intensity"`` (the model's per-peak value). The disks are taken
    at the heat-map threshold :data:`ML_ACOM_MIN_PROBABILITY` unless ``bragg_kwargs`` sets ``min_probability``;
    build the library with :data:`ML_ACOM_LIBRARY` (template weights that suit presence-weighted disks).

    Parameters
    ----------
    bragg_vectors : BraggVectors
        Peaks in px (with ``method="ml"`` also a DataCube, array or path); needs ``calibration.pixel_size_inv_A``
        (Å⁻¹/px) and uses ``calibration.origin_px`` (else the detector centre). Peaks with |q| outside
        [library.q_min, library.k_max] are ignored.
    library : OrientationLibrary
        From :func:`stemforge.analysis.build_orientation_library`, at the data's beam energy.
    refine : bool
        Refine the best grid orientation continuously (see the module docstring); else keep the grid orientation
        (with a parabolic sub-step in-plane angle).
    min_peaks, max_peaks : int
        Positions with fewer usable peaks are left unmatched (``valid`` False); at most ``max_peaks`` strongest
        weighted peaks per pattern are used.
    margin_deg : float
        The second-best score is taken among orientations more than this far (degrees, symmetry considered)
        from the best.
    batch_size : int, optional
        Patterns per batch (default: as many as fit in ~100 MB of correlation arrays).
    allow_energy_mismatch : bool
        Accept a library built at another energy than ``calibration.energy_eV``.

    Returns
    -------
    OrientationMap
        ``info`` holds ``patterns_per_s`` and the elapsed time.
    """
    from tqdm.auto import tqdm

    if method not in ("classical", "ml"):
        raise AnalysisError(f"method must be 'classical' or 'ml', got {method!r}")
    ml_info = {}
    if method == "ml":
        bragg_vectors, ml_info = _ml_bragg_vectors(bragg_vectors, model, peak_weights, bragg_kwargs, progress)
    elif not isinstance(bragg_vectors, BraggVectors):
        raise AnalysisError(
            f"orientation_map(method='classical') needs BraggVectors, got {type(bragg_vectors).__name__} "
            "(find the disks first, or use method='ml' on the scan)"
        )
    check_library_calibration(bragg_vectors, library, allow_energy_mismatch)
    lib = library
    if min_peaks < 1 or max_peaks < min_peaks:
        raise AnalysisError(f"need 1 ≤ min_peaks ≤ max_peaks, got min_peaks={min_peaks}, max_peaks={max_peaks}")
    H, W = bragg_vectors.detector_shape
    o = bragg_vectors.calibration.origin_px or (H // 2, W // 2)
    edge = float(bragg_vectors.calibration.pixel_size_inv_A) * min(np.min(o), H - 1 - o[0], W - 1 - o[1])
    if edge < lib.k_max * 0.95:
        warnings.warn(
            f"the detector reaches only {edge:.2f} Å⁻¹ from the origin, less than the library's k_max "
            f"{lib.k_max} Å⁻¹: reflections beyond the edge are missing from the data; a library with "
            "k_max at the edge matches better",
            stacklevel=2,
        )
    t0 = time.perf_counter()
    q, r, theta, a, offsets = _prepare_peaks(bragg_vectors, lib, int(max_peaks))
    Rx, Ry = bragg_vectors.scan_shape
    counts = np.diff(offsets)
    todo = np.nonzero(counts >= min_peaks)[0]
    n_pos = Rx * Ry
    out_R = np.full((n_pos, 3, 3), np.nan)
    score = np.zeros(n_pos)
    coarse = np.zeros(n_pos)
    second = np.zeros(n_pos)
    twin = np.zeros(n_pos)

    N, n_ang = len(lib.directions), lib.n_angles
    B = batch_size or max(1, min(256, int(2.5e7 // (N * n_ang))))
    step = lib.in_plane_step_deg

    bar = tqdm(total=len(todo), desc=f"orientation {lib.name}", unit="pattern", disable=not progress)
    for b0 in range(0, len(todo), B):
        idx = todo[b0 : b0 + B]
        nb = len(idx)
        (qb, rb, tb, ab), mask = _padded(offsets, idx, q, r, theta, a)
        corr = template_correlation(lib, rb, tb, ab)  # (nb, N, n_ang)
        flat = corr.reshape(nb, -1).argmax(axis=1)
        di, ki = np.divmod(flat, n_ang)
        c0 = corr[np.arange(nb), di, ki]
        cm = corr[np.arange(nb), di, (ki - 1) % n_ang]
        cp = corr[np.arange(nb), di, (ki + 1) % n_ang]
        delta = parabola_offset(cm, c0, cp)
        R_best = _rot_z((ki + delta) * step) @ lib.frames[di]
        # second best: local maxima along the angle of the best-scoring directions, > margin_deg away
        per_dir = corr.max(axis=2)
        nd = min(16, N)
        top_d = np.argpartition(-per_dir, nd - 1, axis=1)[:, :nd]
        cs = np.take_along_axis(corr, top_d[:, :, None], axis=1)  # (nb, nd, n_ang)
        loc = (cs >= np.roll(cs, 1, axis=2)) & (cs > np.roll(cs, -1, axis=2))
        cs = np.where(loc, cs, -np.inf)
        nk = min(4, n_ang)
        top_k = np.argpartition(-cs, nk - 1, axis=2)[:, :, :nk]
        vals = np.take_along_axis(cs, top_k, axis=2).reshape(nb, -1)
        cand = _rot_z(top_k * step) @ lib.frames[np.broadcast_to(top_d[:, :, None], top_k.shape)]
        mis = _misorientation(R_best[:, None, None], cand, lib.ops).reshape(nb, -1)
        vals = np.where((mis > margin_deg) & np.isfinite(vals), vals, 0.0)
        second[idx] = np.maximum(vals.max(axis=1), 0.0)
        coarse[idx] = c0
        # the Friedel twin Rz(180°)·R has the same projected spots; only the Ewald sphere tells them apart
        R_twin = _rot_z(np.full(nb, 180.0)) @ R_best
        both = np.concatenate([R_best, R_twin])
        q2, a2 = np.concatenate([qb, qb]), np.concatenate([ab, ab])
        if refine:
            R2, s2 = _refine(both, q2, a2, lib, int(refine_iterations), 256)
        else:
            g, fw = _candidate_reflections(both, lib, 0.0, 256)
            pairs = _near_pairs(both, g, fw, q2, a2, lib, 0.0)
            R2, s2 = both, score_orientations(both[:, None], q2, a2, lib, g, fw, pairs)[:, 0]
        pick = (s2[nb:] > s2[:nb]) if resolve_twin else np.zeros(nb, dtype=bool)
        R_ref = np.where(pick[:, None, None], R2[nb:], R2[:nb])
        sc = np.where(pick, s2[nb:], s2[:nb])
        twin[idx] = np.where(pick, s2[:nb], s2[nb:])
        out_R[idx] = R_ref
        score[idx] = sc
        bar.update(nb)
    bar.close()
    elapsed = time.perf_counter() - t0
    from stemforge.sim.orientations import reduce_to_fundamental_zone

    valid = np.zeros(n_pos, dtype=bool)
    valid[todo] = True
    out_R[valid] = reduce_to_fundamental_zone(out_R[valid], lib.ops)
    za, off, phi, period = zone_axis_labels(out_R, lib, zone_max_index)
    shape = (Rx, Ry)
    return OrientationMap(
        lib.name,
        shape,
        out_R.reshape(*shape, 3, 3),
        out_R[:, 2, :].reshape(*shape, 3),
        za.reshape(*shape, 3),
        off.reshape(shape),
        phi.reshape(shape),
        period.reshape(shape),
        score.reshape(shape),
        coarse.reshape(shape),
        second.reshape(shape),
        (coarse - second).reshape(shape),
        twin.reshape(shape),
        counts.reshape(shape),
        valid.reshape(shape),
        lib.ops,
        {
            "elapsed_s": elapsed,
            "patterns_per_s": len(todo) / max(elapsed, 1e-9),
            "refined": refine,
            "library": repr(lib),
            "margin_deg": margin_deg,
            "method": method,
            **ml_info,
        },
    )


def _ml_bragg_vectors(data, model, peak_weights: str, bragg_kwargs: dict | None, progress: bool):
    """The Bragg vectors ML-assisted ACOM matches: the Bragg model's disks, weighted by presence or value."""
    from dataclasses import replace

    if peak_weights not in ("presence", "intensity"):
        raise AnalysisError(f"peak_weights must be 'presence' or 'intensity', got {peak_weights!r}")
    if isinstance(data, BraggVectors):
        if data.method != "ml":
            raise AnalysisError(
                "orientation_map(method='ml') needs the scan or Bragg vectors found by a model, got classical peaks"
            )
        bv = data
    else:
        from .inference import DEFAULT_BRAGG_MODEL, find_bragg_disks_ml

        kwargs = {"progress": progress, "min_probability": ML_ACOM_MIN_PROBABILITY, **(bragg_kwargs or {})}
        bv = find_bragg_disks_ml(data, model if model is not None else DEFAULT_BRAGG_MODEL, **kwargs)
    if peak_weights == "presence":
        peaks = bv.peaks.copy()
        # equal weights; the 1e-3 of the model's value only orders the disks when max_peaks drops some
        value = np.nan_to_num(peaks["intensity"].astype(np.float64), nan=0.0)
        peaks["intensity"] = 1.0 + 1e-3 * value / max(1e-12, float(np.max(value, initial=0.0)))
        bv = replace(bv, peaks=peaks)
    return bv, {"bragg_model": bv.info.get("model"), "peak_weights": peak_weights}


# --------------------------------------------------------------------------- figures
def ipf_colors(directions, library: OrientationLibrary) -> np.ndarray:
    """IPF-like RGB colours (..., 3) of beam directions (crystal Cartesian unit vectors, ..., 3): each channel
    falls off with the angle to one of the three lowest-index zone axes (symmetry images and beam reversal
    included), so [001]/[011]/[111]-type directions of a cubic crystal are red/green/blue."""
    from stemforge.sim.orientations import symmetry_distinct_zone_axes

    d = np.asarray(directions, dtype=np.float64)
    axes = np.array(symmetry_distinct_zone_axes(library.structure, 1)[:3], dtype=np.float64)
    cart = axes @ library.structure.lattice.matrix
    cart /= np.linalg.norm(cart, axis=1, keepdims=True)
    laue = np.concatenate([library.ops, -library.ops])
    images = np.einsum("kij,aj->aki", laue, cart)  # (3, 2K, 3)
    ang = np.degrees(np.arccos(np.clip(np.max(np.einsum("...j,akj->...ak", d, images), axis=-1), -1, 1)))
    sep = np.degrees(np.arccos(np.clip(np.max(np.einsum("bj,akj->bak", cart, images), axis=-1), -1, 1)))
    span = np.array([np.min(np.delete(sep[i], i)) if len(sep) > 1 else 90.0 for i in range(len(cart))])
    rgb = np.clip(1 - ang / span, 0, 1)
    rgb = np.concatenate([rgb, np.zeros((*rgb.shape[:-1], 3 - rgb.shape[-1]))], axis=-1)
    rgb /= np.maximum(rgb.max(axis=-1, keepdims=True), 1e-9)
    return np.where(np.isfinite(d).all(axis=-1, keepdims=True), rgb, 0.0)


def plot_orientation_map(omap: OrientationMap, library: OrientationLibrary | None = None):
    """A matplotlib Figure: IPF-like colours of the beam direction (with a colour key of the library's
    directions when ``library`` is given), the in-plane angle (cyclic over its symmetry period, normalised) and
    the score."""
    from matplotlib.figure import Figure

    panels = 4 if library is not None else 3
    fig = Figure(figsize=(4 * panels, 4), layout="constrained")
    axs = fig.subplots(1, panels)
    if library is not None:
        rgb = ipf_colors(omap.beam_direction, library)
    else:
        rgb = np.abs(np.nan_to_num(omap.beam_direction))
    rgb = np.where(omap.valid[..., None], rgb, 0.0)
    axs[0].imshow(rgb, interpolation="nearest")
    axs[0].set_title(f"{omap.library_name}: beam direction (IPF-like)")
    frac = np.where(omap.valid, omap.in_plane_deg / omap.in_plane_period_deg, np.nan)
    im = axs[1].imshow(frac, cmap="twilight", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=axs[1], label="in-plane angle / symmetry period")
    axs[1].set_title("in-plane angle")
    im = axs[2].imshow(
        np.where(omap.valid, omap.score, np.nan), cmap="viridis", vmin=0, vmax=1, interpolation="nearest"
    )
    fig.colorbar(im, ax=axs[2], label="score")
    axs[2].set_title("match score")
    if library is not None:
        d = library.directions
        s = np.where(d[:, 2:3] < 0, -d, d)  # stereographic projection of the upper hemisphere
        xy = s[:, :2] / (1 + s[:, 2:3])
        axs[3].scatter(xy[:, 0], xy[:, 1], c=ipf_colors(library.directions, library), s=8)
        axs[3].set_aspect("equal")
        axs[3].set_title("colour key (stereographic)")
    for ax in axs[:3]:
        ax.set_xlabel("scan col")
        ax.set_ylabel("scan row")
    return fig
