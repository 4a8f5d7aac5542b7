"""Names written by earlier stemforge versions, and how they map onto today's: one place for every rename.

Datasets, scans, checkpoints and model cards written before 0.2.0 name the detector's reciprocal pixel size
``pixel_size`` (configs, dataset calibration), ``q_pixel_size`` (scan calibration) and their classes
``networks.…``, ``sim.…``, ``augment.…`` (before the ``stemforge.*`` namespace). Readers pass what they read
through these functions, so old files open unchanged; writers only ever write today's names.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PIXEL_SIZE_KEY", "LEGACY_PIXEL_SIZE_KEYS", "upgrade_class_path", "upgrade_calibration", "upgrade_config"]

#: The one name of the detector's reciprocal pixel size (Å⁻¹/px) in configs, attributes, cards and analysis.
PIXEL_SIZE_KEY = "pixel_size_inv_A"
#: Its earlier names: ``detector.pixel_size`` / dataset ``calibration.pixel_size``, scan ``calibration.q_pixel_size``.
LEGACY_PIXEL_SIZE_KEYS = ("pixel_size", "q_pixel_size")
#: Calibration keys renamed in 0.2.0 (old -> new).
_CALIBRATION_RENAMES = {
    **dict.fromkeys(LEGACY_PIXEL_SIZE_KEYS, PIXEL_SIZE_KEY),
    "center_px": "origin_px",
    "max_frequency": "max_frequency_inv_A",
}
#: Top-level packages of stemforge before 0.2.0.
_LEGACY_PACKAGES = ("sim", "augment", "datamodules", "networks", "registry", "analysis")


def upgrade_class_path(value: Any) -> Any:
    """``networks.fcunet.FCUNet`` (a class path from before the ``stemforge.*`` namespace) ->
    ``stemforge.networks.fcunet.FCUNet``; anything else is returned unchanged."""
    if isinstance(value, str) and "." in value and value.split(".", 1)[0] in _LEGACY_PACKAGES:
        return f"stemforge.{value}"
    return value


def upgrade_calibration(d: dict | None) -> dict | None:
    """A calibration mapping (dataset / scan ``calibration`` attribute, a card's ``calibration``) with today's
    keys: ``pixel_size`` / ``q_pixel_size`` -> ``pixel_size_inv_A``, ``center_px`` -> ``origin_px``,
    ``max_frequency`` -> ``max_frequency_inv_A``; the unit label ``pixel_size_unit`` is dropped (the name says it).
    A new dict; a key already present under its new name wins."""
    if d is None:
        return None
    out = {}
    for key, value in d.items():
        if key == "pixel_size_unit":
            continue
        new = _CALIBRATION_RENAMES.get(key, key)
        if new != key and new in d:
            continue
        out[new] = value
    return out


def upgrade_config(cfg: Any) -> Any:
    """A stored config (a dataset's ``config`` attribute, a card's ``dataset_config`` or ``augment``) with today's
    names: ``detector.pixel_size`` -> ``detector.pixel_size_inv_A`` and every ``_target_`` on the ``stemforge.*``
    paths. A new object; anything not a mapping or list is returned as it is."""
    if isinstance(cfg, dict):
        out = {k: (upgrade_class_path(v) if k == "_target_" else upgrade_config(v)) for k, v in cfg.items()}
        det = out.get("detector")
        if isinstance(det, dict) and "pixel_size" in det and PIXEL_SIZE_KEY not in det:
            out["detector"] = {(PIXEL_SIZE_KEY if k == "pixel_size" else k): v for k, v in det.items()}
        return out
    if isinstance(cfg, list):
        return [upgrade_config(v) for v in cfg]
    return cfg
