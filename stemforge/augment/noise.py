"""Electron shot noise and detector readout.

The simulated pattern is an expected intensity (fraction of the incident beam per
pixel).  A detector records an integer number of electrons per pixel, Poisson
distributed around ``pattern * dose``, and reads it out through a gain, read-out
noise, a dark offset and a finite bit depth.  This module holds

* :func:`~stemforge.augment.poisson.poisson_counts` (re-exported) -- a fast Poisson sampler
  for whole images (exact below a count threshold, a skewness-corrected normal
  approximation above it; see :mod:`stemforge.augment.poisson`),
* :class:`ShotNoise` -- the albumentations transform: dose -> Poisson counts ->
  gain, read noise, dark offset -> bit depth / saturation -> back to
  fraction-of-beam units.

Why not ``numpy.random.Generator.poisson``?  It costs ~10 ns per pixel even at
vanishing means and 35-55 ns per pixel at a few to tens of counts (2.4-3.7 ms for
a 256x256 pattern at 25 counts/px, depending on the bit generator), against a
2 ms per pattern budget for the whole augmentation chain (timings of
:func:`~stemforge.augment.poisson.poisson_counts` in benchmarks/RESULTS.md).
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np

from stemforge.augment._base import SeededTransformMixin, check_range, log_uniform, uniform
from stemforge.augment.poisson import _kernels, poisson_counts, shot_noise_counts

__all__ = [
    "SUPPORTED_BIT_DEPTHS",
    "ShotNoise",
    "poisson_counts",
]

#: Counter / ADC depths (bits per pixel per frame) accepted by :class:`ShotNoise`.
#: 1, 6, 12, 24: Medipix3 / Merlin counter modes; 8, 16, 32: common frame formats
#: of counting and integrating cameras (32 is effectively unsaturated).
SUPPORTED_BIT_DEPTHS: tuple[int, ...] = (1, 6, 8, 12, 16, 24, 32)


class ShotNoise(SeededTransformMixin, A.ImageOnlyTransform):
    """Electron counting noise and detector readout on the pattern.

    Per call, a dose is drawn log-uniformly in one of two parametrisations (give
    exactly one):

    * ``dose_e_per_pattern`` -- electrons incident per pattern;
    * ``probe_peak_counts`` -- electrons recorded in the brightest pixel of the
      vacuum probe image (reads the ``probe`` target); the dose per pattern is
      ``probe_peak_counts / probe.max()`` because the probe sums to 1.

    Then, per pixel::

        counts = Poisson(pattern * dose)                       (poisson_counts)
        adu    = gain * counts + dark_offset + Normal(0, read_noise**2)
        adu    = clip(round(adu), 0, 2**bit_depth - 1)          (when a readout is modelled)
        out    = adu / (gain * dose)                           (fraction-of-beam units, float32)

    so clean and noisy patterns share one intensity scale; an unsubtracted dark
    offset stays visible as a pedestal.  Rounding to integer ADU and clipping at
    0 happen when gain != 1, read noise or a dark offset is set (plain counts are
    integers already); saturation when ``bit_depth`` is set.

    Parameters
    ----------
    dose_e_per_pattern : tuple of float or None
        ``(low, high)`` electrons per pattern, > 0 (e.g. 1e3-1e7).
    probe_peak_counts : tuple of float or None
        ``(low, high)`` electrons in the brightest probe pixel, > 0 (e.g. 100-10000).
    gain_adu_per_e : tuple of float
        Detector gain range, ADU per electron, > 0 (1 for counting detectors).
    read_noise_adu : tuple of float
        Range of the Gaussian read-out noise sigma, ADU, >= 0.
    dark_offset_adu : tuple of float
        Range of the dark offset (pedestal), ADU, >= 0.
    bit_depth : int or None
        Counter / ADC depth, one of :data:`SUPPORTED_BIT_DEPTHS`; None = no
        saturation.
    gaussian_threshold_counts : float
        Mean count (electrons, >= 1) from which the normal approximation of
        :func:`poisson_counts` is used.
    p : float
        Probability of applying the transform.

    Raises
    ------
    ValueError
        Neither or both dose parametrisations, non-positive or reversed ranges,
        negative noise or offset, unsupported bit depth, threshold < 1.
    """

    def __init__(
        self,
        dose_e_per_pattern: tuple[float, float] | float | None = None,
        probe_peak_counts: tuple[float, float] | float | None = None,
        gain_adu_per_e: tuple[float, float] | float = (1.0, 1.0),
        read_noise_adu: tuple[float, float] | float = (0.0, 0.0),
        dark_offset_adu: tuple[float, float] | float = (0.0, 0.0),
        bit_depth: int | None = None,
        gaussian_threshold_counts: float = 10.0,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        if (probe_peak_counts is None) == (dose_e_per_pattern is None):
            raise ValueError(
                "ShotNoise: give exactly one of dose_e_per_pattern (electrons per pattern) or probe_peak_counts "
                f"(electrons in the brightest probe pixel); got {dose_e_per_pattern!r} and {probe_peak_counts!r}"
            )
        self.dose_e_per_pattern = (
            None
            if dose_e_per_pattern is None
            else check_range("ShotNoise.dose_e_per_pattern", dose_e_per_pattern, positive=True)
        )
        self.probe_peak_counts = (
            None
            if probe_peak_counts is None
            else check_range("ShotNoise.probe_peak_counts", probe_peak_counts, positive=True)
        )
        self.gain_adu_per_e = check_range("ShotNoise.gain_adu_per_e", gain_adu_per_e, positive=True)
        self.read_noise_adu = check_range("ShotNoise.read_noise_adu", read_noise_adu, nonnegative=True)
        self.dark_offset_adu = check_range("ShotNoise.dark_offset_adu", dark_offset_adu, nonnegative=True)
        if bit_depth is not None:
            if (
                isinstance(bit_depth, bool)
                or not isinstance(bit_depth, (int, np.integer))
                or int(bit_depth) not in SUPPORTED_BIT_DEPTHS
            ):
                raise ValueError(
                    f"ShotNoise.bit_depth must be None or one of {SUPPORTED_BIT_DEPTHS}, got {bit_depth!r}"
                )
            bit_depth = int(bit_depth)
        self.bit_depth = bit_depth
        if (
            isinstance(gaussian_threshold_counts, bool)
            or not isinstance(gaussian_threshold_counts, (int, float))
            or not (gaussian_threshold_counts >= 1)
        ):
            raise ValueError(
                "ShotNoise.gaussian_threshold_counts must be a number >= 1 (electrons), "
                f"got {gaussian_threshold_counts!r}"
            )
        self.gaussian_threshold_counts = float(gaussian_threshold_counts)

    @property
    def targets_as_params(self) -> list[str]:
        """Data keys this transform reads: the probe in ``probe_peak_counts`` mode."""
        return ["probe"] if self.probe_peak_counts is not None else []

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Draw the dose (electrons per pattern) and the readout parameters for this call."""
        rng = self.random_generator
        if self.probe_peak_counts is not None:
            peak = float(np.max(data["probe"]))
            if not peak > 0:
                raise ValueError(
                    "ShotNoise: the probe image has no positive pixel; cannot convert peak counts to a dose"
                )
            dose = log_uniform(rng, self.probe_peak_counts) / peak
        else:
            dose = log_uniform(rng, self.dose_e_per_pattern)
        self.last_dose_e = float(dose)  # read by augment_sample: the dose this sample was recorded at
        return {
            "dose_e": dose,
            "gain_adu_per_e": uniform(rng, self.gain_adu_per_e),
            "read_noise_adu": uniform(rng, self.read_noise_adu),
            "dark_offset_adu": uniform(rng, self.dark_offset_adu),
        }

    def apply(
        self,
        img: np.ndarray,
        dose_e: float = 1.0,
        gain_adu_per_e: float = 1.0,
        read_noise_adu: float = 0.0,
        dark_offset_adu: float = 0.0,
        **params: Any,
    ) -> np.ndarray:
        """Return the recorded pattern in fraction-of-beam units (float32)."""
        adu = shot_noise_counts(img, dose_e, self.random_generator, self.gaussian_threshold_counts)
        if gain_adu_per_e != 1.0 or read_noise_adu > 0 or dark_offset_adu > 0:  # the readout chain
            if gain_adu_per_e != 1.0:
                adu *= np.float32(gain_adu_per_e)
            if read_noise_adu > 0:
                adu += self.random_generator.standard_normal(adu.shape, dtype=np.float32) * np.float32(read_noise_adu)
            if dark_offset_adu > 0:
                adu += np.float32(dark_offset_adu)
            np.rint(adu, out=adu)  # an ADC delivers integers
            np.maximum(adu, np.float32(0.0), out=adu)
        to_beam = np.float32(1.0 / (gain_adu_per_e * dose_e))
        if self.bit_depth is None:
            adu *= to_beam
            return adu
        full_scale = np.float32(2**self.bit_depth - 1)
        kernels = _kernels()
        if kernels is not None and adu.flags.c_contiguous:  # saturate and rescale in one pass
            kernels.clip_scale(adu.reshape(-1), full_scale, to_beam)
        else:
            np.minimum(adu, full_scale, out=adu)
            adu *= to_beam
        return adu

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Constructor arguments, for albumentations serialisation and ``repr``."""
        return (
            "dose_e_per_pattern",
            "probe_peak_counts",
            "gain_adu_per_e",
            "read_noise_adu",
            "dark_offset_adu",
            "bit_depth",
            "gaussian_threshold_counts",
        )
