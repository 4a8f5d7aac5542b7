"""Electron shot noise and detector readout.

The simulated pattern is an expected intensity (fraction of the incident beam per
pixel).  A detector records an integer number of electrons per pixel, Poisson
distributed around ``pattern * dose``, and reads it out through a gain, read-out
noise, a dark offset and a finite bit depth.  This module holds

* :func:`poisson_counts` -- a fast Poisson sampler for whole images (exact below a
  count threshold, a skewness-corrected normal approximation above it),
* :class:`ShotNoise` -- the albumentations transform: dose -> Poisson counts ->
  gain, read noise, dark offset -> bit depth / saturation -> back to
  fraction-of-beam units.

Why not ``numpy.random.Generator.poisson``?  It costs ~10 ns per pixel even at
vanishing means and 35-55 ns per pixel at a few to tens of counts (2.4-3.7 ms for
a 256x256 pattern at 25 counts/px, depending on the bit generator), against a
2 ms per pattern budget for the whole augmentation chain; :func:`poisson_counts`
takes 0.3-1.2 ms on CBED patterns at 1e3-1e7 electrons (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
from typing import Any

import albumentations as A
import numpy as np

from augment._base import SeededTransformMixin, check_range, log_uniform, uniform

__all__ = [
    "SUPPORTED_BIT_DEPTHS",
    "ShotNoise",
    "poisson_counts",
]

#: Counter / ADC depths (bits per pixel per frame) accepted by :class:`ShotNoise`.
#: 1, 6, 12, 24: Medipix3 / Merlin counter modes; 8, 16, 32: common frame formats
#: of counting and integrating cameras (32 is effectively unsaturated).
SUPPORTED_BIT_DEPTHS: tuple[int, ...] = (1, 6, 8, 12, 16, 24, 32)

#: Table means are multiples of 1/_TABLE_STEPS below _TABLE_MAX (exclusive).
_TABLE_MAX = 64
_TABLE_STEPS = 4
#: Guide-table resolution (cells per unit of probability) for the table draws.
_GUIDE_CELLS = 256
_tables: tuple[np.ndarray, np.ndarray, int] | None = None


def _poisson_tables() -> tuple[np.ndarray, np.ndarray, int]:
    """CDF and guide tables of Poisson(j / 4), j = 0 .. 4 * 64 - 1 (built once, ~0.7 MB).

    Returns
    -------
    tuple
        ``cdf`` (flattened ``M x K`` float64, ``cdf[j*K + k] = P(X <= k | j/4)``,
        last column forced to 1; ``P(X >= K)`` < 1e-25), ``guide`` (flattened
        ``M x G`` int32, ``guide[j*G + g] = min{k : cdf(j, k) >= g / G}``) and ``K``.
    """
    global _tables
    if _tables is None:
        from scipy import stats

        means = np.arange(_TABLE_MAX * _TABLE_STEPS) / _TABLE_STEPS
        k_len = int(_TABLE_MAX + 12 * math.sqrt(_TABLE_MAX) + 40)
        cdf = stats.poisson.cdf(np.arange(k_len)[None, :], means[:, None])
        cdf[:, -1] = 1.0
        levels = np.arange(_GUIDE_CELLS) / _GUIDE_CELLS
        guide = np.stack([np.searchsorted(row, levels, side="left") for row in cdf]).astype(np.int32)
        _tables = (np.ascontiguousarray(cdf.ravel()), np.ascontiguousarray(guide.ravel()), k_len)
    return _tables


def poisson_counts(
    mean_counts: np.ndarray,
    rng: np.random.Generator,
    gaussian_threshold: float = 10.0,
) -> np.ndarray:
    """Draw one Poisson count per pixel, fast.

    Pixels are classed by their mean ``lam`` (electrons):

    * ``lam < 1`` (the usual CBED background pixel): exact inversion of the CDF
      with one 31-bit uniform per pixel, for all pixels at once.  The test
      "count >= 1", ``u < 1 - exp(-lam)``, runs in integer arithmetic (the
      probability in float32, relative error <= 1e-7); the few pixels that pass
      continue a float64 search of the survival function
      (:func:`_poisson_tail_search`).
    * ``1 <= lam < gaussian_threshold``: exact, by Poisson additivity
      ``X = Poisson(mu) + Poisson(f)`` with ``mu = floor(4 lam) / 4`` and
      ``f = lam - mu < 1/4``: ``Poisson(mu)`` by inversion with precomputed CDF
      and guide tables and a 53-bit uniform (:func:`_poisson_table_means`, for
      ``mu < 64``; larger means, only with ``gaussian_threshold > 64``, use
      ``rng.poisson``), ``Poisson(f)`` as in the first class.
    * ``lam >= gaussian_threshold``: a standard normal ``z`` mapped through the
      Cornish-Fisher expansion of the Poisson quantile (skewness and kurtosis
      terms), ``k = floor(lam + sqrt(lam) z + (z**2 - 1)/6 + (z - z**3)/(72 sqrt(lam)) + 1/2)``,
      clipped at 0.  Its total-variation distance to Poisson(lam), computed by
      quadrature: 0.0021 at lam = 10, 0.0014 at 15, 0.0010 at 20, 0.0004 at 50,
      0.0002 at 100, falling as ``lam**-1.5`` (a plain rounded normal: 0.040 at
      lam = 10).  ``gaussian_threshold=inf`` makes every pixel exact (slow for
      means above 64).

    Parameters
    ----------
    mean_counts : numpy.ndarray
        Expected electron counts per pixel (any shape, >= 0, finite).
    rng : numpy.random.Generator
        Source of randomness (the transform's own seeded generator).
    gaussian_threshold : float, optional
        Mean count (electrons, >= 1) from which the normal approximation is used.

    Returns
    -------
    numpy.ndarray
        float32 array of integer counts, same shape as ``mean_counts``
        (integers are exact up to 2**24 counts per pixel).

    Raises
    ------
    ValueError
        Negative or non-finite means.
    """
    lam = np.asarray(mean_counts)
    shape = lam.shape
    flat32 = lam.astype(np.float32, copy=False).ravel()
    n = flat32.size
    if n == 0:
        return np.zeros(shape, dtype=np.float32)
    lam_max = float(flat32.max())
    if not (np.isfinite(lam_max) and float(flat32.min()) >= 0.0):
        raise ValueError("poisson_counts: mean counts must be finite and >= 0")
    threshold = max(float(gaussian_threshold), 1.0)

    above_threshold = lam_max >= threshold
    if lam_max >= 1.0:
        ge1 = flat32 >= 1.0
        base4 = np.multiply(flat32, np.float32(_TABLE_STEPS))
        np.floor(base4, out=base4)
        base4 *= ge1  # 4 x (table mean) where lam >= 1, else 0
        frac = base4 * np.float32(-1.0 / _TABLE_STEPS)
        frac += flat32  # lam - mu: < 1/4 where lam >= 1, lam itself below 1
    else:
        ge1, frac = None, flat32

    # Poisson(frac) for every pixel (cheaper than indexing the large low-count set)
    raw = rng.bit_generator.random_raw((n + 1) // 2)  # uint64 -> two 32-bit words each
    words = raw.view(np.uint32)[:n]
    words >>= np.uint32(1)
    u31 = words.view(np.int32)  # uniform on [0, 2**31)
    thr = np.negative(frac)
    np.expm1(thr, out=thr)
    thr *= np.float32(-(2.0**31))  # 2**31 P(X >= 1), P = 1 - exp(-f) accurate for small f
    hit = u31 < thr.astype(np.int32)
    if above_threshold:
        ge_t = flat32 >= threshold
        hit &= ~ge_t
    counts = hit.astype(np.float32)
    again = np.flatnonzero(hit)
    if again.size:
        counts[again] += _poisson_tail_search(frac[again], u31[again] * (2.0**-31))
    if ge1 is None:
        return counts.reshape(shape)

    mid = np.flatnonzero(ge1 & ~ge_t) if above_threshold else np.flatnonzero(ge1)
    if mid.size:
        j = base4[mid].astype(np.int32)
        in_table = j < _TABLE_MAX * _TABLE_STEPS
        if in_table.all():
            counts[mid] += _poisson_table_means(j, rng)
        else:
            t_idx = np.flatnonzero(in_table)
            counts[mid[t_idx]] += _poisson_table_means(j[t_idx], rng)
            big = mid[~in_table]
            counts[big] = rng.poisson(flat32[big].astype(np.float64))

    if above_threshold:
        high = np.flatnonzero(ge_t)
        lh = flat32[high]
        z = rng.standard_normal(lh.size, dtype=np.float32)
        s = np.sqrt(lh)
        z2 = z * z
        k = lh + s * z + (z2 - np.float32(1.0)) * np.float32(1.0 / 6.0) + (z - z2 * z) / (np.float32(72.0) * s)
        np.floor(k + np.float32(0.5), out=k)
        counts[high] = np.maximum(k, np.float32(0.0))
    return counts.reshape(shape)


def _poisson_table_means(j: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exact Poisson draws for means ``j / 4`` (``0 <= j < 256``) by table inversion.

    ``X = min{k : F(k) >= u}`` with a 53-bit uniform ``u``; the guide table gives
    a starting ``k`` no larger than ``X`` and a short vectorised linear search
    (usually zero or one step) finishes.

    Parameters
    ----------
    j : numpy.ndarray
        1-D int32 table rows (four times the mean).
    rng : numpy.random.Generator
        Random generator.

    Returns
    -------
    numpy.ndarray
        float32 counts.
    """
    cdf, guide, k_len = _poisson_tables()
    u = rng.random(j.size)
    g = (u * _GUIDE_CELLS).astype(np.int32)
    g += j * np.int32(_GUIDE_CELLS)
    row = j * np.int32(k_len)
    pos = row + guide[g]
    todo = np.flatnonzero(cdf[pos] < u)
    while todo.size:
        pos[todo] += 1
        todo = todo[cdf[pos[todo]] < u[todo]]
    return (pos - row).astype(np.float32)


def _poisson_tail_search(lam: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Extra counts beyond 1 for pixels already known to have ``X >= 1``.

    With ``S(k) = P(X > k)``, the count is ``X = #{k >= 0 : u < S(k)}``; the
    caller has established ``u < S(0)``.  This continues the search for
    ``k = 1, 2, ...`` with the recursion ``S(k) = S(k-1) - P(X = k)`` in
    float64, vectorised over pixels (compacted once after ``k = 1``; for
    ``lam < 1`` the largest count among ~10^4 pixels is ~8, so a handful of
    passes suffice).

    Parameters
    ----------
    lam : numpy.ndarray
        1-D float32 means (< 1).
    u : numpy.ndarray
        The float64 uniforms (on [0, 1)) the caller tested against ``S(0)``.

    Returns
    -------
    numpy.ndarray
        float32 number of additional counts (``X - 1``).
    """
    extra = np.zeros(lam.size, dtype=np.float32)
    lam64 = lam.astype(np.float64)
    pmf = np.exp(-lam).astype(np.float64) * lam64  # P(X = 1)
    surv = -np.expm1(-lam).astype(np.float64) - pmf  # S(1) = S(0) - P(X = 1)
    idx = np.flatnonzero(u < surv)  # X >= 2: typically a small minority, so compact once
    if not idx.size:
        return extra
    lam64, u, pmf, surv = lam64[idx], u[idx], pmf[idx], surv[idx]
    extra[idx] = 1.0
    more = np.empty(idx.size, dtype=bool)
    # P(X > 40 | lam < 1) < 1e-48: the cap only guards against round-off loops.
    for k in range(2, 41):
        pmf *= lam64
        pmf *= 1.0 / k  # P(X = k)
        surv -= pmf  # S(k)
        np.less(u, surv, out=more)
        if not more.any():
            break
        extra[idx] += more
    return extra


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
        lam = np.multiply(img, np.float32(dose_e), dtype=np.float32)
        np.maximum(lam, np.float32(0.0), out=lam)
        adu = poisson_counts(lam, self.random_generator, self.gaussian_threshold_counts)
        if gain_adu_per_e != 1.0 or read_noise_adu > 0 or dark_offset_adu > 0:
            if gain_adu_per_e != 1.0:
                adu *= np.float32(gain_adu_per_e)
            if read_noise_adu > 0:
                adu += self.random_generator.standard_normal(adu.shape, dtype=np.float32) * np.float32(read_noise_adu)
            if dark_offset_adu > 0:
                adu += np.float32(dark_offset_adu)
            np.rint(adu, out=adu)  # an ADC delivers integers
            np.maximum(adu, np.float32(0.0), out=adu)
        if self.bit_depth is not None:
            np.minimum(adu, np.float32(2**self.bit_depth - 1), out=adu)
        adu *= np.float32(1.0 / (gain_adu_per_e * dose_e))
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
