"""Shot noise and detector readout: statistics of stemforge.augment.noise.

Tolerances: means within 5 standard errors; variances within 5 standard errors of
the sample variance (``sqrt((2 lam**2 + lam) / N)``) plus, in the normal-approximation
regime (lam >= 10), a 1 % allowance for the Cornish-Fisher approximation.
"""

from __future__ import annotations

import math

import albumentations as A
import numpy as np
import pytest
from scipy import stats

from stemforge import augment
from stemforge.augment import SUPPORTED_BIT_DEPTHS, ShotNoise, poisson_counts
from stemforge.augment.poisson import _first_count_hits, _kernels

N = 200_000


def _check_moments(x: np.ndarray, lam: float, approx: bool) -> None:
    se_mean = math.sqrt(lam / x.size)
    assert abs(x.mean() - lam) < 5 * se_mean + 1e-12, (lam, x.mean())
    se_var = math.sqrt((2 * lam**2 + lam) / x.size)
    allow = 0.01 * lam if approx else 0.0
    assert abs(x.var() - lam) < 5 * se_var + allow, (lam, x.var())


@pytest.mark.parametrize("lam", [1e-4, 0.05, 0.7, 1.0, 2.3, 6.6, 9.99, 10.0, 37.0, 1e3, 1e6])
def test_poisson_counts_mean_and_variance(lam):
    rng = np.random.default_rng(int(lam * 1000) % 2**31)
    x = poisson_counts(np.full(N, lam, dtype=np.float32), rng, gaussian_threshold=10.0).astype(np.float64)
    assert np.all(x == np.round(x)) and x.min() >= 0
    _check_moments(x, float(np.float32(lam)), approx=lam >= 10.0)


@pytest.mark.parametrize("lam", [0.3, 0.99, 1.6, 4.25, 7.9])
def test_exact_regime_matches_poisson_distribution(lam):
    """Below the threshold the sampler is exact: chi-square goodness of fit against the pmf."""
    rng = np.random.default_rng(7)
    x = poisson_counts(np.full(N, lam, dtype=np.float32), rng, gaussian_threshold=10.0).astype(int)
    kmax = int(lam + 8 * math.sqrt(lam) + 8)
    observed = np.bincount(np.minimum(x, kmax), minlength=kmax + 1)
    pmf = stats.poisson.pmf(np.arange(kmax + 1), np.float32(lam))
    pmf[-1] += stats.poisson.sf(kmax, np.float32(lam))
    keep = pmf * N > 5
    expected = pmf[keep] * N
    obs = observed[keep]
    chi2 = float(((obs - expected) ** 2 / expected).sum())
    assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-4


@pytest.mark.parametrize("lam", [10.0, 20.0, 100.0])
def test_normal_approximation_total_variation(lam):
    """Above the threshold: total-variation distance to Poisson below 0.01 (stated 0.0021 at lam = 10)."""
    rng = np.random.default_rng(3)
    x = poisson_counts(np.full(N, lam, dtype=np.float32), rng, gaussian_threshold=10.0).astype(int)
    kmax = int(lam + 10 * math.sqrt(lam) + 10)
    hist = np.bincount(np.minimum(x, kmax), minlength=kmax + 1)[: kmax + 1] / N
    tv = 0.5 * np.abs(hist - stats.poisson.pmf(np.arange(kmax + 1), lam)).sum()
    assert tv < 0.01


def test_exact_everywhere_with_infinite_threshold_and_mixed_image():
    rng = np.random.default_rng(11)
    lam = np.concatenate([np.full(N // 4, v, dtype=np.float32) for v in (0.02, 3.3, 42.5, 70.25)])
    x = poisson_counts(lam, rng, gaussian_threshold=np.inf)
    for i, v in enumerate((0.02, 3.3, 42.5, 70.25)):
        _check_moments(x[i * (N // 4) : (i + 1) * (N // 4)].astype(np.float64), float(np.float32(v)), approx=False)


def test_low_count_class_is_exact_inversion_of_the_31_bit_uniforms():
    """Below one count the sampler is exact inversion, X = #{k : u < S(k)}, of the 31-bit uniform of each pixel.

    The polynomial bounds of S(0) (and the f**2 / 2 bound of S(1)) only decide which pixels need the float64
    evaluation; the counts must equal the inversion against scipy's survival function for every pixel, for
    means from 1e-7 to just below 1 (and for the fractional part f = lam - floor(4 lam) / 4 of larger means,
    covered by the same code).
    """
    n = 200_000
    lam = (10 ** np.random.default_rng(2).uniform(-7, 0, n)).astype(np.float32)
    lam = np.minimum(lam, np.float32(0.999999))
    x = poisson_counts(lam, np.random.Generator(np.random.SFC64(9)))
    words = np.random.Generator(np.random.SFC64(9)).bit_generator.random_raw(n // 2).view(np.uint32)
    u = (words >> np.uint32(1)).astype(np.float64) * 2.0**-31  # the uniforms the sampler drew, in its order
    lam64 = lam.astype(np.float64)
    ref = np.zeros(n)
    for k in range(12):
        ref += u < stats.poisson.sf(k, lam64)
    assert np.array_equal(x, ref)
    # uniforms placed right at the threshold u = S(0) (the band the bounds leave to float64) and just beside it
    s0 = stats.poisson.sf(0, lam64) * 2.0**31
    for offset in (-1.0, 0.0, 1.0):
        u31 = np.clip(np.floor(s0) + offset, 0, 2**31 - 1)
        hit = _first_count_hits(lam, u31.astype(np.int32), u31.astype(np.float32))
        assert np.array_equal(hit, u31 < -np.expm1(-lam64) * 2.0**31)


@pytest.mark.skipif(_kernels() is None, reason="numba not importable")
@pytest.mark.parametrize("bitgen", [np.random.SFC64, np.random.PCG64])
@pytest.mark.parametrize("threshold", [10.0, 1.0, 3.3, np.inf])
def test_numba_and_numpy_backends_give_identical_counts(threshold, bitgen):
    """Same generator state, same counts, pixel for pixel, on an image mixing all classes; the generators
    end in the same state (numba draws SFC64's words and uniforms itself, other bit generators through numpy)."""
    rng = np.random.default_rng(4)
    lam = np.concatenate(
        [
            rng.exponential(0.05, 30_000),
            rng.exponential(3.0, 20_000),
            rng.exponential(40.0, 10_000),
            [0.0, 1e-7, 0.999999, 1.0, 9.999999, 10.0, 63.99, 1e4],
        ]
    ).astype(np.float32)
    lam = lam[rng.permutation(lam.size)].reshape(-1, 8)
    if np.isinf(threshold):
        lam = np.minimum(lam, np.float32(63.9))  # means >= 64 below the threshold go through numpy in both
    rng_a, rng_b = np.random.Generator(bitgen(1)), np.random.Generator(bitgen(1))
    rng_a.standard_normal(1, dtype=np.float32)  # leave a buffered 32-bit half in both generators
    rng_b.standard_normal(1, dtype=np.float32)
    a = poisson_counts(lam, rng_a, threshold, backend="numpy")
    b = poisson_counts(lam, rng_b, threshold, backend="numba")
    assert a.shape == b.shape == lam.shape and a.dtype == b.dtype == np.float32
    assert np.array_equal(a, b)
    assert np.array_equal(rng_a.standard_normal(5, dtype=np.float32), rng_b.standard_normal(5, dtype=np.float32))
    assert np.array_equal(rng_a.bit_generator.random_raw(4), rng_b.bit_generator.random_raw(4))


@pytest.mark.skipif(_kernels() is None, reason="numba not importable")
def test_sfc64_words_and_doubles_are_numpys_streams():
    kernels = _kernels()
    for n in (0, 1, 2, 7, 1000):
        bg = np.random.SFC64(5)
        st = bg.state
        words = kernels._sfc64_words(st["state"]["state"], n)
        doubles = kernels._sfc64_doubles(st["state"]["state"], 3)
        ref = np.random.Generator(np.random.SFC64(5))
        assert np.array_equal(words, ref.bit_generator.random_raw((n + 1) // 2).view(np.uint32)[:n])
        assert np.array_equal(doubles, ref.random(3))
        bg.state = st
        assert bg.state["state"]["state"].tolist() == ref.bit_generator.state["state"]["state"].tolist()


@pytest.mark.skipif(_kernels() is None, reason="numba not importable")
def test_compact_lists_the_flagged_pixels_and_counts_the_classes():
    kernels = _kernels()
    rng = np.random.default_rng(1)
    for n in (0, 1, 7, 8, 9, 17, 1001):
        for p in (0.0, 0.01, 0.5, 1.0):
            flag = (rng.random(n) < p).astype(np.uint8) * rng.integers(1, 16, n).astype(np.uint8)
            padded = np.zeros(-(-n // 8) * 8, np.uint8)  # the caller's padding to whole 8-byte blocks
            padded[:n] = flag
            idx = np.empty(padded.size, np.int64)
            n_flagged, n_table, n_high, n_negative = kernels._compact(padded, idx)
            f = flag.astype(int)
            assert n_flagged == np.count_nonzero(flag)
            assert np.array_equal(idx[:n_flagged], np.flatnonzero(flag))
            assert (n_table, n_high, n_negative) == (
                ((f >> 1) & 1).sum() - ((f >> 2) & 1).sum(),
                ((f >> 2) & 1).sum(),
                (f >> 3).sum(),
            )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shot_noise_counts_are_poisson_counts_of_the_clipped_scaled_means(dtype):
    from stemforge.augment.poisson import shot_noise_counts

    rng = np.random.default_rng(8)
    image = (rng.exponential(1e-4, (64, 48)) - 2e-6).astype(dtype)  # a few negative pixels (clipped to 0)
    for dose in (1e3, 1e5, 1e7):
        lam = np.maximum(np.multiply(image, np.float32(dose), dtype=np.float32), np.float32(0))
        a = shot_noise_counts(image, dose, np.random.Generator(np.random.SFC64(3)))
        b = poisson_counts(lam, np.random.Generator(np.random.SFC64(3)))
        assert a.shape == image.shape and a.dtype == np.float32 and np.array_equal(a, b)
    bad = image.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="finite"):
        shot_noise_counts(bad, 1e4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="finite"):
        shot_noise_counts(image, np.inf, np.random.default_rng(0))


@pytest.mark.parametrize(
    "readout",
    [
        {"bit_depth": 6},
        {"bit_depth": 12, "gain_adu_per_e": 2.5, "read_noise_adu": 1.5, "dark_offset_adu": 3.0},
        {"bit_depth": None, "gain_adu_per_e": 0.7},
    ],
    ids=["counting-6bit", "readout-chain-12bit", "no-saturation"],
)
def test_shot_noise_transform_is_the_same_without_numba(monkeypatch, readout):
    """ShotNoise's fused numba passes (scaling, clipping to the counter depth) give the numpy path's values,
    with and without a gain / read-out noise / dark offset chain before the saturation."""
    from stemforge.augment import noise, poisson

    image = augment.synthetic_sample(0, shape=(64, 64))["pattern"]
    outs = []
    for off in (False, True):
        if off:
            monkeypatch.setattr(poisson, "_kernels", lambda: None)
            monkeypatch.setattr(noise, "_kernels", lambda: None)
        t = ShotNoise(dose_e_per_pattern=(1e3, 1e7), p=1.0, **readout)
        comp = A.Compose([t], seed=4)
        outs.append([comp(image=image)["image"] for _ in range(6)])
    for a, b in zip(*outs, strict=True):
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)


def test_poisson_counts_shapes_and_errors():
    rng = np.random.default_rng(0)
    assert poisson_counts(np.zeros((3, 4), np.float32), rng).shape == (3, 4)
    assert poisson_counts(np.zeros((0,), np.float32), rng).shape == (0,)
    with pytest.raises(ValueError, match="finite and >= 0"):
        poisson_counts(np.array([1.0, -0.5], np.float32), rng)
    with pytest.raises(ValueError, match="finite and >= 0"):
        poisson_counts(np.array([1.0, np.nan], np.float32), rng)
    for backend in ("numpy", "auto"):
        with pytest.raises(ValueError, match="finite and >= 0"):
            poisson_counts(np.array([0.5, -1e-3, 3.0], np.float32), rng, backend=backend)
        with pytest.raises(ValueError, match="finite and >= 0"):
            poisson_counts(np.array([0.5, np.inf], np.float32), rng, backend=backend)
    with pytest.raises(ValueError, match="backend must be one of"):
        poisson_counts(np.zeros(3, np.float32), rng, backend="cuda")


def _run(transform, image, probe=None):
    comp = A.Compose([transform], additional_targets={"probe": "mask"}, seed=5)
    data = {"image": image}
    if probe is not None:
        data["probe"] = probe
    return comp(**data)["image"], transform.params


@pytest.mark.parametrize("lam", [0.2, 5.0, 60.0])
def test_shot_noise_matches_dose(lam):
    """Counts = output * dose are Poisson(pattern * dose): mean and variance match the dose."""
    dose = 1e6
    img = np.full((256, 256), lam / dose, dtype=np.float32)
    out, params = _run(ShotNoise(dose_e_per_pattern=(dose, dose)), img)
    assert out.dtype == np.float32 and out.shape == img.shape
    assert params["dose_e"] == dose
    counts = out.astype(np.float64) * dose
    assert np.allclose(counts, np.round(counts), atol=1e-3 * max(1.0, lam))
    _check_moments(counts.ravel(), float(np.float32(lam / dose) * np.float32(dose)), approx=lam >= 10)
    assert abs(out.mean() - img.mean()) < 5 * math.sqrt(lam / img.size) / dose  # unbiased in beam units


def test_shot_noise_probe_peak_counts_sets_dose():
    probe = np.zeros((64, 64), np.float32)
    probe[28:36, 28:36] = 1.0 / 64
    img = probe * 0.9
    out, params = _run(ShotNoise(probe_peak_counts=(400.0, 400.0)), img, probe)
    assert params["dose_e"] == pytest.approx(400.0 / probe.max())
    counts = out[28:36, 28:36] * params["dose_e"]
    assert abs(counts.mean() - 360.0) < 5 * math.sqrt(360.0 / 64)


def test_shot_noise_dose_is_log_uniform_within_range():
    t = ShotNoise(dose_e_per_pattern=(1e3, 1e7))
    comp = A.Compose([t], seed=1)
    img = np.full((16, 16), 1e-3, np.float32)
    doses = []
    for _ in range(400):
        comp(image=img)
        doses.append(t.params["dose_e"])
    logd = np.log10(doses)
    assert logd.min() >= 3 and logd.max() <= 7
    assert abs(logd.mean() - 5.0) < 0.25  # uniform in log10: mean 5, sd 1.15 / sqrt(400)


@pytest.mark.parametrize("bits", [1, 6, 12])
def test_bit_depth_saturates(bits):
    dose = 1e4
    img = np.full((64, 64), 1e5 / dose, dtype=np.float32)  # 1e5 counts per pixel
    out, _ = _run(ShotNoise(dose_e_per_pattern=dose, bit_depth=bits), img)
    assert np.all(out * dose <= 2**bits - 1 + 1e-3)
    assert np.allclose(out * dose, 2**bits - 1, rtol=1e-5)


def test_readout_gain_noise_and_dark_offset():
    dose, lam, gain, sigma, dark = 1e6, 50.0, 2.5, 3.0, 20.0
    img = np.full((256, 256), lam / dose, dtype=np.float32)
    t = ShotNoise(dose_e_per_pattern=dose, gain_adu_per_e=gain, read_noise_adu=sigma, dark_offset_adu=dark)
    out, _ = _run(t, img)
    adu = out.astype(np.float64) * gain * dose
    assert np.allclose(adu, np.round(adu), atol=1e-2)  # integer ADU
    mean_expected = gain * lam + dark
    var_expected = gain**2 * lam + sigma**2 + 1.0 / 12.0
    assert abs(adu.mean() - mean_expected) < 5 * math.sqrt(var_expected / adu.size) + 0.05
    assert abs(adu.var() / var_expected - 1.0) < 0.05


def test_shot_noise_leaves_other_targets_alone():
    probe = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    lab = probe.copy()
    comp = A.Compose(
        [ShotNoise(dose_e_per_pattern=(1e3, 1e5))], additional_targets={"probe": "mask", "vg_map": "mask"}, seed=0
    )
    out = comp(image=probe * 0.5, probe=probe, vg_map=lab)
    assert np.array_equal(out["probe"], probe) and np.array_equal(out["vg_map"], lab)
    assert not np.array_equal(out["image"], probe * 0.5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"dose_e_per_pattern": 1e4, "probe_peak_counts": 100}, "exactly one"),
        ({"dose_e_per_pattern": (-1.0, 1e4)}, "dose_e_per_pattern must be > 0"),
        ({"dose_e_per_pattern": (1e5, 1e4)}, "low <= high"),
        ({"dose_e_per_pattern": (1e3, 1e4, 1e5)}, r"\(low, high\) pair"),
        ({"dose_e_per_pattern": "1e4"}, "number or a"),
        ({"dose_e_per_pattern": 1e4, "bit_depth": 7}, "bit_depth must be None or one of"),
        ({"dose_e_per_pattern": 1e4, "bit_depth": True}, "bit_depth must be None or one of"),
        ({"dose_e_per_pattern": 1e4, "gain_adu_per_e": 0.0}, "gain_adu_per_e must be > 0"),
        ({"dose_e_per_pattern": 1e4, "read_noise_adu": (-1.0, 2.0)}, "read_noise_adu must be >= 0"),
        ({"dose_e_per_pattern": 1e4, "dark_offset_adu": (float("nan"), 1.0)}, "finite"),
        ({"dose_e_per_pattern": 1e4, "gaussian_threshold_counts": 0.5}, "gaussian_threshold_counts"),
    ],
)
def test_invalid_parameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShotNoise(**kwargs)


def test_supported_bit_depths_include_merlin_modes():
    assert {1, 6, 12, 24} <= set(SUPPORTED_BIT_DEPTHS)
