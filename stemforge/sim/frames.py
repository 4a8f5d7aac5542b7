"""The simulation frame and the lab (detector) frame.

A run's specimen is simulated unrotated (its zone-axis cell or box as built) and its pattern is rotated in-plane
by φ onto the detector afterwards (:func:`stemforge.sim.detector.resampling_matrix`). Labels are given in the lab
frame (crystal → lab rotation ``Rz(φ)·Q``), the probe is simulated in the specimen's frame (optics rotated by −φ).
Angles: φ in degrees, beam tilt in mrad, aberration angles ``phiNM`` in rad.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .optics import Optics


def rotation_z(deg: float) -> np.ndarray:
    """Rotation by ``deg`` degrees about the beam axis z (3 × 3, counter-clockwise seen from +z)."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def simulation_frame_optics(optics: Optics, in_plane_deg: float) -> Optics:
    """The probe as seen from a specimen rotated back by ``in_plane_deg`` (degrees): the pattern is simulated with
    the specimen unrotated and rotated onto the detector afterwards, so lab-frame beam tilt (mrad) and aberration
    angles (``phiNM``, rad) are rotated by −φ."""
    phi = math.radians(in_plane_deg)
    c, s = math.cos(-phi), math.sin(-phi)
    tx, ty = optics.tilt_mrad
    ab = {k: (v - phi if k.startswith("phi") else v) for k, v in optics.aberrations_A.items()}
    return replace(optics, tilt_mrad=(c * tx - s * ty, s * tx + c * ty), aberrations_A=ab)
