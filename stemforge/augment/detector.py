"""Detector response: point-spread function blur, hot (stuck-high) and dead (stuck-at-zero) pixels.

Defect positions are drawn afresh on every call from the transform's seeded
generator, over the actual image shape (crystal4D fixed them when its graph was
traced and assumed 256 x 256 px).
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np

from stemforge.augment._base import SeededTransformMixin, check_range, uniform

__all__ = ["DetectorBlur", "HotPixels"]


class DetectorBlur(SeededTransformMixin, A.ImageOnlyTransform):
    """Gaussian point-spread function of the detector (charge sharing / scintillator spread).

    Blurs the expected intensity, so place it before :class:`~stemforge.augment.noise.ShotNoise`
    (for a counting detector the PSF redistributes where electrons are counted;
    the counts stay Poisson).  Only the pattern is changed; the blur conserves
    the total intensity (reflecting border).

    Parameters
    ----------
    sigma_px : tuple of float
        Range of the Gaussian PSF standard deviation, px, >= 0 (0 = identity).
        The MTF is ``exp(-2 (pi sigma f)**2)``; ``sigma = 0.5`` px gives an MTF
        of 0.29 at Nyquist (f = 0.5 / px).
    p : float
        Probability of applying the transform.

    Raises
    ------
    ValueError
        Malformed, reversed or negative range.
    """

    def __init__(self, sigma_px: tuple[float, float] | float = (0.0, 0.7), p: float = 1.0):
        super().__init__(p=p)
        self.sigma_px = check_range("DetectorBlur.sigma_px", sigma_px, nonnegative=True)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Draw the PSF width for this call."""
        return {"sigma_px": uniform(self.random_generator, self.sigma_px)}

    def apply(self, img: np.ndarray, sigma_px: float = 0.0, **params: Any) -> np.ndarray:
        """Convolve the pattern with a normalised Gaussian of ``sigma_px``."""
        if sigma_px <= 0.0:
            return img
        radius = max(1, int(np.ceil(3.0 * sigma_px)))  # +-3 sigma; OpenCV renormalises the truncated kernel
        out = cv2.GaussianBlur(
            img, (2 * radius + 1, 2 * radius + 1), sigmaX=sigma_px, sigmaY=sigma_px, borderType=cv2.BORDER_REFLECT
        )
        return out.reshape(img.shape)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Constructor arguments, for albumentations serialisation and ``repr``."""
        return ("sigma_px",)


class HotPixels(SeededTransformMixin, A.ImageOnlyTransform):
    """Set a random fraction of pixels to a high value and, optionally, others to zero.

    The number of hot pixels is ``Binomial(H * W, f)`` with ``f`` drawn uniformly
    from ``fraction``; each hot pixel gets ``r * max(pattern)`` with ``r`` drawn
    uniformly from ``intensity_rel_max`` per pixel.  Dead pixels likewise, set to 0.
    Only the pattern is changed.  Apply it last (after :class:`~stemforge.augment.noise.ShotNoise`):
    defects are a property of the readout, not of the electron counts.

    Parameters
    ----------
    fraction : tuple of float
        Range of the hot-pixel fraction (per pixel probability), within [0, 1]
        (crystal4D: up to 1e-3).
    intensity_rel_max : tuple of float
        Range of hot-pixel values as a multiple of the pattern's brightest
        pixel, >= 0.
    dead_fraction : tuple of float
        Range of the dead-pixel fraction, within [0, 1].
    p : float
        Probability of applying the transform.

    Raises
    ------
    ValueError
        Malformed or reversed ranges, fractions outside [0, 1], negative intensity.
    """

    def __init__(
        self,
        fraction: tuple[float, float] | float = (0.0, 1e-3),
        intensity_rel_max: tuple[float, float] | float = (0.1, 1.0),
        dead_fraction: tuple[float, float] | float = (0.0, 0.0),
        p: float = 1.0,
    ):
        super().__init__(p=p)
        self.fraction = check_range("HotPixels.fraction", fraction, nonnegative=True, upper=1.0)
        self.intensity_rel_max = check_range("HotPixels.intensity_rel_max", intensity_rel_max, nonnegative=True)
        self.dead_fraction = check_range("HotPixels.dead_fraction", dead_fraction, nonnegative=True, upper=1.0)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Draw hot and dead pixel positions (flat indices) and hot-pixel values for this image shape."""
        rng = self.random_generator
        h, w = params["shape"][:2]
        n_px = h * w
        n_hot = int(rng.binomial(n_px, uniform(rng, self.fraction))) if self.fraction[1] > 0 else 0
        n_dead = int(rng.binomial(n_px, uniform(rng, self.dead_fraction))) if self.dead_fraction[1] > 0 else 0
        hot = rng.choice(n_px, size=n_hot, replace=False) if n_hot else np.empty(0, dtype=np.int64)
        dead = rng.choice(n_px, size=n_dead, replace=False) if n_dead else np.empty(0, dtype=np.int64)
        lo, hi = self.intensity_rel_max
        rel = rng.uniform(lo, hi, size=n_hot) if hi > lo else np.full(n_hot, lo)
        return {"hot_index": hot, "hot_rel": rel, "dead_index": dead}

    def apply(
        self,
        img: np.ndarray,
        hot_index: np.ndarray | None = None,
        hot_rel: np.ndarray | None = None,
        dead_index: np.ndarray | None = None,
        **params: Any,
    ) -> np.ndarray:
        """Return a copy of the pattern with the drawn hot and dead pixels set."""
        if (hot_index is None or not hot_index.size) and (dead_index is None or not dead_index.size):
            return img
        out = np.array(img, copy=True)
        flat = out.reshape(-1) if out.ndim == 2 else out.reshape(-1, out.shape[-1])
        if hot_index is not None and hot_index.size:
            peak = float(np.max(img))
            vals = (hot_rel * peak).astype(out.dtype)
            flat[hot_index] = vals if flat.ndim == 1 else vals[:, None]
        if dead_index is not None and dead_index.size:
            flat[dead_index] = 0
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Constructor arguments, for albumentations serialisation and ``repr``."""
        return ("fraction", "intensity_rel_max", "dead_fraction")
