"""Crystal structures for simulation: a small built-in library and one loader for everything else.

Structures are :class:`pymatgen.core.Structure` objects, lengths in Angstrom.
:func:`load_structure` accepts

* a built-in library name or alias, case-insensitive (``"Si"``, ``"mos2-2h"``, ``"rutile"``); see
  :func:`list_structures` and ``sim/data/structures.json`` (sources and Debye-Waller factors);
* a path (``str`` or ``os.PathLike``) to a CIF (cell as written in the file, ``primitive=False``),
  a pymatgen Structure JSON file, or anything else ``Structure.from_file`` reads (POSCAR, ...);
* a ``Structure.as_dict()`` dict or the same as a JSON string;
* a pymatgen ``Structure`` (a copy is returned) or ASE ``Atoms``;
* ``"ase:NAME"`` or ``"ase:NAME:crystalstructure:a[:c]"`` built with ``ase.build.bulk`` (the
  conventional cubic cell where ASE can make one), e.g. ``"ase:Cu"``, ``"ase:Si:diamond:5.431"``;
* a Materials Project id such as ``"mp-149"`` (needs the ``mp_api`` package and ``MP_API_KEY``).

Input that cannot be turned into an ordered, non-empty crystal raises :class:`StructureError`
with a one-line message naming the input and the problem. Parser warnings are suppressed.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib.util
import json
import math
import os
import re
import sys
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any

from pymatgen.core import DummySpecies, Lattice, Structure

__all__ = [
    "StructureError",
    "list_structures",
    "library_entry",
    "load_structure",
    "structure_info",
    "debye_waller_sigmas",
]

LIBRARY_PATH = Path(__file__).resolve().parent / "data" / "structures.json"
#: Built-in structures kept out of every training set stemforge ships a config for (the default dataset, the
#: corpus), with the zone axis the accuracy benchmark views them along: three lattices (fcc cubic, trigonal
#: corundum, hexagonal layered) that no shipped model has seen (benchmarks/analysis_accuracy.py; tests check it).
HELD_OUT_STRUCTURES = {"Au": "[110]", "Al2O3": "[0001]", "MoS2-2H": "[0001]"}
_MP_ID = re.compile(r"^(mp|mvc)-\d+$", re.IGNORECASE)
_FILE_SUFFIXES = {".cif", ".mcif", ".json", ".vasp", ".poscar", ".xyz", ".xsf", ".cssr"}
_MIN_SEPARATION = 0.5  # Angstrom; closer atoms mean overlapping (malformed) sites


class StructureError(ValueError):
    """A structure specification could not be turned into an ordered crystal structure."""


class _Quiet(warnings.catch_warnings):
    """Silence warnings while parsing; with ``record=True`` they are collected instead."""

    def __enter__(self):
        caught = super().__enter__()
        warnings.simplefilter("always" if caught is not None else "ignore")
        return caught


def _label(spec: Any) -> str:
    text = " ".join(repr(os.fspath(spec) if isinstance(spec, os.PathLike) else spec).split())
    if len(text) <= 100:
        return text
    return "'..." + text[-96:] if isinstance(spec, (str, os.PathLike)) else text[:97] + "..."  # keep file names


def _one_line(exc: BaseException | str) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return msg if len(msg) <= 200 else msg[:197] + "..."


# --------------------------------------------------------------------------- library
@functools.lru_cache(maxsize=1)
def _library() -> dict[str, dict]:
    with open(LIBRARY_PATH, encoding="utf-8") as fh:
        return json.load(fh)["structures"]


@functools.lru_cache(maxsize=1)
def _name_index() -> dict[str, str]:
    index: dict[str, str] = {}
    for name, entry in _library().items():
        for key in [name, *entry.get("aliases", [])]:
            index.setdefault(key.lower(), name)
    return index


def list_structures() -> list[str]:
    """Names of the built-in library structures, sorted (aliases not included)."""
    return sorted(_library())


def library_entry(name: str) -> dict:
    """Copy of the library record of ``name`` (space group, lattice, Wyckoff sites, sources, B)."""
    canonical = _name_index().get(str(name).strip().lower())
    if canonical is None:
        raise StructureError(_unknown_name_message(str(name)))
    return copy.deepcopy(_library()[canonical])


@functools.cache
def _build_library_structure(name: str) -> Structure:
    entry = _library()[name]
    lattice = Lattice.from_parameters(*(float(entry["lattice"][k]) for k in ("a", "b", "c", "alpha", "beta", "gamma")))
    species = [site["species"] for site in entry["sites"]]
    coords = [[float(Fraction(str(x))) for x in site["frac"]] for site in entry["sites"]]  # "1/3" is exact
    with _Quiet():  # pymatgen warns about short symbols of non-standard settings (Pbnm)
        return Structure.from_spacegroup(entry["space_group"], lattice, species, coords)


def _unknown_name_message(text: str) -> str:
    close = difflib.get_close_matches(text.lower(), list(_name_index()), n=3, cutoff=0.6)
    suggestions = list(dict.fromkeys(_name_index()[k] for k in close))
    hint = f"did you mean {', '.join(suggestions)}? " if suggestions else ""
    return (
        f"unknown structure {text!r}: not a built-in name, an existing file, JSON, 'ase:NAME' or a "
        f"Materials Project id; {hint}built-in names: {', '.join(list_structures())}"
    )


# --------------------------------------------------------------------------- readers
def _from_cif(path: Path, label: str) -> Structure:
    from pymatgen.io.cif import CifParser

    reason = ""
    with _Quiet(record=True) as caught:
        try:
            structures = CifParser(path).parse_structures(primitive=False, on_error="ignore")
        except Exception as exc:  # noqa: BLE001 - pymatgen raises ValueError/KeyError/IndexError on bad CIFs
            structures, reason = [], _one_line(exc)
    if not structures:
        noted = next((_one_line(w.message) for w in caught if str(w.message).strip()), "")
        reason = "; ".join(r for r in (reason or "no structure found", noted[:160]) if r)
        raise StructureError(f"could not read a structure from CIF {label} (needs a cell and atom sites): {reason}")
    return structures[0]


def _from_dict(data: Any, label: str) -> Structure:
    if not isinstance(data, dict):
        raise StructureError(f"{label}: expected a pymatgen Structure dict, got {type(data).__name__}")
    if data.get("sites") == []:
        raise StructureError(f"{label}: the structure contains no atoms")
    try:
        with _Quiet():
            return Structure.from_dict(data)
    except Exception as exc:  # noqa: BLE001 - pymatgen raises many kinds on a bad structure dict
        raise StructureError(
            f"{label} is not a valid pymatgen Structure dict ({type(exc).__name__}: {_one_line(exc)})"
        ) from None


def _from_json_text(text: str, label: str) -> Structure:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StructureError(f"{label} is not valid JSON: {_one_line(exc)}") from None
    return _from_dict(data, label)


def _from_file(path: Path) -> Structure:
    label = repr(str(path))
    if not path.exists():
        raise StructureError(f"structure file not found: {label}")
    if not path.is_file():
        raise StructureError(f"structure path is not a file: {label}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".cif", ".mcif"):
            return _from_cif(path, label)
        if suffix == ".json":
            return _from_json_text(path.read_text(encoding="utf-8"), f"file {label}")
        with _Quiet():
            return Structure.from_file(path)
    except StructureError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is one StructureError line
        raise StructureError(f"could not read a structure from {label}: {_one_line(exc)}") from None


def _from_ase_atoms(atoms: Any, label: str) -> Structure:
    if len(atoms) == 0:
        raise StructureError(f"{label}: the ASE Atoms object contains no atoms")
    if atoms.cell.rank < 3:
        raise StructureError(f"{label}: the ASE Atoms object has no full 3-D cell (cell rank {atoms.cell.rank})")
    from pymatgen.io.ase import AseAtomsAdaptor

    try:
        with _Quiet():
            return AseAtomsAdaptor.get_structure(atoms)
    except Exception as exc:  # noqa: BLE001 - the adaptor raises many kinds on odd Atoms
        raise StructureError(f"{label}: could not convert ASE Atoms ({_one_line(exc)})") from None


def _from_ase_spec(text: str) -> Structure:
    parts = text.split(":")[1:]
    if not parts or not parts[0] or len(parts) > 4:
        raise StructureError(f"bad ASE specification {text!r}: use 'ase:NAME' or 'ase:NAME:crystalstructure:a[:c]'")
    params: dict[str, float] = {}
    for key, raw in zip(("a", "c"), parts[2:]):
        try:
            params[key] = float(raw)
        except ValueError:
            params[key] = math.nan
        if not (math.isfinite(params[key]) and params[key] > 0):
            raise StructureError(f"bad ASE specification {text!r}: {key}={raw!r} must be a positive number (Angstrom)")
    from ase.build import bulk

    crystal = parts[1] if len(parts) > 1 and parts[1] else None
    error: Exception | None = None
    for cubic in (True, False):  # conventional cubic cell first; hcp etc. have none
        try:
            with _Quiet():
                atoms = bulk(parts[0], crystalstructure=crystal, cubic=cubic, **params)
        except Exception as exc:  # noqa: BLE001 - ASE raises ValueError/KeyError/RuntimeError
            error = exc
            continue
        return _from_ase_atoms(atoms, repr(text))
    raise StructureError(f"ASE could not build {text!r}: {_one_line(error)}")


def _mp_api_importable() -> bool:
    try:
        return importlib.util.find_spec("mp_api") is not None
    except (ImportError, ValueError):
        return False


def _from_materials_project(mp_id: str) -> Structure:
    missing = []
    if not _mp_api_importable():
        missing.append("the 'mp_api' package (pip install 'stemforge[mp]')")
    key = os.environ.get("MP_API_KEY", "").strip()
    if not key:
        missing.append("the MP_API_KEY environment variable")
    if missing:
        raise StructureError(
            f"Materials Project id {mp_id!r} needs {' and '.join(missing)}; "
            "alternatively pass a CIF file or a built-in name"
        )
    try:
        from mp_api.client import MPRester

        with _Quiet(), MPRester(key) as mpr:
            return mpr.get_structure_by_material_id(mp_id.lower(), conventional_unit_cell=True)
    except Exception as exc:  # noqa: BLE001 - mp-api raises its own and requests' errors
        raise StructureError(f"could not fetch {mp_id!r} from the Materials Project: {_one_line(exc)}") from None


def _from_text(spec: str) -> Structure:
    text = spec.strip()
    if not text:
        raise StructureError(f"empty structure specification {spec!r}")
    if text.lower().startswith("ase:"):
        return _from_ase_spec(text)
    if _MP_ID.match(text):
        return _from_materials_project(text)
    canonical = _name_index().get(text.lower())
    if canonical is not None:
        return _build_library_structure(canonical).copy()
    if text[0] in "{[":
        return _from_json_text(text, "JSON string")
    path = Path(text).expanduser()
    if path.exists() or "/" in text or os.sep in text or path.suffix.lower() in _FILE_SUFFIXES:
        return _from_file(path)
    raise StructureError(_unknown_name_message(text))


def _validate(structure: Structure, label: str) -> Structure:
    if len(structure) == 0:
        raise StructureError(f"{label}: the structure contains no atoms")
    if not structure.is_ordered:
        bad = [site for site in structure if not site.is_ordered]
        raise StructureError(
            f"{label}: the structure is disordered ({len(bad)} site(s) with partial occupancy, "
            f"e.g. {bad[0].species.formula!r}); supply an ordered model"
        )
    dummies = sorted({str(sp) for sp in structure.species if isinstance(sp, DummySpecies)})
    if dummies:
        raise StructureError(f"{label}: the structure contains non-element species {dummies}")
    volume = structure.lattice.volume
    if not (math.isfinite(volume) and volume > 1e-6):
        raise StructureError(f"{label}: the lattice is degenerate (cell volume {volume:.3g} A^3)")
    centres, neighbours, _, dists = structure.get_neighbor_list(_MIN_SEPARATION)
    if len(dists):
        raise StructureError(
            f"{label}: atoms {int(centres[0])} and {int(neighbours[0])} are only "
            f"{float(dists[0]):.3f} A apart (overlapping sites)"
        )
    return structure


def load_structure(spec: Any) -> Structure:
    """Load a crystal structure from a name, path, dict, JSON, Structure or ASE Atoms (see module doc).

    Returns a new, ordered, non-empty ``pymatgen.core.Structure`` (Angstrom) that the caller may
    modify. Raises :class:`StructureError` (one line) if the input is unknown, unreadable, empty,
    has overlapping atoms (< 0.5 Angstrom) or is disordered.
    """
    label = _label(spec)
    ase_module = sys.modules.get("ase")  # an Atoms object implies ase is already imported
    if isinstance(spec, Structure):
        structure = spec.copy()
    elif ase_module is not None and isinstance(spec, ase_module.Atoms):
        structure = _from_ase_atoms(spec, label)
    elif isinstance(spec, dict):
        structure = _from_dict(spec, "structure dict")
    elif isinstance(spec, str):
        structure = _from_text(spec)
    elif isinstance(spec, os.PathLike):
        structure = _from_file(Path(spec).expanduser())
    else:
        raise StructureError(
            f"cannot load a structure from {type(spec).__name__} {label}: expected a name, "
            "path, dict, JSON string, pymatgen Structure or ASE Atoms"
        )
    return _validate(structure, label)


# --------------------------------------------------------------------------- information
def structure_info(structure: Any, symprec: float = 1e-3) -> dict:
    """Chemistry and symmetry of a structure (or any :func:`load_structure` specification).

    Returns a dict with ``formula`` (reduced, str), ``space_group_symbol`` (str),
    ``space_group_number`` (int), ``crystal_system`` (lower-case, pymatgen's naming) and
    ``point_group`` (Hermann-Mauguin, str); ``symprec`` is the SpacegroupAnalyzer tolerance in Angstrom.
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    s = structure if isinstance(structure, Structure) else load_structure(structure)
    try:
        with _Quiet():
            sga = SpacegroupAnalyzer(s, symprec=symprec)
            return {
                "formula": s.composition.reduced_formula,
                "space_group_symbol": sga.get_space_group_symbol(),
                "space_group_number": int(sga.get_space_group_number()),
                "crystal_system": sga.get_crystal_system(),
                "point_group": sga.get_point_group_symbol(),
            }
    except Exception as exc:  # noqa: BLE001 - spglib/pymatgen raise many kinds on odd cells
        formula = s.composition.reduced_formula
        raise StructureError(f"symmetry analysis failed for {formula}: {_one_line(exc)}") from None


@functools.cache
def _library_signature(name: str) -> tuple[str, int]:
    formula = _build_library_structure(name).composition.reduced_formula
    return formula, int(_library()[name]["space_group_number"])


def _match_library(structure: Structure) -> str | None:
    formula = structure.composition.reduced_formula
    candidates = [n for n in list_structures() if _library_signature(n)[0] == formula]
    if not candidates:
        return None
    number = structure_info(structure, symprec=1e-2)["space_group_number"]
    return next((n for n in candidates if _library_signature(n)[1] == number), None)


def debye_waller_sigmas(structure_or_name: Any, default: float = 0.08) -> dict[str, float]:
    """Per-element RMS thermal displacement along one Cartesian axis (Angstrom), for frozen phonons.

    ``sigma = sqrt(B / (8 pi^2))`` from the isotropic room-temperature Debye-Waller factor ``B``
    (Angstrom^2) recorded in the library. A structure not given by library name is matched to a
    library entry by reduced formula and space-group number (symprec 0.01 Angstrom).

    Returns element symbol -> sigma (Angstrom) for every element of the structure; elements without
    a recorded B get ``default`` (Angstrom; 0.08 A corresponds to B = 0.51 A^2).
    """
    default = float(default)
    if not (math.isfinite(default) and default >= 0):
        raise ValueError(f"default sigma must be a finite number >= 0 (Angstrom), got {default!r}")
    name = _name_index().get(structure_or_name.strip().lower()) if isinstance(structure_or_name, str) else None
    if name is not None:
        structure = _build_library_structure(name)
    else:
        structure = load_structure(structure_or_name)
        name = _match_library(structure)
    b_values = _library()[name].get("debye_waller_B", {}) if name else {}
    elements = sorted({getattr(sp, "symbol", str(sp)) for sp in structure.composition.elements})
    return {el: math.sqrt(float(b_values[el]) / (8 * math.pi**2)) if el in b_values else default for el in elements}
