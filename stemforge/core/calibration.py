"""What a detector image's pixels mean: the calibration every stage shares.

Conventions
-----------
A detector image is indexed ``[row, col]``. Pixel ``(row, col)`` is centred on the spatial frequency
``k = ((col - origin_col)·p, (row - origin_row)·p)`` in Å⁻¹ (x along columns, y along rows), where ``p`` is
``pixel_size_inv_A`` (Å⁻¹/px at the specimen) and ``origin_px = (origin_row, origin_col)`` is where the undiffracted
beam falls. Simulated data (:mod:`stemforge.sim`) have the origin at the centre of pixel ``(H//2, W//2)``, the
convention of ``numpy.fft.fftshift``; experimental data have it wherever the beam fell
(:mod:`stemforge.analysis.calibration` finds it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from .legacy import upgrade_calibration
from .units import inv_A_to_mrad, mrad_to_inv_A, wavelength_A

__all__ = ["Calibration"]


@dataclass(frozen=True)
class Calibration:
    """A scan's (or a detector's) calibration. ``None`` marks a value that is not known.

    Parameters
    ----------
    pixel_size_inv_A : float or None
        Detector pixel size in Å⁻¹/px (at the specimen).
    energy_eV : float or None
        Beam energy in eV.
    semiangle_mrad : float or None
        Probe convergence semi-angle α in mrad.
    scan_step_A : tuple of float or None
        Probe step ``(row, col)`` between scan positions in Å.
    origin_px : tuple of float or None
        ``(row, col)`` of the undiffracted beam on the detector (px); ``None``: not yet calibrated.
    ellipticity : tuple of float or None
        ``(a, b, theta_rad)`` of the detector's elliptical distortion (semi-axes ratio as a/b; angle of a from
        the column axis), ``None`` when not measured.
    rotation_deg : float
        Rotation of the detector's axes relative to the scan axes (degrees).
    source : dict
        What the file recorded, in its own units (format, axes, header values); not compared, not in the repr.
    """

    pixel_size_inv_A: float | None = None
    energy_eV: float | None = None
    semiangle_mrad: float | None = None
    scan_step_A: tuple[float, float] | None = None
    origin_px: tuple[float, float] | None = None
    ellipticity: tuple[float, float, float] | None = None
    rotation_deg: float = 0.0
    source: dict = field(default_factory=dict, compare=False, repr=False)

    def with_(self, **changes) -> Calibration:
        """A copy with some values changed (earlier names such as ``q_pixel_size`` are accepted)."""
        return replace(self, **upgrade_calibration(changes))

    def as_dict(self) -> dict:
        """Plain JSON values (tuples as lists), the keys being the field names."""
        d = asdict(self)
        for k in ("scan_step_A", "origin_px", "ellipticity"):
            if d[k] is not None:
                d[k] = [float(v) for v in d[k]]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        """From :meth:`as_dict` output or any calibration mapping stemforge ever wrote (earlier key names such as
        ``q_pixel_size`` or ``pixel_size`` are mapped; unknown keys are ignored)."""
        d = upgrade_calibration(dict(d))
        for k in ("scan_step_A", "origin_px", "ellipticity"):
            if d.get(k) is not None:
                d[k] = tuple(float(v) for v in d[k])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def wavelength_A(self) -> float | None:
        """Relativistic electron wavelength in Å, or ``None`` without an energy."""
        return None if self.energy_eV is None else wavelength_A(self.energy_eV)

    @property
    def semiangle_inv_A(self) -> float | None:
        """The convergence semi-angle as a spatial frequency α/λ in Å⁻¹ (the bright-field disk's radius), or
        ``None`` without energy and angle."""
        if self.energy_eV is None or self.semiangle_mrad is None:
            return None
        return mrad_to_inv_A(self.semiangle_mrad, self.energy_eV)

    @property
    def pixel_size_mrad(self) -> float | None:
        """The detector pixel as a scattering angle in mrad (``pixel_size_inv_A`` × λ), or ``None``."""
        if self.pixel_size_inv_A is None or self.energy_eV is None:
            return None
        return inv_A_to_mrad(self.pixel_size_inv_A, self.energy_eV)

    def disk_radius_px(self) -> float | None:
        """Radius of the bright-field disk in detector pixels (α/λ / pixel size), or ``None``."""
        k = self.semiangle_inv_A
        if k is None or not self.pixel_size_inv_A:
            return None
        return k / self.pixel_size_inv_A

    def check_pixel_size(self) -> float:
        """``pixel_size_inv_A`` as a positive finite float, else :class:`~stemforge.core.errors.DataError`."""
        from .errors import DataError

        p = self.pixel_size_inv_A
        if p is None:
            raise DataError(
                "the calibration has no detector pixel size in Å⁻¹/px (pixel_size_inv_A is None); set it, e.g. "
                "cube.calibration = cube.calibration.with_(pixel_size_inv_A=0.03)"
            )
        if not (math.isfinite(float(p)) and float(p) > 0):
            raise DataError(f"calibration.pixel_size_inv_A must be a positive number (Å⁻¹/px), got {p}")
        return float(p)
