"""Plain JSON values from whatever a stage holds (numpy and torch scalars, arrays, tuples, bytes, NaN)."""

from __future__ import annotations

import math

__all__ = ["to_jsonable"]


def to_jsonable(obj, max_items: int | None = None):
    """``obj`` as strict JSON values, for zarr attributes, model cards and ``metrics.json``.

    Dict keys become strings; tuples become lists; numpy / torch scalars become Python numbers; non-finite floats
    become ``None`` (strict JSON has no NaN); bytes are decoded; arrays become nested lists, or, when they hold more
    than ``max_items`` values, a short ``"<array (shape) dtype>"`` description; anything else its ``str``.
    """
    if isinstance(obj, dict):
        return {_text(k): to_jsonable(v, max_items) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, max_items) for v in obj]
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, bytes):
        return _text(obj)
    if getattr(obj, "ndim", None) == 0 and hasattr(obj, "item"):  # numpy / torch scalars and 0-d arrays
        return to_jsonable(obj.item(), max_items)
    if hasattr(obj, "tolist"):
        size = obj.numel() if hasattr(obj, "numel") else getattr(obj, "size", None)
        if max_items is not None and isinstance(size, int) and size > max_items:
            return f"<array {tuple(obj.shape)} {obj.dtype}>"
        return to_jsonable(obj.tolist(), max_items)
    return str(obj)


def _text(v) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)
