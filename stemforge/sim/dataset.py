"""The labelled dataset store (zarr v3): chunked, resumable, crash-safe and deterministic.

Layout of a dataset group::

    patterns              (N, H, W) float32   CBED, fraction of the incident beam per pixel (NaN until written)
    probes                (N, H, W) float32   vacuum probe image on the same grid (sum 1)
    labels/<name>         (N, ...)            per-pattern labels (see ``stemforge.sim.generate.array_specs``)
    chunk_complete        (C,) bool           True once every array of chunk c is written
    attrs: config, versions, calibration, seed, created, structures, status ("incomplete" | "complete")

Crash safety: zarr's local store writes every chunk file by write-then-rename, and a chunk is marked in
``chunk_complete`` only after all its arrays are written, so a process killed at any moment leaves no sample
that reads as complete: readers use :func:`open_dataset`, which exposes only completed chunks' samples as
valid, and unwritten patterns read as NaN. Re-running with the same config resumes at the first missing chunk.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

import numpy as np

from stemforge.core.legacy import upgrade_calibration, upgrade_config


class DatasetMismatch(RuntimeError):
    """The store at the path was written with a different configuration."""


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


class DatasetWriter:
    """Create or resume a dataset group.

    Parameters
    ----------
    path : str or Path
    num_patterns : int
    chunk_patterns : int
        Patterns per zarr chunk along N (a whole number of simulation runs).
    arrays : dict
        ``name -> (per-pattern shape, dtype, fill_value)``; names with a ``labels/`` prefix go in that group.
    attrs : dict
        Group attributes; ``attrs["config"]`` identifies the dataset for resuming.
    """

    def __init__(self, path, num_patterns: int, chunk_patterns: int, arrays: dict, attrs: dict):
        import zarr

        self.path = Path(path)
        self.num_patterns = int(num_patterns)
        self.chunk_patterns = int(chunk_patterns)
        self.num_chunks = math.ceil(self.num_patterns / self.chunk_patterns)
        if self.path.exists():
            group = zarr.open_group(str(self.path), mode="r+")
            old = dict(group.attrs)
            # a dataset written before 0.2.0 names the pixel size detector.pixel_size: the same config
            if _canonical(upgrade_config(old.get("config"))) != _canonical(attrs.get("config")):
                raise DatasetMismatch(
                    f"{self.path} holds a dataset written with a different configuration; "
                    "choose another dataset.path or delete it"
                )
            missing = sorted(n for n in arrays if n not in group)
            if missing:
                raise DatasetMismatch(
                    f"{self.path} was written by an earlier stemforge without {', '.join(missing[:3])}"
                    f"{' ...' if len(missing) > 3 else ''}; it can still be read, but not resumed: simulate into "
                    "another dataset.path"
                )
            self.group = group
            return
        group = zarr.open_group(str(self.path), mode="w")
        for name, (shape, dtype, fill) in arrays.items():
            full = (self.num_patterns, *shape)
            chunks = (self.chunk_patterns, *shape)
            group.create_array(name, shape=full, chunks=chunks, dtype=dtype, fill_value=fill)
        group.create_array("chunk_complete", shape=(self.num_chunks,), chunks=(1,), dtype=bool, fill_value=False)
        group.attrs.update(
            {
                **attrs,
                "status": "incomplete",
                "num_patterns": self.num_patterns,
                "chunk_patterns": self.chunk_patterns,
                "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            }
        )
        self.group = group

    def missing_chunks(self) -> list[int]:
        done = np.asarray(self.group["chunk_complete"][:])
        return [c for c in range(self.num_chunks) if not done[c]]

    def chunk_slice(self, c: int) -> slice:
        return slice(c * self.chunk_patterns, min((c + 1) * self.chunk_patterns, self.num_patterns))

    def write_chunk(self, c: int, data: dict) -> None:
        """Write every array of chunk ``c`` (``name -> array`` of the chunk's length), then mark it complete."""
        sl = self.chunk_slice(c)
        n = sl.stop - sl.start
        for name, value in data.items():
            value = np.asarray(value)
            if value.shape[0] != n:
                raise ValueError(f"chunk {c}: {name} has {value.shape[0]} rows, expected {n}")
            self.group[name][sl] = value
        self.group["chunk_complete"][c] = True

    def finalize(self) -> None:
        if not self.missing_chunks() and self.group.attrs.get("status") != "complete":
            self.group.attrs["status"] = "complete"


def dataset_attrs(group) -> dict:
    """A dataset group's attributes with today's names: ``calibration`` and ``config`` of datasets written before
    0.2.0 (``pixel_size``, ``center_px``, ``sim.detector.Detector``) are mapped (:mod:`stemforge.core.legacy`)."""
    attrs = dict(group.attrs)
    if "calibration" in attrs:
        attrs["calibration"] = upgrade_calibration(attrs["calibration"])
    if "config" in attrs:
        attrs["config"] = upgrade_config(attrs["config"])
    return attrs


def open_dataset(path, require_complete: bool = False):
    """Open a dataset read-only. Returns ``(group, valid)`` where ``valid`` is a boolean mask over patterns
    that belong to completed chunks. With ``require_complete`` an unfinished dataset raises RuntimeError."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no dataset at {path}")
    group = zarr.open_group(str(path), mode="r")
    n = int(group.attrs["num_patterns"])
    per = int(group.attrs["chunk_patterns"])
    done = np.asarray(group["chunk_complete"][:])
    valid = np.repeat(done, per)[:n]
    if require_complete and not valid.all():
        raise RuntimeError(
            f"{path} is incomplete: {int((~done).sum())} of {len(done)} chunks missing; "
            "re-run the same simulate command to finish it"
        )
    return group, valid
