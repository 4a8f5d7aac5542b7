"""numba kernels of :func:`stemforge.augment.poisson.poisson_counts` (same algorithm and draws as its numpy path).

Imported lazily by :mod:`stemforge.augment.poisson`; compiled on first use and cached on disk
(``cache=True``).  Three passes:

1. :func:`_classify` -- one branch-free (vectorisable) pass over all pixels:
   the 0/1 count of the background class where the polynomial bounds of
   ``S(0)`` decide it, and a flag byte for every pixel that needs more work
   (bit 0: exact float64 decision of ``Poisson(f)``; bit 1: table class,
   ``lam >= 1``; bit 2: normal class; bit 3: a negative mean), then
   :func:`_compact` lists the flagged pixels and counts the classes;
2. :func:`_table_and_normal` -- the flagged pixels in pixel order: table
   inversion (53-bit uniforms) and the Cornish-Fisher normal class (normals),
   in the same order as numpy's draws;
3. :func:`_exact_low_counts` -- the exact float64 decisions of ``Poisson(f)``
   (kept out of pass 2 so that the compiler does not evaluate ``exp``/``expm1``
   speculatively for every flagged pixel).

All float32 expressions are written in the order numpy evaluates them, so both
backends give identical counts.  With numpy's SFC64 bit generator (the one the
transforms use) the 32-bit words and the 53-bit uniforms are produced here by
:func:`_sfc64_words` / :func:`_sfc64_doubles`, the same algorithm as numpy's
``random_raw`` and ``Generator.random`` (~1 ns instead of ~3.7 ns per 64-bit
draw): the generator's state is read, advanced here and written back, so the
stream, and every later draw of the generator, is exactly numpy's.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["poisson_counts_flat"]

_C31 = 2.0**31
_GUIDE = 256  # guide cells per row, as stemforge.augment.poisson._GUIDE_CELLS


@numba.njit(cache=True, nogil=True)
def _sfc64_words(state, n):  # pragma: no cover - compiled
    """``n`` uint32 words: ``random_raw((n + 1) // 2).view(np.uint32)[:n]`` of an SFC64 in ``state`` (advanced)."""
    s0, s1, s2, s3 = state[0], state[1], state[2], state[3]
    words = np.empty(n + (n & 1), dtype=np.uint32)
    for j in range(words.size // 2):
        tmp = s0 + s1 + s3
        s3 += np.uint64(1)
        s0 = s1 ^ (s1 >> np.uint64(11))
        s1 = s2 + (s2 << np.uint64(3))
        s2 = ((s2 << np.uint64(24)) | (s2 >> np.uint64(40))) + tmp
        words[2 * j] = np.uint32(tmp & np.uint64(0xFFFFFFFF))  # little-endian view: low half first
        words[2 * j + 1] = np.uint32(tmp >> np.uint64(32))
    state[0], state[1], state[2], state[3] = s0, s1, s2, s3
    return words[:n]


@numba.njit(cache=True, nogil=True)
def _sfc64_doubles(state, n):  # pragma: no cover - compiled
    """``n`` uniforms in [0, 1) as ``Generator.random(n)`` of an SFC64 in ``state`` (advanced)."""
    s0, s1, s2, s3 = state[0], state[1], state[2], state[3]
    out = np.empty(n, dtype=np.float64)
    for j in range(n):
        tmp = s0 + s1 + s3
        s3 += np.uint64(1)
        s0 = s1 ^ (s1 >> np.uint64(11))
        s1 = s2 + (s2 << np.uint64(3))
        s2 = ((s2 << np.uint64(24)) | (s2 >> np.uint64(40))) + tmp
        out[j] = np.float64(tmp >> np.uint64(11)) * (1.0 / 9007199254740992.0)
    state[0], state[1], state[2], state[3] = s0, s1, s2, s3
    return out


@numba.njit(cache=True, nogil=True)
def _classify(lam, words, threshold, a1, a2, b1, b2, b3, out, flag):  # pragma: no cover - compiled
    one = np.float32(1.0)
    zero = np.float32(0.0)
    for i in range(lam.size):
        l_ = lam[i]
        ge1 = l_ >= one
        base4 = np.floor(l_ * np.float32(4.0)) * np.float32(ge1)
        f = base4 * np.float32(-0.25) + l_
        u = np.float32(np.int32(words[i] >> np.uint32(1)))
        lo = (a1 - f * a2) * f
        hi = (b1 - (b2 - f * b3) * f) * f
        out[i] = one if u < lo else zero
        need = np.uint8(u >= lo) & np.uint8(u < hi) | np.uint8(u < (f * f) * b2)
        high = np.uint8(l_ >= threshold) << np.uint8(2)
        flag[i] = need | (np.uint8(ge1) << np.uint8(1)) | high | (np.uint8(l_ < zero) << np.uint8(3))


@numba.njit(cache=True, nogil=True)
def _compact(flag, idx):  # pragma: no cover - compiled
    """Indices of the flagged pixels (branch-free) and the sizes of the table and normal classes.

    Flags are read 8 at a time and blocks of 8 unflagged pixels are skipped: most
    pixels of a low-dose pattern need no further work. ``flag.size`` must be a
    multiple of 8 (the caller pads with zeros, which are never listed). Against a
    plain loop over every pixel (45 us for 256x256): ~14x faster at 1e3 electrons
    per pattern, 3-5x at 1e5, ~1.3x slower at 1e7 where 60-93 % of the pixels are
    flagged.
    """
    n = 0
    n_ge1 = 0
    n_high = 0
    n_negative = 0
    blocks = flag.view(np.uint64)
    for b in range(blocks.size):
        if blocks[b] == 0:
            continue
        for j in range(8):  # a fixed trip count, unrolled by LLVM
            i = 8 * b + j
            c = flag[i]
            idx[n] = i
            n += c != 0
            n_ge1 += (c >> 1) & 1
            n_high += (c >> 2) & 1
            n_negative += c >> 3
    return n, n_ge1 - n_high, n_high, n_negative


@numba.njit(cache=True, nogil=True)
def _table_and_normal(lam, flag, idx, u_mid, z, cdf, guide, k_len, out, exact):  # pragma: no cover - compiled
    im = 0
    ih = 0
    n_exact = 0
    for b in range(idx.size):
        i = idx[b]
        c = flag[i]
        l_ = lam[i]
        if c & 4:  # Cornish-Fisher, in numpy's float32 evaluation order
            zz = z[ih]
            ih += 1
            s = np.sqrt(l_)
            z2 = zz * zz
            k = l_ + s * zz + (z2 - np.float32(1.0)) * np.float32(1.0 / 6.0) + (zz - z2 * zz) / (np.float32(72.0) * s)
            k = np.floor(k + np.float32(0.5))
            out[i] = k if k > np.float32(0.0) else np.float32(0.0)
            continue
        x = out[i]
        if c & 1:
            x = np.float32(0.0)  # Poisson(f) is decided exactly in _exact_low_counts
            exact[n_exact] = i
            n_exact += 1
        if c & 2:
            j = np.int32(np.floor(l_ * np.float32(4.0)))
            um = u_mid[im]
            im += 1
            row = j * k_len
            pos = row + guide[j * _GUIDE + np.int32(um * _GUIDE)]
            while cdf[pos] < um:
                pos += 1
            x += np.float32(pos - row)
        out[i] = x
    return n_exact


@numba.njit(cache=True, nogil=True)
def _exact_low_counts(lam, words, exact, n_exact, out):  # pragma: no cover - compiled
    for b in range(n_exact):
        i = exact[b]
        l_ = lam[i]
        base4 = np.floor(l_ * np.float32(4.0)) if l_ >= np.float32(1.0) else np.float32(0.0)
        f = np.float64(base4 * np.float32(-0.25) + l_)
        u = np.float64(words[i] >> np.uint32(1)) * (1.0 / _C31)
        s0 = -math.expm1(-f)
        if not u < s0:
            continue
        x = 1
        pmf = math.exp(-f) * f  # P(X = 1)
        surv = s0 - pmf  # S(1)
        k = 2
        while u < surv and k <= 41:  # P(X > 41 | f < 1) < 1e-48: the cap only guards against round-off loops
            x += 1
            pmf *= f
            pmf *= 1.0 / k
            surv -= pmf
            k += 1
        out[i] += np.float32(x)


def poisson_counts_flat(
    flat32: np.ndarray,
    rng: np.random.Generator,
    threshold: float,
    tables: tuple[np.ndarray, np.ndarray, int],
    margin: float,
) -> np.ndarray:
    """Counts for validated, contiguous 1-D float32 means (no table row beyond 255).

    Parameters
    ----------
    flat32 : numpy.ndarray
        Means, finite (NaN and inf must have been refused), C-contiguous;
        negative means raise ValueError.
    rng : numpy.random.Generator
        Random generator (draws as in the numpy path).
    threshold : float
        Normal-class boundary (a float32 value).
    tables : tuple
        ``(cdf, guide, k_len)`` of :func:`stemforge.augment.poisson._poisson_tables`.
    margin : float
        Relative margin of the polynomial bounds.

    Returns
    -------
    numpy.ndarray
        1-D float32 counts.
    """
    n = flat32.size
    bitgen = rng.bit_generator
    sfc = type(bitgen) is np.random.SFC64
    if sfc:
        st = bitgen.state  # a copy: advanced here and written back below
        state = st["state"]["state"]
        words = _sfc64_words(state, n)
    else:
        words = bitgen.random_raw((n + 1) // 2).view(np.uint32)[:n]
    out = np.empty(n, dtype=np.float32)
    flag = np.empty(-(-n // 8) * 8, dtype=np.uint8)  # padded to whole 8-byte blocks for _compact
    flag[n:] = 0
    c_lo, c_hi = _C31 * (1.0 - margin), _C31 * (1.0 + margin)
    _classify(
        flat32,
        words,
        np.float32(threshold),
        np.float32(c_lo),
        np.float32(c_lo / 2.0),
        np.float32(c_hi),
        np.float32(c_hi / 2.0),
        np.float32(c_hi / 6.0),
        out,
        flag,
    )
    idx = np.empty(flag.size, dtype=np.int64)  # _compact may also write a slot in the padding
    n_flagged, n_table, n_high, n_negative = _compact(flag, idx)
    if n_negative:
        if sfc:
            bitgen.state = st
        raise ValueError("poisson_counts: mean counts must be finite and >= 0")
    if sfc:
        u_mid = _sfc64_doubles(state, n_table) if n_flagged else None
        bitgen.state = st
    if n_flagged:
        idx = idx[:n_flagged]
        if not sfc:
            u_mid = rng.random(n_table)
        z = rng.standard_normal(n_high, dtype=np.float32)
        cdf, guide, k_len = tables
        exact = np.empty(idx.size, dtype=np.int64)
        n_exact = _table_and_normal(flat32, flag, idx, u_mid, z, cdf, guide, k_len, out, exact)
        if n_exact:
            _exact_low_counts(flat32, words, exact, n_exact, out)
    return out


@numba.njit(cache=True, nogil=True)
def scaled_means(image, scale, out):  # pragma: no cover - compiled
    """``out = max(image * scale, 0)`` in float32 (numpy's values); False if a product is not finite."""
    bad = False
    zero = np.float32(0.0)
    for i in range(image.size):
        v = image[i] * scale
        bad |= not (abs(v) < np.float32(np.inf))
        out[i] = v if v > zero else zero
    return not bad


@numba.njit(cache=True, nogil=True)
def clip_scale(counts, cap, factor):  # pragma: no cover - compiled
    """``counts = min(counts, cap) * factor`` in place, float32 (numpy's values)."""
    for i in range(counts.size):
        c = counts[i]
        counts[i] = (c if c < cap else cap) * factor
