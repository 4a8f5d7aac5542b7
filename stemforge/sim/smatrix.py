"""Optics reuse: a thickness series of S-matrices from ONE propagation of a plane-wave set (PRISM, interpolation 1).

The probe is a linear combination of the plane waves ``exp(2πi k·r)`` on the simulation grid whose frequencies
lie inside its aperture: ``ψ(r) = (1/N) Σ_k a_k exp(-2πi k·r₀) exp(2πi k·r)``, where ``a_k`` are the probe's
Fourier coefficients at the origin (aperture × aberration phase) and ``r₀`` its position. Multislice is linear in
the incident wave, so the exit wave of every probe is the same combination of the exit waves ``S_k`` of the
plane waves. :func:`build_smatrix` propagates all plane waves within ``α_max`` once, with abTEM's own potential
slices, transmission functions, antialias aperture and Fresnel propagator (``conventional_multislice_step``),
keeping the Fourier transform of the set at each requested exit plane. :meth:`ThicknessSMatrix.patterns` then
forms the CBED pattern of any probe position, defocus, aberrations and ``α ≤ α_max`` at every thickness without
any further FFT: ``I(q) = |Σ_k a_k exp(-2πi k·r₀) Ŝ_k(q)|² / (N² Σ|a|²)``, a (patterns × beams) @ (beams × pixels)
product. abTEM 1.0.11's own ``SMatrix`` cannot do this (exit planes are broken there).

Patterns use the conventions of :func:`stemforge.sim.multislice.simulate_cbed`: ``[..., ky, kx]``, k = 0 at
``(ny//2, nx//2)``, fractions of the incident beam per native pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stemforge.core.units import wavelength_A

from .optics import Optics
from .setup import SimulationSetup, build_potential, build_probe, ensure_abtem, grid_gpts, simulation_setup


def beam_count(semiangle_mrad: float, extent_A: tuple[float, float], energy: float) -> int:
    """Approximate number of plane waves inside the aperture, π(α·L/λ)² (for a rectangular cell, π·α²·Lx·Ly/λ²)."""
    k = semiangle_mrad * 1e-3 / wavelength_A(energy)
    return math.ceil(math.pi * k * k * extent_A[0] * extent_A[1])


# Cost model (in units of one multislice pass of one wave): the S-matrix needs one pass per beam plus a cheap
# reduction per pattern (a dot product over the beams, no FFT); batched multislice needs one pass per pattern
# that is not a thickness of an already computed pass. See benchmarks/sim_throughput.py for the measured speed.
SMATRIX_OVERHEAD = 1.0  # extra passes: potential, FFTs of the exit planes
REDUCTION_COST = 0.01  # one pattern's reduction relative to one multislice pass


def choose_engine(num_beams: int, num_patterns: int, num_thicknesses: int = 1, beam_cost: float = 1.0) -> str:
    """``"smatrix"`` or ``"multislice"``, whichever the cost model says is cheaper for one specimen.

    ``num_patterns`` counts every pattern needed from the specimen (probe positions × optics × thicknesses);
    a multislice pass yields all ``num_thicknesses`` at once, an S-matrix propagation yields every pattern.
    ``beam_cost`` is one beam's propagation relative to one probe's multislice pass: 1 on the supercell, about
    the repeat cell's share of the grid on the Bloch path (:func:`build_smatrix`).
    """
    if num_beams < 1 or num_patterns < 1:
        raise ValueError("num_beams and num_patterns must be positive")
    passes = math.ceil(num_patterns / max(1, num_thicknesses))
    smatrix = beam_cost * num_beams + SMATRIX_OVERHEAD + REDUCTION_COST * num_patterns
    return "smatrix" if smatrix < passes else "multislice"


@dataclass
class ThicknessSMatrix:
    """Fourier-space exit planes of a plane-wave set; see the module docstring.

    Attributes
    ----------
    beams : ndarray, int, (B, 2)
        FFT indices (ix, iy) of the plane waves on the ``gpts`` grid.
    k_beams : ndarray, (B, 2)
        Their frequencies (kx, ky) in Å⁻¹.
    planes : ndarray, complex64, (T, B, ny_c, nx_c), or list of T sparse (B, ny_c·nx_c) matrices
        ``fftshift(fft2(S_k))`` at each thickness, cropped around k = 0 and in detector orientation [ky, kx].
        The Bloch path stores them sparse: a plane wave ``k`` on a periodic crystal only reaches ``k + G`` (G the
        repeat cell's reciprocal lattice), a few percent of the grid, so its exit planes are kept as CSR rows
        (complex64) instead of dense images (~30× less memory and reduction time on a 150 nm zone axis).
    crop_shape : tuple of int
        ``(ny_c, nx_c)``: the cropped grid of the patterns.
    setup : SimulationSetup
        Grid, slicing and exit planes it was propagated with (:func:`stemforge.sim.setup.simulation_setup`).
    """

    energy: float
    max_semiangle_mrad: float
    gpts: tuple[int, int]
    extent_A: tuple[float, float]
    beams: np.ndarray
    k_beams: np.ndarray
    planes: np.ndarray
    thicknesses_A: np.ndarray
    sampling: tuple[float, float]
    grid: dict
    device: str = "cpu"
    setup: SimulationSetup | None = None
    crop_shape: tuple[int, int] | None = None
    tilt_mrad: tuple[float, float] = (0.0, 0.0)

    @property
    def num_beams(self) -> int:
        return len(self.beams)

    @property
    def nbytes(self) -> int:
        """Memory held by the exit planes (bytes)."""
        if isinstance(self.planes, np.ndarray):
            return int(self.planes.nbytes)
        return int(sum(p.data.nbytes + p.indices.nbytes + p.indptr.nbytes for p in self.planes))

    def coefficients(self, optics: Optics) -> np.ndarray:
        """Probe Fourier coefficients ``a_k`` at the origin for the beams (abTEM's own probe; complex128)."""
        if abs(optics.energy - self.energy) > 1e-6 * self.energy:
            raise ValueError(f"optics energy {optics.energy} eV differs from the S-matrix's {self.energy} eV")
        if optics.semiangle_mrad > self.max_semiangle_mrad * (1 + 1e-9):
            raise ValueError(
                f"α = {optics.semiangle_mrad} mrad exceeds the S-matrix's α_max {self.max_semiangle_mrad} mrad"
            )
        if not np.allclose(optics.tilt_mrad, self.tilt_mrad, rtol=0, atol=1e-12):
            raise ValueError(
                f"beam tilt {tuple(optics.tilt_mrad)} mrad differs from the S-matrix's {self.tilt_mrad} mrad (an "
                "S-matrix is propagated for one tilt)"
            )
        if optics.source_size_A > 0:
            raise NotImplementedError("partial spatial coherence is not supported by the S-matrix engine")
        probe = build_probe(optics, self.device, extent_A=self.extent_A, gpts=self.gpts)
        arr = probe.build(scan=np.zeros((1, 2)), lazy=False).array
        arr = arr.get() if hasattr(arr, "get") else arr
        a0 = np.fft.fft2(np.asarray(arr, dtype=np.complex128).reshape(self.gpts))
        total = float(np.sum(np.abs(a0) ** 2))
        a = a0[self.beams[:, 0], self.beams[:, 1]]
        outside = total - float(np.sum(np.abs(a) ** 2))
        if outside > 1e-9 * total:
            raise ValueError(f"probe has {outside / total:.2e} of its intensity outside the S-matrix's beams")
        return a / math.sqrt(total)

    def patterns(self, optics: Optics, positions_A, thickness_index=None) -> np.ndarray:
        """CBED patterns ``(T, P, ny_c, nx_c)`` (float64) of the probe at each position (``(P, 2)`` in Å)."""
        pos = np.atleast_2d(np.asarray(positions_A, dtype=float))
        a = self.coefficients(optics)
        phase = np.exp(-2j * np.pi * (pos @ self.k_beams.T))  # (P, B)
        A = (phase * a[None, :]).astype(np.complex64)
        n = self.gpts[0] * self.gpts[1]
        idx = range(len(self.planes)) if thickness_index is None else np.atleast_1d(thickness_index)
        H, W = self.crop_shape
        B = self.num_beams
        out = np.empty((len(idx), len(pos), H, W), dtype=np.float64)
        for j, t in enumerate(idx):
            plane = self.planes[t]
            if isinstance(plane, np.ndarray):
                psi = A @ plane.reshape(B, H * W)
            else:  # sparse rows: (A @ S) computed as (Sᵀ @ Aᵀ)ᵀ
                psi = np.asarray((plane.T @ A.T).T)
            out[j] = (np.abs(psi.astype(np.complex128)) ** 2 / (n * n)).reshape(len(pos), H, W)
        return out


def build_smatrix(
    specimen,
    energy: float,
    max_semiangle_mrad: float,
    thicknesses_A,
    sampling_A: float = 0.1,
    slice_thickness_A: float = 2.0,
    parametrization: str = "lobato",
    crop_half_px: int | None = None,
    device: str = "cpu",
    fft_timer: list | None = None,
    bloch: bool | None = None,
    tilt_mrad: tuple[float, float] = (0.0, 0.0),
) -> ThicknessSMatrix:
    """Propagate every plane wave within ``max_semiangle_mrad`` once and keep each requested exit plane.

    Grid, slicing, exit planes and potential are those of :func:`stemforge.sim.multislice.simulate_cbed` with the
    same arguments (static lattice): one :func:`stemforge.sim.setup.simulation_setup`. Energy in eV, semi-angle in
    mrad, thicknesses, sampling and slice thickness in Å. ``crop_half_px`` keeps only native frequencies within that
    many pixels of k = 0 on each axis (``2·h + 1`` pixels; None keeps the full grid). ``fft_timer``, if a list,
    receives ``[FFT seconds, propagation seconds]`` (Bloch path: every FFT; supercell path: the exit-plane FFTs
    only).

    ``tilt_mrad`` (x, y) tilts the beam relative to the specimen (a mistilt) as abTEM does for a tilted probe: the
    Fresnel propagator gains ``exp(−2πi·dz·(kx·tan tx + ky·tan ty))`` and the probe's aperture stays centred, so
    every probe of one S-matrix shares that tilt.

    ``bloch`` (default: automatic) propagates each plane wave ``exp(2πi k·r) u_k(r)`` on ONE repeat cell of a
    periodic zone-axis specimen when the grid is a whole multiple of the lateral repetitions (Bloch's theorem:
    ``u_k`` has the crystal's period). The transmission functions are abTEM's for the repeat cell, the
    propagator and antialias aperture are abTEM's formulas evaluated at the supercell frequencies ``k + G``, so
    the result equals the supercell propagation (up to float32 rounding) at a fraction of the cost.
    """
    import time

    import abtem
    import scipy.fft
    from abtem.antialias import AntialiasAperture
    from abtem.multislice import FresnelPropagator, conventional_multislice_step

    ensure_abtem(device)
    setup = simulation_setup(specimen, thicknesses_A, sampling_A, slice_thickness_A)
    lx, ly = setup.extent_A
    gpts = setup.gpts
    wanted = setup.unique_planes

    # plane waves inside the aperture (with one pixel of margin for abTEM's soft aperture edge)
    sx, sy = setup.sampling_A
    fx, fy = np.fft.fftfreq(gpts[0], sx), np.fft.fftfreq(gpts[1], sy)
    kmax = max_semiangle_mrad * 1e-3 / wavelength_A(energy) + 1.0 * max(1 / lx, 1 / ly)
    IX, IY = np.meshgrid(np.arange(gpts[0]), np.arange(gpts[1]), indexing="ij")
    inside = np.hypot(fx[IX], fy[IY]) <= kmax
    beams = np.stack([IX[inside], IY[inside]], axis=1)
    k_beams = np.stack([fx[beams[:, 0]], fy[beams[:, 1]]], axis=1)

    # Fourier-space crop in detector orientation: rows ky, cols kx, k = 0 at (h, h) of a (2h+1)² block
    def crop_rows(n, h):
        if h is None or 2 * h + 1 >= n:
            return np.arange(n)
        return np.arange(n // 2 - h, n // 2 + h + 1)

    rx, ry = crop_rows(gpts[0], crop_half_px), crop_rows(gpts[1], crop_half_px)
    fft_seconds = 0.0

    def keep(arr):
        nonlocal fft_seconds
        t0 = time.perf_counter()
        f = scipy.fft.fft2(np.asarray(arr), workers=-1)
        fft_seconds += time.perf_counter() - t0
        f = np.fft.fftshift(f, axes=(-2, -1))[:, rx][:, :, ry]
        return np.ascontiguousarray(np.swapaxes(f, -1, -2)).astype(np.complex64)

    reps = _bloch_repetitions(specimen, gpts) if bloch in (None, True) else None
    if bloch is True and reps is None:
        raise ValueError("bloch=True needs a periodic zone-axis specimen whose grid is a multiple of its repetitions")
    if reps is not None:
        stored, fft_seconds, prop_seconds = _propagate_bloch(
            specimen, setup, reps, energy, beams, parametrization, device, rx, ry, tilt_mrad
        )
    else:
        x = np.arange(gpts[0]) * sx
        y = np.arange(gpts[1]) * sy
        array = (
            np.exp(2j * np.pi * k_beams[:, 0, None, None] * x[None, :, None])
            * np.exp(2j * np.pi * k_beams[:, 1, None, None] * y[None, None, :])
        ).astype(np.complex64)
        from abtem.core.axes import OrdinalAxis

        waves = abtem.Waves(
            array,
            energy=energy,
            extent=(lx, ly),
            ensemble_axes_metadata=[OrdinalAxis(label="beam", values=tuple(range(len(beams))))],
            metadata={"base_tilt_x": float(tilt_mrad[0]), "base_tilt_y": float(tilt_mrad[1])},
        )
        stored = {}
        if -1 in wanted:
            stored[-1] = keep(waves.array)
        potential = build_potential(specimen.atoms, setup, parametrization, device)
        propagator, aperture = FresnelPropagator(), AntialiasAperture()
        last = max(wanted)
        prop_seconds = 0.0
        for i, potential_slice in enumerate(potential.generate_slices()):
            if i > last:
                break
            t0 = time.perf_counter()
            waves = conventional_multislice_step(waves, potential_slice, propagator, aperture)
            prop_seconds += time.perf_counter() - t0
            if i in wanted:
                stored[i] = keep(waves.array)
    if fft_timer is not None:
        fft_timer[:] = [fft_seconds, prop_seconds]
    planes = [stored[p] for p in setup.planes] if reps is not None else np.stack([stored[p] for p in setup.planes])
    grid = setup.grid_facts(num_beams=len(beams), bloch_repetitions=None if reps is None else list(reps))
    return ThicknessSMatrix(
        energy=float(energy),
        max_semiangle_mrad=float(max_semiangle_mrad),
        gpts=gpts,
        extent_A=(lx, ly),
        beams=beams,
        k_beams=k_beams,
        planes=planes,
        thicknesses_A=setup.thicknesses_A,
        sampling=(1 / ly, 1 / lx),
        grid=grid,
        device=device,
        setup=setup,
        crop_shape=(len(ry), len(rx)),
        tilt_mrad=(float(tilt_mrad[0]), float(tilt_mrad[1])),
    )


def _bloch_repetitions(specimen, gpts) -> tuple[int, int] | None:
    if not (specimen.periodic and specimen.repeat_cell is not None and "repetitions" in specimen.info):
        return None
    nx, ny = specimen.info["repetitions"][:2]
    if gpts[0] % nx or gpts[1] % ny:
        return None
    return int(nx), int(ny)


def commensurate_sampling(specimen, sampling_A: float) -> float:
    """Largest sampling ≤ ``sampling_A`` whose grid (as :func:`stemforge.sim.grids.grid_points` picks it) is a whole
    multiple of a zone-axis specimen's lateral repetitions on both axes, so :func:`build_smatrix` can use the
    repeat cell (Bloch path); returns ``sampling_A`` unchanged when no such grid is found nearby."""
    if not (specimen.periodic and "repetitions" in specimen.info):
        return sampling_A
    lx, ly = specimen.extent_A
    nx, ny = specimen.info["repetitions"][:2]
    n0 = grid_gpts((lx, ly), sampling_A)[0]
    for n in range(n0, 2 * n0):
        s = lx / n
        g = grid_gpts((lx, ly), s)
        if g[0] % nx == 0 and g[1] % ny == 0:
            return s
    return sampling_A


def _antialias(q: np.ndarray, sampling: tuple[float, float]) -> np.ndarray:
    """abTEM's antialias aperture (abtem.antialias.antialias_aperture) evaluated at frequencies ``|q|``."""
    from abtem.core import config

    cutoff = config.get("antialias.cutoff") / max(sampling) / 2
    taper = config.get("antialias.taper") / max(sampling)
    if taper > 0.0:
        a = 0.5 * (1 + np.cos(np.pi * (q - cutoff + taper) / taper))
        a[q > cutoff] = 0.0
        return np.where(q > cutoff - taper, a, 1.0)
    return (q < cutoff).astype(float)


def _propagate_bloch(
    specimen,
    setup: SimulationSetup,
    reps: tuple[int, int],
    energy: float,
    beams,
    parametrization,
    device,
    rx,
    ry,
    tilt_mrad=(0.0, 0.0),
):
    """Propagate the plane waves ``beams`` (FFT indices on ``setup.gpts``) through one repeat column of a periodic
    zone-axis specimen (see :func:`build_smatrix`); returns the cropped Fourier exit planes (``setup``'s exit
    planes, -1 = entrance surface) as sparse (B, ny_c·nx_c) CSR matrices, and the FFT and propagation seconds."""
    import time

    import scipy.fft
    import scipy.sparse as sp
    from abtem.antialias import AntialiasAperture

    gpts, (sx, sy), dz = setup.gpts, setup.sampling_A, setup.slice_thickness_A
    wanted = setup.unique_planes
    cg = (gpts[0] // reps[0], gpts[1] // reps[1])
    # one lateral repeat cell over the full depth, with the specimen's own z coordinates: abTEM assigns atoms
    # lying on slice boundaries by rounding, so only the specimen's exact coordinates slice exactly as it does;
    # the set-up's slices on the repeat cell's own grid
    cell = specimen.repeat_cell.repeat((1, 1, int(specimen.info["repetitions"][2])))
    potential = build_potential(cell, setup, parametrization, device, gpts=cg)
    aperture = AntialiasAperture()

    def transmission(sl):
        tf = aperture.bandlimit(sl.transmission_function(energy=energy), in_place=False)
        arr = tf.array
        arr = arr.get() if hasattr(arr, "get") else arr
        return np.asarray(arr).reshape(cg).astype(np.complex64)

    # supercell FFT index of k + G for every beam and cell frequency: (ix_k + m·nx) mod gx
    mx = np.fft.fftfreq(cg[0], 1.0 / cg[0]).astype(int)  # signed cell indices in FFT order
    my = np.fft.fftfreq(cg[1], 1.0 / cg[1]).astype(int)
    qx_idx = (beams[:, 0, None] + mx[None, :] * reps[0]) % gpts[0]  # (B, cgx)
    qy_idx = (beams[:, 1, None] + my[None, :] * reps[1]) % gpts[1]  # (B, cgy)
    fx, fy = np.fft.fftfreq(gpts[0], sx), np.fft.fftfreq(gpts[1], sy)
    QX, QY = fx[qx_idx][:, :, None], fy[qy_idx][:, None, :]
    from abtem.core.energy import energy2wavelength

    lam = energy2wavelength(energy)
    k2 = QX**2 + QY**2
    phase = -np.pi * lam * dz * k2
    if tuple(tilt_mrad) != (0.0, 0.0):  # abTEM's tilted propagator (abtem.multislice, the base tilt)
        phase = phase - 2 * np.pi * dz * (QX * np.tan(tilt_mrad[0] / 1e3) + QY * np.tan(tilt_mrad[1] / 1e3))
    kernel = (np.exp(1j * phase) * _antialias(np.sqrt(k2), (sx, sy))).astype(np.complex64)
    # crop: supercell fftshifted position of each (beam, G), and whether it is kept
    pos_x = (qx_idx + gpts[0] // 2) % gpts[0] - rx[0]
    pos_y = (qy_idx + gpts[1] // 2) % gpts[1] - ry[0]
    ok_x, ok_y = (pos_x >= 0) & (pos_x < len(rx)), (pos_y >= 0) & (pos_y < len(ry))
    scale = reps[0] * reps[1]
    B = len(beams)
    # FFTW plans for the batch of repeat cells (deterministic FFTW_ESTIMATE plans, abTEM's thread setting): ~2.5x
    # scipy's pocketfft on these small batched 2D transforms; u and f are the plans' own aligned buffers
    import pyfftw
    from abtem.core import config as abtem_config

    threads = int(abtem_config.get("fftw.threads") or 1)
    u = pyfftw.empty_aligned((B, *cg), dtype=np.complex64)
    f = pyfftw.empty_aligned((B, *cg), dtype=np.complex64)
    forward = pyfftw.FFTW(u, f, axes=(-2, -1), direction="FFTW_FORWARD", flags=("FFTW_ESTIMATE",), threads=threads)
    backward = pyfftw.FFTW(f, u, axes=(-2, -1), direction="FFTW_BACKWARD", flags=("FFTW_ESTIMATE",), threads=threads)
    u[...] = 1.0
    fft_seconds = prop_seconds = 0.0

    # the comb of beam b: (b, k_b + G) -> row b, column [ky, kx] flat index of the crop, where it falls inside
    inside = ok_x[:, :, None] & ok_y[:, None, :]  # (B, cgx, cgy)
    rows = np.broadcast_to(np.arange(B)[:, None, None], inside.shape)[inside]
    cols = (pos_y[:, None, :] * len(rx) + pos_x[:, :, None])[inside]

    def keep(u):
        nonlocal fft_seconds
        t0 = time.perf_counter()
        f = scipy.fft.fft2(u, workers=-1) * scale
        fft_seconds += time.perf_counter() - t0
        data = f[inside].astype(np.complex64)
        return sp.csr_matrix((data, (rows, cols)), shape=(B, len(ry) * len(rx)))

    stored = {}
    if -1 in wanted:
        stored[-1] = keep(u)
    for i, sl in enumerate(potential.generate_slices()):
        if i > max(wanted):
            break
        t0 = time.perf_counter()
        u *= transmission(sl)
        t1 = time.perf_counter()
        forward()  # f = FFT(u)
        t2 = time.perf_counter()
        f *= kernel
        t3 = time.perf_counter()
        backward()  # u = IFFT(f), normalised
        t4 = time.perf_counter()
        fft_seconds += (t2 - t1) + (t4 - t3)
        prop_seconds += t4 - t0
        if i in wanted:
            stored[i] = keep(u)
    return stored, fft_seconds, prop_seconds
