"""Sub-pixel position of a maximum from three samples: the vertex of the parabola through them.

Used wherever stemforge refines a discrete maximum (correlation peaks of the classical disk finder and the origin
fit, network output maps, peak finding on label maps, the in-plane angle of orientation matching).
"""

from __future__ import annotations

import numpy as np

__all__ = ["parabola_offset", "refine_maxima"]


def parabola_offset(fm, f0, fp, log: bool = False) -> np.ndarray:
    """Offset (in samples, clipped to ±0.5) of the vertex of the parabola through ``(-1, fm), (0, f0), (+1, fp)``.

    Parameters
    ----------
    fm, f0, fp : array_like
        Values one step before, at, and one step after a discrete maximum (any units; arrays broadcast).
    log : bool
        Fit the parabola to the logarithms where all three values are positive (exact for a Gaussian profile,
        e.g. a blob label map); where one is not, the plain values are used.

    Returns
    -------
    numpy.ndarray
        Offsets in samples; 0 where the three values are not concave (no maximum at ``f0``).
    """
    fm, f0, fp = (np.asarray(v, dtype=np.float64) for v in (fm, f0, fp))
    if log:
        ok = (fm > 0) & (f0 > 0) & (fp > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            fm, f0, fp = (np.where(ok, np.log(np.where(ok, v, 1.0)), v) for v in (fm, f0, fp))
    den = fm - 2.0 * f0 + fp
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(den < 0, 0.5 * (fm - fp) / np.where(den < 0, den, -1.0), 0.0)
    return np.clip(off, -0.5, 0.5)


def refine_maxima(maps: np.ndarray, rows, cols, log: bool = False, wrap: bool = False):
    """Sub-pixel ``(row, col)`` of maxima at integer pixels of a map, one 3-point parabola per axis.

    Parameters
    ----------
    maps : array (..., H, W)
        One map, or a stack of maps (e.g. Monte-Carlo samples) refined at the same pixels.
    rows, cols : array of int
        Integer pixels ``(P,)`` of the maxima.
    log : bool
        See :func:`parabola_offset` (exact for Gaussian blobs).
    wrap : bool
        Neighbours wrap around the edges (periodic maps such as FFT correlations); otherwise a position on the edge
        is refined around the nearest interior pixel.

    Returns
    -------
    (rows, cols) : arrays ``(..., P)`` of float
        Refined positions in px (one row per map of the stack).
    """
    maps = np.asarray(maps)
    H, W = maps.shape[-2:]
    r, c = np.asarray(rows, dtype=np.intp), np.asarray(cols, dtype=np.intp)
    if wrap:
        rm, rp, cm, cp = (r - 1) % H, (r + 1) % H, (c - 1) % W, (c + 1) % W
    else:
        r, c = np.clip(r, 1, H - 2), np.clip(c, 1, W - 2)
        rm, rp, cm, cp = r - 1, r + 1, c - 1, c + 1
    at = maps[..., r, c]
    dr = parabola_offset(maps[..., rm, c], at, maps[..., rp, c], log)
    dc = parabola_offset(maps[..., r, cm], at, maps[..., r, cp], log)
    return r + dr, c + dc
