"""Read (and, for tests, write) samples of the simulator's zarr data contract.

A dataset is a zarr v3 group with ``patterns`` and ``probes`` (N, H, W) float32,
``labels/vg_map`` and ``labels/disk_map`` (N, H, W) float32,
``labels/reflections_px`` (N, R, 2) float32 (x = col, y = row, NaN padded),
``labels/num_reflections`` (N,) int32 and the group attribute ``calibration`` =
``{"pixel_size_inv_A": Å⁻¹ per px, "shape": [H, W], "origin_px": [row, col]}`` (datasets written before 0.2.0 name
them ``pixel_size`` and ``center_px``; they are read with today's names).
Label arrays that are missing are simply left out of the samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stemforge.augment.pipeline import DEFAULT_LABEL_KEYS
from stemforge.core.legacy import upgrade_calibration

__all__ = ["read_samples", "write_samples"]


def read_samples(
    path: str | Path,
    indices: Sequence[int] | None = None,
    label_keys: Sequence[str] = DEFAULT_LABEL_KEYS,
) -> list[dict[str, Any]]:
    """Load samples from a dataset group.

    Parameters
    ----------
    path : str or Path
        The zarr group.
    indices : sequence of int, optional
        Which patterns; default all.
    label_keys : sequence of str
        Label maps to load (those present).

    Returns
    -------
    list of dict
        Each with ``pattern``, ``probe``, ``labels``, ``calibration`` and, when
        present, ``reflections_px`` and ``num_reflections`` -- the arguments of
        :func:`stemforge.augment.augment_sample`.

    Raises
    ------
    ValueError
        Missing ``patterns`` / ``probes`` / ``calibration``, or mismatched shapes.
    """
    import zarr

    group = zarr.open_group(str(path), mode="r")
    members = set(group.array_keys()) | set(group.group_keys())
    if not {"patterns", "probes"} <= members or "calibration" not in group.attrs:
        raise ValueError(f"{path}: not a stemforge dataset (needs patterns, probes and the calibration attribute)")
    calibration = upgrade_calibration(dict(group.attrs["calibration"]))
    patterns, probes = group["patterns"], group["probes"]
    if patterns.shape != probes.shape or patterns.ndim != 3:
        raise ValueError(f"{path}: patterns {patterns.shape} and probes {probes.shape} must both be (N, H, W)")
    labels = group["labels"] if "labels" in members else None
    label_members = set(labels.array_keys()) if labels is not None else set()
    keys = [k for k in label_keys if k in label_members]
    idx = range(patterns.shape[0]) if indices is None else [int(i) for i in indices]
    out = []
    for i in idx:
        sample: dict[str, Any] = {
            "pattern": np.asarray(patterns[i], dtype=np.float32),
            "probe": np.asarray(probes[i], dtype=np.float32),
            "labels": {k: np.asarray(labels[k][i], dtype=np.float32) for k in keys},
            "calibration": calibration,
        }
        if {"reflections_px", "num_reflections"} <= label_members:
            sample["reflections_px"] = np.asarray(labels["reflections_px"][i], dtype=np.float32)
            sample["num_reflections"] = int(labels["num_reflections"][i])
        out.append(sample)
    return out


def write_samples(path: str | Path, samples: Sequence[dict[str, Any]]) -> None:
    """Write samples (e.g. from :func:`stemforge.augment.synthetic_sample`) as a dataset group.

    Parameters
    ----------
    path : str or Path
        Destination (overwritten).
    samples : sequence of dict
        Samples of equal shapes with ``pattern``, ``probe``, ``labels``,
        ``reflections_px``, ``num_reflections`` and ``calibration``.
    """
    import zarr

    group = zarr.open_group(str(path), mode="w")
    group.attrs["calibration"] = dict(samples[0]["calibration"])
    h, w = samples[0]["pattern"].shape
    n = len(samples)

    def put(grp: Any, name: str, data: np.ndarray) -> None:
        arr = grp.create_array(name, shape=data.shape, dtype=data.dtype, chunks=(1,) + data.shape[1:])
        arr[...] = data

    put(group, "patterns", np.stack([s["pattern"] for s in samples]).astype(np.float32))
    put(group, "probes", np.stack([s["probe"] for s in samples]).astype(np.float32))
    labels = group.create_group("labels")
    for key in samples[0]["labels"]:
        put(labels, key, np.stack([s["labels"][key] for s in samples]).astype(np.float32).reshape(n, h, w))
    put(labels, "reflections_px", np.stack([s["reflections_px"] for s in samples]).astype(np.float32))
    put(labels, "num_reflections", np.array([s["num_reflections"] for s in samples], dtype=np.int32))
