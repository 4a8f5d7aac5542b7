"""Selecting scan regions. The scan streaming itself (chunk-aligned blocks, progress, finite checks) lives in
:mod:`stemforge.core.streaming`, shared with ML inference."""

from __future__ import annotations

import numpy as np

from .datacube import AnalysisError

__all__ = ["region_mask"]


def region_mask(scan_shape, region=None) -> np.ndarray:
    """Boolean ``(Rx, Ry)`` mask of a scan region.

    ``region``: ``None`` (the whole scan), a bool mask ``(Rx, Ry)``, a rectangle ``[r0, r1, c0, c1]`` of scan positions
    (rows r0:r1, columns c0:c1; must lie inside the scan), or anything numpy can index with (slices).
    """
    scan_shape = tuple(int(v) for v in scan_shape)
    mask = np.zeros(scan_shape, bool)
    if region is None:
        mask[:] = True
    elif isinstance(region, np.ndarray) and region.dtype == bool:
        if region.shape != scan_shape:
            raise AnalysisError(f"region mask {region.shape} does not match the scan {scan_shape}")
        mask = region.copy()
    elif (
        isinstance(region, (list, tuple)) and len(region) == 4 and all(isinstance(v, (int, np.integer)) for v in region)
    ):
        r0, r1, c0, c1 = (int(v) for v in region)
        if not (0 <= r0 < r1 <= scan_shape[0] and 0 <= c0 < c1 <= scan_shape[1]):
            raise AnalysisError(
                f"region [{r0}, {r1}, {c0}, {c1}] lies outside the scan {scan_shape} (rows r0:r1, cols c0:c1)"
            )
        mask[r0:r1, c0:c1] = True
    else:
        try:
            mask[region] = True
        except (IndexError, TypeError, ValueError) as err:
            raise AnalysisError(f"cannot select a scan region with {region!r}: {err}") from None
    if not mask.any():
        raise AnalysisError("the region selects no scan position")
    return mask
