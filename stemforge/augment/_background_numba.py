"""numba kernel of :mod:`stemforge.augment.background`: multiply OpenCV's packed (CCS) real DFT by a real, even
spectrum.

Imported lazily; compiled on first use and cached on disk.  Same products as the
numpy path of :meth:`stemforge.augment.background._Grid.convolve` (one fused pass instead
of a dozen strided numpy operations, 0.013 ms instead of ~0.09 ms per 256 x 256 pattern).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["background_kernel", "blend", "ccs_multiply"]


@numba.njit(cache=True, nogil=True)
def ccs_multiply(packed, kq):  # pragma: no cover - compiled
    """Multiply a CCS-packed (H, W) real DFT in place by the real spectrum given on its quadrant ``kq``.

    Parameters
    ----------
    packed : numpy.ndarray
        float32 (H, W), H and W even: ``cv2.dft`` of a real image.  Columns 1..W-2
        hold (Re, Im) pairs of frequency columns 1..W/2-1 for every frequency row;
        columns 0 and W-1 hold the packed 1-D real DFTs of frequency columns 0 and
        W/2: ``[Re(0), Re(1), Im(1), ..., Re(H/2)]``.
    kq : numpy.ndarray
        float32 (H/2+1, W/2+1): the spectrum at frequency rows 0..H/2 and columns
        0..W/2 (rows ``r`` and ``H - r`` share a value: the spectrum is even).
    """
    h, w = packed.shape
    half = h // 2
    for r in range(h):
        krow = kq[r if r <= half else h - r]
        row = packed[r]
        for j in range(1, w // 2):  # (Re, Im) of frequency column j sit in columns 2j - 1 and 2j
            f = krow[j]
            row[2 * j - 1] *= f
            row[2 * j] *= f
    for col, j in ((0, 0), (w - 1, w // 2)):
        packed[0, col] *= kq[0, j]
        packed[h - 1, col] *= kq[half, j]
        for m in range(1, half):
            packed[2 * m - 1, col] *= kq[m, j]
            packed[2 * m, col] *= kq[m, j]


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "nsz", "arcp", "contract"})
def background_kernel(q2, q, mult, gy, gx, pix, w_pl, q0_sq, ring_q, ring_amp, ring_sigma, w_ring, w_dif, out, ring):
    """The weighted sum of the normalised background kernels on the quadrant support, into ``out``.

    ``sum_c w_c K_c / sum(K_c)`` with ``K_plasmon = 1 / (q**2 + q0**2)``, ``K_rings = sum_i a_i exp(-(q -
    q_i)**2 / (2 sigma**2))`` (evaluated on the annulus where the exponent exceeds -20, found row by row:
    farther pixels would add less than 2e-9 of a ring's peak) and ``K_diffuse = gy[row] gx[col]`` (the
    Gaussian halo is separable); sums over the whole grid use ``mult`` (copies of each support pixel).  A
    component of weight 0 is skipped.

    Parameters
    ----------
    q2, q : numpy.ndarray
        float32 (h, w) squared distance (Å⁻²) and distance (Å⁻¹) to the beam on the quadrant support, whose
        pixel ``(i, j)`` lies ``i`` rows and ``j`` columns from the beam.
    mult : numpy.ndarray
        float32 (h, w) multiplicity of each support pixel in the full grid.
    gy, gx : numpy.ndarray
        float64 (h,) and (w,) factors of the diffuse Gaussian along rows and columns.
    pix : float
        Pixel size, Å⁻¹.
    w_pl, q0_sq : float
        Plasmon weight and ``q0**2`` (Å⁻²).
    ring_q, ring_amp : numpy.ndarray
        float64 ring radii (Å⁻¹) and amplitudes.
    ring_sigma, w_ring, w_dif : float
        Ring width (Å⁻¹), ring weight and diffuse weight.
    out, ring : numpy.ndarray
        float32 (h, w) output and scratch.
    """
    h, w = q2.shape
    t_pl = 0.0
    t_ring = 0.0
    t_dif = 0.0
    if w_pl > 0.0:
        for i in range(h):
            for j in range(w):
                v = np.float32(1.0) / (q2[i, j] + np.float32(q0_sq))
                out[i, j] = v
                t_pl += mult[i, j] * v
    if w_ring > 0.0:
        # exp only on each ring's annulus (a loop with a branch around exp would evaluate it everywhere:
        # LLVM speculates the exp intrinsic)
        ring[:, :] = 0.0
        c_ring = -0.5 / (ring_sigma * ring_sigma)
        reach = np.sqrt(40.0) * ring_sigma
        for k in range(ring_q.size):
            lo = max(ring_q[k] - reach, 0.0) / pix
            hi = (ring_q[k] + reach) / pix
            for i in range(min(h, int(hi) + 1)):
                j0 = int(np.ceil(np.sqrt(max(lo * lo - i * i, 0.0))))
                j1 = min(int(np.sqrt(hi * hi - i * i)), w - 1)
                for j in range(j0, j1 + 1):
                    d = q[i, j] - ring_q[k]
                    r = ring_amp[k] * np.exp(c_ring * d * d)
                    ring[i, j] += r
                    t_ring += mult[i, j] * r
    if w_dif > 0.0:
        for i in range(h):
            for j in range(w):
                t_dif += mult[i, j] * (gy[i] * gx[j])
    a = w_pl / t_pl if w_pl > 0.0 else 0.0
    b = w_ring / t_ring if w_ring > 0.0 and t_ring > 0.0 else 0.0  # rings beyond the detector add nothing
    c = w_dif / t_dif if w_dif > 0.0 else 0.0
    for i in range(h):
        for j in range(w):
            v = 0.0
            if w_pl > 0.0:
                v += a * out[i, j]
            if w_ring > 0.0:
                v += b * ring[i, j]
            if w_dif > 0.0:
                v += c * (gy[i] * gx[j])
            out[i, j] = v


@numba.njit(cache=True, nogil=True)
def blend(image, background, a, b, out):  # pragma: no cover - compiled
    """``out = a * image + b * max(background, 0)`` (1-D float32; the max removes FFT round-off negatives)."""
    fa = np.float32(a)
    fb = np.float32(b)
    zero = np.float32(0.0)
    for i in range(image.size):
        v = background[i]
        out[i] = fa * image[i] + fb * (v if v > zero else zero)
