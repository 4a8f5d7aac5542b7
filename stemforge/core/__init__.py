"""What several stages share, written once: calibration, units, streaming, sub-pixel refinement, JSON values,
errors, and the names earlier versions wrote.

========================================  ==============================================================
:mod:`stemforge.core.calibration`         :class:`Calibration` (pixel size in Å⁻¹/px, origin, energy, α, ...)
:mod:`stemforge.core.units`               wavelength, mrad ↔ Å⁻¹, file units → Å / Å⁻¹
:mod:`stemforge.core.streaming`           chunk-aligned scan blocks and pattern batches, progress, finite checks
:mod:`stemforge.core.subpixel`            3-point parabola refinement of maxima
:mod:`stemforge.core.jsonable`            strict JSON values for attributes, cards and metrics
:mod:`stemforge.core.errors`              :class:`DataError`, the one-line bad-input error
:mod:`stemforge.core.legacy`              earlier names (``q_pixel_size``, ``networks.…``) mapped onto today's
========================================  ==============================================================

Importing it is cheap (numpy only).
"""

from .calibration import Calibration
from .errors import DataError
from .jsonable import to_jsonable
from .streaming import stream_patterns, stream_scan
from .subpixel import parabola_offset, refine_maxima
from .units import wavelength_A

__all__ = [
    "Calibration",
    "DataError",
    "parabola_offset",
    "refine_maxima",
    "stream_patterns",
    "stream_scan",
    "to_jsonable",
    "wavelength_A",
]
