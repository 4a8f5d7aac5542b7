"""Bragg vectors: the peaks found in every pattern of a scan, by any method.

Classical template matching (:func:`stemforge.analysis.disks.find_bragg_disks`) and network inference
(``method="ml"``) both return a :class:`BraggVectors`, so everything downstream (lattice fitting, strain,
orientation) takes either.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .datacube import AnalysisError, Calibration

PEAK_DTYPE = np.dtype(
    [
        ("rx", np.int32),
        ("ry", np.int32),
        ("row", np.float32),
        ("col", np.float32),
        ("intensity", np.float32),
        ("sigma_px", np.float32),
    ]
)


@dataclass
class BraggVectors:
    """All peaks of a scan in one flat table, sorted by scan position.

    Attributes
    ----------
    scan_shape : (int, int)
        ``(Rx, Ry)``.
    detector_shape : (int, int)
        ``(H, W)`` of the patterns the peaks were found in.
    peaks : numpy structured array of :data:`PEAK_DTYPE`
        ``rx, ry`` scan position; ``row, col`` detector position in px (sub-pixel); ``intensity`` (method's own
        units: correlation or predicted map value); ``sigma_px`` positional uncertainty in px (MC-dropout
        spread for the ML method, NaN where the method gives none).
    calibration : Calibration
        Of the data the peaks came from (origin, Å⁻¹/px).
    method : str
        ``"classical"`` or ``"ml"`` (and the model reference in ``info``).
    """

    scan_shape: tuple[int, int]
    detector_shape: tuple[int, int]
    peaks: np.ndarray
    calibration: Calibration = field(default_factory=Calibration)
    method: str = "classical"
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.scan_shape = tuple(int(v) for v in self.scan_shape)
        self.detector_shape = tuple(int(v) for v in self.detector_shape)
        peaks = np.asarray(self.peaks)
        if peaks.dtype != PEAK_DTYPE:
            raise AnalysisError(f"BraggVectors.peaks must have dtype {PEAK_DTYPE}, got {peaks.dtype}")
        order = np.lexsort((peaks["ry"], peaks["rx"]))
        self.peaks = peaks[order]
        flat = self.peaks["rx"].astype(np.int64) * self.scan_shape[1] + self.peaks["ry"]
        self._offsets = np.searchsorted(flat, np.arange(self.scan_shape[0] * self.scan_shape[1] + 1))

    @classmethod
    def from_lists(
        cls, scan_shape, detector_shape, per_position: dict, calibration=None, method="classical", info=None
    ) -> BraggVectors:
        """Build from ``{(rx, ry): array (n, 3 or 4) of row, col, intensity[, sigma_px]}``."""
        parts = []
        for (rx, ry), arr in per_position.items():
            arr = np.asarray(arr, dtype=np.float64).reshape(-1, np.shape(arr)[-1] if np.size(arr) else 3)
            p = np.zeros(len(arr), PEAK_DTYPE)
            p["rx"], p["ry"] = rx, ry
            if len(arr):
                p["row"], p["col"], p["intensity"] = arr[:, 0], arr[:, 1], arr[:, 2]
                p["sigma_px"] = arr[:, 3] if arr.shape[1] > 3 else np.nan
            parts.append(p)
        peaks = np.concatenate(parts) if parts else np.zeros(0, PEAK_DTYPE)
        return cls(scan_shape, detector_shape, peaks, calibration or Calibration(), method, info or {})

    def __len__(self) -> int:
        return len(self.peaks)

    def at(self, rx: int, ry: int) -> np.ndarray:
        """The peaks of one scan position (a view of :attr:`peaks`)."""
        if not (0 <= rx < self.scan_shape[0] and 0 <= ry < self.scan_shape[1]):
            raise AnalysisError(f"scan position ({rx}, {ry}) outside the scan {self.scan_shape}")
        i = rx * self.scan_shape[1] + ry
        return self.peaks[self._offsets[i] : self._offsets[i + 1]]

    def counts(self) -> np.ndarray:
        """Number of peaks at each scan position, shape ``(Rx, Ry)``."""
        return np.diff(self._offsets).reshape(self.scan_shape)

    def q_invA(self, peaks: np.ndarray | None = None, origin_px=None) -> np.ndarray:
        """Peak positions as ``(kx, ky)`` in Å⁻¹ relative to the origin (calibrated, else the detector centre).

        Needs ``calibration.pixel_size_inv_A``; rows of the result follow ``peaks`` (default: all peaks).
        """
        p = self.peaks if peaks is None else peaks
        s = self.calibration.check_pixel_size()
        if origin_px is None:
            origin_px = self.calibration.origin_px or (self.detector_shape[0] // 2, self.detector_shape[1] // 2)
        o = np.broadcast_to(np.asarray(origin_px, dtype=np.float64), (*np.shape(origin_px)[:-1], 2))
        if o.ndim == 3:  # per-position origin map (Rx, Ry, 2)
            o = o[p["rx"], p["ry"]]
        return np.stack([(p["col"] - o[..., 1]) * s, (p["row"] - o[..., 0]) * s], axis=-1)

    def __repr__(self) -> str:
        return (
            f"BraggVectors(scan_shape={self.scan_shape}, {len(self)} peaks, method={self.method!r}, "
            f"mean {len(self) / max(1, np.prod(self.scan_shape)):.1f} per pattern)"
        )
