"""abTEM-ready specimens: orthogonal zone-axis supercells and oriented boxes cut from a rotated crystal.

Frames: ``x_lab = R @ x_crys`` maps the structure's Cartesian frame (pymatgen, Å) to the simulation frame,
where the beam travels along +z and the specimen's entrance surface is z = 0.

* **Zone axes** (:func:`zone_axis_specimen`): an orthogonal supercell spanned by three mutually orthogonal
  lattice vectors, the third being the zone axis [uvw] itself. The beam period along z is therefore a true
  lattice period (no stacking errors such as ``ase.build.surface(..., layers=1)`` produces for Si[111]), and
  the cell is periodic in all three directions. Built with ``ase.build.make_supercell``, which places every
  lattice point of the integer transformation exactly.
* **Arbitrary orientations** (:func:`oriented_box_specimen`): the crystal is rotated and a box is cut from it
  with ``abtem.atoms.cut_cell`` in slabs along z (so memory stays proportional to the box). The box is not
  periodic laterally, so it must be wide enough that the probe never reaches an edge: its half-width is at
  least :func:`stemforge.sim.optics.probe_spread_radius_A` for the deepest exit plane.
* **Small mistilts** are not built into the atoms: they are applied as a probe tilt, which keeps the cell
  periodic (``stemforge.sim.optics.Optics.tilt_mrad``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

_PERP_TOL = 1e-6  # |cos| below which two lattice vectors count as orthogonal


class _SupercellAtoms:
    """The ``atoms`` of a :class:`Specimen`: given, or — for a zone axis given as ``None`` — built on first use as
    ``repeat_cell × repetitions`` (a 150 nm supercell holds ~10⁶ atoms and takes seconds to build; the S-matrix's
    repeat-column path never needs it)."""

    def __get__(self, obj, objtype=None):
        if obj is None:
            raise AttributeError("atoms")  # no class-level default: a required dataclass field
        atoms = obj.__dict__.get("_atoms")
        if atoms is None and obj.repeat_cell is not None:
            atoms = obj.repeat_cell * tuple(int(v) for v in obj.info["repetitions"])
            obj.__dict__["_atoms"] = atoms
        return atoms

    def __set__(self, obj, value):
        obj.__dict__["_atoms"] = value


@dataclass
class Specimen:
    """Atoms in an orthogonal cell ready for ``abtem.Potential``.

    Attributes
    ----------
    atoms : ase.Atoms
        Orthogonal cell; z is the beam direction, thickness = ``atoms.cell[2, 2]`` in Å. A zone axis may be given
        ``None`` with a ``repeat_cell`` and ``info["repetitions"]``: the supercell is then built when first used.
    rotation : ndarray
        (3, 3) rotation from the structure's Cartesian frame to the simulation frame.
    periodic : bool
        True for zone-axis supercells (periodic in x, y, z); False for boxes cut from a rotated crystal.
    period_A : float or None
        Lattice period along the beam (zone axes), or None.
    repeat_cell : ase.Atoms or None
        The one-period orthogonal cell that ``atoms`` repeats (zone axes only).
    """

    atoms: object = _SupercellAtoms()
    rotation: np.ndarray
    periodic: bool
    period_A: float | None = None
    repeat_cell: object = None
    info: dict = field(default_factory=dict)

    def _cell_diagonal(self) -> np.ndarray:
        atoms = self.__dict__.get("_atoms")
        if atoms is None and self.repeat_cell is not None:  # without building the supercell
            return np.diag(np.asarray(self.repeat_cell.cell)) * np.asarray(self.info["repetitions"], dtype=float)
        return np.diag(np.asarray(self.atoms.cell))

    @property
    def extent_A(self) -> tuple[float, float]:
        d = self._cell_diagonal()
        return float(d[0]), float(d[1])

    @property
    def thickness_A(self) -> float:
        return float(self._cell_diagonal()[2])


def _to_atoms(structure):
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_atoms(structure)


def orthogonal_lattice_basis(lattice_matrix: np.ndarray, uvw, max_index: int = 6) -> np.ndarray | None:
    """Integer matrix ``P`` (rows n1, n2, uvw) whose lattice vectors are mutually orthogonal, or None.

    ``n1`` is the shortest lattice vector perpendicular to [uvw] (index ≤ ``max_index``) and ``n2`` the
    shortest perpendicular to both, oriented so that ``det(P) > 0`` (right-handed).
    """
    return near_orthogonal_basis(lattice_matrix, uvw, max_index, max_cos=_PERP_TOL, strict=True)


def near_orthogonal_basis(
    lattice_matrix: np.ndarray, uvw, max_index: int = 6, max_cos: float = 0.005, strict: bool = False
):
    """Integer matrix ``P`` (rows n1, n2, uvw) whose lattice vectors are orthogonal to within ``max_cos`` (|cos| of
    every pair; below it with ``strict``), the shortest such pair first, right-handed; None when there is none.
    For low-symmetry crystals (monoclinic, triclinic) whose zone axes have no exactly orthogonal supercell (see
    :func:`sheared_for_zone_axis`)."""
    A = np.asarray(lattice_matrix, dtype=float)
    uvw = np.asarray(uvw, dtype=int)
    t3 = uvw @ A
    rng = range(-max_index, max_index + 1)
    cands = np.array([n for n in itertools.product(rng, rng, rng) if any(n)], dtype=int)
    vecs = cands @ A
    lengths = np.linalg.norm(vecs, axis=1)
    order = np.lexsort((cands[:, 2], cands[:, 1], cands[:, 0], np.round(lengths, 8)))
    cands, vecs, lengths = cands[order], vecs[order], lengths[order]

    def within(cos):
        return cos < max_cos if strict else cos <= max_cos

    perp3 = within(np.abs(vecs @ t3) / (lengths * np.linalg.norm(t3)))
    for i in np.flatnonzero(perp3):
        j = np.flatnonzero(perp3 & within(np.abs(vecs @ vecs[i]) / (lengths * lengths[i])))
        if len(j):
            P = np.array([cands[i], cands[j[0]], uvw])
            if round(np.linalg.det(P)) < 0:
                P[1] *= -1
            return P
    return None


def sheared_for_zone_axis(structure, uvw, max_index: int = 6, max_cos: float = 0.005):
    """The crystal sheared (by at most ~``max_cos``) so that [uvw] has an exactly orthogonal periodic supercell,
    and the largest strain component; ``(None, 0.0)`` when no near-orthogonal supercell exists.

    The lattice vectors ``V = P·A`` of a :func:`near_orthogonal_basis` are replaced by the orthogonal frame closest
    to them (Gram–Schmidt from the zone axis, lengths kept); the same deformation applied to the lattice
    (fractional coordinates kept) gives a structure :func:`zone_axis_specimen` can cut exactly. Used for the zone
    axes of monoclinic and triclinic crystals (e.g. ZrO2 [010]: a 0.17 % shear); labels are computed on the same
    sheared structure, so patterns and labels agree.
    """
    from pymatgen.core import Lattice, Structure

    A = np.asarray(structure.lattice.matrix, dtype=float)
    P = near_orthogonal_basis(A, uvw, max_index, max_cos)
    if P is None:
        return None, 0.0
    V = P @ A
    e3 = V[2] / np.linalg.norm(V[2])
    e1 = V[0] - (V[0] @ e3) * e3
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(e3, e1)
    W = np.linalg.norm(V, axis=1)[:, None] * np.stack([e1, e2, e3])
    M = np.linalg.solve(V, W)  # V·M = W: the deformation, in the structure's Cartesian frame
    sheared = Structure(Lattice(A @ M), structure.species, structure.frac_coords)
    strain = float(np.abs(0.5 * (M + M.T) - np.eye(3)).max() + np.abs(0.5 * (M - M.T)).max())
    return sheared, strain


def zone_axis_specimen(structure, uvw, thickness_A: float, min_extent_A: float, max_index: int = 6) -> Specimen:
    """Periodic orthogonal supercell with [uvw] along +z, repeated to ``thickness_A`` and ``min_extent_A``.

    The thickness is rounded up to whole beam periods; callers pick exit planes at the thicknesses wanted.
    Raises ValueError when no orthogonal supercell with index ≤ ``max_index`` exists (use
    :func:`oriented_box_specimen` for such directions).
    """
    from ase.build import make_supercell

    A = structure.lattice.matrix
    P = orthogonal_lattice_basis(A, uvw, max_index)
    if P is None:
        raise ValueError(f"no orthogonal supercell with [uvw]={list(uvw)} as beam axis up to index {max_index}")
    cell_vecs = P @ A
    lengths = np.linalg.norm(cell_vecs, axis=1)
    Q = cell_vecs / lengths[:, None]  # rows: lab x, y, z in crystal coordinates -> R = Q
    if np.linalg.det(Q) < 0:  # pragma: no cover - guarded by det(P) > 0
        raise RuntimeError("left-handed supercell")
    unit = make_supercell(_to_atoms(structure), P, wrap=True)
    unit.positions = unit.positions @ Q.T
    unit.set_cell(np.diag(lengths), scale_atoms=False)
    unit.wrap()
    nx = max(1, math.ceil(min_extent_A / lengths[0] - 1e-9))
    ny = max(1, math.ceil(min_extent_A / lengths[1] - 1e-9))
    nz = max(1, math.ceil(thickness_A / lengths[2] - 1e-9))
    return Specimen(
        atoms=None,  # unit × (nx, ny, nz), built when first used
        rotation=Q,
        periodic=True,
        period_A=float(lengths[2]),
        repeat_cell=unit,
        info={"supercell_matrix": P.tolist(), "repetitions": [nx, ny, nz]},
    )


def oriented_box_specimen(structure, rotation, box_A: tuple[float, float, float], slab_A: float = 40.0) -> Specimen:
    """Atoms of the crystal rotated by ``rotation`` inside an orthogonal box ``(Lx, Ly, Lz)`` in Å.

    The crystal is rotated (positions and cell) and cut slab by slab along z with ``abtem.atoms.cut_cell``,
    so that only a thin block is ever repeated. The crystal's origin lies at the box's lateral centre (so
    boxes of different widths hold the same crystal around their centre). The result is not laterally
    periodic: size the box with :func:`stemforge.sim.optics.probe_spread_radius_A`.
    """
    from abtem.atoms import cut_cell
    from ase import Atoms

    R = np.asarray(rotation, dtype=float)
    if R.shape != (3, 3) or not np.allclose(R @ R.T, np.eye(3), atol=1e-8) or np.linalg.det(R) < 0:
        raise ValueError("rotation must be a proper 3×3 rotation matrix")
    lx, ly, lz = (float(v) for v in box_A)
    crystal = _to_atoms(structure)
    crystal.positions = crystal.positions @ R.T
    crystal.set_cell(np.asarray(crystal.cell) @ R.T, scale_atoms=False)
    pieces = []
    n_slabs = max(1, math.ceil(lz / slab_A))
    dz = lz / n_slabs
    for k in range(n_slabs):
        # the rotated crystal's origin sits at the box's lateral centre, whatever the box size
        slab = cut_cell(crystal, cell=(lx, ly, dz), origin=(-lx / 2, -ly / 2, k * dz))
        pos = slab.positions.copy()
        pos[:, 2] += k * dz
        pieces.append((slab.numbers.copy(), pos))
    numbers = np.concatenate([p[0] for p in pieces])
    positions = np.concatenate([p[1] for p in pieces])
    atoms = Atoms(numbers=numbers, positions=positions, cell=np.diag([lx, ly, lz]), pbc=True)
    return Specimen(atoms=atoms, rotation=R, periodic=False, info={"box_A": [lx, ly, lz]})
