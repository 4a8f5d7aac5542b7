"""Physical constants and unit conversions shared by every stage.

Units (in names or docstrings everywhere in stemforge): lengths in Å, spatial frequencies in Å⁻¹ (``k = 1/d``, no
2π), angles in mrad, beam energy in eV (the acceleration voltage times e), electron counts in e⁻.
"""

from __future__ import annotations

import math

__all__ = [
    "PLANCK_J_S",
    "ELECTRON_MASS_KG",
    "ELEMENTARY_CHARGE_C",
    "SPEED_OF_LIGHT_M_S",
    "wavelength_A",
    "relativistic_mass_factor",
    "mrad_to_inv_A",
    "inv_A_to_mrad",
    "length_to_A",
    "reciprocal_to_inv_A",
    "normalise_unit",
]

# CODATA 2018
PLANCK_J_S = 6.62607015e-34
ELECTRON_MASS_KG = 9.1093837015e-31
ELEMENTARY_CHARGE_C = 1.602176634e-19
SPEED_OF_LIGHT_M_S = 299792458.0

#: length units -> Å
_LENGTH_A = {
    "pm": 0.01,
    "a": 1.0,
    "å": 1.0,
    "ang": 1.0,
    "angstrom": 1.0,
    "nm": 10.0,
    "µm": 1e4,
    "um": 1e4,
    "mm": 1e7,
    "cm": 1e8,
    "m": 1e10,
}
#: angle units -> rad
_ANGLE_RAD = {"mrad": 1e-3, "rad": 1.0, "µrad": 1e-6, "urad": 1e-6}


def wavelength_A(energy_eV: float) -> float:
    """Relativistic electron wavelength λ in Å for a beam energy in eV (λ = h / √(2 m₀ E (1 + E / 2m₀c²)))."""
    energy_eV = float(energy_eV)
    if not energy_eV > 0:
        raise ValueError(f"energy must be positive (eV), got {energy_eV}")
    e = energy_eV * ELEMENTARY_CHARGE_C
    m0 = ELECTRON_MASS_KG
    return PLANCK_J_S / math.sqrt(2 * m0 * e * (1 + e / (2 * m0 * SPEED_OF_LIGHT_M_S**2))) * 1e10


def relativistic_mass_factor(energy_eV: float) -> float:
    """γ = 1 + E / (m₀c²) for a beam energy E in eV."""
    return 1.0 + float(energy_eV) * ELEMENTARY_CHARGE_C / (ELECTRON_MASS_KG * SPEED_OF_LIGHT_M_S**2)


def mrad_to_inv_A(angle_mrad: float, energy_eV: float) -> float:
    """A scattering (or convergence) angle in mrad as a spatial frequency in Å⁻¹: ``k = θ / λ`` (small angles)."""
    return float(angle_mrad) * 1e-3 / wavelength_A(energy_eV)


def inv_A_to_mrad(k_inv_A: float, energy_eV: float) -> float:
    """A spatial frequency in Å⁻¹ as a scattering angle in mrad: ``θ = k λ`` (small angles)."""
    return float(k_inv_A) * wavelength_A(energy_eV) * 1e3


def normalise_unit(unit) -> str:
    """A unit label as written in files (``b"nm"``, ``"[Å^-1]"``, ``"1 / nm"``, ``"μm"``) in one lower-case form."""
    if isinstance(unit, bytes):
        unit = unit.decode(errors="replace")
    u = str(unit if unit is not None else "").strip().lower()
    u = u.replace(" ", "").replace("μ", "µ").replace("⁻¹", "^-1").replace("**", "^")
    return u[1:-1] if u.startswith("[") and u.endswith("]") else u


def length_to_A(value: float, unit) -> float | None:
    """A length in ``unit`` (pm, Å/A, nm, µm, mm, cm, m) in Å; ``None`` when ``unit`` is not a length unit."""
    f = _LENGTH_A.get(normalise_unit(unit))
    return None if f is None else float(value) * f


def reciprocal_to_inv_A(value: float, unit, energy_eV: float | None = None) -> float | None:
    """A spatial frequency (``1/nm``, ``nm^-1``, ``1/Å``, ``A^-1``...) or a scattering angle (mrad, rad) in Å⁻¹.

    Angles become ``k = θ/λ`` with the relativistic wavelength λ (Å) of ``energy_eV``; ``None`` when the unit is
    neither, or an angle is given without an energy.
    """
    u = normalise_unit(unit)
    length = u[2:] if u.startswith("1/") else u[:-3] if u.endswith("^-1") else None
    if length is not None:
        f = _LENGTH_A.get(length)
        return None if f is None else float(value) / f
    rad = _ANGLE_RAD.get(u)
    if rad is None or not energy_eV:
        return None
    return mrad_to_inv_A(float(value) * rad * 1e3, float(energy_eV))
