"""Specimen backgrounds and detector response (PSF, hot and dead pixels)."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from stemforge import augment
from stemforge.augment import (
    AmorphousRings,
    DetectorBlur,
    DiffuseBackground,
    HotPixels,
    PlasmonBackground,
    SpecimenBackground,
    lorentzian_kernel,
    plasmon_background,
)


def _probe(shape, radius=6.0):
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    p = (np.hypot(xx - w // 2, yy - h // 2) <= radius).astype(np.float64)
    p[h // 2, min(w // 2 + int(radius) + 2, w - 1)] = 3.0  # break the symmetry to catch flipped conventions
    return (p / p.sum()).astype(np.float32)


@pytest.mark.parametrize("shape", [(128, 128), (96, 64), (75, 64), (33, 47)])
def test_plasmon_background_is_the_probe_convolved_with_the_lorentzian(shape):
    probe = _probe(shape)
    bg = plasmon_background(probe, pixel_size_inv_A=0.025, q0_inv_A=0.04)
    ref = np.real(
        np.fft.ifft2(np.fft.fft2(probe.astype(np.float64)) * np.fft.fft2(lorentzian_kernel(shape, 0.025, 0.04)))
    )
    ref /= ref.sum()
    assert bg.dtype == np.float32 and bg.shape == shape
    assert np.abs(bg - ref).max() < 1e-5 * ref.max()
    assert bg.min() >= 0 and bg.sum() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("shape", [(256, 256), (96, 64), (2, 8)])
def test_ccs_spectrum_product_numba_matches_numpy(shape):
    """The compiled CCS product (used when numba imports) gives the numpy path's floats exactly."""
    cv2 = pytest.importorskip("cv2")
    kernels = pytest.importorskip("stemforge.augment._background_numba")
    from stemforge.augment.background import _ccs_multiply_numpy

    rng = np.random.default_rng(3)
    packed = cv2.dft(rng.random(shape).astype(np.float32))
    kq = rng.random((shape[0] // 2 + 1, shape[1] // 2 + 1)).astype(np.float32)
    a, b = packed.copy(), packed.copy()
    kernels.ccs_multiply(a, kq)
    _ccs_multiply_numpy(b, kq)
    assert np.array_equal(a, b) and not np.array_equal(a, packed)


@pytest.mark.parametrize(
    "params",
    [
        (0.03, 0.01, 0.02, (0.47, 0.84), (0.7, 0.9), 0.02, 0.04, 0.3),  # all three components
        (0.05, 0.1, 0.0, (0.47, 0.84), (0.7, 0.9), 0.06, 0.0, 1.5),  # plasmon only
        (0.0, 0.05, 0.03, (0.43, 3.9), (0.5, 1.0), 0.06, 0.05, 1.5),  # a ring beyond the corner of the grid
        (0.0, 0.05, 0.0, (0.43,), (0.5,), 0.06, 0.05, 0.3),  # diffuse only
    ],
)
def test_background_kernel_numba_matches_numpy(monkeypatch, params):
    """The compiled kernel (annulus-limited rings, separable halo) equals the numpy sum to float32 round-off."""
    pytest.importorskip("stemforge.augment._background_numba")
    import stemforge.augment.background as bg_mod

    grid = bg_mod._Grid((128, 96), 0.03)
    fast = bg_mod._background_kernel(grid, *params)
    monkeypatch.setattr(bg_mod, "_compiled_kernels", lambda: None)
    ref = bg_mod._background_kernel(grid, *params)
    assert fast.dtype == ref.dtype == np.float32 and fast.shape == ref.shape == (65, 49)
    assert np.abs(fast - ref).max() < 1e-6 * ref.max()
    assert grid.total(fast) == pytest.approx(params[0] + params[2] + params[6], rel=1e-6)


@pytest.mark.parametrize("numba_off", [False, True])
def test_rings_beyond_the_detector_add_nothing(monkeypatch, numba_off):
    """A ring outside the detector's q range is not recorded: no NaN, the other components unchanged."""
    import stemforge.augment.background as bg_mod

    if numba_off:
        monkeypatch.setattr(bg_mod, "_compiled_kernels", lambda: None)
    shape = (64, 64)
    probe = _probe(shape)
    image = probe.copy()
    kw = {"diffuse_weight": 0.02, "diffuse_width_inv_A": 0.5, "pixel_size_inv_A": 0.02}  # fixed: nothing drawn
    far = SpecimenBackground(ring_weight=0.05, ring_q_inv_A=[[20.0, 20.0]], **kw)
    near = SpecimenBackground(**kw)
    out_far = _apply(far, image, probe)["image"]
    out_near = _apply(near, image, probe)["image"]
    assert np.isfinite(out_far).all() and out_far.sum() == pytest.approx(image.sum(), rel=1e-5)
    assert np.allclose(out_far, out_near, rtol=1e-5, atol=1e-9)
    only_far = SpecimenBackground(ring_weight=0.05, ring_q_inv_A=[[20.0, 20.0]], pixel_size_inv_A=0.02)
    assert np.array_equal(_apply(only_far, image, probe)["image"], image)


def _apply(transform, image, probe, **data):
    comp = A.Compose([transform], additional_targets={"probe": "mask", "vg_map": "mask"}, seed=2)
    return comp(image=image, probe=probe, **data)


def test_background_conserves_intensity_and_touches_only_the_pattern():
    s = augment.synthetic_sample(0, shape=(128, 128), pixel_size_inv_A=0.03)
    t = SpecimenBackground(
        plasmon_weight=(0.05, 0.1), ring_weight=(0.02, 0.03), diffuse_weight=(0.01, 0.05), pixel_size_inv_A=0.03
    )
    out = _apply(t, s["pattern"], s["probe"], vg_map=s["labels"]["vg_map"])
    assert out["image"].sum() == pytest.approx(s["pattern"].sum(), rel=1e-4)
    assert np.array_equal(out["probe"], s["probe"]) and np.array_equal(out["vg_map"], s["labels"]["vg_map"])
    w = t.params["total_weight"]
    assert 0.08 <= w <= 0.18
    # the pattern keeps (1 - w) of itself: the background is non-negative
    assert np.all(out["image"] >= (1 - w) * s["pattern"] - 1e-9)


def test_zero_weight_is_identity_and_pixel_size_can_come_with_the_data():
    s = augment.synthetic_sample(1, shape=(64, 64))
    out = _apply(PlasmonBackground(weight=0.0, pixel_size_inv_A=0.02), s["pattern"], s["probe"])
    assert np.array_equal(out["image"], s["pattern"])
    t = PlasmonBackground(weight=(0.05, 0.05))  # no pixel size at construction
    out = _apply(t, s["pattern"], s["probe"], pixel_size_inv_A=0.02)
    assert not np.array_equal(out["image"], s["pattern"])
    with pytest.raises(ValueError, match="pixel_size_inv_A"):
        _apply(t, s["pattern"], s["probe"])


def test_rings_sit_at_their_radius():
    shape, pix = (128, 128), 0.02
    probe = np.zeros(shape, np.float32)
    probe[64, 64] = 1.0  # point probe: the background is the kernel itself
    t = AmorphousRings(weight=(1.0, 1.0), q_inv_A=[(0.5, 0.5)], width_inv_A=(0.02, 0.02), pixel_size_inv_A=pix)
    out = _apply(t, np.zeros(shape, np.float32) + probe, probe)["image"]
    yy, xx = np.mgrid[0:128, 0:128]
    r = np.hypot(xx - 64, yy - 64)
    profile = np.bincount(np.round(r).astype(int).ravel(), weights=out.ravel()) / np.bincount(
        np.round(r).astype(int).ravel()
    )
    assert abs(int(np.argmax(profile[5:60])) + 5 - 0.5 / pix) <= 1


def test_diffuse_halo_is_centred_on_the_beam():
    shape = (96, 96)
    probe = _probe(shape, radius=4)
    out = _apply(
        DiffuseBackground(weight=1.0, width_inv_A=(0.4, 0.4), pixel_size_inv_A=0.03),
        np.zeros(shape, np.float32) + probe,
        probe,
    )["image"]
    yy, xx = np.mgrid[0:96, 0:96]
    assert abs((out * xx).sum() / out.sum() - 48) < 0.5 and abs((out * yy).sum() / out.sum() - 48) < 0.5


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (PlasmonBackground, {"weight": (0.1, 1.5)}, "must be <= 1"),
        (PlasmonBackground, {"q0_inv_A": (0.0, 0.1)}, "q0_inv_A must be > 0"),
        (PlasmonBackground, {"pixel_size_inv_A": -0.02}, "positive number"),
        (SpecimenBackground, {"plasmon_weight": 0.6, "ring_weight": 0.6}, "sum to 1.2 > 1"),
        (AmorphousRings, {"q_inv_A": [0.4, 0.5]}, "pair"),
        (AmorphousRings, {"q_inv_A": []}, "non-empty list"),
        (DiffuseBackground, {"width_inv_A": (0.5, 0.1)}, "low <= high"),
        (HotPixels, {"fraction": (0.0, 2.0)}, "fraction must be <= 1"),
        (HotPixels, {"intensity_rel_max": (-1.0, 1.0)}, "must be >= 0"),
        (DetectorBlur, {"sigma_px": (-0.5, 1.0)}, "sigma_px must be >= 0"),
    ],
)
def test_invalid_background_and_detector_parameters(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_detector_blur_conserves_intensity_and_zero_sigma_is_identity():
    img = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    comp = A.Compose([DetectorBlur(sigma_px=(0.8, 0.8))], seed=0)
    out = comp(image=img)["image"]
    assert out.sum() == pytest.approx(img.sum(), rel=1e-5) and out.std() < img.std()
    assert np.array_equal(A.Compose([DetectorBlur(sigma_px=0.0)], seed=0)(image=img)["image"], img)


def test_hot_and_dead_pixels_are_drawn_per_call_over_the_actual_shape():
    shape = (300, 170)  # not 256 x 256
    img = np.full(shape, 1e-4, np.float32)
    img[150, 85] = 1e-2
    t = HotPixels(fraction=(1e-3, 1e-3), intensity_rel_max=(0.5, 1.0), dead_fraction=(1e-3, 1e-3))
    comp = A.Compose([t], seed=4)
    masks = []
    for _ in range(5):
        out = comp(image=img)["image"]
        hot = t.params["hot_index"]
        n = img.size
        assert abs(hot.size - 1e-3 * n) < 5 * np.sqrt(1e-3 * n)
        assert hot.max() < n
        vals = out.ravel()[hot]
        dead = t.params["dead_index"]
        assert np.all(out.ravel()[dead] == 0)
        survivors = np.setdiff1d(hot, dead)
        assert np.all(
            (out.ravel()[survivors] >= 0.5 * 1e-2 * (1 - 1e-6)) & (out.ravel()[survivors] <= 1e-2 * (1 + 1e-6))
        )
        masks.append(set(hot.tolist()))
        assert vals.size == hot.size
    assert len({frozenset(m) for m in masks}) == 5  # positions change from call to call
    rows = np.concatenate([np.array(sorted(m)) // shape[1] for m in masks])
    assert rows.max() > 256  # positions cover the whole (taller than 256 px) detector
    assert np.array_equal(img[150, 85], np.float32(1e-2))  # input untouched


@pytest.mark.parametrize("shape", [(32, 32), (33, 31)])
@pytest.mark.parametrize("fill", [0.0, np.nan])
def test_probe_without_positive_intensity_is_refused(shape, fill):
    t = SpecimenBackground(plasmon_weight=0.05, pixel_size_inv_A=0.02)
    with pytest.raises(ValueError, match="probe image has no positive intensity"):
        _apply(t, np.ones(shape, np.float32), np.full(shape, fill, np.float32))
