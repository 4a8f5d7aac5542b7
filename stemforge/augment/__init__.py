"""Augmentation stage: detector and specimen artefacts applied to simulated CBED patterns.

Transforms (albumentations ``ImageOnlyTransform`` / ``DualTransform`` subclasses,
usable in any ``A.Compose``; declare ``probe`` and the label maps as ``mask``
targets and pass reflections as ``keypoints`` in ``xy`` format):

* :class:`SpecimenBackground` (and its single-component forms
  :class:`PlasmonBackground`, :class:`AmorphousRings`, :class:`DiffuseBackground`)
  -- Lorentzian ``1/(q**2 + q0**2)``, amorphous-support rings and a smooth halo
  (q in Å⁻¹), convolved with the probe and blended into the pattern with
  weights (pattern only);
* :class:`AffineDistortion` (and :class:`EllipticDistortion`, :class:`PatternShift`)
  -- area-preserving elliptic strain (``e = 1 - b/a``), rotation (deg),
  camera-length scale and shift (px), on pattern, probe, label maps and
  keypoints identically; zero parameters are the exact identity;
* :class:`DetectorBlur` -- Gaussian detector PSF (px) (pattern only);
* :class:`ShotNoise` -- Poisson electron counting at a dose in electrons per
  pattern or electrons in the brightest probe pixel, then gain, Gaussian read
  noise, dark offset and bit-depth saturation (pattern only); the sampler,
  :func:`poisson_counts`, lives in :mod:`stemforge.augment.poisson` (numpy, and numba
  when it imports, with identical counts);
* :class:`HotPixels` -- hot and dead detector pixels (pattern only).

Pipeline helpers: :func:`build_pipeline` (Hydra target of ``stemforge/conf/augment/*.yaml``;
presets ``none``, ``crystal4d``, ``counting`` = ``default``), :func:`load_preset` /
:func:`preset_config` (a preset instantiated / resolved without a running Hydra
app), :func:`augment_sample` (one sample of the simulator's data contract in and
out), :func:`reseed` and :func:`configure_worker` (per-worker seeds; one thread
and allocator tuning: call both in a DataLoader ``worker_init_fn``),
:func:`read_samples` / :func:`write_samples` (the zarr data contract) and
:func:`synthetic_sample` (stand-in data for previews, benchmarks and tests).

Conventions: intensities are fractions of the incident beam per pixel; pixel
coordinates are ``x = col, y = row`` with integers at pixel centres and the
undiffracted beam at ``(W // 2, H // 2)``; reciprocal lengths in Å⁻¹ (the
calibration ``pixel_size_inv_A`` is Å⁻¹ per px); doses in electrons.

All randomness comes from the generators that ``A.Compose(seed=...)`` hands to
each transform (decorrelated per transform, see :mod:`stemforge.augment._base`), so a
seeded pipeline gives identical outputs in every process.
"""

from stemforge.augment.background import (
    AmorphousRings,
    DiffuseBackground,
    PlasmonBackground,
    SpecimenBackground,
    lorentzian_kernel,
    plasmon_background,
)
from stemforge.augment.data import read_samples, write_samples
from stemforge.augment.detector import DetectorBlur, HotPixels
from stemforge.augment.geometry import AffineDistortion, EllipticDistortion, PatternShift, affine_matrix
from stemforge.augment.noise import SUPPORTED_BIT_DEPTHS, ShotNoise
from stemforge.augment.pipeline import (
    DEFAULT_LABEL_KEYS,
    augment_sample,
    build_pipeline,
    load_preset,
    preset_config,
    reseed,
)
from stemforge.augment.poisson import poisson_counts
from stemforge.augment.runtime import configure_worker
from stemforge.augment.synthetic import synthetic_sample

__all__ = [
    "DEFAULT_LABEL_KEYS",
    "SUPPORTED_BIT_DEPTHS",
    "AffineDistortion",
    "AmorphousRings",
    "DetectorBlur",
    "DiffuseBackground",
    "EllipticDistortion",
    "HotPixels",
    "PatternShift",
    "PlasmonBackground",
    "ShotNoise",
    "SpecimenBackground",
    "affine_matrix",
    "augment_sample",
    "build_pipeline",
    "configure_worker",
    "load_preset",
    "lorentzian_kernel",
    "plasmon_background",
    "poisson_counts",
    "preset_config",
    "read_samples",
    "reseed",
    "synthetic_sample",
    "write_samples",
]
