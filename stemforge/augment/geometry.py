"""Geometric distortions of the diffraction plane: ellipticity, rotation, camera-length scale, shift.

All are affine maps of detector coordinates, composed into one resampling and
applied identically to the pattern, the probe, every label map and the
reflection keypoints.

Conventions
-----------
* Coordinates are pixel coordinates ``x = col``, ``y = row``; integer values are
  pixel centres (OpenCV's convention, and the data contract's: the undiffracted
  beam sits at ``(x, y) = (W // 2, H // 2)``).
* The forward map of a point ``g`` is ``g' = c + s R(phi) E (g - c) + t`` with
  ``c`` the distortion centre (default the pattern centre ``(W // 2, H // 2)``),
  ``t`` the shift ``(shift_x_px, shift_y_px)`` (descan), ``s`` the camera-length
  scale factor, ``R(phi)`` a rotation by ``rotation_deg`` and ``E`` the
  symmetric, area-preserving ellipse strain
  ``R(theta) diag(1 / sqrt(1 - e), sqrt(1 - e)) R(theta)^T``.  ``E`` maps a
  circle of radius ``r`` onto an ellipse with semi-axes ``a = r / sqrt(1 - e)``
  (along ``theta``) and ``b = r sqrt(1 - e)``: the ellipticity is
  ``e = 1 - b / a`` (0 = circle, must be < 1; for small ``e`` the principal
  strains are ``+-e/2``).  ``E`` keeps the mean scale; ``s`` alone changes it.
  Angles are measured from +x (col) towards +y (row), i.e. clockwise on screen.
* Images are resampled with OpenCV bilinear interpolation (``warpAffine``,
  which quantises the source position to 1/32 px), zeros outside the detector.
  Keypoints are mapped analytically in float64.  When the sampled map is the
  identity the arrays are returned unchanged (exact identity).
"""

from __future__ import annotations

import math
from typing import Any

import albumentations as A
import cv2
import numpy as np

from stemforge.augment._base import SeededTransformMixin, check_range, uniform

__all__ = ["AffineDistortion", "EllipticDistortion", "PatternShift", "affine_matrix"]


def affine_matrix(
    shape: tuple[int, int],
    ellipticity: float = 0.0,
    ellipse_angle_deg: float = 0.0,
    shift_xy_px: tuple[float, float] = (0.0, 0.0),
    center_px: tuple[float, float] | None = None,
    rotation_deg: float = 0.0,
    scale: float = 1.0,
) -> np.ndarray:
    """Forward 2x3 affine matrix (in ``x = col, y = row`` pixel coordinates).

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(H, W)`` (px).
    ellipticity : float
        ``e = 1 - b / a`` in ``[0, 1)``.
    ellipse_angle_deg : float
        Direction of the major axis ``a``, degrees from +x (col) towards +y (row).
    shift_xy_px : tuple of float
        Translation ``(dx, dy)`` in px.
    center_px : tuple of float, optional
        Distortion centre ``(row, col)`` in px; default ``(H // 2, W // 2)``.
    rotation_deg : float
        Rotation of the pattern about the centre, degrees.
    scale : float
        Camera-length scale factor (> 0).

    Returns
    -------
    numpy.ndarray
        float64 array ``M`` of shape (2, 3) with ``g' = M[:, :2] @ g + M[:, 2]``.
    """
    if not 0.0 <= ellipticity < 1.0:
        raise ValueError(f"ellipticity must be in [0, 1), got {ellipticity!r}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    h, w = shape[:2]
    cy, cx = (h // 2, w // 2) if center_px is None else center_px
    # E = R(theta) diag(a, b) R(theta)^T with a = 1/sqrt(1-e), b = sqrt(1-e); then s R(phi) E (plain floats: fast)
    b = math.sqrt(1.0 - ellipticity)
    a = 1.0 / b
    ct, st = math.cos(math.radians(ellipse_angle_deg)), math.sin(math.radians(ellipse_angle_deg))
    exx, eyy, exy = a * ct * ct + b * st * st, a * st * st + b * ct * ct, (a - b) * ct * st
    cp, sp = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    m00, m01 = scale * (cp * exx - sp * exy), scale * (cp * exy - sp * eyy)
    m10, m11 = scale * (sp * exx + cp * exy), scale * (sp * exy + cp * eyy)
    dx, dy = float(shift_xy_px[0]), float(shift_xy_px[1])
    tx = cx - (m00 * cx + m01 * cy) + dx
    ty = cy - (m10 * cx + m11 * cy) + dy
    return np.array([[m00, m01, tx], [m10, m11, ty]], dtype=np.float64)


class AffineDistortion(SeededTransformMixin, A.DualTransform):
    """Ellipticity, rotation and scale about the pattern centre, then a shift, in one resampling.

    Parameters are drawn uniformly per call from the given ranges (a single
    number means a fixed value).  Targets: ``image`` (the pattern), ``mask``
    targets (declare the probe and label maps as ``mask`` in
    ``additional_targets``) and ``keypoints``.

    Parameters
    ----------
    ellipticity : tuple of float
        Range of ``e = 1 - b / a`` (dimensionless), ``0 <= low <= high < 1``.
    ellipse_angle_deg : tuple of float
        Range of the major-axis direction, degrees.
    rotation_deg : tuple of float
        Range of the pattern rotation, degrees.
    scale : tuple of float
        Range of the camera-length scale factor, > 0 (1 = unchanged).
    shift_x_px, shift_y_px : tuple of float
        Ranges of the shift along x (col) and y (row), px; drawn independently.
    center_px : tuple of float, optional
        Distortion centre ``(row, col)`` in px; default ``(H // 2, W // 2)``.
    p : float
        Probability of applying the transform.

    Raises
    ------
    ValueError
        Malformed or reversed ranges, ellipticity outside ``[0, 1)``, scale <= 0.
    """

    def __init__(
        self,
        ellipticity: tuple[float, float] | float = (0.0, 0.0),
        ellipse_angle_deg: tuple[float, float] | float = (0.0, 180.0),
        rotation_deg: tuple[float, float] | float = (0.0, 0.0),
        scale: tuple[float, float] | float = (1.0, 1.0),
        shift_x_px: tuple[float, float] | float = (0.0, 0.0),
        shift_y_px: tuple[float, float] | float = (0.0, 0.0),
        center_px: tuple[float, float] | None = None,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        name = type(self).__name__
        self.ellipticity = check_range(
            f"{name}.ellipticity", ellipticity, nonnegative=True, upper=1.0, upper_inclusive=False
        )
        self.ellipse_angle_deg = check_range(f"{name}.ellipse_angle_deg", ellipse_angle_deg)
        self.rotation_deg = check_range(f"{name}.rotation_deg", rotation_deg)
        self.scale = check_range(f"{name}.scale", scale, positive=True)
        self.shift_x_px = check_range(f"{name}.shift_x_px", shift_x_px)
        self.shift_y_px = check_range(f"{name}.shift_y_px", shift_y_px)
        if center_px is not None:
            center_px = _check_point(f"{name}.center_px", center_px)
        self.center_px = center_px

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Draw ellipticity, angles, scale and shift; build the forward matrix for this image shape."""
        rng = self.random_generator
        e = uniform(rng, self.ellipticity)
        theta = uniform(rng, self.ellipse_angle_deg)
        phi = uniform(rng, self.rotation_deg)
        scale = uniform(rng, self.scale)
        dx = uniform(rng, self.shift_x_px)
        dy = uniform(rng, self.shift_y_px)
        info = {
            "ellipticity": e,
            "ellipse_angle_deg": theta,
            "rotation_deg": phi,
            "scale": scale,
            "shift_xy_px": (dx, dy),
        }
        if e == 0.0 and phi % 360.0 == 0.0 and scale == 1.0 and dx == 0.0 and dy == 0.0:
            return {"matrix": None, **info}
        m = affine_matrix(params["shape"][:2], e, theta, (dx, dy), self.center_px, rotation_deg=phi, scale=scale)
        return {"matrix": m, **info}

    def apply_with_params(self, params: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Apply the map to all targets; same-shape 2-D float32 images and masks share one resampling.

        OpenCV resamples up to 4 channels in one pass for little more than the
        cost of one, so the pattern, probe and label maps are stacked, warped
        together and split again (identical values to warping them one by one).
        The probe and label maps come back as (non-contiguous) views into the
        warped stack.
        """
        matrix = params.get("matrix")
        if matrix is None:
            return super().apply_with_params(params, *args, **kwargs)
        pixel_funcs = (self.apply, self.apply_to_mask)
        keys = [
            k
            for k, v in kwargs.items()
            if k in self._key2func
            and self._key2func[k] in pixel_funcs
            and isinstance(v, np.ndarray)
            and v.ndim == 2
            and v.dtype == np.float32
        ]
        keys = [k for k in keys if kwargs[k].shape == kwargs[keys[0]].shape]
        if len(keys) < 2:
            return super().apply_with_params(params, *args, **kwargs)
        rest = {k: v for k, v in kwargs.items() if k not in keys}
        out = super().apply_with_params(params, *args, **rest)
        for start in range(0, len(keys), 4):
            group = keys[start : start + 4]
            if len(group) == 1:
                out[group[0]] = _warp(kwargs[group[0]], matrix)
                continue
            stacked = cv2.merge([kwargs[k] for k in group])  # (H, W, C); faster than np.stack(axis=-1)
            warped = _warp(stacked, matrix)
            for i, k in enumerate(group):
                # the image continues through the pipeline and is made contiguous; masks (probe, label
                # maps) are returned as strided views into the warped stack, which saves a copy each
                out[k] = np.ascontiguousarray(warped[:, :, i]) if k == "image" else warped[:, :, i]
        return {k: out[k] for k in kwargs}  # keep the caller's key order

    def apply(self, img: np.ndarray, matrix: np.ndarray | None = None, **params: Any) -> np.ndarray:
        """Resample the pattern (bilinear, zero outside)."""
        return _warp(img, matrix)

    def apply_to_mask(self, mask: np.ndarray, matrix: np.ndarray | None = None, **params: Any) -> np.ndarray:
        """Resample a probe / label map: bilinear for floats, nearest for integer or bool maps."""
        return _warp(mask, matrix)

    def apply_to_keypoints(self, keypoints: np.ndarray, matrix: np.ndarray | None = None, **params: Any) -> np.ndarray:
        """Map keypoint columns 0 (x) and 1 (y) analytically; other columns are kept."""
        if matrix is None or len(keypoints) == 0:
            return keypoints
        out = np.array(keypoints, dtype=np.float64, copy=True)
        xy = out[:, :2]
        out[:, :2] = xy @ matrix[:, :2].T + matrix[:, 2]
        return out.astype(keypoints.dtype, copy=False)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Constructor arguments, for albumentations serialisation and ``repr``."""
        return ("ellipticity", "ellipse_angle_deg", "rotation_deg", "scale", "shift_x_px", "shift_y_px", "center_px")


class EllipticDistortion(AffineDistortion):
    """Elliptic (projector-lens) distortion about the pattern centre, area preserving.

    Parameters
    ----------
    ellipticity : tuple of float
        Range of ``e = 1 - b / a``, ``0 <= low <= high < 1``.
    ellipse_angle_deg : tuple of float
        Range of the major-axis direction, degrees.
    center_px : tuple of float, optional
        Distortion centre ``(row, col)`` in px; default ``(H // 2, W // 2)``.
    p : float
        Probability of applying the transform.
    """

    def __init__(
        self,
        ellipticity: tuple[float, float] | float = (0.0, 0.15),
        ellipse_angle_deg: tuple[float, float] | float = (0.0, 180.0),
        center_px: tuple[float, float] | None = None,
        p: float = 1.0,
    ):
        super().__init__(ellipticity=ellipticity, ellipse_angle_deg=ellipse_angle_deg, center_px=center_px, p=p)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Constructor arguments, for albumentations serialisation and ``repr``."""
        return ("ellipticity", "ellipse_angle_deg", "center_px")


class PatternShift(AffineDistortion):
    """Rigid sub-pixel shift of the whole pattern (descan / beam-tilt error).

    Parameters
    ----------
    shift_x_px, shift_y_px : tuple of float
        Ranges of the shift along x (col) and y (row), px, drawn independently.
    p : float
        Probability of applying the transform.
    """

    def __init__(
        self,
        shift_x_px: tuple[float, float] | float = (-10.0, 10.0),
        shift_y_px: tuple[float, float] | float = (-10.0, 10.0),
        p: float = 1.0,
    ):
        super().__init__(shift_x_px=shift_x_px, shift_y_px=shift_y_px, p=p)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Constructor arguments, for albumentations serialisation and ``repr``."""
        return ("shift_x_px", "shift_y_px")


def _check_point(name: str, value: Any) -> tuple[float, float]:
    """Validate a ``(row, col)`` pair of finite numbers."""
    try:
        vals = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (row, col) pair of numbers, got {value!r}") from None
    if len(vals) != 2 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{name} must be a (row, col) pair of finite numbers, got {value!r}")
    return vals[0], vals[1]


def _warp(img: np.ndarray, matrix: np.ndarray | None) -> np.ndarray:
    """Apply the forward affine ``matrix`` to ``img`` (H, W[, C]); ``None`` is the identity."""
    if matrix is None:
        return img
    h, w = img.shape[:2]
    inv = cv2.invertAffineTransform(matrix)
    interp = cv2.INTER_LINEAR if np.issubdtype(img.dtype, np.floating) else cv2.INTER_NEAREST
    src = img if img.dtype != np.bool_ else img.view(np.uint8)
    out = cv2.warpAffine(
        src, inv, (w, h), flags=interp | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    if img.ndim == 3 and out.ndim == 2:  # OpenCV drops a trailing channel axis of length 1
        out = out[:, :, None]
    return out.view(np.bool_) if img.dtype == np.bool_ else out
