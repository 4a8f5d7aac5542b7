"""Specimen backgrounds: inelastic (plasmon) Lorentzian, amorphous-support rings, smooth diffuse halo.

Model (the plasmon term after crystal4D, with explicit units)::

    K_plasmon(q) = 1 / (q**2 + q0**2)
    K_rings(q)   = sum_i a_i exp(-(q - q_i)**2 / (2 sigma**2)),  a_i ~ U(0.5, 1)
    K_diffuse(q) = exp(-q**2 / (2 s**2))
    K            = sum_c w_c K_c / sum(K_c)            (each component normalised to 1)
    bg           = (K * probe) / sum(probe)            (circular convolution, sums to sum(w_c))
    out          = (1 - sum(w_c)) pattern + sum(pattern) bg

``q`` is the distance from the undiffracted beam in Å⁻¹ (``pixel_size_inv_A`` Å⁻¹
per px, the dataset calibration); ``w_c`` is the fraction of the detected intensity
moved into component ``c``.  The total detected intensity is unchanged.  Each
background is scattered by the specimen for every incident direction of the
convergent probe, hence the convolution with the probe image.

Units note: crystal4D quotes ``q0`` in fractions of the pattern width; here it is
in Å⁻¹.  For scale, the single-plasmon characteristic angle
``theta_E = E_p / (gamma m v**2)`` is ~0.04 mrad (~0.002 Å⁻¹) for a 15 eV
plasmon at 200 kV, below one detector pixel; the 0.01-0.1 Å⁻¹ range
(~0.25-2.5 mrad at 200 kV) therefore stands for the broadened, multiply
scattered inelastic halo.  ``K_plasmon`` is normalised over the detector (its
integral over the plane diverges logarithmically).  The default ring positions
are the first two maxima of amorphous carbon, ``1/d`` ~ 0.47 and ~0.84 Å⁻¹
(d ~ 2.1 and ~1.2 Å), with ranges for other supports and calibration errors.

Kernels use minimum-image distances on the periodic grid, so that for a probe near
the centre wrapped tails land where the direct tails would.  For even grid sizes
the (real, even) transform of the kernel is a DCT-I of one quadrant, four times
cheaper than a full FFT, and the convolution uses OpenCV's packed real DFT; all
components share one convolution.  When numba imports, the weighted kernel sum
(rings evaluated on their annuli only, the separable halo without a 2-D ``exp``)
and the product with the packed spectrum are compiled loops
(:mod:`stemforge.augment._background_numba`): ~0.2 ms less per 256 x 256 pattern than the
numpy path, equal to it to float32 round-off (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import scipy.fft as sfft

from stemforge.augment._base import SeededTransformMixin, check_range, log_uniform, uniform

__all__ = [
    "AMORPHOUS_CARBON_RINGS_INV_A",
    "AmorphousRings",
    "DiffuseBackground",
    "PlasmonBackground",
    "SpecimenBackground",
    "lorentzian_kernel",
    "plasmon_background",
]

#: Ranges of the first two amorphous-carbon ring positions, 1/d in Å⁻¹.
AMORPHOUS_CARBON_RINGS_INV_A: tuple[tuple[float, float], ...] = ((0.43, 0.51), (0.79, 0.88))


def _min_image_q2(shape: tuple[int, int], pixel_size_inv_A: float) -> np.ndarray:
    """Squared minimum-image distance to pixel (0, 0) on the periodic grid, Å⁻² (float64)."""
    h, w = shape
    dy = np.minimum(np.arange(h), h - np.arange(h)).astype(np.float64)
    dx = np.minimum(np.arange(w), w - np.arange(w)).astype(np.float64)
    return (dy[:, None] ** 2 + dx[None, :] ** 2) * pixel_size_inv_A**2


def lorentzian_kernel(shape: tuple[int, int], pixel_size_inv_A: float, q0_inv_A: float) -> np.ndarray:
    """The normalised Lorentzian ``1 / (q**2 + q0**2)``, centred on pixel (0, 0), periodic.

    Parameters
    ----------
    shape : tuple of int
        Grid shape (H, W), px.
    pixel_size_inv_A : float
        Å⁻¹ per px.
    q0_inv_A : float
        Lorentzian width, Å⁻¹ (> 0).

    Returns
    -------
    numpy.ndarray
        float64 (H, W) kernel summing to 1 (FFT layout: the peak is at [0, 0]).
    """
    k = 1.0 / (_min_image_q2(shape, pixel_size_inv_A) + q0_inv_A**2)
    return k / k.sum()


class _Grid:
    """Cached geometry of one (shape, pixel size): q on the kernel support and the transform machinery.

    For even H and W the kernel is given on its first quadrant (rows 0..H/2, cols
    0..W/2); its DFT (real, even) is a DCT-I of that quadrant, and the
    convolution runs through OpenCV's packed real DFT (CCS layout), about twice
    as fast as scipy's rfft2/irfft2 pair here.  Other shapes use the full grid and
    scipy.
    """

    def __init__(self, shape: tuple[int, int], pixel_size_inv_A: float):
        h, w = shape
        self.shape = shape
        self.pixel_size_inv_A = float(pixel_size_inv_A)
        self.even = h % 2 == 0 and w % 2 == 0
        q2 = _min_image_q2(shape, pixel_size_inv_A)
        if self.even:
            q2 = q2[: h // 2 + 1, : w // 2 + 1]
            my = np.full(h // 2 + 1, 2.0)
            my[[0, -1]] = 1.0
            mx = np.full(w // 2 + 1, 2.0)
            mx[[0, -1]] = 1.0
            self.mult = (my[:, None] * mx[None, :]).astype(np.float32)  # copies of each quadrant pixel in the grid
        else:
            self.mult = None
        self.q2 = q2.astype(np.float32)
        self.q = np.sqrt(self.q2)
        # squared minimum-image distances along rows and columns of the support, Å⁻² (q2 = qy2 + qx2)
        rows, cols = self.q2.shape
        dy = np.minimum(np.arange(rows), h - np.arange(rows)).astype(np.float64)
        dx = np.minimum(np.arange(cols), w - np.arange(cols)).astype(np.float64)
        self.qy2, self.qx2 = (dy * pixel_size_inv_A) ** 2, (dx * pixel_size_inv_A) ** 2

    def total(self, k: np.ndarray) -> float:
        """Sum of a kernel over the whole grid, given on its support (quadrant or full grid)."""
        if self.mult is None:
            return float(k.sum(dtype=np.float64))
        return float(np.vdot(k, self.mult))

    def kernel_ft(self, k: np.ndarray) -> np.ndarray:
        """Real rfft2-layout transform, shape (H, W//2+1), of a real even kernel given on its support."""
        if self.mult is None:
            return sfft.rfft2(k, workers=1).real.astype(np.float32)
        h = self.shape[0]
        kq = sfft.dctn(k, type=1, workers=1)  # DFT of a real even periodic sequence == DCT-I of its first half
        return np.concatenate([kq, kq[h // 2 - 1 : 0 : -1]], axis=0)  # rows k and H-k are equal

    def convolve(self, probe: np.ndarray, k: np.ndarray) -> np.ndarray:
        """``(kernel * probe) / sum(probe)`` (circular), float32, for a kernel given on its support.

        ``sum(probe)`` is the zero-frequency term of the probe's transform (no extra
        pass).  FFT round-off can leave values of ~-1e-9 relative in the far tails.

        Raises
        ------
        ValueError
            The probe has no positive total intensity (or is not finite).
        """
        h, w = self.shape
        if not self.even:
            ft = sfft.rfft2(probe, workers=1)
            total = float(ft[0, 0].real)
            _check_probe_total(total)
            ft *= self.kernel_ft(k) * np.float32(1.0 / total)
            return sfft.irfft2(ft, s=(h, w), workers=1).astype(np.float32, copy=False)
        # OpenCV CCS packing of a real 2-D DFT: columns 1..W-2 hold (Re, Im) pairs of frequencies
        # (r, 1..W/2-1) for every row r; columns 0 and W-1 hold the packed 1-D real DFT of frequency
        # columns 0 and W/2: [Re(0), Re(1), Im(1), ..., Re(H/2)].  The kernel's transform is real, so
        # both slots of a frequency are multiplied by the same number.
        packed = cv2.dft(np.ascontiguousarray(probe, dtype=np.float32))
        total = float(packed[0, 0])  # the DC term: sum(probe)
        _check_probe_total(total)
        kq = sfft.dctn(k * np.float32(1.0 / (total * h * w)), type=1, workers=1, overwrite_x=True)  # the even DFT
        kernels = _compiled_kernels()
        if kernels is not None:
            kernels.ccs_multiply(packed, kq)
        else:
            _ccs_multiply_numpy(packed, kq)
        return cv2.dft(packed, flags=cv2.DFT_INVERSE | cv2.DFT_REAL_OUTPUT)


def _check_probe_total(total: float) -> None:
    """Refuse a probe image without positive (finite) total intensity."""
    if not (total > 0 and np.isfinite(total)):
        raise ValueError("SpecimenBackground: the probe image has no positive intensity")


def _ccs_multiply_numpy(packed: np.ndarray, kq: np.ndarray) -> None:
    """numpy path of :func:`stemforge.augment._background_numba.ccs_multiply` (same products; used without numba)."""
    h, w = packed.shape
    half = h // 2
    # middle columns: each factor twice (Re, Im); rows r and H - r share a factor
    factors = np.repeat(kq[:, 1 : w // 2], 2, axis=1)
    packed[: half + 1, 1 : w - 1] *= factors
    packed[half + 1 :, 1 : w - 1] *= factors[half - 1 : 0 : -1]
    for col, j in ((0, 0), (w - 1, w // 2)):
        c = kq[:, j]
        packed[0, col] *= c[0]
        packed[h - 1, col] *= c[half]
        packed[1 : h - 1 : 2, col] *= c[1:half]
        packed[2 : h - 1 : 2, col] *= c[1:half]


_compiled_module: Any = None  # stemforge.augment._background_numba, or False when numba cannot be imported


def _compiled_kernels() -> Any:
    """The compiled background kernels (stemforge.augment._background_numba), or None when numba cannot be imported."""
    global _compiled_module
    if _compiled_module is None:
        try:
            from stemforge.augment import _background_numba
        except ImportError:
            _compiled_module = False
        else:
            _compiled_module = _background_numba
    return _compiled_module or None


def plasmon_background(probe: np.ndarray, pixel_size_inv_A: float, q0_inv_A: float) -> np.ndarray:
    """Probe convolved with the normalised Lorentzian ``1 / (q**2 + q0**2)``, normalised to sum 1.

    Parameters
    ----------
    probe : numpy.ndarray
        (H, W) vacuum probe image (any positive scale).
    pixel_size_inv_A : float
        Å⁻¹ per px.
    q0_inv_A : float
        Lorentzian width, Å⁻¹.

    Returns
    -------
    numpy.ndarray
        float32 (H, W) background, non-negative, summing to 1.
    """
    grid = _Grid(probe.shape, pixel_size_inv_A)
    k = 1.0 / (grid.q2 + np.float32(q0_inv_A**2))
    return _convolve_probe(grid, probe, k / np.float32(grid.total(k)))


def _convolve_probe(grid: _Grid, probe: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``(kernel * probe) / sum(probe)``, float32, negatives from round-off removed."""
    bg = grid.convolve(probe, kernel)
    cv2.max(bg, 0.0, dst=bg)  # FFT round-off leaves ~-1e-9 in the far tails (cv2: ~2x np.maximum here)
    return bg


def _background_kernel(
    grid: _Grid,
    w_pl: float,
    q0: float,
    w_ring: float,
    ring_q: Sequence[float],
    ring_amp: Sequence[float],
    ring_sigma: float,
    w_dif: float,
    s_dif: float,
) -> np.ndarray:
    """``sum_c w_c K_c / sum(K_c)`` on the grid's kernel support, float32 (see the module docstring).

    Weights are fractions of the detected intensity, ``q0``, ring radii, ``ring_sigma`` and ``s_dif`` are in
    Å⁻¹; a weight of 0 leaves its component out.  Uses the compiled kernel of
    :mod:`stemforge.augment._background_numba` on even grids when numba imports (one pass, ring Gaussians evaluated
    where they exceed 2e-9 of their peak, the separable diffuse halo without a 2-D ``exp``), numpy otherwise;
    the two agree to float32 round-off.
    """
    kernels = _compiled_kernels() if grid.mult is not None else None
    if kernels is not None:
        out = np.empty_like(grid.q2)
        ring = np.empty_like(grid.q2) if w_ring > 0 else out
        gy = np.exp(grid.qy2 * (-0.5 / s_dif**2)) if w_dif > 0 else grid.qy2
        gx = np.exp(grid.qx2 * (-0.5 / s_dif**2)) if w_dif > 0 else grid.qx2
        kernels.background_kernel(
            grid.q2, grid.q, grid.mult, gy, gx, grid.pixel_size_inv_A, float(w_pl), float(q0 * q0),
            np.asarray(ring_q, dtype=np.float64), np.asarray(ring_amp, dtype=np.float64),
            float(ring_sigma), float(w_ring), float(w_dif), out, ring,
        )  # fmt: skip
        return out
    parts = []  # (component on the kernel support, its weight / its sum over the grid)
    if w_pl > 0:
        k = np.add(grid.q2, np.float32(q0 * q0))
        np.reciprocal(k, out=k)
        parts.append((k, w_pl / grid.total(k)))
    if w_ring > 0:
        k = np.zeros_like(grid.q)
        d = np.empty_like(grid.q)
        for qi, ai in zip(ring_q, ring_amp, strict=False):
            np.subtract(grid.q, np.float32(qi), out=d)
            d *= d
            d *= np.float32(-0.5 / ring_sigma**2)
            np.exp(d, out=d)
            d *= np.float32(ai)
            k += d
        total = grid.total(k)
        if total > 0:  # rings entirely beyond the detector (or ~13 sigma from it) put nothing on it
            parts.append((k, w_ring / total))
    if w_dif > 0:
        k = np.multiply(grid.q2, np.float32(-0.5 / s_dif**2))
        np.exp(k, out=k)
        parts.append((k, w_dif / grid.total(k)))
    if not parts:
        return np.zeros_like(grid.q2)
    kernel, c = parts[0]
    kernel *= np.float32(c)
    for k, c in parts[1:]:
        k *= np.float32(c)
        kernel += k
    return kernel


def _check_ring_list(name: str, value: Any) -> tuple[tuple[float, float], ...]:
    """Validate a list of (low, high) ring-position ranges (Å⁻¹, > 0)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ValueError(f"{name} must be a non-empty list of (low, high) ranges in Å⁻¹, got {value!r}")
    for i, v in enumerate(value):
        if isinstance(v, (int, float)):  # [0.43, 0.51] is ambiguous (one range or two rings): refuse it
            raise ValueError(f"{name}[{i}] must be a (low, high) pair (one per ring), got {v!r}; e.g. [[0.43, 0.51]]")
    return tuple(check_range(f"{name}[{i}]", v, positive=True) for i, v in enumerate(value))


class SpecimenBackground(SeededTransformMixin, A.ImageOnlyTransform):
    """Add plasmon, amorphous-ring and diffuse backgrounds (each convolved with the probe) to the pattern.

    Only the pattern (``image``) changes; the probe is read (``probe`` target,
    required).  Place it before the geometric transforms: the background is
    generated in the specimen, before the projector lenses and the descan act.
    A component whose weight range is ``(0, 0)`` costs nothing.

    Parameters
    ----------
    plasmon_weight : tuple of float
        Range of the plasmon fraction ``w`` (crystal4D: 0.01-0.1).
    plasmon_q0_inv_A : tuple of float
        Range of the Lorentzian width ``q0``, Å⁻¹, > 0, log-uniform (crystal4D: 0.01-0.1).
    ring_weight : tuple of float
        Range of the amorphous-ring fraction.
    ring_q_inv_A : sequence of tuple of float
        One ``(low, high)`` range per ring: ring radius ``1/d`` in Å⁻¹.
    ring_width_inv_A : tuple of float
        Range of the Gaussian radial width (sigma) of the rings, Å⁻¹, > 0.
    diffuse_weight : tuple of float
        Range of the smooth diffuse fraction.
    diffuse_width_inv_A : tuple of float
        Range of the Gaussian width ``s`` of the diffuse halo, Å⁻¹, > 0.
    pixel_size_inv_A : float or None
        Detector sampling in Å⁻¹ per px.  None: read it per call from the data
        key ``pixel_size_inv_A`` (see :func:`stemforge.augment.augment_sample`).
    p : float
        Probability of applying the transform.

    Raises
    ------
    ValueError
        Malformed or reversed ranges, weights outside [0, 1] or summing (at
        their maxima) above 1, non-positive widths or pixel size.
    """

    def __init__(
        self,
        plasmon_weight: tuple[float, float] | float = (0.0, 0.0),
        plasmon_q0_inv_A: tuple[float, float] | float = (0.01, 0.1),
        ring_weight: tuple[float, float] | float = (0.0, 0.0),
        ring_q_inv_A: Sequence[tuple[float, float]] = AMORPHOUS_CARBON_RINGS_INV_A,
        ring_width_inv_A: tuple[float, float] | float = (0.02, 0.06),
        diffuse_weight: tuple[float, float] | float = (0.0, 0.0),
        diffuse_width_inv_A: tuple[float, float] | float = (0.3, 1.5),
        pixel_size_inv_A: float | None = None,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        name = type(self).__name__
        self.plasmon_weight = check_range(f"{name}.plasmon_weight", plasmon_weight, nonnegative=True, upper=1.0)
        self.plasmon_q0_inv_A = check_range(f"{name}.plasmon_q0_inv_A", plasmon_q0_inv_A, positive=True)
        self.ring_weight = check_range(f"{name}.ring_weight", ring_weight, nonnegative=True, upper=1.0)
        self.ring_q_inv_A = _check_ring_list(f"{name}.ring_q_inv_A", ring_q_inv_A)
        self.ring_width_inv_A = check_range(f"{name}.ring_width_inv_A", ring_width_inv_A, positive=True)
        self.diffuse_weight = check_range(f"{name}.diffuse_weight", diffuse_weight, nonnegative=True, upper=1.0)
        self.diffuse_width_inv_A = check_range(f"{name}.diffuse_width_inv_A", diffuse_width_inv_A, positive=True)
        top = self.plasmon_weight[1] + self.ring_weight[1] + self.diffuse_weight[1]
        if top > 1.0:
            raise ValueError(f"{name}: the maximal background weights sum to {top:g} > 1")
        if pixel_size_inv_A is not None:
            pixel_size_inv_A = _check_pixel_size(f"{name}.pixel_size_inv_A", pixel_size_inv_A)
        self.pixel_size_inv_A = pixel_size_inv_A
        self._grids: dict[tuple[int, int, float], _Grid] = {}

    @property
    def targets_as_params(self) -> list[str]:
        """Data keys this transform reads: the probe."""
        return ["probe"]

    def _grid(self, shape: tuple[int, int], pix: float) -> _Grid:
        key = (shape[0], shape[1], pix)
        grid = self._grids.get(key)
        if grid is None:
            if len(self._grids) >= 8:
                self._grids.clear()
            grid = self._grids[key] = _Grid(shape, pix)
        return grid

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """Draw weights and shapes, build the kernel and convolve the probe with it."""
        name = type(self).__name__
        probe = np.asarray(data["probe"])
        image = data["image"]
        if probe.ndim != 2 or probe.shape != image.shape[:2]:
            raise ValueError(f"{name}: probe must be (H, W) like the pattern, got {probe.shape} vs {image.shape}")
        pix = self.pixel_size_inv_A if self.pixel_size_inv_A is not None else data.get("pixel_size_inv_A")
        if pix is None:
            raise ValueError(f"{name}: pixel_size_inv_A (Å⁻¹/px) was given neither at construction nor as a data key")
        pix = _check_pixel_size(f"{name}: data['pixel_size_inv_A']", pix)
        rng = self.random_generator
        w_pl = uniform(rng, self.plasmon_weight)
        q0 = log_uniform(rng, self.plasmon_q0_inv_A)
        w_ring = uniform(rng, self.ring_weight)
        ring_q = [uniform(rng, r) for r in self.ring_q_inv_A]
        ring_amp = [float(rng.uniform(0.5, 1.0)) for _ in self.ring_q_inv_A]
        ring_sigma = uniform(rng, self.ring_width_inv_A)
        w_dif = uniform(rng, self.diffuse_weight)
        s_dif = uniform(rng, self.diffuse_width_inv_A)
        info = {
            "plasmon_weight": w_pl,
            "plasmon_q0_inv_A": q0,
            "ring_weight": w_ring,
            "ring_q_inv_A": ring_q,
            "ring_width_inv_A": ring_sigma,
            "diffuse_weight": w_dif,
            "diffuse_width_inv_A": s_dif,
        }
        total_w = w_pl + w_ring + w_dif
        if total_w == 0.0:
            return {"background": None, "total_weight": 0.0, **info}

        grid = self._grid(probe.shape, pix)
        kernel = _background_kernel(grid, w_pl, q0, w_ring, ring_q, ring_amp, ring_sigma, w_dif, s_dif)
        total_w = grid.total(kernel)  # = the weights' sum, less any ring that misses the detector
        if not total_w > 0.0:
            return {"background": None, "total_weight": 0.0, **info}
        bg = grid.convolve(probe, kernel)  # round-off negatives are removed in apply
        return {"background": bg, "total_weight": total_w, **info}

    def apply(
        self, img: np.ndarray, background: np.ndarray | None = None, total_weight: float = 0.0, **params: Any
    ) -> np.ndarray:
        """Return ``(1 - sum w) img + sum(img) bg`` in the pattern's dtype."""
        if background is None or total_weight == 0.0:
            return img
        total = float(img.sum())  # float32 pairwise summation, ~1e-7 relative
        kernels = _compiled_kernels()
        if kernels is not None and img.dtype == np.float32 and img.ndim == 2 and img.flags.c_contiguous:
            out = np.empty_like(img)
            kernels.blend(img.reshape(-1), background.reshape(-1), 1.0 - total_weight, total, out.reshape(-1))
            return out
        cv2.max(background, 0.0, dst=background)  # FFT round-off leaves ~-1e-9 in the far tails
        if img.dtype == np.float32 and img.ndim == 2:
            return cv2.addWeighted(img, 1.0 - total_weight, background, total, 0.0)  # one fused pass
        out = img * np.float32(1.0 - total_weight)
        out += background * np.float32(total)
        return out.astype(img.dtype, copy=False)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Constructor arguments, for albumentations serialisation and ``repr``."""
        return (
            "plasmon_weight",
            "plasmon_q0_inv_A",
            "ring_weight",
            "ring_q_inv_A",
            "ring_width_inv_A",
            "diffuse_weight",
            "diffuse_width_inv_A",
            "pixel_size_inv_A",
        )


class PlasmonBackground(SpecimenBackground):
    """Lorentzian ``1 / (q**2 + q0**2)`` background convolved with the probe (crystal4D's plasmon term).

    Parameters
    ----------
    weight : tuple of float
        Range of the fraction ``w`` of detected intensity moved into the background.
    q0_inv_A : tuple of float
        Range of ``q0``, Å⁻¹ (log-uniform).
    pixel_size_inv_A : float or None
        Å⁻¹ per px, or None to read the data key ``pixel_size_inv_A``.
    p : float
        Probability of applying the transform.
    """

    def __init__(
        self,
        weight: tuple[float, float] | float = (0.01, 0.1),
        q0_inv_A: tuple[float, float] | float = (0.01, 0.1),
        pixel_size_inv_A: float | None = None,
        p: float = 1.0,
    ):
        super().__init__(plasmon_weight=weight, plasmon_q0_inv_A=q0_inv_A, pixel_size_inv_A=pixel_size_inv_A, p=p)
        self.weight, self.q0_inv_A = self.plasmon_weight, self.plasmon_q0_inv_A

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Constructor arguments, for albumentations serialisation and ``repr``."""
        return ("weight", "q0_inv_A", "pixel_size_inv_A")


class AmorphousRings(SpecimenBackground):
    """Diffuse rings of an amorphous support film (default: amorphous carbon), convolved with the probe.

    Parameters
    ----------
    weight : tuple of float
        Range of the fraction of detected intensity moved into the rings.
    q_inv_A : sequence of tuple of float
        One ``(low, high)`` range of ``1/d`` (Å⁻¹) per ring.
    width_inv_A : tuple of float
        Range of the radial Gaussian sigma, Å⁻¹.
    pixel_size_inv_A : float or None
        Å⁻¹ per px, or None to read the data key ``pixel_size_inv_A``.
    p : float
        Probability of applying the transform.
    """

    def __init__(
        self,
        weight: tuple[float, float] | float = (0.0, 0.05),
        q_inv_A: Sequence[tuple[float, float]] = AMORPHOUS_CARBON_RINGS_INV_A,
        width_inv_A: tuple[float, float] | float = (0.02, 0.06),
        pixel_size_inv_A: float | None = None,
        p: float = 1.0,
    ):
        super().__init__(
            ring_weight=weight,
            ring_q_inv_A=q_inv_A,
            ring_width_inv_A=width_inv_A,
            pixel_size_inv_A=pixel_size_inv_A,
            p=p,
        )
        self.weight, self.q_inv_A, self.width_inv_A = self.ring_weight, self.ring_q_inv_A, self.ring_width_inv_A

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Constructor arguments, for albumentations serialisation and ``repr``."""
        return ("weight", "q_inv_A", "width_inv_A", "pixel_size_inv_A")


class DiffuseBackground(SpecimenBackground):
    """Smooth Gaussian halo ``exp(-q**2 / (2 s**2))`` about the beam, convolved with the probe.

    Parameters
    ----------
    weight : tuple of float
        Range of the fraction of detected intensity moved into the halo.
    width_inv_A : tuple of float
        Range of ``s``, Å⁻¹.
    pixel_size_inv_A : float or None
        Å⁻¹ per px, or None to read the data key ``pixel_size_inv_A``.
    p : float
        Probability of applying the transform.
    """

    def __init__(
        self,
        weight: tuple[float, float] | float = (0.0, 0.05),
        width_inv_A: tuple[float, float] | float = (0.3, 1.5),
        pixel_size_inv_A: float | None = None,
        p: float = 1.0,
    ):
        super().__init__(diffuse_weight=weight, diffuse_width_inv_A=width_inv_A, pixel_size_inv_A=pixel_size_inv_A, p=p)
        self.weight, self.width_inv_A = self.diffuse_weight, self.diffuse_width_inv_A

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Constructor arguments, for albumentations serialisation and ``repr``."""
        return ("weight", "width_inv_A", "pixel_size_inv_A")


def _check_pixel_size(name: str, value: Any) -> float:
    """Validate a positive finite pixel size (Å⁻¹ per px)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number (Å⁻¹ per px), got {value!r}") from None
    if not (v > 0 and np.isfinite(v)):
        raise ValueError(f"{name} must be a positive number (Å⁻¹ per px), got {value!r}")
    return v
