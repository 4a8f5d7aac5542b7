"""Reading a scan block by block: numpy, dask or any sliceable ``(Rx, Ry, H, W)`` array, chunk-aligned, with a
progress bar and a finite-value check.

Every function that touches every pattern of a scan (virtual images, the classical disk finder, origin fits, ML
inference) reads through :func:`stream_scan` (blocks of scan positions) or :func:`stream_patterns` (batches of
patterns for a network): a lazy scan larger than memory is read once, one chunk-aligned block at a time, with the
next block read in a background thread while the current one is processed.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import DataError

__all__ = ["scan_blocks", "iter_scan_blocks", "check_finite", "stream_scan", "stream_patterns"]


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
        ce = [0, Ry] if Ry <= max_patterns else [*range(0, Ry, max_patterns), Ry]
    cols = _groups(ce, 1, max_patterns)
    if len(cols) == 1:  # whole rows: merge rows
        return [(r0, r1, 0, Ry) for r0, r1 in _groups(re, Ry, max_patterns)]
    rows = _groups(re, 1, 1)  # one chunk-row at a time, split into column groups
    return [(r0, r1, c0, c1) for r0, r1 in rows for c0, c1 in cols]


def iter_scan_blocks(data, max_patterns: int = 256, dtype=np.float64, prefetch: bool = True):
    """Yield ``((r0, r1, c0, c1), block)`` with ``block`` a numpy array ``(r1-r0, c1-c0, H, W)`` of ``dtype``.

    The next block is read (dask: computed) in a background thread while the caller works on the current one.
    No progress bar and no checks: :func:`stream_scan` adds both.
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
    """Raise :class:`~stemforge.core.errors.DataError` naming the first scan position of ``block``
    ``(rows, cols, H, W)`` (whose first position is ``(r0, c0)``) that holds NaN or Inf."""
    bad = ~np.isfinite(block).all(axis=(-2, -1))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DataError(f"pattern at scan position ({r0 + i}, {c0 + j}) holds NaN or Inf; mask or replace it first")


def stream_scan(
    data,
    max_patterns: int = 256,
    dtype=np.float64,
    *,
    progress: bool = False,
    desc: str = "patterns",
    finite: bool = True,
    prefetch: bool = True,
) -> Iterator[tuple[tuple[int, int, int, int], np.ndarray]]:
    """:func:`iter_scan_blocks` with a tqdm bar over the scan's patterns and, with ``finite``, a
    :class:`~stemforge.core.errors.DataError` naming the first pattern that holds NaN or Inf.

    Parameters
    ----------
    data : array (Rx, Ry, H, W)
        numpy, dask (read chunk by chunk, chunk-aligned) or any sliceable array.
    max_patterns : int
        About how many patterns one block holds.
    dtype : numpy dtype
        Of the yielded blocks.
    progress : bool
        Show a progress bar (``desc``, unit "pattern").
    finite : bool
        Refuse NaN / Inf.
    prefetch : bool
        Read the next block in a background thread.

    Yields
    ------
    ((r0, r1, c0, c1), block)
        Scan rows ``r0:r1`` and columns ``c0:c1``; ``block`` is ``(r1-r0, c1-c0, H, W)``.
    """
    from tqdm.auto import tqdm

    total = int(np.prod(data.shape[:2]))
    with tqdm(total=total, desc=desc, unit="pattern", disable=not progress) as bar:
        for (r0, r1, c0, c1), block in iter_scan_blocks(data, max_patterns, dtype, prefetch):
            if finite:
                check_finite(block, r0, c0)
            yield (r0, r1, c0, c1), block
            bar.update((r1 - r0) * (c1 - c0))


def stream_patterns(
    data,
    batch_size: int,
    dtype=np.float32,
    *,
    progress: bool = False,
    desc: str = "patterns",
    finite: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of patterns for a network: ``(flat_indices (B,), patterns (B, H, W))``, every batch full except
    possibly the last, the scan read chunk-aligned through :func:`stream_scan`.

    ``flat_indices`` are row-major scan positions (``np.unravel_index(i, (Rx, Ry))``); batches follow the order the
    blocks are read in, which is row-major within each block.
    """
    if int(batch_size) < 1:
        raise DataError(f"batch_size must be ≥ 1, got {batch_size}")
    batch_size = int(batch_size)
    Ry = int(data.shape[1])
    H, W = (int(v) for v in data.shape[2:])
    buf, idx, n = [], [], 0
    for (r0, r1, c0, c1), block in stream_scan(
        data, max(batch_size, 64), dtype, progress=progress, desc=desc, finite=finite
    ):
        rr, cc = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
        buf.append(block.reshape(-1, H, W))
        idx.append((rr * Ry + cc).ravel())
        n += buf[-1].shape[0]
        while n >= batch_size:
            pats, ids = np.concatenate(buf), np.concatenate(idx)
            yield ids[:batch_size], pats[:batch_size]
            buf, idx, n = [pats[batch_size:]], [ids[batch_size:]], n - batch_size
    if n:
        yield np.concatenate(idx), np.concatenate(buf)
