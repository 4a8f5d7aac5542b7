"""Fast Poisson counts for whole detector images: :func:`poisson_counts`.

A pattern holds ~65k pixel means from ~1e-5 to ~1e4 electrons; most pixels (the
background) have means well below one count.  ``numpy.random.Generator.poisson``
costs ~10 ns per pixel even at vanishing means and 35-55 ns per pixel at a few
to tens of counts (2.4-3.7 ms for a 256x256 pattern at 25 counts/px), against a
~2 ms budget for the whole augmentation chain.  The sampler here (algorithm in
:func:`poisson_counts`) is exact below a count threshold and uses a
skewness-corrected normal approximation above it.

Two implementations give identical counts from identical generator states:

* a numpy one (always available, the reference), ~20 vectorised passes over the
  image plus work on the pixels of the table and normal classes;
* a numba one (``stemforge.augment._poisson_numba``, compiled on first use and cached on
  disk; numba comes with abTEM), one vectorisable pass that settles the typical
  background pixel and a scalar pass over the remaining pixels: about 3x faster
  on CBED patterns (benchmarks/RESULTS.md).

``backend="auto"`` uses numba when it can be imported.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["poisson_counts", "shot_noise_counts"]

#: Table means are multiples of 1/_TABLE_STEPS below _TABLE_MAX (exclusive).
_TABLE_MAX = 64
_TABLE_STEPS = 4
#: Guide-table resolution (cells per unit of probability) for the table draws.
_GUIDE_CELLS = 256
#: Relative safety margin of the polynomial bounds of the survival function (float32 round-off < 1e-6).
_BOUND_MARGIN = 2.0**-16
_BACKENDS = ("auto", "numpy", "numba")
_tables: tuple[np.ndarray, np.ndarray, int] | None = None
_numba_kernels: object | None = None  # the stemforge.augment._poisson_numba module, False when numba is unavailable


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
        from scipy import special

        means = np.arange(_TABLE_MAX * _TABLE_STEPS) / _TABLE_STEPS
        k_len = int(_TABLE_MAX + 12 * math.sqrt(_TABLE_MAX) + 40)
        cdf = special.pdtr(np.arange(k_len)[None, :], means[:, None])  # Poisson CDF P(X <= k | mean)
        cdf[:, -1] = 1.0
        levels = np.arange(_GUIDE_CELLS) / _GUIDE_CELLS
        guide = np.stack([np.searchsorted(row, levels, side="left") for row in cdf]).astype(np.int32)
        _tables = (np.ascontiguousarray(cdf.ravel()), np.ascontiguousarray(guide.ravel()), k_len)
    return _tables


def _kernels():
    """The compiled kernels module, or None when numba cannot be imported."""
    global _numba_kernels
    if _numba_kernels is None:
        try:
            from stemforge.augment import _poisson_numba
        except ImportError:
            _numba_kernels = False
        else:
            _numba_kernels = _poisson_numba
    return _numba_kernels or None


def poisson_counts(
    mean_counts: np.ndarray,
    rng: np.random.Generator,
    gaussian_threshold: float = 10.0,
    backend: str = "auto",
) -> np.ndarray:
    """Draw one Poisson count per pixel, fast.

    Pixels are classed by their mean ``lam`` (electrons):

    * ``lam < 1`` (the usual CBED background pixel): exact inversion of the CDF
      with one 31-bit uniform ``u`` per pixel, ``X = #{k >= 0 : u < S(k)}`` with
      the survival function ``S(k) = P(X > k)``.  ``S(0) = 1 - exp(-lam)`` is
      bracketed by its Taylor polynomials ``lam - lam**2/2 <= S(0) <= lam -
      lam**2/2 + lam**3/6``, evaluated in float32 with a relative margin of
      2**-16 (far above their round-off); only uniforms between the bounds, and
      those below ``lam**2 / 2 >= S(1)`` (candidates for two or more counts),
      are decided in float64 with ``expm1``/``exp`` and the recursion
      ``S(k) = S(k-1) - P(X = k)``.  The result equals the exact float64
      inversion for every pixel, without a transcendental function on most of
      them.
    * ``1 <= lam < gaussian_threshold``: exact, by Poisson additivity
      ``X = Poisson(mu) + Poisson(f)`` with ``mu = floor(4 lam) / 4`` and
      ``f = lam - mu < 1/4``: ``Poisson(mu)`` by inversion with precomputed CDF
      and guide tables and a 53-bit uniform (for ``mu < 64``; larger means, only
      with ``gaussian_threshold > 64``, use ``rng.poisson``), ``Poisson(f)`` as
      in the first class.
    * ``lam >= gaussian_threshold``: a standard normal ``z`` mapped through the
      Cornish-Fisher expansion of the Poisson quantile (skewness and kurtosis
      terms), ``k = floor(lam + sqrt(lam) z + (z**2 - 1)/6 + (z - z**3)/(72 sqrt(lam)) + 1/2)``,
      clipped at 0.  Its total-variation distance to Poisson(lam), computed by
      quadrature: 0.0021 at lam = 10, 0.0014 at 15, 0.0010 at 20, 0.0004 at 50,
      0.0002 at 100, falling as ``lam**-1.5`` (a plain rounded normal: 0.040 at
      lam = 10).  ``gaussian_threshold=inf`` makes every pixel exact (slow for
      means above 64).

    Random numbers are drawn in a fixed order (31-bit uniforms for all pixels,
    53-bit uniforms for the table class, normals for the normal class, all in
    pixel order), so both backends give the same counts for the same generator
    state.

    Parameters
    ----------
    mean_counts : numpy.ndarray
        Expected electron counts per pixel (any shape, >= 0, finite).
    rng : numpy.random.Generator
        Source of randomness (the transform's own seeded generator).
    gaussian_threshold : float, optional
        Mean count (electrons, >= 1) from which the normal approximation is used
        (compared in float32, as the means).
    backend : {"auto", "numpy", "numba"}
        Implementation; "auto" uses numba when it can be imported.  Images
        with means of 64 or more below a threshold above 64 (table rows beyond
        the tables) always take the numpy path.

    Returns
    -------
    numpy.ndarray
        float32 array of integer counts, same shape as ``mean_counts``
        (integers are exact up to 2**24 counts per pixel).

    Raises
    ------
    ValueError
        Negative or non-finite means, an unknown backend, or "numba" without numba.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"poisson_counts: backend must be one of {_BACKENDS}, got {backend!r}")
    lam = np.asarray(mean_counts)
    shape = lam.shape
    flat32 = np.ascontiguousarray(lam, dtype=np.float32).ravel()
    n = flat32.size
    if n == 0:
        return np.zeros(shape, dtype=np.float32)
    lam_max = float(flat32.max())  # NaN propagates; the numba kernels refuse negative means themselves
    if not np.isfinite(lam_max):
        raise ValueError("poisson_counts: mean counts must be finite and >= 0")
    threshold = max(float(gaussian_threshold), 1.0)
    # the class boundary, in float32 like lam (beyond float32's range: no normal class)
    threshold = float(np.float32(threshold)) if threshold <= float(np.finfo(np.float32).max) else math.inf

    kernels = _kernels() if backend != "numpy" else None
    if backend == "numba" and kernels is None:
        raise ValueError("poisson_counts: backend='numba' needs numba, which cannot be imported")
    if kernels is not None and not (lam_max >= _TABLE_MAX and threshold > _TABLE_MAX):
        counts = kernels.poisson_counts_flat(flat32, rng, threshold, _poisson_tables(), _BOUND_MARGIN)
    else:
        if not float(flat32.min()) >= 0.0:
            raise ValueError("poisson_counts: mean counts must be finite and >= 0")
        counts = _poisson_counts_numpy(flat32, lam_max, rng, threshold)
    return counts.reshape(shape)


def _poisson_counts_numpy(flat32: np.ndarray, lam_max: float, rng: np.random.Generator, threshold: float) -> np.ndarray:
    """The numpy implementation of :func:`poisson_counts` on validated 1-D float32 means."""
    n = flat32.size
    above_threshold = lam_max >= threshold
    if lam_max >= 1.0:
        ge1 = flat32 >= np.float32(1.0)
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
    u31 = words.view(np.int32)  # uniform integers on [0, 2**31)
    u = u31.astype(np.float32)  # rounding <= 2**-24 relative, inside the bounds' margin
    counts = _first_count_hits(frac, u31, u).astype(np.float32)
    # X >= 2 needs u < S(1) <= f**2 / 2: a superset of those pixels, decided exactly by _poisson_tail_counts
    bound = np.multiply(frac, frac)
    bound *= np.float32(2.0**31 * (1.0 + _BOUND_MARGIN) / 2.0)
    again = np.flatnonzero(u < bound)
    if again.size:
        counts[again] += _poisson_tail_counts(frac[again], u31[again] * (2.0**-31))
    if ge1 is None:
        return counts

    if above_threshold:
        ge_t = flat32 >= np.float32(threshold)  # counts of these pixels are overwritten below
        mid = np.flatnonzero(ge1 ^ ge_t)  # 1 <= lam < threshold (ge_t implies ge1)
    else:
        mid = np.flatnonzero(ge1)
    if mid.size:
        j = base4[mid].astype(np.int32)
        if threshold <= _TABLE_MAX or lam_max < _TABLE_MAX:
            counts[mid] += _poisson_table_means(j, rng)
        else:
            in_table = j < _TABLE_MAX * _TABLE_STEPS
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
    return counts


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


def _first_count_hits(frac: np.ndarray, u31: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Which pixels have ``Poisson(frac) >= 1`` for the uniforms ``u31``: ``u31 < 2**31 (1 - exp(-frac))``.

    ``S0 = 1 - exp(-f)`` is bracketed by its Taylor polynomials,
    ``f - f**2/2 <= S0 <= f - f**2/2 + f**3/6`` (``f >= 0``), evaluated in
    float32 with the scale ``2**31`` and the relative margin
    :data:`_BOUND_MARGIN` folded into the coefficients.  A uniform below the
    lower bound is a hit, one at or above the upper bound a miss; only the few
    pixels in between (about ``sum(f**3) / 6`` per image) are decided in
    float64 with ``expm1``.  The result equals the exact test for every pixel,
    at a fraction of the cost of ``expm1`` on the whole image (~20 ns per
    float32 pixel here).

    Parameters
    ----------
    frac : numpy.ndarray
        1-D float32 means in ``[0, 1)``.
    u31 : numpy.ndarray
        1-D int32 uniform integers on ``[0, 2**31)``, one per pixel.
    u : numpy.ndarray
        ``u31`` converted to float32 (rounded; the margin covers it).

    Returns
    -------
    numpy.ndarray
        1-D bool, True where the count is at least 1.
    """
    c_lo = 2.0**31 * (1.0 - _BOUND_MARGIN)
    c_hi = 2.0**31 * (1.0 + _BOUND_MARGIN)
    bound = np.multiply(frac, np.float32(c_lo / 2.0))  # c_lo (f - f**2 / 2) by Horner
    np.subtract(np.float32(c_lo), bound, out=bound)
    bound *= frac
    hit = u < bound
    np.multiply(frac, np.float32(c_hi / 6.0), out=bound)  # c_hi (f - f**2 / 2 + f**3 / 6)
    np.subtract(np.float32(c_hi / 2.0), bound, out=bound)
    bound *= frac
    np.subtract(np.float32(c_hi), bound, out=bound)
    bound *= frac
    maybe = u < bound
    maybe ^= hit  # lower bound <= u < upper bound
    band = np.flatnonzero(maybe)
    if band.size:
        f64 = frac[band].astype(np.float64)
        hit[band] = u31[band] < -np.expm1(-f64) * 2.0**31
    return hit


def _poisson_tail_counts(lam: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Counts beyond 1 for pixels whose uniform may give ``X >= 2``; 0 where it does not.

    With ``S(k) = P(X > k)``, the count is ``X = #{k >= 0 : u < S(k)}``.  The
    caller passes pixels with ``u < f**2 / 2`` (an upper bound of ``S(1)``;
    ``u < S(1)`` implies ``u < S(0)``, the hit the caller has counted already).
    This evaluates ``S(1) = -expm1(-lam) - lam exp(-lam)`` in float64 and
    continues with the recursion ``S(k) = S(k-1) - P(X = k)`` on the pixels
    with ``X >= 2`` (for ``lam < 1`` the largest count among ~10^4 pixels is ~8,
    so a handful of passes suffice).

    Parameters
    ----------
    lam : numpy.ndarray
        1-D float32 means (< 1).
    u : numpy.ndarray
        The float64 uniforms (on [0, 1)) of these pixels.

    Returns
    -------
    numpy.ndarray
        float32 ``max(X - 1, 0)``.
    """
    lam64 = lam.astype(np.float64)
    pmf = np.exp(-lam64)
    pmf *= lam64  # P(X = 1)
    surv = -np.expm1(-lam64)
    surv -= pmf  # S(1) = S(0) - P(X = 1)
    more = u < surv
    extra = more.astype(np.float32)
    idx = np.flatnonzero(more)  # X >= 2: compact once
    if not idx.size:
        return extra
    lam64, u, pmf, surv = lam64[idx], u[idx], pmf[idx], surv[idx]
    beyond = np.zeros(idx.size, dtype=np.float32)
    more = np.empty(idx.size, dtype=bool)
    # P(X > 40 | lam < 1) < 1e-48: the cap only guards against round-off loops.
    for k in range(2, 41):
        pmf *= lam64
        pmf *= 1.0 / k  # P(X = k)
        surv -= pmf  # S(k)
        np.less(u, surv, out=more)
        if not more.any():
            break
        beyond += more
    extra[idx] += beyond
    return extra


def shot_noise_counts(
    image: np.ndarray, dose: float, rng: np.random.Generator, gaussian_threshold: float = 10.0
) -> np.ndarray:
    """Poisson counts of the means ``max(image * dose, 0)`` (float32 products): ShotNoise's draw.

    The same counts as ``poisson_counts(np.maximum(image * np.float32(dose), 0), rng, gaussian_threshold)``
    for the same generator state; with numba the scaling, clipping and finiteness check are one pass.

    Parameters
    ----------
    image : numpy.ndarray
        Pattern in fraction-of-beam units (any shape).
    dose : float
        Electrons per unit of ``image`` (electrons per pattern for a pattern summing to 1).
    rng : numpy.random.Generator
        Source of randomness.
    gaussian_threshold : float
        See :func:`poisson_counts`.

    Returns
    -------
    numpy.ndarray
        float32 counts, the shape of ``image``.

    Raises
    ------
    ValueError
        A non-finite product ``image * dose``.
    """
    kernels = _kernels()
    threshold = max(float(gaussian_threshold), 1.0)
    if (
        kernels is None
        or threshold > _TABLE_MAX  # table rows beyond 63 may be needed: the general path decides
        or not isinstance(image, np.ndarray)
        or image.dtype != np.float32
        or image.size == 0
    ):
        lam = np.multiply(image, np.float32(dose), dtype=np.float32)
        np.maximum(lam, np.float32(0.0), out=lam)
        return poisson_counts(lam, rng, gaussian_threshold)
    flat = np.ascontiguousarray(image).ravel()
    lam = np.empty_like(flat)
    if not kernels.scaled_means(flat, np.float32(dose), lam):
        raise ValueError("poisson_counts: mean counts must be finite and >= 0")
    counts = kernels.poisson_counts_flat(lam, rng, float(np.float32(threshold)), _poisson_tables(), _BOUND_MARGIN)
    return counts.reshape(image.shape)
