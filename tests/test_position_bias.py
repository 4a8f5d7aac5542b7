"""Unbiased positions end to end: the pixel-centre convention (integer = pixel centre; k = 0 at (H//2, W//2)) holds
through label rendering, peak refinement, detector binning, augmentation geometry and the resampling onto a model's
grid. Each check uses many random sub-pixel positions and a stated tolerance on the mean signed offset per axis."""

import numpy as np
import pytest

RNG = np.random.default_rng(20261207)


def _centroid(img: np.ndarray, x: float, y: float, r: float) -> tuple[float, float]:
    """Intensity centroid (x = col, y = row) of ``img`` within ``r`` px of ``(x, y)``."""
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    w = np.where(np.hypot(xx - x, yy - y) <= r, img, 0.0)
    return float((w * xx).sum() / w.sum()), float((w * yy).sum() / w.sum())


def _separated(pts: np.ndarray, min_px: float) -> np.ndarray:
    """The points of ``pts`` kept greedily at least ``min_px`` apart."""
    kept = []
    for p in pts:
        if all(np.hypot(*(p - q)) >= min_px for q in kept):
            kept.append(p)
    return np.array(kept)


def test_label_blobs_peak_at_their_subpixel_positions():
    """render_blobs + find_peaks (gaussian refinement): mean signed offset < 0.02 px per axis, each < 0.05 px."""
    from stemforge.networks.peaks import find_peaks
    from stemforge.sim.labels import render_blobs

    offsets = []
    for _ in range(40):
        keep = _separated(RNG.uniform(6, 58, (10, 2)), 8.0)
        img = render_blobs((64, 64), keep, np.ones(len(keep)), sigma_px=1.0)
        found = find_peaks(img, threshold=0.3, min_distance=3, refine="gaussian").numpy()
        for p in keep:
            j = np.argmin(np.hypot(*(found[:, :2] - p).T))
            offsets.append(found[j, :2] - p)
    offsets = np.array(offsets)
    assert np.abs(offsets.mean(0)).max() < 0.02 and np.abs(offsets).max() < 0.05


def test_detector_binning_keeps_disk_centroids():
    """A disk at frequency k on a fine native grid, binned onto the detector (any in-plane rotation), has its
    intensity centroid within 0.05 px of ``detector.to_pixels(k)``; mean signed offset < 0.02 px per axis."""
    from stemforge.sim.detector import Detector, resample, resampling_matrix

    det = Detector((64, 64), 0.05, supersample=4)
    n, dk = 512, 0.0125  # native: 4 native px per detector px, k = 0 at (n//2, n//2)
    ky, kx = ((np.arange(n) - n // 2) * dk for _ in range(2))
    errs = []
    for _ in range(40):
        k = RNG.uniform(-1.0, 1.0, 2)
        rot = float(RNG.uniform(0, 360))
        native = (np.hypot(kx[None, :] - k[0], ky[:, None] - k[1]) <= 0.12).astype(float)
        img = resample(native, resampling_matrix(native.shape, (dk, dk), det, rot), det)
        phi = np.radians(rot)
        k_rot = np.array([np.cos(phi) * k[0] - np.sin(phi) * k[1], np.sin(phi) * k[0] + np.cos(phi) * k[1]])
        x, y = det.to_pixels(k_rot)
        errs.append(np.array(_centroid(img, x, y, 4.0)) - (x, y))
    errs = np.array(errs)
    assert np.abs(errs.mean(0)).max() < 0.02 and np.abs(errs).max() < 0.05


def test_kinematic_pixels_follow_the_detector_convention(silicon):
    """The label positions of a reflection and the detector's k -> px map agree: the direct beam sits at
    (W//2, H//2) and g at centre + g / pixel size (x along columns, y along rows)."""
    from stemforge.sim.detector import Detector
    from stemforge.sim.labels import kinematic_reflections
    from stemforge.sim.orientations import zone_axis_rotation

    det = Detector((128, 96), 0.03)
    refl = kinematic_reflections(silicon, zone_axis_rotation(silicon, (1, 1, 0)), 0.02508, det)
    direct = np.all(refl["hkl"] == 0, axis=1)
    np.testing.assert_allclose(refl["pixel"][direct][0], (48.0, 64.0))
    np.testing.assert_allclose(refl["pixel"], refl["g"][:, :2] / 0.03 + (48.0, 64.0), atol=1e-9)


@pytest.mark.parametrize(
    "geometry",
    [
        {"shift_x_px": (-10.0, 10.0), "shift_y_px": (-10.0, 10.0)},
        {"ellipticity": (0.0, 0.15)},
        {"rotation_deg": (-180.0, 180.0), "scale": (0.9, 1.1)},
    ],
    ids=["shift", "ellipticity", "rotation_scale"],
)
def test_augmentation_geometry_moves_disks_where_keypoints_go(geometry):
    """Geometry transforms move a disk's intensity centroid where they move its keypoint: mean signed offset
    < 0.02 px per axis and every one < 0.05 px (the geometry alone: no noise, background or blur)."""
    from stemforge.augment import augment_sample, build_pipeline

    pipe = build_pipeline(**geometry, seed=3)
    H = W = 96
    yy, xx = np.mgrid[:H, :W]
    errs = []
    for _ in range(30):
        pts = _separated(np.array([[W / 2, H / 2], *RNG.uniform(20, 76, (6, 2))]), 14.0).astype(np.float32)
        img = np.zeros((H, W), np.float32)
        for x, y in pts:
            img += np.clip(3.5 - np.hypot(xx - x, yy - y), 0, 1)  # anti-aliased disks, radius 3 px
        probe = np.clip(3.5 - np.hypot(xx - W / 2, yy - H / 2), 0, 1).astype(np.float32)
        maps = {"vg_map": np.zeros((H, W), np.float32), "disk_map": np.zeros((H, W), np.float32)}
        out = augment_sample(pipe, img, probe, maps, pts, len(pts), 0.03)
        for x, y in out["reflections_px"]:
            if 8 < x < W - 8 and 8 < y < H - 8:
                errs.append(np.array(_centroid(out["pattern"], x, y, 4.5)) - (x, y))
    errs = np.array(errs)
    assert len(errs) > 60
    assert np.abs(errs.mean(0)).max() < 0.02 and np.abs(errs).max() < 0.05, (errs.mean(0), np.abs(errs).max())


def test_resampling_onto_a_model_grid_keeps_disk_centroids():
    """Inference's resampling of a scan onto a model grid of another pixel size and origin: a disk's centroid on
    the model grid maps back (GridMap.model_to_data) to where it was on the scan, within 0.05 px."""
    from stemforge.analysis.inference import GridMap

    H = W = 128
    yy, xx = np.mgrid[:H, :W]
    errs = []
    for scale, origin in ((2.0, (64.0, 64.0)), (1.5, (63.3, 65.2)), (1.0, (62.6, 64.4))):
        grid = GridMap((64, 64), 0.03 * scale, (H, W), 0.03, origin)
        M = grid.matrix()
        for _ in range(15):
            x, y = RNG.uniform(40, 88, 2)
            img = np.clip(6.5 - np.hypot(xx - x, yy - y), 0, 1)
            model = (M @ img.ravel()).reshape(64, 64)
            mx0 = (x - origin[1]) / scale + 32
            my0 = (y - origin[0]) / scale + 32
            cx, cy = _centroid(model, mx0, my0, 9.0 / scale)  # the whole disk (radius 6.5 px of the scan)
            r, c = grid.model_to_data(cy, cx)
            errs.append((c - x, r - y))
    errs = np.array(errs)
    assert np.abs(errs.mean(0)).max() < 0.02 and np.abs(errs).max() < 0.05, (errs.mean(0), np.abs(errs).max())
