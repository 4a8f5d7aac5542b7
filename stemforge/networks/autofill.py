"""Values a model config leaves as ``auto`` until the dataset is known (no heavy imports)."""

from __future__ import annotations


def fill_auto(node, values: dict):
    """Copy of a nested config (dicts / lists) with every ``key: "auto"`` whose key is in ``values`` replaced
    by ``values[key]`` (e.g. ``num_phases`` = number of structures, ``image_size`` = detector side in px)."""
    if isinstance(node, dict):
        return {k: (values[k] if v == "auto" and k in values else fill_auto(v, values)) for k, v in node.items()}
    if isinstance(node, list):
        return [fill_auto(v, values) for v in node]
    return node


def dataset_auto_values(num_phases: int, shape) -> dict:
    """The ``auto`` values a dataset provides: its number of phases and its detector side."""
    return {"num_phases": int(num_phases), "image_size": int(shape[0]) if shape else None}
