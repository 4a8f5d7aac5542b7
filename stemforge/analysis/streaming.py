"""Streaming a scan block by block (numpy, dask or any sliceable array) and selecting scan regions.

Every classical function of the analysis stage reads the scan through :func:`iter_scan_blocks`, so a lazy scan larger
than memory is read once, one block of scan positions at a time, with the next block read while the current one is
processed.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .datacube import AnalysisError


def _is_dask(a) -> bool:
    return type(a).__module__.split(".")[0] == "dask"


def _groups(bounds: list[int], per_item: int, budget: int) -> list[tuple[int, int]]:
    """Merge consecutive chunk intervals ``bounds`` (cumulative edges) while their size × ``per_item`` ≤ budget."""
    out, start = [], bounds[0]
    for i in range(1, len(bounds)):
        nxt = bounds[i + 1] if i + 1 < len(bounds) else None
        if nxt is None or (nxt - start) * per_item > budget:
            out.append((start, bounds[i]))
            start = bounds[i]
    return out


def scan_blocks(data, max_patterns: int = 256) -> list[tuple[int, int, int, int]]:
    """Blocks ``(r0, r1, c0, c1)`` of scan positions covering the scan in row-major order.

    For dask arrays the blocks follow the chunk grid of the scan axes (whole chunks, merged up to about
    ``max_patterns`` patterns), so each chunk is read once; for other arrays they are runs of whole scan rows
    (split along the columns when one row holds more than ``max_patterns``).
    """
    Rx, Ry = (int(v) for v in data.shape[:2])
    if _is_dask(data):
        re = list(np.cumsum((0, *data.chunks[0])))
        ce = list(np.cumsum((0, *data.chunks[1])))
    else:
        re = list(range(Rx + 1))
        ce = [0, Ry] if Ry <= max_patterns else list(range(0, Ry, max_patterns)) + [Ry]
    cols = _groups(ce, 1, max_patterns)
    if len(cols) == 1:  # whole rows: merge rows
        return [(r0, r1, 0, Ry) for r0, r1 in _groups(re, Ry, max_patterns)]
    rows = _groups(re, 1, 1)  # one chunk-row at a time, split into column groups
    return [(r0, r1, c0, c1) for r0, r1 in rows for c0, c1 in cols]


def iter_scan_blocks(data, max_patterns: int = 256, dtype=np.float64, prefetch: bool = True):
    """Yield ``((r0, r1, c0, c1), block)`` with ``block`` a numpy array ``(r1-r0, c1-c0, H, W)`` of ``dtype``.

    The next block is read (dask: computed) in a background thread while the caller works on the current one.
    """
    blocks = scan_blocks(data, max_patterns)

    def load(b):
        r0, r1, c0, c1 = b
        part = data[r0:r1, c0:c1]
        if _is_dask(part):
            part = part.compute()
        return np.asarray(part, dtype=dtype)

    if not prefetch or len(blocks) < 2:
        for b in blocks:
            yield b, load(b)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        fut = pool.submit(load, blocks[0])
        for i, b in enumerate(blocks):
            block = fut.result()
            if i + 1 < len(blocks):
                fut = pool.submit(load, blocks[i + 1])
            yield b, block


def check_finite(block: np.ndarray, r0: int, c0: int) -> None:
    """Raise :class:`AnalysisError` naming the first scan position of ``block`` that holds NaN or Inf."""
    bad = ~np.isfinite(block).all(axis=(-2, -1))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise AnalysisError(f"pattern at scan position ({r0 + i}, {c0 + j}) holds NaN or Inf; mask or replace it first")


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
