"""Electron optics: wavelength, probe parameters, and the probe's lateral spread in a specimen.

Units: energy in eV, wavelength in Å, angles in mrad, lengths (defocus, aberrations) in Å.
abTEM's sign convention is used: ``defocus = -C10``; positive defocus focuses the probe inside the specimen
at that depth below the entrance surface.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from stemforge.core.units import mrad_to_inv_A, wavelength_A

__all__ = ["Optics", "probe_spread_radius_A"]


@dataclass(frozen=True)
class Optics:
    """One probe-forming setting.

    Parameters
    ----------
    energy : float
        Acceleration energy in eV.
    semiangle_mrad : float
        Convergence semi-angle α in mrad.
    defocus_A : float
        Defocus in Å (abTEM convention, ``-C10``).
    aberrations_A : dict
        Further aberration coefficients in abTEM's polar notation (``C30`` = Cs in Å, ``C12``/``phi12``
        two-fold astigmatism in Å / rad, ``C21``/``phi21`` coma, ``C23``/``phi23`` three-fold astigmatism, …).
    tilt_mrad : tuple
        Beam tilt (x, y) in mrad relative to the specimen, used for small mistilts.
    source_size_A : float
        Standard deviation (Å) of the Gaussian effective source; > 0 adds partial spatial coherence by
        incoherently averaging probe positions.
    """

    energy: float
    semiangle_mrad: float
    defocus_A: float = 0.0
    aberrations_A: dict = field(default_factory=dict)
    tilt_mrad: tuple[float, float] = (0.0, 0.0)
    source_size_A: float = 0.0

    @property
    def wavelength_A(self) -> float:
        return wavelength_A(self.energy)

    @property
    def aperture_radius_inv_A(self) -> float:
        """Radius of the bright-field disk in Å⁻¹ (α / λ)."""
        return mrad_to_inv_A(self.semiangle_mrad, self.energy)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["tilt_mrad"] = list(self.tilt_mrad)
        return d


def probe_spread_radius_A(
    optics: Optics, thickness_A: float, scattering_angle_mrad: float, airy_multiple: float = 3.0
) -> float:
    """Radius (Å) that contains the probe at every depth of a specimen of the given thickness.

    The criterion used to size non-periodic boxes (``stemforge.sim.specimen``): the convergent cone has radius
    ``|z - defocus|·α`` at depth ``z``; the focused probe has a diffraction-limited core of Airy radius
    ``0.61 λ/α`` (we take ``airy_multiple`` of them to contain its rings); and electrons scattered to angles up
    to ``scattering_angle_mrad`` move sideways by at most ``z·θ`` inside the specimen. Hence::

        R(t) = airy_multiple · 0.61 λ/α + max(|f|, |t - f|)·α + t·θ

    with all angles in radians. Tests check that boxes of this half-width reproduce a much wider box.
    """
    alpha = optics.semiangle_mrad * 1e-3
    theta = scattering_angle_mrad * 1e-3
    f = optics.defocus_A
    airy = 0.61 * optics.wavelength_A / alpha
    cone = max(abs(f), abs(thickness_A - f)) * alpha
    return airy_multiple * airy + cone + thickness_A * theta
