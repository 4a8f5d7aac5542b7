"""Crystal orientations for 4D-STEM simulation: zone axes, random orientations, fundamental zone.

Conventions
-----------
* Crystal frame: the pymatgen Cartesian frame of the structure's lattice. The rows of
  ``M = structure.lattice.matrix`` are the lattice vectors a, b, c in Angstrom; the lattice
  direction [uvw] is the Cartesian vector ``t = u a + v b + w c = M.T @ (u, v, w)``.
* Orientation: a proper rotation ``R`` (3x3, det +1) from crystal to lab coordinates,
  ``x_lab = R @ x_crys``. The electron beam travels along lab +z; in the crystal frame it points
  along ``R.T @ (0, 0, 1)``, the third row of ``R``.
* Zone axis: [uvw] is the zone axis of ``R`` when ``R @ t`` is parallel to +z (same sense).
* In-plane rotation: ``R = Rz(phi) @ R0``, ``Rz(phi) = [[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]]``,
  right-handed about +z: the crystal direction that ``R0`` puts on +x ends at ``(cos phi, sin phi, 0)``
  (counter-clockwise with x to the right and y up, i.e. seen from +z looking along -z).
* Symmetry: ``S`` are the proper point-group rotations in crystal Cartesian coordinates. ``S`` maps
  the crystal onto itself, so ``R`` and ``R @ S`` are the same specimen (symmetry acts on the
  crystal side). The fundamental zone (FZ) keeps, of all ``R @ S``, the one with the smallest
  rotation angle (the Rodrigues / axis-angle FZ around the identity).
* Mistilt: a small beam tilt (x, y) in mrad that the simulator applies as a probe tilt; it is not
  folded into ``R``.
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Orientation",
    "miller_bravais_to_miller",
    "parse_zone_axis",
    "zone_axis_rotation",
    "proper_point_group",
    "reduce_to_fundamental_zone",
    "random_orientations",
    "symmetry_distinct_zone_axes",
    "misorientation_deg",
    "sample_mistilt",
]

_PERP_TOL = 1e-6  # rad: "exactly" perpendicular for the default in-plane reference
_SEARCH = 6  # lattice vectors with |indices| <= _SEARCH are searched for that reference
_BRACKETS = re.compile(r"^\s*[\[<(]?\s*(.*?)\s*[\]>)]?\s*$")


# --------------------------------------------------------------------------- indices
def _integers(values: Any, what: str) -> tuple[int, ...]:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.dtype == bool or arr.dtype.kind not in "iuf":
        raise ValueError(f"{what} must be a sequence of integers, got {values!r}")
    if not np.all(np.isfinite(arr)) or np.any(np.abs(arr - np.round(arr)) > 1e-9):
        raise ValueError(f"{what} must contain integers only, got {values!r}")
    return tuple(int(round(float(x))) for x in arr)


def _reduce(indices: tuple[int, ...], what: str) -> tuple[int, ...]:
    g = math.gcd(*indices)
    if g == 0:
        raise ValueError(f"{what}: the zero vector {list(indices)} is not a direction")
    return tuple(i // g for i in indices)


def _format(indices: tuple[int, ...]) -> str:
    return "[" + ("" if all(abs(i) < 10 for i in indices) else ",").join(map(str, indices)) + "]"


def _rank_key(indices: tuple[int, ...]) -> tuple:
    """Deterministic preference: smallest sum of |indices|, then lexicographically largest."""
    return sum(abs(i) for i in indices), tuple(-i for i in indices)


def miller_bravais_to_miller(uvtw: Any) -> tuple[int, int, int]:
    """4-index direction [UVTW] -> 3-index [uvw] = [2U + V, 2V + U, W], reduced by the gcd.

    Raises ``ValueError`` unless four integers with ``U + V + T == 0`` and a nonzero direction.
    """
    indices = _integers(uvtw, "Miller-Bravais direction [UVTW]")
    if len(indices) != 4:
        raise ValueError(f"a Miller-Bravais direction needs exactly 4 indices [UVTW], got {uvtw!r}")
    u, v, t, w = indices
    if u + v + t != 0:
        raise ValueError(f"Miller-Bravais direction {list(indices)}: U + V + T must be 0, got {u + v + t}")
    return _reduce((2 * u + v, 2 * v + u, w), "Miller-Bravais direction")  # type: ignore[return-value]


def parse_zone_axis(spec: Any) -> tuple[tuple[int, int, int], str]:
    """Parse a zone axis into reduced 3-index [uvw] and a display label.

    ``spec`` is ``(u, v, w)``, ``(U, V, T, W)``, ``"110"``, ``"[1-10]"``, ``"[2-1-10]"``, ``"1,1,0"``,
    ``"1 1 0"`` or ``"<110>"``; without separators each index is one digit with optional sign.
    Returns ``(uvw, label)``: the direction reduced by the gcd and a ``"[110]"`` style label (commas
    if an index has two digits; 4-index input keeps a 4-index label). Raises ``ValueError``.
    """
    if isinstance(spec, str):
        inner = _BRACKETS.match(spec).group(1)
        if re.search(r"[,\s]", inner):
            tokens = [t for t in re.split(r"[,\s]+", inner) if t]
        elif re.fullmatch(r"([+-]?\d)+", inner):
            tokens = re.findall(r"[+-]?\d", inner)
        else:
            raise ValueError(f"cannot parse zone axis {spec!r}: use e.g. '110', '[1-10]', '[2-1-10]' or '1,1,0'")
        try:
            indices = tuple(int(t) for t in tokens)
        except ValueError:
            raise ValueError(f"cannot parse zone axis {spec!r}: indices must be integers") from None
    elif isinstance(spec, (bool, np.bool_)) or np.ndim(spec) != 1:
        raise ValueError(f"zone axis must be a string or a sequence of 3 or 4 integers, got {spec!r}")
    else:
        indices = _integers(spec, "zone axis")
    if len(indices) == 3:
        uvw = _reduce(indices, f"zone axis {spec!r}")
        return uvw, _format(uvw)  # type: ignore[return-value]
    if len(indices) == 4:
        return miller_bravais_to_miller(indices), _format(_reduce(indices, f"zone axis {spec!r}"))
    raise ValueError(f"zone axis {spec!r} must have 3 ([uvw]) or 4 ([UVTW]) indices, got {len(indices)}")


# --------------------------------------------------------------------------- rotations
def _structure(structure: Any):
    from pymatgen.core import Structure

    from .structures import load_structure

    return structure if isinstance(structure, Structure) else load_structure(structure)


def _lattice_matrix(structure: Any) -> np.ndarray:
    lattice = getattr(structure, "lattice", structure)  # a Structure or a Lattice
    matrix = getattr(lattice, "matrix", None)
    return np.asarray(_structure(structure).lattice.matrix if matrix is None else matrix, dtype=np.float64)


def _angles(mats: np.ndarray) -> np.ndarray:
    return np.arccos(np.clip((np.trace(mats, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0))


def _default_x(matrix: np.ndarray, z_hat: np.ndarray) -> np.ndarray:
    rng = range(-_SEARCH, _SEARCH + 1)
    grid = np.array([v for v in itertools.product(rng, rng, rng) if any(v)])
    cart = grid @ matrix
    length = np.linalg.norm(cart, axis=1)
    cos = (cart @ z_hat) / length
    mask = np.abs(cos) < math.sin(_PERP_TOL)
    if not mask.any():  # no lattice vector exactly perpendicular: shortest non-parallel one
        mask = np.abs(cos) < 1.0 - 1e-9
    ties = grid[mask & (length <= length[mask].min() * (1 + 1e-6))]
    best = min((tuple(int(i) for i in v) for v in ties), key=_rank_key)
    return np.asarray(best, dtype=np.float64) @ matrix


def zone_axis_rotation(structure: Any, uvw: Any, in_plane_deg: float = 0.0, x_direction: Any = None) -> np.ndarray:
    """Rotation ``R`` putting the zone axis [uvw] along the beam, ``R @ (M.T @ uvw)`` parallel to +z.

    Parameters
    ----------
    structure : pymatgen Structure or Lattice (or any ``load_structure`` specification)
    uvw : anything :func:`parse_zone_axis` accepts (3- or 4-index)
    in_plane_deg : float
        Right-handed rotation about +z in degrees, applied last: ``R = Rz(in_plane_deg) @ R0``.
    x_direction : sequence of int or str, optional
        Lattice direction whose component perpendicular to the zone axis ``R0`` maps onto +x.
        Default: the shortest nonzero lattice vector perpendicular to the zone axis (within 1e-6 rad,
        |indices| <= 6); ties go to the smallest sum of |indices|, then the lexicographically largest
        indices ([100] before [010] before [-100]). If none is exactly perpendicular, the
        perpendicular projection of the shortest lattice vector not parallel to the axis is used.

    Returns
    -------
    numpy.ndarray
        (3, 3) proper rotation.
    """
    if not math.isfinite(float(in_plane_deg)):
        raise ValueError(f"in_plane_deg must be finite, got {in_plane_deg!r}")
    matrix = _lattice_matrix(structure)
    z_hat = np.asarray(parse_zone_axis(uvw)[0], dtype=np.float64) @ matrix
    z_hat /= np.linalg.norm(z_hat)
    if x_direction is None:
        x_vec = _default_x(matrix, z_hat)
    else:
        x_vec = np.asarray(parse_zone_axis(x_direction)[0], dtype=np.float64) @ matrix
    x_perp = x_vec - (x_vec @ z_hat) * z_hat
    if np.linalg.norm(x_perp) < 1e-6 * np.linalg.norm(x_vec):
        raise ValueError(f"x_direction {x_direction!r} is parallel to the zone axis {uvw!r}")
    x_hat = x_perp / np.linalg.norm(x_perp)
    c, s = math.cos(math.radians(in_plane_deg)), math.sin(math.radians(in_plane_deg))
    rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return rz @ np.stack([x_hat, np.cross(z_hat, x_hat), z_hat])


def proper_point_group(structure: Any, symprec: float = 1e-3) -> np.ndarray:
    """Proper rotations of the crystal's point group as Cartesian matrices (crystal frame).

    ``symprec`` is the ``SpacegroupAnalyzer`` tolerance in Angstrom. Returns (K, 3, 3) orthonormal
    det +1 matrices, deduplicated, identity first, then by rotation angle. K = 24 for m-3m, 12 for -43m
    and 6/mmm, 8 for 4/mmm, 6 for 6mm and -3m, 4 for mmm, 2 for 2/m.
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ops = SpacegroupAnalyzer(_structure(structure), symprec=symprec).get_point_group_operations(cartesian=True)
    mats = np.array([op.rotation_matrix for op in ops], dtype=np.float64)
    mats = mats[np.linalg.det(mats) > 0]
    if np.abs(mats @ np.swapaxes(mats, 1, 2) - np.eye(3)).max() > 1e-3:
        raise RuntimeError("point-group operations are not orthogonal in the Cartesian frame")
    u, _, vt = np.linalg.svd(mats)  # nearest orthonormal matrices (removes symprec-level noise)
    unique = {tuple(np.round(m, 6).ravel() + 0.0): m for m in u @ vt}
    order = sorted(unique, key=lambda k: (round(float(_angles(unique[k])), 6), tuple(-x for x in k)))
    return np.stack([unique[k] for k in order])


def _stack(r: Any, what: str) -> np.ndarray:
    arr = np.asarray(r, dtype=np.float64)
    if arr.ndim not in (2, 3) or arr.shape[-2:] != (3, 3):
        raise ValueError(f"{what} must have shape (3, 3) or (n, 3, 3), got {arr.shape}")
    return arr


def reduce_to_fundamental_zone(R: Any, ops: Any) -> np.ndarray:
    """Map orientations into the fundamental zone: of all ``R @ S`` (S in ``ops``) keep the one with
    the smallest rotation angle; near-ties (trace within 1e-9) go to the first ``S`` in ``ops``.

    ``R`` has shape (3, 3) or (n, 3, 3) (the result has the same shape); ``ops`` is (K, 3, 3), e.g.
    from :func:`proper_point_group`.
    """
    rs = _stack(R, "R")
    flat = rs.reshape(-1, 3, 3)
    ops = _stack(ops, "ops").reshape(-1, 3, 3)
    traces = np.einsum("nij,kji->nk", flat, ops)  # trace(R @ S)
    choice = np.argmax(traces >= traces.max(axis=1, keepdims=True) - 1e-9, axis=1)
    return (flat @ ops[choice]).reshape(rs.shape)


def random_orientations(structure: Any, n: int, seed: Any, in_fundamental_zone: bool = True) -> np.ndarray:
    """``n`` orientations uniform in the Haar measure on SO(3) (``scipy`` ``Rotation.random``).

    Returns (n, 3, 3) matrices. ``seed`` (int, ``numpy.random.Generator`` or None): the same integer
    gives the same orientations. With ``in_fundamental_zone`` they are reduced with the proper point
    group of ``structure`` (only its symmetry is used) and stay uniform, on 1/K of SO(3).
    """
    from scipy.spatial.transform import Rotation

    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if n == 0:
        return np.empty((0, 3, 3))
    rng = np.random.default_rng(seed)
    try:
        mats = Rotation.random(int(n), rng=rng).as_matrix()
    except TypeError:  # scipy < 1.15
        mats = Rotation.random(int(n), random_state=rng).as_matrix()
    mats = mats.reshape(-1, 3, 3)
    return reduce_to_fundamental_zone(mats, proper_point_group(structure)) if in_fundamental_zone else mats


def symmetry_distinct_zone_axes(structure: Any, max_index: int = 1) -> list[tuple[int, int, int]]:
    """One zone axis per symmetry class of reduced [uvw] with all |indices| <= ``max_index``.

    Directions are equivalent when a proper point-group rotation maps one onto the other or onto
    its negative (beam reversal). Each class is represented by its member with the smallest sum of
    |indices|, then the lexicographically largest indices; the list is sorted by the real-space
    length |u a + v b + w c| in Angstrom (shortest period first).
    """
    if isinstance(max_index, bool) or not isinstance(max_index, (int, np.integer)) or max_index < 1:
        raise ValueError(f"max_index must be a positive integer, got {max_index!r}")
    structure = _structure(structure)
    matrix = structure.lattice.matrix
    # S acts on t = M.T @ uvw, so on indices as inv(M.T) @ S @ M.T (integer matrices)
    raw = np.linalg.solve(matrix.T, proper_point_group(structure) @ matrix.T)
    if not np.allclose(raw, np.round(raw), atol=1e-3):
        raise RuntimeError("point-group operations do not map the lattice onto itself (check symprec)")
    index_ops = np.round(raw).astype(int)
    rng = range(-max_index, max_index + 1)
    seen: set[tuple[int, ...]] = set()
    reps = []
    for d in sorted({_reduce(v, "") for v in itertools.product(rng, rng, rng) if any(v)}, key=_rank_key):
        if d not in seen:
            images = index_ops @ np.asarray(d)
            orbit = {tuple(int(x) for x in v) for v in np.concatenate([images, -images])}
            seen |= orbit
            reps.append(min(orbit, key=_rank_key))
    return sorted(reps, key=lambda r: (round(float(np.linalg.norm(np.asarray(r) @ matrix)), 6), _rank_key(r)))


def misorientation_deg(R1: Any, R2: Any, ops: Any) -> float | np.ndarray:
    """Smallest rotation angle in degrees between two orientations, modulo crystal symmetry.

    The angle of ``(R1 @ S1).T @ (R2 @ S2)`` equals that of ``R1.T @ R2 @ (S2 @ S1.T)``, so the
    minimum over ``S`` in ``ops`` of ``angle(R1.T @ R2 @ S)`` is returned. Stacks broadcast.
    """
    delta = np.swapaxes(_stack(R1, "R1"), -1, -2) @ _stack(R2, "R2")
    traces = np.einsum("...ij,kji->...k", delta, _stack(ops, "ops").reshape(-1, 3, 3))
    angle = np.degrees(np.arccos(np.clip((traces.max(axis=-1) - 1.0) / 2.0, -1.0, 1.0)))
    return float(angle) if np.ndim(angle) == 0 else angle


def sample_mistilt(rng: Any, max_mrad: float) -> tuple[float, float]:
    """Beam tilt (x, y) in mrad, uniform in the disk of radius ``max_mrad`` (mrad).

    Always draws two uniforms from ``rng`` (a ``numpy.random.Generator``; an int seed also works),
    so the random stream does not depend on ``max_mrad``.
    """
    max_mrad = float(max_mrad)
    if not (math.isfinite(max_mrad) and max_mrad >= 0):
        raise ValueError(f"max_mrad must be a finite number >= 0, got {max_mrad!r}")
    u, v = np.random.default_rng(rng).random(2)
    r, theta = max_mrad * math.sqrt(u), 2.0 * math.pi * v
    return r * math.cos(theta), r * math.sin(theta)


# --------------------------------------------------------------------------- record
@dataclass(frozen=True)
class Orientation:
    """One specimen orientation: ``rotation`` (3x3 float64, crystal -> lab, read-only), ``zone`` label
    (``"[110]"``, ``"[2-1-10]"`` or ``"random"``), reduced 3-index ``zone_axis`` (None if random),
    ``in_plane_deg`` (degrees, already in ``rotation``) and ``mistilt_mrad`` (beam tilt x, y in mrad,
    applied by the simulator as probe tilt, not in ``rotation``)."""

    rotation: np.ndarray
    zone: str
    zone_axis: tuple[int, int, int] | None
    in_plane_deg: float = 0.0
    mistilt_mrad: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        rot = np.array(self.rotation, dtype=np.float64)
        if rot.shape != (3, 3) or not np.allclose(rot @ rot.T, np.eye(3), atol=1e-6) or np.linalg.det(rot) <= 0:
            raise ValueError("rotation must be a proper 3x3 rotation matrix (orthonormal, det +1)")
        rot.setflags(write=False)
        tilt = tuple(float(t) for t in self.mistilt_mrad)
        if len(tilt) != 2:
            raise ValueError(f"mistilt_mrad must be (x, y) in mrad, got {self.mistilt_mrad!r}")
        axis = None if self.zone_axis is None else _integers(self.zone_axis, "zone_axis")
        if axis is not None and len(axis) != 3:
            raise ValueError(f"zone_axis must be 3-index [uvw] or None, got {self.zone_axis!r}")
        for name, value in (
            ("rotation", rot),
            ("zone", str(self.zone)),
            ("zone_axis", axis),
            ("in_plane_deg", float(self.in_plane_deg)),
            ("mistilt_mrad", tilt),
        ):
            object.__setattr__(self, name, value)

    @classmethod
    def from_zone_axis(
        cls,
        structure: Any,
        zone: Any,
        in_plane_deg: float = 0.0,
        mistilt_mrad: tuple[float, float] = (0.0, 0.0),
        x_direction: Any = None,
    ) -> Orientation:
        """The orientation of :func:`zone_axis_rotation`, labelled with the parsed zone axis."""
        uvw, label = parse_zone_axis(zone)
        return cls(
            zone_axis_rotation(structure, uvw, in_plane_deg, x_direction), label, uvw, in_plane_deg, tuple(mistilt_mrad)
        )

    @property
    def beam_direction_crystal(self) -> np.ndarray:
        """Unit beam direction in crystal Cartesian coordinates, ``R.T @ (0, 0, 1)``."""
        return self.rotation[2].copy()

    def as_dict(self) -> dict:
        """JSON-serialisable dict; :meth:`from_dict` inverts it."""
        return {
            "rotation": self.rotation.tolist(),
            "zone": self.zone,
            "zone_axis": None if self.zone_axis is None else list(self.zone_axis),
            "in_plane_deg": self.in_plane_deg,
            "mistilt_mrad": list(self.mistilt_mrad),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Orientation:
        return cls(
            data["rotation"],
            data["zone"],
            data.get("zone_axis"),
            data.get("in_plane_deg", 0.0),
            tuple(data.get("mistilt_mrad", (0.0, 0.0))),
        )

    def _key(self) -> tuple:
        return self.rotation.tobytes(), self.zone, self.zone_axis, self.in_plane_deg, self.mistilt_mrad

    def __eq__(self, other: object) -> bool:
        return self._key() == other._key() if isinstance(other, Orientation) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())
