"""Believable stand-in CBED samples for previews, benchmarks and tests.

Not a simulation: disks are analytic soft-edged copies of the probe placed on a
random 2-D reciprocal lattice, with intensities falling off with scattering
vector, plus a weak diffuse (thermal-diffuse-like) halo.  The arrays follow the
simulator's data contract so the augmentation code can be exercised without it:

* ``pattern`` (H, W) float32, fraction of the incident beam per pixel, sum <= 1,
  undiffracted beam centred on pixel (row H//2, col W//2);
* ``probe`` (H, W) float32, vacuum probe image, sum 1;
* ``labels`` dict of (H, W) float32 maps ``vg_map`` (unit-peak Gaussian blobs,
  sigma 1 px, at the Bragg positions) and ``disk_map`` (soft disks of the probe
  radius at the Bragg positions);
* ``reflections_px`` (R, 2) float32 (x = col, y = row; NaN padded) and
  ``num_reflections``; the 000 beam is reflection 0;
* ``calibration`` {"pixel_size_inv_A": Å⁻¹ per px, "shape": [H, W], "origin_px": [row, col]}.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import erfc

from stemforge.core.units import wavelength_A

__all__ = ["synthetic_sample"]

#: Relativistic electron wavelength at 200 kV, in Å (for the disk radius from mrad).
WAVELENGTH_200KV_A = wavelength_A(200e3)


def _soft_disk(dx: np.ndarray, dy: np.ndarray, radius_px: float, edge_px: float) -> np.ndarray:
    """Disk of radius ``radius_px`` with a Gaussian-blurred (erfc) edge of width ``edge_px``."""
    r = np.hypot(dx, dy)
    return 0.5 * erfc((r - radius_px) / (math.sqrt(2.0) * edge_px))


def synthetic_sample(
    rng: np.random.Generator | int | None = None,
    shape: tuple[int, int] = (256, 256),
    pixel_size_inv_A: float = 0.02,
    convergence_mrad: tuple[float, float] = (2.0, 3.5),
    lattice_inv_A: tuple[float, float] = (0.28, 0.5),
    max_reflections: int = 128,
) -> dict[str, Any]:
    """Make one stand-in sample following the simulator's data contract.

    Parameters
    ----------
    rng : numpy.random.Generator, int or None
        Randomness (a seed is accepted).
    shape : tuple of int
        Detector shape (H, W) in px.
    pixel_size_inv_A : float
        Reciprocal-space sampling, Å⁻¹ per px.
    convergence_mrad : tuple of float
        Range of the probe convergence semi-angle, mrad (200 kV electrons).
    lattice_inv_A : tuple of float
        Range of the two reciprocal lattice vector lengths, Å⁻¹.
    max_reflections : int
        R, the padded length of ``reflections_px``.

    Returns
    -------
    dict
        Keys ``pattern``, ``probe``, ``labels``, ``reflections_px``,
        ``num_reflections``, ``calibration`` (see the module docstring).
    """
    rng = np.random.default_rng(rng)
    h, w = int(shape[0]), int(shape[1])
    cy, cx = h // 2, w // 2
    alpha = rng.uniform(*convergence_mrad) * 1e-3
    radius = alpha / WAVELENGTH_200KV_A / pixel_size_inv_A  # px
    edge = 0.6
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)

    probe = _soft_disk(xx - cx, yy - cy, radius, edge)
    probe /= probe.sum()

    # reciprocal lattice: two vectors (Å⁻¹) at 60-120 degrees, random in-plane rotation
    l1, l2 = rng.uniform(*lattice_inv_A, size=2)
    gamma = math.radians(rng.uniform(60.0, 120.0))
    rot = rng.uniform(0.0, 2.0 * math.pi)
    a = np.array([math.cos(rot), math.sin(rot)]) * l1 / pixel_size_inv_A
    b = np.array([math.cos(rot + gamma), math.sin(rot + gamma)]) * l2 / pixel_size_inv_A
    n = int(math.ceil(max(h, w) / min(np.linalg.norm(a), np.linalg.norm(b)))) + 1
    ij = np.array([(i, j) for i in range(-n, n + 1) for j in range(-n, n + 1)])
    g = ij[:, :1] * a + ij[:, 1:] * b  # (M, 2) px offsets (x, y)
    pos = g + np.array([cx, cy])
    inside = (pos[:, 0] > radius) & (pos[:, 0] < w - 1 - radius) & (pos[:, 1] > radius) & (pos[:, 1] < h - 1 - radius)
    g, pos = g[inside], pos[inside]
    order = np.argsort(np.hypot(g[:, 0], g[:, 1]), kind="stable")
    g, pos = g[order][:max_reflections], pos[order][:max_reflections]

    # intensities: central beam 35-75 %, Bragg beams |F|^2 ~ Exp(1) with a Debye-Waller-like fall-off
    q = np.hypot(g[:, 0], g[:, 1]) * pixel_size_inv_A  # Å⁻¹
    weights = rng.exponential(1.0, size=len(g)) * np.exp(-rng.uniform(1.0, 3.0) * q**2)
    weights[0] = 0.0
    central = rng.uniform(0.35, 0.75)
    diffuse_total = rng.uniform(0.01, 0.04)
    intensities = weights / max(weights.sum(), 1e-12) * (0.97 - central - diffuse_total)
    intensities[0] = central

    pattern = np.zeros((h, w))
    vg_map = np.zeros((h, w))
    disk_map = np.zeros((h, w))
    half = int(math.ceil(radius + 5 * edge)) + 1
    disk_norm = _soft_disk(xx - cx, yy - cy, radius, edge).sum()
    for (px, py), inten in zip(pos, intensities, strict=False):
        r0, r1 = max(int(py) - half, 0), min(int(py) + half + 2, h)
        c0, c1 = max(int(px) - half, 0), min(int(px) + half + 2, w)
        dx, dy = xx[r0:r1, c0:c1] - px, yy[r0:r1, c0:c1] - py
        disk = _soft_disk(dx, dy, radius, edge)
        pattern[r0:r1, c0:c1] += inten * disk / disk_norm
        disk_map[r0:r1, c0:c1] = np.maximum(disk_map[r0:r1, c0:c1], disk)
        vg_map[r0:r1, c0:c1] = np.maximum(vg_map[r0:r1, c0:c1], np.exp(-(dx**2 + dy**2) / 2.0))

    rr2 = ((xx - cx) ** 2 + (yy - cy) ** 2) * pixel_size_inv_A**2  # Å⁻²
    diffuse = rr2 * np.exp(-rr2 / rng.uniform(0.5, 1.5) ** 2)
    pattern += diffuse / diffuse.sum() * diffuse_total

    # erfc / Gaussian tails reach the float32 denormal range, which slows every later float op ~100x
    for arr in (pattern, probe, vg_map, disk_map):
        arr[arr < 1e-30] = 0.0

    refl = np.full((max_reflections, 2), np.nan, dtype=np.float32)
    refl[: len(pos)] = pos
    return {
        "pattern": pattern.astype(np.float32),
        "probe": probe.astype(np.float32),
        "labels": {"vg_map": vg_map.astype(np.float32), "disk_map": disk_map.astype(np.float32)},
        "reflections_px": refl,
        "num_reflections": np.int32(len(pos)),
        "calibration": {"pixel_size_inv_A": float(pixel_size_inv_A), "shape": [h, w], "origin_px": [cy, cx]},
    }
