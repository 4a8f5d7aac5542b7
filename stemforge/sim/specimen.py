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


@dataclass
class Specimen:
    """Atoms in an orthogonal cell ready for ``abtem.Potential``.

    Attributes
    ----------
    atoms : ase.Atoms
        Orthogonal cell; z is the beam direction, thickness = ``atoms.cell[2, 2]`` in Å.
    rotation : ndarray
        (3, 3) rotation from the structure's Cartesian frame to the simulation frame.
    periodic : bool
        True for zone-axis supercells (periodic in x, y, z); False for boxes cut from a rotated crystal.
    period_A : float or None
        Lattice period along the beam (zone axes), or None.
    repeat_cell : ase.Atoms or None
        The one-period orthogonal cell that ``atoms`` repeats (zone axes only).
    """

    atoms: object
    rotation: np.ndarray
    periodic: bool
    period_A: float | None = None
    repeat_cell: object = None
    info: dict = field(default_factory=dict)

    @property
    def extent_A(self) -> tuple[float, float]:
        return float(self.atoms.cell[0, 0]), float(self.atoms.cell[1, 1])

    @property
    def thickness_A(self) -> float:
        return float(self.atoms.cell[2, 2])


def _to_atoms(structure):
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_atoms(structure)


def orthogonal_lattice_basis(lattice_matrix: np.ndarray, uvw, max_index: int = 6) -> np.ndarray | None:
    """Integer matrix ``P`` (rows n1, n2, uvw) whose lattice vectors are mutually orthogonal, or None.

    ``n1`` is the shortest lattice vector perpendicular to [uvw] (index ≤ ``max_index``) and ``n2`` the
    shortest perpendicular to both, oriented so that ``det(P) > 0`` (right-handed).
    """
    A = np.asarray(lattice_matrix, dtype=float)
    uvw = np.asarray(uvw, dtype=int)
    t3 = uvw @ A
    rng = range(-max_index, max_index + 1)
    cands = np.array([n for n in itertools.product(rng, rng, rng) if any(n)], dtype=int)
    vecs = cands @ A
    lengths = np.linalg.norm(vecs, axis=1)
    order = np.lexsort((cands[:, 2], cands[:, 1], cands[:, 0], np.round(lengths, 8)))
    cands, vecs, lengths = cands[order], vecs[order], lengths[order]
    perp3 = np.abs(vecs @ t3) / (lengths * np.linalg.norm(t3)) < _PERP_TOL
    for i in np.flatnonzero(perp3):
        t1 = vecs[i]
        ok = perp3 & (np.abs(vecs @ t1) / (lengths * lengths[i]) < _PERP_TOL)
        j = np.flatnonzero(ok)
        if len(j) == 0:
            continue
        P = np.array([cands[i], cands[j[0]], uvw])
        if round(np.linalg.det(P)) < 0:
            P[1] *= -1
        return P
    return None


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
    atoms = unit * (nx, ny, nz)
    return Specimen(
        atoms=atoms,
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
