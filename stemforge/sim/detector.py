"""Pixelated detector: a fixed, calibrated reciprocal-space grid and intensity-conserving resampling.

Conventions
-----------
Those of :mod:`stemforge.core.calibration`: a detector image is indexed ``[row, col]`` = ``[ky, kx]``; pixel
``(row, col)`` is centred on ``k = ((col - W//2)·p, (row - H//2)·p)`` in Å⁻¹ with ``p`` = ``pixel_size_inv_A``, so the
undiffracted beam (k = 0) falls on the centre of pixel ``(H//2, W//2)`` (``numpy.fft.fftshift``). Images hold the
fraction of incident electrons per pixel, so their sum is the fraction of the beam that reaches the detector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from stemforge.core.calibration import Calibration

from .grids import antialias_limit


@dataclass(frozen=True)
class Detector:
    """A square-pixel detector in reciprocal space.

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` pixels.
    pixel_size_inv_A : float
        Å⁻¹ per pixel (at the specimen).
    supersample : int
        Each simulated pixel is split into ``supersample²`` sub-pixels when resampling; larger values
        reduce the resampling's sub-pixel jitter (intensity is conserved for any value).
    """

    shape: tuple[int, int] = (128, 128)
    pixel_size_inv_A: float = 0.03
    supersample: int = 4

    def __post_init__(self):
        if len(self.shape) != 2 or min(self.shape) < 8:
            raise ValueError(f"detector.shape must be two sizes of at least 8 px, got {tuple(self.shape)}")
        if not self.pixel_size_inv_A > 0:
            raise ValueError(f"detector.pixel_size_inv_A must be positive (Å⁻¹/px), got {self.pixel_size_inv_A}")
        if self.supersample < 1:
            raise ValueError(f"detector.supersample must be ≥ 1, got {self.supersample}")

    @property
    def center_px(self) -> tuple[int, int]:
        """``(row, col)`` of the pixel centred on k = 0."""
        return self.shape[0] // 2, self.shape[1] // 2

    @property
    def max_frequency(self) -> float:
        """Largest spatial frequency (Å⁻¹) on the detector: its farthest corner."""
        h, w = self.shape
        return self.pixel_size_inv_A * math.hypot(max(h // 2, h - h // 2), max(w // 2, w - w // 2))

    def min_extent_A(self, k_oversample: float = 1.0) -> float:
        """Smallest simulation cell (Å) whose native reciprocal pixel (1/L) is ``k_oversample`` times finer than
        a detector pixel."""
        return k_oversample / self.pixel_size_inv_A

    def check_sampling(self, sampling_A: float) -> None:
        """Refuse a real-space sampling whose antialiasing limit does not reach the detector's corners."""
        limit = antialias_limit(sampling_A)
        if self.max_frequency > limit:
            raise ValueError(
                f"detector reaches {self.max_frequency:.3f} 1/Å at its corners, beyond the antialiasing limit "
                f"{limit:.3f} 1/Å of sampling {sampling_A} Å; use sampling ≤ "
                f"{2 / 3 / (2 * self.max_frequency):.4f} Å or a smaller detector field"
            )

    def to_pixels(self, k_xy: np.ndarray) -> np.ndarray:
        """Convert spatial frequencies ``(..., 2)`` (kx, ky in Å⁻¹) to ``(..., 2)`` (col, row) pixel coordinates."""
        k_xy = np.asarray(k_xy, dtype=np.float64)
        cy, cx = self.center_px
        return np.stack([k_xy[..., 0] / self.pixel_size_inv_A + cx, k_xy[..., 1] / self.pixel_size_inv_A + cy], axis=-1)

    @property
    def calibration(self) -> Calibration:
        """The detector as a :class:`~stemforge.core.calibration.Calibration`: pixel size and origin (k = 0)."""
        return Calibration(pixel_size_inv_A=self.pixel_size_inv_A, origin_px=tuple(float(v) for v in self.center_px))

    def as_dict(self) -> dict:
        """The ``calibration`` attribute of a dataset (earlier datasets are read through
        :func:`stemforge.core.legacy.upgrade_calibration`)."""
        return {
            "shape": list(self.shape),
            "pixel_size_inv_A": self.pixel_size_inv_A,
            "origin_px": [float(v) for v in self.center_px],
            "max_frequency_inv_A": self.max_frequency,
            "supersample": self.supersample,
            "convention": "image[row, col] = [ky, kx]; k=0 at the centre of pixel (H//2, W//2); "
            "values are fractions of the incident beam per pixel",
        }


def resampling_matrix(
    native_shape: tuple[int, int],
    native_sampling: tuple[float, float],
    detector: Detector,
    rotation_deg: float = 0.0,
) -> sp.csr_matrix:
    """Sparse matrix that bins a native diffraction pattern onto the detector, conserving intensity.

    Each native pixel is split into ``supersample²`` sub-pixels carrying equal shares of its intensity; each
    sub-pixel centre is rotated by ``rotation_deg`` (counter-clockwise seen from the source, i.e. a specimen
    rotated about +z by that angle) and dropped into the detector pixel containing it. Sub-pixels that fall
    outside the detector are discarded, so the result's sum equals the intensity inside the detector field.

    Parameters
    ----------
    native_shape : tuple of int
        ``(ny, nx)`` of the native pattern in detector orientation (``[ky, kx]``), k = 0 at ``(ny//2, nx//2)``.
    native_sampling : tuple of float
        ``(dky, dkx)`` in Å⁻¹ per native pixel.
    detector : Detector
    rotation_deg : float
        In-plane rotation applied to the pattern in degrees.

    Returns
    -------
    scipy.sparse.csr_matrix
        Shape ``(H·W, ny·nx)``; ``detector_image = (M @ native.ravel()).reshape(H, W)``.
    """
    ny, nx = native_shape
    dky, dkx = native_sampling
    h, w = detector.shape
    s = detector.supersample
    # Only native pixels that can reach the detector need mapping.
    reach = detector.max_frequency + max(dkx, dky)
    iy = np.arange(ny)
    ix = np.arange(nx)
    ky = (iy - ny // 2) * dky
    kx = (ix - nx // 2) * dkx
    iy = iy[np.abs(ky) <= reach]
    ix = ix[np.abs(kx) <= reach]
    sub = (np.arange(s) + 0.5) / s - 0.5
    # sub-pixel frequencies, shape (len(iy), s) and (len(ix), s)
    sky = ((iy[:, None] - ny // 2) + sub[None, :]) * dky
    skx = ((ix[:, None] - nx // 2) + sub[None, :]) * dkx
    KY = np.broadcast_to(sky[:, :, None, None], (len(iy), s, len(ix), s))
    KX = np.broadcast_to(skx[None, None, :, :], (len(iy), s, len(ix), s))
    src = np.broadcast_to((iy[:, None, None, None] * nx + ix[None, None, :, None]), KY.shape)
    phi = math.radians(rotation_deg)
    c, si = math.cos(phi), math.sin(phi)
    rkx = c * KX - si * KY
    rky = si * KX + c * KY
    cy, cx = detector.center_px
    col = np.floor(rkx / detector.pixel_size_inv_A + cx + 0.5).astype(np.int64)
    row = np.floor(rky / detector.pixel_size_inv_A + cy + 0.5).astype(np.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    dst = (row * w + col)[inside]
    src = src[inside]
    data = np.full(dst.shape, 1.0 / (s * s))
    m = sp.coo_matrix((data, (dst, src)), shape=(h * w, ny * nx))
    return m.tocsr()


def resample(patterns: np.ndarray, matrix: sp.csr_matrix, detector: Detector) -> np.ndarray:
    """Apply :func:`resampling_matrix` to one pattern ``(ny, nx)`` or a stack ``(..., ny, nx)``; float32 out."""
    patterns = np.asarray(patterns, dtype=np.float64)
    lead = patterns.shape[:-2]
    flat = patterns.reshape(-1, patterns.shape[-2] * patterns.shape[-1])
    out = (matrix @ flat.T).T
    return out.reshape(*lead, *detector.shape).astype(np.float32)
