"""The 4D-STEM data type of the analysis stage: a (lazy) array with its calibration.

Conventions (those of :mod:`stemforge.core.calibration`)
-------------------------------------------------------
A :class:`DataCube` holds ``data`` of shape ``(Rx, Ry, H, W)``: two scan axes (``Rx`` = scan rows, ``Ry`` = scan
columns) then a detector image indexed ``[row, col]``. Detector pixel ``(row, col)`` maps to the spatial
frequency ``k = ((col - origin_col)·p, (row - origin_row)·p)`` in Å⁻¹ with ``p`` = ``pixel_size_inv_A`` Å⁻¹/px.
Simulated data from :mod:`stemforge.sim` has its origin at ``(H//2, W//2)``; experimental data has it wherever the
beam fell, found by :func:`stemforge.analysis.calibration` functions. ``data`` may be a numpy or a dask array; every
function of the analysis stage accepts both and streams dask arrays chunk by chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from stemforge.core.calibration import Calibration
from stemforge.core.errors import DataError

__all__ = ["AnalysisError", "Calibration", "DataCube", "as_datacube"]


#: Bad input to an analysis function (message is one line): :class:`stemforge.core.errors.DataError` by the name
#: the analysis stage has always used, so ``except AnalysisError`` also catches what the shared streamer raises.
AnalysisError = DataError


@dataclass
class DataCube:
    """A 4D-STEM scan: ``data`` ``(Rx, Ry, H, W)`` (numpy or dask) and its :class:`Calibration`.

    ``metadata`` holds whatever else the reader found (original metadata, file name); ``ground_truth`` holds
    per-position maps of a synthetic scan (``exx``, ``eyy``, ``exy``, ``theta_deg``, ``thickness_A``, ``phase``...)
    when the data came from :mod:`stemforge.sim.synthetic_scan`; ``probe`` is a vacuum probe image ``(H, W)`` on the
    same
    detector grid when one was recorded or simulated.
    """

    data: object
    calibration: Calibration = field(default_factory=Calibration)
    metadata: dict = field(default_factory=dict)
    ground_truth: dict = field(default_factory=dict)
    probe: np.ndarray | None = None

    def __post_init__(self):
        shape = getattr(self.data, "shape", None)
        if shape is None or len(shape) != 4:
            raise AnalysisError(
                f"a DataCube needs a 4D array (scan rows, scan cols, detector rows, detector cols), got shape {shape}"
            )
        if min(shape) < 1:
            raise AnalysisError(f"a DataCube cannot be empty, got shape {tuple(shape)}")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(int(v) for v in self.data.shape)

    @property
    def scan_shape(self) -> tuple[int, int]:
        return self.shape[:2]

    @property
    def detector_shape(self) -> tuple[int, int]:
        return self.shape[2:]

    @property
    def is_lazy(self) -> bool:
        return not isinstance(self.data, np.ndarray)

    @property
    def origin_px(self) -> tuple[float, float]:
        """The calibrated origin, or the detector centre ``(H//2, W//2)`` when none is calibrated."""
        if self.calibration.origin_px is not None:
            return self.calibration.origin_px
        H, W = self.detector_shape
        return float(H // 2), float(W // 2)

    def pattern(self, rx: int, ry: int) -> np.ndarray:
        """One diffraction pattern as a float numpy array."""
        return np.asarray(self.data[rx, ry], dtype=np.float32)

    def __repr__(self) -> str:
        kind = "lazy" if self.is_lazy else "in memory"
        return f"DataCube(shape={self.shape}, {kind}, dtype={self.data.dtype}, calibration={self.calibration})"


def as_datacube(data, calibration: Calibration | None = None) -> DataCube:
    """Wrap a 4D array (or pass a :class:`DataCube` through); refuses other ranks and non-finite values
    when they are cheap to check (numpy arrays)."""
    if isinstance(data, DataCube):
        return data if calibration is None else replace(data, calibration=calibration)
    shape = getattr(data, "shape", None)
    if shape is None:
        data = np.asarray(data)
        shape = data.shape
    if len(shape) == 2:
        raise AnalysisError(
            f"expected a 4D-STEM scan (Rx, Ry, H, W), got a single 2D pattern {tuple(shape)}; "
            "wrap it as data[None, None]"
        )
    cube = DataCube(data, calibration or Calibration())
    if isinstance(data, np.ndarray) and np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise AnalysisError("the scan holds NaN or Inf values; mask or replace them first")
    return cube
