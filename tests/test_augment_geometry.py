"""Geometric distortions: analytic keypoint maps, label peaks on keypoints, exact identity."""

from __future__ import annotations

import math

import albumentations as A
import numpy as np
import pytest

from stemforge import augment
from stemforge.augment import AffineDistortion, EllipticDistortion, PatternShift, affine_matrix

TARGETS = {"probe": "mask", "vg_map": "mask", "disk_map": "mask"}
KP = A.KeypointParams(format="xy", remove_invisible=False)


def _blob_image(shape, points, sigma=1.5):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    img = np.zeros(shape)
    for x, y in points:
        img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return img.astype(np.float32)


def _centroid(img, x, y, radius=6):
    h, w = img.shape
    r0, r1 = max(int(round(y)) - radius, 0), min(int(round(y)) + radius + 1, h)
    c0, c1 = max(int(round(x)) - radius, 0), min(int(round(x)) + radius + 1, w)
    win = img[r0:r1, c0:c1].astype(np.float64)
    yy, xx = np.mgrid[r0:r1, c0:c1]
    return float((win * xx).sum() / win.sum()), float((win * yy).sum() / win.sum())


def _analytic(points, shape, e, theta, phi, scale, dx, dy):
    cy, cx = shape[0] // 2, shape[1] // 2
    th, ph = math.radians(theta), math.radians(phi)
    r_e = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    r_p = np.array([[math.cos(ph), -math.sin(ph)], [math.sin(ph), math.cos(ph)]])
    s = math.sqrt(1 - e)
    lin = scale * r_p @ r_e @ np.diag([1 / s, s]) @ r_e.T
    c = np.array([cx, cy], dtype=np.float64)
    return (np.asarray(points, np.float64) - c) @ lin.T + c + np.array([dx, dy])


@pytest.mark.parametrize(
    ("shape", "e", "theta", "phi", "scale", "dx", "dy"),
    [
        ((128, 128), 0.15, 30.0, 0.0, 1.0, 3.3, -7.6),
        ((96, 140), 0.05, 100.0, 17.0, 1.03, -2.25, 4.5),
        ((128, 128), 0.0, 0.0, 0.0, 1.0, 0.37, 0.81),
    ],
)
def test_point_moves_to_analytic_position_and_labels_follow(shape, e, theta, phi, scale, dx, dy):
    """A known point goes to its analytic image within 0.05 px, in keypoints and in every image target."""
    pts = np.array([[shape[1] * 0.3 + 0.37, shape[0] * 0.35 + 0.11], [shape[1] * 0.62, shape[0] * 0.58 + 0.5]])
    img = _blob_image(shape, pts)
    t = AffineDistortion(
        ellipticity=(e, e),
        ellipse_angle_deg=(theta, theta),
        rotation_deg=(phi, phi),
        scale=(scale, scale),
        shift_x_px=(dx, dx),
        shift_y_px=(dy, dy),
    )
    comp = A.Compose([t], additional_targets=TARGETS, keypoint_params=KP, seed=0)
    out = comp(image=img, probe=img.copy(), vg_map=img.copy(), disk_map=img.copy(), keypoints=pts)
    expected = _analytic(pts, shape, e, theta, phi, scale, dx, dy)
    kp = np.asarray(out["keypoints"])[:, :2]
    assert np.abs(kp - expected).max() < 1e-4
    for key in ("image", "probe", "vg_map", "disk_map"):
        for (x, y), (ex, ey) in zip(kp, expected, strict=False):
            cx, cy = _centroid(out[key], x, y)
            assert math.hypot(cx - ex, cy - ey) < 0.05, (key, cx - ex, cy - ey)
    # the same resampling for every target
    assert np.array_equal(out["image"], out["probe"]) and np.array_equal(out["image"], out["disk_map"])


def test_label_peaks_stay_on_keypoints_for_a_synthetic_sample():
    s = augment.synthetic_sample(4, shape=(160, 160), pixel_size_inv_A=0.025)
    pipe = augment.build_pipeline(
        ellipticity=(0.1, 0.1),
        rotation_deg=(12.0, 12.0),
        scale=(1.02, 1.02),
        shift_x_px=(4.4, 4.4),
        shift_y_px=(-6.2, -6.2),
        seed=3,
    )
    out = augment.augment_sample(pipe, s["pattern"], s["probe"], s["labels"], s["reflections_px"], s["num_reflections"])
    n = int(out["num_reflections"])
    xy = out["reflections_px"][:n]
    vg = out["labels"]["vg_map"]
    h, w = vg.shape
    checked = 0
    for x, y in xy:
        if not (8 <= x < w - 8 and 8 <= y < h - 8):
            continue
        cx, cy = _centroid(vg, x, y, radius=3)
        assert math.hypot(cx - x, cy - y) < 0.05
        r, c = int(round(y)), int(round(x))
        win = vg[r - 2 : r + 3, c - 2 : c + 3]
        assert np.unravel_index(win.argmax(), win.shape) in {
            (2, 2),
            (1, 2),
            (2, 1),
            (3, 2),
            (2, 3),
            (1, 1),
            (1, 3),
            (3, 1),
            (3, 3),
        }
        checked += 1
    assert checked >= 10
    assert np.isnan(out["reflections_px"][n:]).all()


def test_zero_distortion_is_exact_identity():
    s = augment.synthetic_sample(1, shape=(96, 96))
    for t in (AffineDistortion(), EllipticDistortion(ellipticity=0.0), PatternShift(shift_x_px=0.0, shift_y_px=0.0)):
        comp = A.Compose([t], additional_targets=TARGETS, keypoint_params=KP, seed=0)
        kp = s["reflections_px"][: s["num_reflections"]]
        out = comp(image=s["pattern"], probe=s["probe"], keypoints=kp, **s["labels"])
        assert np.array_equal(out["image"], s["pattern"])
        assert np.array_equal(out["probe"], s["probe"])
        for k, v in s["labels"].items():
            assert np.array_equal(out[k], v)
        assert np.array_equal(np.asarray(out["keypoints"])[:, :2], kp)


def test_identity_pipeline_returns_inputs_unchanged():
    s = augment.synthetic_sample(2, shape=(64, 80))
    out = augment.augment_sample(
        augment.build_pipeline(seed=0), s["pattern"], s["probe"], s["labels"], s["reflections_px"], s["num_reflections"]
    )
    assert np.array_equal(out["pattern"], s["pattern"]) and np.array_equal(out["probe"], s["probe"])
    assert all(np.array_equal(out["labels"][k], s["labels"][k]) for k in s["labels"])
    assert np.array_equal(out["reflections_px"], s["reflections_px"], equal_nan=True)


def test_affine_matrix_properties():
    assert np.array_equal(affine_matrix((64, 64)), np.array([[1.0, 0, 0], [0, 1.0, 0]]))
    m = affine_matrix((64, 64), ellipticity=0.2, ellipse_angle_deg=35.0)
    assert np.linalg.det(m[:, :2]) == pytest.approx(1.0)  # area preserving
    sv = np.linalg.svd(m[:, :2], compute_uv=False)
    assert 1 - sv[1] / sv[0] == pytest.approx(0.2)  # e = 1 - b / a
    assert np.allclose(m[:, :2], m[:, :2].T)  # symmetric strain
    # rotation by +90 deg takes +x to +y (clockwise on screen, rows growing downwards)
    r = affine_matrix((64, 64), rotation_deg=90.0)
    p = np.array([32.0 + 10.0, 32.0])
    assert np.allclose(r[:, :2] @ p + r[:, 2], [32.0, 42.0])
    # centre is the fixed point of the linear part
    m = affine_matrix((64, 80), ellipticity=0.1, rotation_deg=20.0, scale=1.1)
    assert np.allclose(m[:, :2] @ np.array([40.0, 32.0]) + m[:, 2], [40.0, 32.0])


def test_keypoints_leaving_the_detector_are_kept():
    shape = (64, 64)
    pts = np.array([[2.0, 30.0], [60.0, 30.0]], np.float32)
    t = PatternShift(shift_x_px=(-10.0, -10.0), shift_y_px=(0.0, 0.0))
    comp = A.Compose([t], additional_targets=TARGETS, keypoint_params=KP, seed=0)
    out = comp(image=np.zeros(shape, np.float32), keypoints=pts)
    assert np.allclose(np.asarray(out["keypoints"])[:, :2], [[-8.0, 30.0], [50.0, 30.0]])


def test_composes_with_albumentations_geometry():
    """Our transforms mix with albumentations' own (here a horizontal flip) on all targets."""
    shape = (64, 64)
    pts = np.array([[20.0, 30.0]])
    img = _blob_image(shape, pts)
    comp = A.Compose(
        [PatternShift(shift_x_px=(5.0, 5.0), shift_y_px=(0.0, 0.0)), A.HorizontalFlip(p=1.0)],
        additional_targets=TARGETS,
        keypoint_params=KP,
        seed=0,
    )
    out = comp(image=img, probe=img.copy(), keypoints=pts)
    ((x, y),) = np.asarray(out["keypoints"])[:, :2]
    cx, cy = _centroid(out["probe"], x, y)
    assert abs(cx - x) < 0.05 and abs(cy - y) < 0.05  # both use pixel centres at integers: x -> W - 1 - x
    assert np.array_equal(out["image"], out["probe"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ellipticity": (0.0, 1.0)}, "ellipticity must be < 1"),
        ({"ellipticity": 1.2}, "ellipticity must be < 1"),
        ({"ellipticity": (-0.1, 0.1)}, "ellipticity must be >= 0"),
        ({"ellipticity": (0.2, 0.1)}, "low <= high"),
        ({"shift_x_px": (1.0, 2.0, 3.0)}, r"\(low, high\) pair"),
        ({"shift_y_px": [[1.0, 2.0]]}, r"\(low, high\) pair"),
        ({"scale": (0.0, 1.0)}, "scale must be > 0"),
        ({"rotation_deg": (float("inf"), 0.0)}, "finite"),
        ({"center_px": (1.0,)}, r"\(row, col\)"),
    ],
)
def test_invalid_geometry_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AffineDistortion(**kwargs)
