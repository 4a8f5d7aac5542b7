"""Strain and rotation maps from fitted lattices, relative to a reference region.

With reciprocal bases ``G`` (columns g1, g2 in detector ``(x=col, y=row)``) and the reference's mean ``G0``, the
real-space deformation of the lattice is ``D = (G G0⁻¹)⁻ᵀ`` (a real lattice deformed by ``F`` has its reciprocal
lattice transformed by ``F⁻ᵀ``). ``D`` is split by polar decomposition ``D = V·R``: reported are the strain
``ε = V − I`` (``exx``, ``eyy``, ``exy``, dimensionless, in the detector frame) and the rotation ``θ`` of ``R``
(degrees, counter-clockwise from x towards y) — the conventions of :mod:`stemforge.sim.synthetic_scan`'s ground truth
(``F = (I+ε)·Rθ``).
"""

from __future__ import annotations

import numpy as np

from .datacube import AnalysisError
from .streaming import region_mask


def strain_map(lattice: dict, reference=None, reference_lattice=None) -> dict:
    """Strain and rotation maps of the real-space lattice relative to a reference lattice.

    Parameters
    ----------
    lattice : dict
        :func:`stemforge.analysis.lattice.fit_lattice` output (``g1``, ``g2`` maps (Rx, Ry, 2) in px, ``(x, y)``).
    reference : bool mask (Rx, Ry), rectangle [r0, r1, c0, c1], or slices, optional
        Scan positions whose mean fitted lattice is the unstrained reference (default: the whole scan).
    reference_lattice : (g1, g2), optional
        An explicit reference basis (px, ``(x, y)``) instead of a region (e.g. from a separate reference scan).

    Returns
    -------
    dict
        ``exx``, ``eyy``, ``exy`` (dimensionless, detector frame x = col, y = row), ``theta_deg`` (rotation of the
        lattice, degrees, counter-clockwise from x towards y) maps (Rx, Ry), NaN where the fit failed; and
        ``reference_mask`` (Rx, Ry) (all False with an explicit ``reference_lattice``).
    """
    g1, g2 = np.asarray(lattice["g1"], dtype=np.float64), np.asarray(lattice["g2"], dtype=np.float64)
    if g1.ndim != 3 or g1.shape[-1] != 2 or g2.shape != g1.shape:
        raise AnalysisError(f"lattice g1/g2 maps must have shape (Rx, Ry, 2), got {g1.shape} and {g2.shape}")
    G = np.stack([g1, g2], -1)  # (Rx, Ry, 2, 2): columns g1, g2
    if reference_lattice is not None:
        G0 = np.stack([np.asarray(v, dtype=np.float64) for v in reference_lattice], -1)
        if G0.shape != (2, 2) or not np.isfinite(G0).all() or abs(np.linalg.det(G0)) < 1e-12:
            raise AnalysisError("reference_lattice must be two finite, non-collinear (x, y) vectors")
        mask = np.zeros(g1.shape[:2], bool)
    else:
        mask = region_mask(g1.shape[:2], reference)
        ref = G[mask]
        ref = ref[np.isfinite(ref).all(axis=(1, 2))]
        if not len(ref):
            raise AnalysisError("no position of the reference region has a fitted lattice")
        G0 = ref.mean(0)
    ok = np.isfinite(G).all(axis=(-1, -2)) & (np.abs(np.linalg.det(np.where(np.isfinite(G), G, 1.0))) > 1e-12)
    Gs = np.where(ok[..., None, None], G, G0)
    D = np.linalg.inv(np.swapaxes(Gs @ np.linalg.inv(G0), -1, -2))
    # polar decomposition D = V R (left stretch V, rotation R), by SVD D = U S Wᵀ: R = U Wᵀ, V = U S Uᵀ
    U, S, Wt = np.linalg.svd(D)
    Rm = U @ Wt
    V = U @ (S[..., :, None] * np.swapaxes(U, -1, -2))
    eps = V - np.eye(2)
    theta = np.degrees(np.arctan2(Rm[..., 1, 0], Rm[..., 0, 0]))
    nan = np.where(ok, 1.0, np.nan)
    return {
        "exx": eps[..., 0, 0] * nan,
        "eyy": eps[..., 1, 1] * nan,
        "exy": eps[..., 0, 1] * nan,
        "theta_deg": theta * nan,
        "reference_mask": mask,
    }


def plot_strain_maps(
    strain: dict, ground_truth: dict | None = None, title: str | None = None, limit_percent: float | None = None
):
    """A matplotlib Figure of εxx, εyy, εxy (%) and θ (°); a second row for the ground truth when given."""
    from matplotlib.figure import Figure

    keys = [
        ("exx", "εxx (%)", 100.0),
        ("eyy", "εyy (%)", 100.0),
        ("exy", "εxy (%)", 100.0),
        ("theta_deg", "θ (°)", 1.0),
    ]
    rows = [("measured", strain)] + ([("ground truth", ground_truth)] if ground_truth else [])
    fig = Figure(figsize=(3.2 * len(keys), 2.9 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(keys), squeeze=False)
    for j, (k, label, scale) in enumerate(keys):
        vals = [np.asarray(r[k]) * scale for _, r in rows if k in r]
        finite = np.concatenate([v[np.isfinite(v)].ravel() for v in vals]) if vals else np.zeros(1)
        auto = max(float(np.abs(finite).max()) if finite.size else 1.0, 1e-6)
        lim = limit_percent if (limit_percent and scale == 100.0) else auto
        for i, (name, r) in enumerate(rows):
            ax = axes[i, j]
            if k in r:
                im = ax.imshow(np.asarray(r[k]) * scale, cmap="RdBu_r", vmin=-lim, vmax=lim)
                fig.colorbar(im, ax=ax, shrink=0.8)
            ax.set_title(f"{label} {name}", fontsize=9)
            ax.set_xticks([]), ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return fig
