"""Assemble the augmentation chain and apply it to one sample of the data contract.

:func:`build_pipeline` returns an ``albumentations.Compose``; its keyword
arguments are exactly the keys of ``stemforge/conf/augment/<preset>.yaml`` (which carry
``_target_: stemforge.augment.build_pipeline``), so ``hydra.utils.instantiate(cfg.augment)``
builds it.  :func:`augment_sample` feeds it one sample (pattern, probe, label maps,
NaN-padded reflections) and returns the same structure.

Order of the chain (the physical order of the artefacts):

1. :class:`~stemforge.augment.background.SpecimenBackground` -- plasmon, amorphous-ring
   and diffuse backgrounds, made in the specimen (pattern only);
2. :class:`~stemforge.augment.geometry.AffineDistortion` -- projector-lens ellipticity,
   rotation, camera-length scale, descan shift (pattern, probe, label maps and
   keypoints alike);
3. :class:`~stemforge.augment.detector.DetectorBlur` -- detector PSF (pattern only);
4. :class:`~stemforge.augment.noise.ShotNoise` -- electron counting, gain, read noise, dark
   offset, bit depth (pattern only);
5. :class:`~stemforge.augment.detector.HotPixels` -- hot and dead pixels (pattern only).

Every default is "off": ``build_pipeline()`` is the identity, and a component
whose ranges make it the identity is left out of the Compose.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np

from stemforge.augment.background import AMORPHOUS_CARBON_RINGS_INV_A, SpecimenBackground
from stemforge.augment.detector import DetectorBlur, HotPixels
from stemforge.augment.geometry import AffineDistortion
from stemforge.augment.noise import ShotNoise
from stemforge.conf import CONF_DIR  # presets in CONF_DIR / "augment"

__all__ = [
    "CONF_DIR",
    "DEFAULT_LABEL_KEYS",
    "augment_sample",
    "build_pipeline",
    "load_preset",
    "preset_config",
    "reseed",
]


#: Label maps of the simulator's data contract (``labels/<key>`` arrays).
DEFAULT_LABEL_KEYS: tuple[str, ...] = ("vg_map", "disk_map")

_Range = Sequence[float] | float


def build_pipeline(
    *,
    plasmon_weight: _Range = (0.0, 0.0),
    plasmon_q0_inv_A: _Range = (0.01, 0.1),
    ring_weight: _Range = (0.0, 0.0),
    ring_q_inv_A: Sequence[_Range] = AMORPHOUS_CARBON_RINGS_INV_A,
    ring_width_inv_A: _Range = (0.02, 0.06),
    diffuse_weight: _Range = (0.0, 0.0),
    diffuse_width_inv_A: _Range = (0.3, 1.5),
    pixel_size_inv_A: float | None = None,
    p_background: float = 1.0,
    ellipticity: _Range = (0.0, 0.0),
    ellipse_angle_deg: _Range = (0.0, 180.0),
    rotation_deg: _Range = (0.0, 0.0),
    scale: _Range = (1.0, 1.0),
    shift_x_px: _Range = (0.0, 0.0),
    shift_y_px: _Range = (0.0, 0.0),
    p_geometry: float = 1.0,
    psf_sigma_px: _Range = (0.0, 0.0),
    p_blur: float = 1.0,
    dose_e_per_pattern: _Range | None = None,
    probe_peak_counts: _Range | None = None,
    gain_adu_per_e: _Range = (1.0, 1.0),
    read_noise_adu: _Range = (0.0, 0.0),
    dark_offset_adu: _Range = (0.0, 0.0),
    bit_depth: int | None = None,
    gaussian_threshold_counts: float = 10.0,
    p_noise: float = 1.0,
    hot_pixel_fraction: _Range = (0.0, 0.0),
    hot_pixel_intensity_rel_max: _Range = (0.1, 1.0),
    dead_pixel_fraction: _Range = (0.0, 0.0),
    p_defects: float = 1.0,
    label_keys: Sequence[str] = DEFAULT_LABEL_KEYS,
    seed: int | None = None,
) -> A.Compose:
    """Build the CBED augmentation pipeline.

    Ranges are ``[low, high]`` (a single number means fixed), drawn per call
    from the pipeline's seeded generators (uniform unless noted).  All defaults
    are "off", so ``build_pipeline()`` is the identity.

    Parameters
    ----------
    plasmon_weight, ring_weight, diffuse_weight : range
        Fractions of the detected intensity moved into the plasmon Lorentzian,
        the amorphous rings and the diffuse halo (see
        :class:`~stemforge.augment.background.SpecimenBackground`).
    plasmon_q0_inv_A : range
        Lorentzian width ``q0``, Å⁻¹ (log-uniform).
    ring_q_inv_A : list of range
        Ring radii ``1/d``, Å⁻¹, one range per ring (default: amorphous carbon).
    ring_width_inv_A : range
        Radial Gaussian sigma of the rings, Å⁻¹.
    diffuse_width_inv_A : range
        Gaussian width of the diffuse halo, Å⁻¹.
    pixel_size_inv_A : float or None
        Detector sampling, Å⁻¹ per px; None: taken per sample from
        ``augment_sample(..., pixel_size_inv_A=...)`` (the dataset calibration).
    p_background : float
        Probability of adding the backgrounds.
    ellipticity : range
        ``e = 1 - b / a`` of the elliptic distortion, in [0, 1).
    ellipse_angle_deg : range
        Major-axis direction, degrees from +x (col) towards +y (row).
    rotation_deg : range
        Pattern rotation about the centre, degrees.
    scale : range
        Camera-length scale factor (> 0).
    shift_x_px, shift_y_px : range
        Pattern (descan) shift along x (col) / y (row), px, drawn independently.
    p_geometry : float
        Probability of applying the geometric distortion.
    psf_sigma_px : range
        Gaussian detector PSF sigma, px.
    p_blur : float
        Probability of applying the PSF.
    dose_e_per_pattern : range or None
        Electrons per pattern (log-uniform).
    probe_peak_counts : range or None
        Alternatively, electrons in the brightest vacuum-probe pixel
        (log-uniform).  Give at most one; both None: no shot noise.
    gain_adu_per_e, read_noise_adu, dark_offset_adu : range
        Readout: gain (ADU per electron), Gaussian read-noise sigma (ADU), dark
        offset (ADU).
    bit_depth : int or None
        Counter / ADC depth; values saturate at ``2**bit_depth - 1`` ADU.
    gaussian_threshold_counts : float
        Mean count from which shot noise uses the Cornish-Fisher normal
        approximation (see :func:`stemforge.augment.noise.poisson_counts`).
    p_noise : float
        Probability of applying shot noise and readout.
    hot_pixel_fraction, dead_pixel_fraction : range
        Fractions of hot and dead pixels.
    hot_pixel_intensity_rel_max : range
        Hot-pixel value as a multiple of the pattern maximum.
    p_defects : float
        Probability of adding hot / dead pixels.
    label_keys : sequence of str
        Names of the label maps moved with the geometry (declared as ``mask``
        targets, as is ``probe``).
    seed : int or None
        Seed of the ``A.Compose``; equal seeds give identical outputs in any
        process.  None: non-reproducible.

    Returns
    -------
    albumentations.Compose
        Call it as ``pipeline(image=pattern, probe=probe, vg_map=..., disk_map=...,
        keypoints=xy)`` or use :func:`augment_sample`.

    Raises
    ------
    ValueError
        Any invalid parameter (the message names it).
    """
    probs = {
        "p_background": p_background,
        "p_geometry": p_geometry,
        "p_blur": p_blur,
        "p_noise": p_noise,
        "p_defects": p_defects,
    }
    for name, p in probs.items():
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"build_pipeline: {name} must be a probability in [0, 1], got {p!r}")
    if isinstance(label_keys, str) or not all(isinstance(k, str) and k for k in label_keys):
        raise ValueError(f"build_pipeline: label_keys must be a list of non-empty names, got {label_keys!r}")
    label_keys = tuple(label_keys)
    reserved = {"image", "images", "mask", "masks", "keypoints", "bboxes", "probe", "pixel_size_inv_A"}
    if reserved & set(label_keys) or len(set(label_keys)) != len(label_keys):
        raise ValueError(
            f"build_pipeline: label_keys must be distinct and avoid {sorted(reserved)}, got {label_keys!r}"
        )
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"build_pipeline: seed must be None or a non-negative int, got {seed!r}")

    candidates: list[tuple[A.BasicTransform, bool]] = []
    background = SpecimenBackground(
        plasmon_weight=plasmon_weight,
        plasmon_q0_inv_A=plasmon_q0_inv_A,
        ring_weight=ring_weight,
        ring_q_inv_A=ring_q_inv_A,
        ring_width_inv_A=ring_width_inv_A,
        diffuse_weight=diffuse_weight,
        diffuse_width_inv_A=diffuse_width_inv_A,
        pixel_size_inv_A=pixel_size_inv_A,
        p=p_background,
    )
    weights = (background.plasmon_weight, background.ring_weight, background.diffuse_weight)
    candidates.append((background, any(w[1] > 0 for w in weights)))
    geometry = AffineDistortion(
        ellipticity=ellipticity,
        ellipse_angle_deg=ellipse_angle_deg,
        rotation_deg=rotation_deg,
        scale=scale,
        shift_x_px=shift_x_px,
        shift_y_px=shift_y_px,
        p=p_geometry,
    )
    zero = (0.0, 0.0)
    moves = (geometry.ellipticity, geometry.rotation_deg, geometry.shift_x_px, geometry.shift_y_px)
    candidates.append((geometry, any(r != zero for r in moves) or geometry.scale != (1.0, 1.0)))
    blur = DetectorBlur(sigma_px=psf_sigma_px, p=p_blur)
    candidates.append((blur, blur.sigma_px[1] > 0))
    if dose_e_per_pattern is not None or probe_peak_counts is not None:
        noise = ShotNoise(
            dose_e_per_pattern=dose_e_per_pattern,
            probe_peak_counts=probe_peak_counts,
            gain_adu_per_e=gain_adu_per_e,
            read_noise_adu=read_noise_adu,
            dark_offset_adu=dark_offset_adu,
            bit_depth=bit_depth,
            gaussian_threshold_counts=gaussian_threshold_counts,
            p=p_noise,
        )
        candidates.append((noise, True))
    elif (
        bit_depth is not None
        or gain_adu_per_e not in ((1.0, 1.0), 1.0)
        or _nonzero(read_noise_adu)
        or _nonzero(dark_offset_adu)
    ):
        raise ValueError(
            "build_pipeline: readout parameters (bit_depth, gain, read noise, dark offset) need a dose: "
            "set dose_e_per_pattern or probe_peak_counts"
        )
    defects = HotPixels(
        fraction=hot_pixel_fraction,
        intensity_rel_max=hot_pixel_intensity_rel_max,
        dead_fraction=dead_pixel_fraction,
        p=p_defects,
    )
    candidates.append((defects, defects.fraction[1] > 0 or defects.dead_fraction[1] > 0))

    transforms = [t for t, active in candidates if active]
    for i, t in enumerate(transforms):
        t.stream_id = i
    targets = {"probe": "mask", **{k: "mask" for k in label_keys}}
    with warnings.catch_warnings():
        # without a geometric transform albumentations warns that nothing moves the keypoints: intended here
        warnings.filterwarnings("ignore", message="Got processor for keypoints", category=UserWarning)
        return A.Compose(
            transforms,
            additional_targets=targets,
            # remove_invisible=False: reflections that leave the detector keep their mapped coordinates, so
            # the per-transform keypoint filter would be a no-op (skipping it saves ~0.03 ms per sample)
            keypoint_params=A.KeypointParams(format="xy", remove_invisible=False, check_each_transform=False),
            seed=seed,
        )


def _nonzero(value: Any) -> bool:
    """True when a range (or number) has a non-zero bound."""
    if isinstance(value, (int, float)):
        return value != 0
    return any(v != 0 for v in value)


def preset_config(preset: str = "default", conf_dir: str | Path | None = None) -> Any:
    """The ``stemforge/conf/augment/<preset>.yaml`` node as Hydra composes it (``defaults`` lists resolved).

    Uses plain OmegaConf, not Hydra's global state, so it also works inside a
    running Hydra application.  Entries of a ``defaults`` list name other presets
    of the same folder; ``_self_`` (implicitly last) places the file's own keys.

    Parameters
    ----------
    preset : str
        Preset name (file stem in ``stemforge/conf/augment/``).
    conf_dir : str or Path, optional
        Hydra config directory; default :data:`CONF_DIR`.

    Returns
    -------
    omegaconf.DictConfig
        The node with ``_target_: stemforge.augment.build_pipeline``.

    Raises
    ------
    ValueError
        Unknown preset or a malformed defaults list.
    """
    from omegaconf import OmegaConf

    folder = Path(conf_dir or CONF_DIR) / "augment"
    path = folder / f"{preset}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ValueError(f"unknown augmentation preset {preset!r} in {folder}; available: {known}")
    own = OmegaConf.load(path)
    defaults = list(own.pop("defaults", None) or [])
    if "_self_" not in defaults:
        defaults.append("_self_")
    merged = OmegaConf.create()
    for entry in defaults:
        if entry == "_self_":
            merged = OmegaConf.merge(merged, own)
        elif isinstance(entry, str) and entry != preset:
            merged = OmegaConf.merge(merged, preset_config(entry, conf_dir))
        else:
            raise ValueError(f"{path}: defaults entries must name other presets of {folder}, got {entry!r}")
    return merged


def load_preset(preset: str = "default", conf_dir: str | Path | None = None, **overrides: Any) -> A.Compose:
    """Instantiate ``stemforge/conf/augment/<preset>.yaml`` with ``hydra.utils.instantiate``, as a training run would.

    Parameters
    ----------
    preset : str
        Preset name (file stem in ``stemforge/conf/augment/``).
    conf_dir : str or Path, optional
        Hydra config directory; default :data:`CONF_DIR`.
    **overrides
        Keyword arguments passed on to ``hydra.utils.instantiate`` (e.g. ``seed=0``,
        ``pixel_size_inv_A=0.02``); they replace the preset's values.

    Returns
    -------
    albumentations.Compose
        The pipeline.
    """
    from hydra.utils import instantiate

    return instantiate(preset_config(preset, conf_dir), **overrides)


def reseed(pipeline: A.Compose, seed: int) -> A.Compose:
    """Re-seed every transform of ``pipeline`` (e.g. ``base_seed + worker_id`` in a DataLoader worker).

    Copies of one pipeline in several worker processes otherwise produce identical
    augmentation sequences.

    Parameters
    ----------
    pipeline : albumentations.Compose
        A pipeline from :func:`build_pipeline`.
    seed : int
        New non-negative seed.

    Returns
    -------
    albumentations.Compose
        The same object, re-seeded.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"reseed: seed must be a non-negative int, got {seed!r}")
    pipeline.set_random_seed(int(seed))
    return pipeline


def augment_sample(
    pipeline: A.Compose,
    pattern: np.ndarray,
    probe: np.ndarray,
    labels: Mapping[str, np.ndarray] | None = None,
    reflections_px: np.ndarray | None = None,
    num_reflections: int | None = None,
    pixel_size_inv_A: float | None = None,
) -> dict[str, Any]:
    """Augment one sample of the data contract.

    Parameters
    ----------
    pipeline : albumentations.Compose
        From :func:`build_pipeline`.
    pattern : numpy.ndarray
        (H, W) float pattern, fraction of the incident beam per pixel.
    probe : numpy.ndarray
        (H, W) vacuum probe image.
    labels : mapping of str to numpy.ndarray, optional
        (H, W) label maps; every key must be one of the pipeline's ``label_keys``.
    reflections_px : numpy.ndarray, optional
        (R, 2) reflection positions (x = col, y = row), NaN padded.
    num_reflections : int, optional
        Number of valid rows of ``reflections_px``; default: the rows without NaN.
    pixel_size_inv_A : float, optional
        Å⁻¹ per px, for a pipeline built with ``pixel_size_inv_A=None``.

    Returns
    -------
    dict
        ``pattern``, ``probe``, ``labels`` (dict), ``dose_e`` (electrons per pattern the shot noise was drawn
        at, None when no noise was applied), ``reflections_px`` (R, 2,
        NaN padded, same R; keypoints that left the detector keep their mapped
        coordinates) and ``num_reflections``.

    Raises
    ------
    ValueError
        Wrong shapes, unknown label keys, inconsistent reflections.
    """
    pattern = np.asarray(pattern)
    probe = np.asarray(probe)
    if pattern.ndim != 2 or not np.issubdtype(pattern.dtype, np.floating):
        raise ValueError(
            f"augment_sample: pattern must be a 2-D float array (H, W), got {pattern.dtype} {pattern.shape}"
        )
    if probe.shape != pattern.shape:
        raise ValueError(f"augment_sample: probe shape {probe.shape} differs from pattern shape {pattern.shape}")
    labels = dict(labels or {})
    declared = {k for k, v in pipeline.additional_targets.items() if v == "mask"} - {"probe"}
    unknown = set(labels) - declared
    if unknown:
        raise ValueError(
            f"augment_sample: label maps {sorted(unknown)} are not targets of this pipeline "
            f"(declared: {sorted(declared)}); "
            "they would not be transformed -- pass them in build_pipeline(label_keys=...)"
        )
    for k, v in labels.items():
        if np.shape(v) != pattern.shape:
            raise ValueError(
                f"augment_sample: label map {k!r} shape {np.shape(v)} differs from pattern shape {pattern.shape}"
            )

    data: dict[str, Any] = {"image": pattern, "probe": probe, **{k: np.asarray(v) for k, v in labels.items()}}
    n_rows = 0
    if reflections_px is not None:
        refl = np.asarray(reflections_px, dtype=np.float32)
        if refl.ndim != 2 or refl.shape[1] != 2:
            raise ValueError(f"augment_sample: reflections_px must be (R, 2) (x=col, y=row), got {refl.shape}")
        n_rows = refl.shape[0]
        if num_reflections is None:
            num_reflections = int(np.sum(~np.isnan(refl).any(axis=1)))
        num_reflections = int(num_reflections)
        if not 0 <= num_reflections <= n_rows:
            raise ValueError(f"augment_sample: num_reflections={num_reflections} outside [0, {n_rows}]")
        valid = refl[:num_reflections]
        if np.isnan(valid).any():
            raise ValueError("augment_sample: the first num_reflections rows of reflections_px contain NaN")
        data["keypoints"] = valid
    elif num_reflections is not None:
        raise ValueError("augment_sample: num_reflections given without reflections_px")
    if pixel_size_inv_A is not None:
        data["pixel_size_inv_A"] = float(pixel_size_inv_A)

    noise = [t for t in pipeline.transforms if hasattr(t, "dose_e_per_pattern")]
    for t in noise:
        t.last_dose_e = None
    out = pipeline(**data)
    doses = [t.last_dose_e for t in noise if getattr(t, "last_dose_e", None) is not None]

    result: dict[str, Any] = {
        "pattern": out["image"],
        "probe": out["probe"],
        "labels": {k: out[k] for k in labels},
        "dose_e": doses[-1] if doses else None,
    }
    if reflections_px is not None:
        padded = np.full((n_rows, 2), np.nan, dtype=np.float32)
        kp = np.asarray(out["keypoints"], dtype=np.float32).reshape(-1, 2)
        padded[: len(kp)] = kp
        result["reflections_px"] = padded
        result["num_reflections"] = np.int32(num_reflections)
    return result
