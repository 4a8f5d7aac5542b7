"""Tests for stemforge.sim.structures: the built-in library, every input form of load_structure, and errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from stemforge.sim import structures as S
from stemforge.sim.structures import (
    StructureError,
    debye_waller_sigmas,
    library_entry,
    list_structures,
    load_structure,
    structure_info,
)

REPO = Path(__file__).resolve().parents[1]

# Independent expectations: reduced formula, space-group number, atoms in the conventional cell,
# crystal system, Hermann-Mauguin point group.
EXPECTED = {
    "Si": ("Si", 227, 8, "cubic", "m-3m"),
    "Al": ("Al", 225, 4, "cubic", "m-3m"),
    "Cu": ("Cu", 225, 4, "cubic", "m-3m"),
    "Au": ("Au", 225, 4, "cubic", "m-3m"),
    "Fe": ("Fe", 229, 2, "cubic", "m-3m"),
    "MgO": ("MgO", 225, 8, "cubic", "m-3m"),
    "GaAs": ("GaAs", 216, 8, "cubic", "-43m"),
    "SrTiO3": ("SrTiO3", 221, 5, "cubic", "m-3m"),
    "TiO2-rutile": ("TiO2", 136, 6, "tetragonal", "4/mmm"),
    "Al2O3": ("Al2O3", 167, 30, "trigonal", "-3m"),
    "GaN": ("GaN", 186, 4, "hexagonal", "6mm"),
    "MoS2-2H": ("MoS2", 194, 6, "hexagonal", "6/mmm"),
    "P-black": ("P", 64, 8, "orthorhombic", "mmm"),
    "Mg2SiO4-forsterite": ("Mg2SiO4", 62, 28, "orthorhombic", "mmm"),
    "ZrO2-monoclinic": ("ZrO2", 14, 12, "monoclinic", "2/m"),
}

# Lattice parameters quoted in the brief / standard references (Angstrom).
LATTICE = {
    "Si": (5.43102, 5.43102),
    "Au": (4.0782, 4.0782),
    "Cu": (3.6149, 3.6149),
    "Al": (4.0495, 4.0495),
    "GaAs": (5.65325, 5.65325),
    "SrTiO3": (3.905, 3.905),
    "MgO": (4.2112, 4.2112),
    "MoS2-2H": (3.1604, 12.295),
    "GaN": (3.189, 5.185),
    "TiO2-rutile": (4.5937, 2.9587),
    "Al2O3": (4.7589, 12.991),
}

NOISY_CIF = """data_cu
_cell_length_a 3.6149
_cell_length_b 3.6149
_cell_length_c 3.6149
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'F m -3 m'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Cu1 Cu 0 0 0
"""


def _cif_with_atoms(rows: str) -> str:
    head = NOISY_CIF.split("loop_")[0]
    return (
        head + "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n"
        "_atom_site_fract_y\n_atom_site_fract_z\n_atom_site_occupancy\n" + rows
    )


# --------------------------------------------------------------------------- library contents
def test_library_names_sorted_and_cover_crystal_systems():
    names = list_structures()
    assert names == sorted(names)
    assert len(names) >= 10
    assert set(EXPECTED) == set(names), "update EXPECTED when the library changes"
    systems = {EXPECTED[n][3] for n in names}
    assert {"cubic", "tetragonal", "trigonal", "hexagonal", "orthorhombic", "monoclinic"} <= systems


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_library_structure_is_the_real_crystal(name):
    formula, number, natoms, system, point_group = EXPECTED[name]
    s = load_structure(name)
    info = structure_info(s)  # symprec 1e-3 A
    assert info["formula"] == formula
    assert info["space_group_number"] == number
    assert info["crystal_system"] == system
    assert info["point_group"] == point_group
    assert len(s) == natoms
    assert s.is_ordered
    dist = s.distance_matrix + np.eye(len(s)) * 1e9  # minimum-image distances between sites
    assert dist.min() > 1.5, f"{name}: atoms closer than 1.5 A"
    assert min(s.lattice.abc) > 1.5  # also each atom vs its own periodic images
    entry = library_entry(name)
    assert entry["space_group_number"] == number
    assert len(entry["source"]) > 20 and entry["source"] == entry["source"].strip()


@pytest.mark.parametrize("name", sorted(LATTICE))
def test_library_lattice_parameters(name):
    a, c = LATTICE[name]
    s = load_structure(name)
    assert s.lattice.a == pytest.approx(a, abs=1e-6)
    assert s.lattice.c == pytest.approx(c, abs=1e-6)


def test_known_bond_lengths():
    # Independent checks of the Wyckoff parameters via nearest-neighbour distances (Angstrom).
    si = load_structure("Si")
    assert si.get_neighbors(si[0], 2.5)[0].nn_distance == pytest.approx(5.43102 * math.sqrt(3) / 4, abs=1e-4)
    for name, cation, expected in [
        ("MoS2-2H", "Mo", 2.41),
        ("GaN", "Ga", 1.95),
        ("TiO2-rutile", "Ti", 1.95),
        ("Al2O3", "Al", 1.855),
        ("P-black", "P", 2.224),
    ]:
        s = load_structure(name)
        i = next(k for k, site in enumerate(s) if site.specie.symbol == cation)
        shortest = min(n.nn_distance for n in s.get_neighbors(s[i], 3.0))
        assert shortest == pytest.approx(expected, abs=0.015), name


def test_names_are_case_insensitive_and_aliases_work():
    assert load_structure("si").composition.reduced_formula == "Si"
    assert load_structure("  MOS2-2h ").composition.reduced_formula == "MoS2"
    assert load_structure("rutile").composition.reduced_formula == "TiO2"
    assert load_structure("corundum").composition.reduced_formula == "Al2O3"


def test_library_loads_are_independent_copies():
    s = load_structure("Si")
    s.replace_species({"Si": "Ge"})
    assert load_structure("Si").composition.reduced_formula == "Si"


# --------------------------------------------------------------------------- input forms
def test_structure_input_returns_copy():
    s = load_structure("GaAs")
    t = load_structure(s)
    assert t is not s and t == s


def test_dict_json_string_and_json_file(tmp_path):
    s = load_structure("GaN")
    assert load_structure(s.as_dict()) == s
    assert load_structure(s.to_json()) == s
    path = tmp_path / "gan.json"
    path.write_text(s.to_json())
    assert load_structure(path) == s
    assert load_structure(str(path)) == s


def test_cif_round_trip(tmp_path):
    from pymatgen.io.cif import CifWriter

    for name in ("Al2O3", "ZrO2-monoclinic"):
        path = tmp_path / f"{name}.cif"
        with warnings.catch_warnings():  # spglib deprecation noise from CifWriter itself
            warnings.simplefilter("ignore")
            CifWriter(load_structure(name), symprec=1e-3).write_file(path)
        back = load_structure(path)
        assert len(back) == EXPECTED[name][2]
        assert structure_info(back)["space_group_number"] == EXPECTED[name][1]


def test_noisy_cif_parses_without_leaking_warnings(tmp_path):
    path = tmp_path / "cu.cif"
    path.write_text(NOISY_CIF)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = load_structure(path)
    assert len(s) == 4 and s.composition.reduced_formula == "Cu"


def test_ase_inputs():
    from ase.build import bulk

    s = load_structure(bulk("Cu", "fcc", a=3.6, cubic=True))
    assert len(s) == 4 and s.lattice.a == pytest.approx(3.6)
    cu = load_structure("ase:Cu")
    assert len(cu) == 4 and cu.lattice.angles == pytest.approx((90, 90, 90))
    si = load_structure("ase:Si:diamond:5.431")
    assert len(si) == 8 and si.lattice.a == pytest.approx(5.431)
    assert structure_info(si)["space_group_number"] == 227
    mg = load_structure("ase:Mg")  # hcp: no cubic cell, falls back to the hexagonal cell
    assert len(mg) == 2 and structure_info(mg)["space_group_number"] == 194


def test_structure_info_keys_and_types():
    info = structure_info(load_structure("MoS2-2H"))
    assert set(info) == {"formula", "space_group_symbol", "space_group_number", "crystal_system", "point_group"}
    assert info["space_group_symbol"] == "P6_3/mmc"
    assert isinstance(info["space_group_number"], int)
    assert structure_info("GaN")["point_group"] == "6mm"  # also accepts a specification


# --------------------------------------------------------------------------- errors
def _error(spec) -> str:
    with pytest.raises(StructureError) as err:
        load_structure(spec)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_structure_error_is_value_error():
    assert issubclass(StructureError, ValueError)


def test_unknown_name_suggests_close_names():
    msg = _error("Sii")
    assert "'Sii'" in msg and "did you mean Si" in msg
    assert "MoS2-2H" in _error("MoS2-3R")
    assert "did you mean" not in _error("Unobtainium42")


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("this is not a CIF at all\n", "could not read a structure from CIF"),
        (NOISY_CIF.split("loop_")[0], "could not read a structure from CIF"),  # cell but no atoms
        (_cif_with_atoms("Cu1 Cu 0 0 0 0.5\nAu1 Au 0 0 0 0.5\n"), "disordered"),
        (_cif_with_atoms("Cu1 Cu 0 0 0 0.7\n"), "disordered"),  # vacancy
    ],
)
def test_bad_cif_files(tmp_path, content, fragment):
    path = tmp_path / "bad.cif"
    path.write_text(content)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pymatgen's warnings must not escape
        msg = _error(path)
    assert fragment in msg and "bad.cif" in msg


def test_missing_files(tmp_path):
    assert "not found" in _error(str(tmp_path / "nothing.cif"))
    assert "not found" in _error(tmp_path / "nothing.json")
    assert "not found" in _error("some/dir/structure.json")
    assert "not a file" in _error(tmp_path)


def test_bad_json_and_dicts(tmp_path):
    assert "not valid JSON" in _error("{not json")
    assert "not a valid pymatgen Structure dict" in _error("{}")
    assert "not a valid pymatgen Structure dict" in _error({"lattice": "nonsense"})
    path = tmp_path / "x.json"
    path.write_text("[1, 2, 3]")
    assert "expected a pymatgen Structure dict" in _error(path)


def test_empty_disordered_and_overlapping_structures():
    assert "no atoms" in _error(Structure(Lattice.cubic(4.0), [], []))
    assert "disordered" in _error(Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]]))
    assert "apart" in _error(Structure(Lattice.cubic(4.0), ["Fe", "Fe"], [[0, 0, 0], [0.01, 0, 0]]))
    assert "no atoms" in _error(Structure(Lattice.cubic(4.0), [], []).as_dict())


def test_bad_ase_inputs():
    from ase import Atoms

    assert "no atoms" in _error(Atoms())
    assert "3-D cell" in _error(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]))
    assert "ASE could not build" in _error("ase:Xx")
    assert "positive number" in _error("ase:Cu:fcc:-3")
    assert "bad ASE specification" in _error("ase:")


def test_bad_types_and_empty_string():
    assert "int" in _error(42)
    assert "empty" in _error("   ")


def test_materials_project_reports_exactly_what_is_missing(monkeypatch):
    monkeypatch.delenv("MP_API_KEY", raising=False)
    monkeypatch.setattr(S, "_mp_api_importable", lambda: False)
    msg = _error("mp-149")
    assert "mp_api" in msg and "MP_API_KEY" in msg and "'mp-149'" in msg
    monkeypatch.setattr(S, "_mp_api_importable", lambda: True)
    msg = _error("mp-149")
    assert "MP_API_KEY" in msg and "mp_api' package" not in msg
    monkeypatch.setenv("MP_API_KEY", "dummy")
    monkeypatch.setattr(S, "_mp_api_importable", lambda: False)
    msg = _error("mp-149")
    assert "mp_api" in msg and "MP_API_KEY" not in msg


# --------------------------------------------------------------------------- Debye-Waller
def test_debye_waller_sigmas_from_library():
    sig = debye_waller_sigmas("Si")
    assert set(sig) == {"Si"}
    assert sig["Si"] == pytest.approx(math.sqrt(0.46 / (8 * math.pi**2)))
    assert 0.07 < sig["Si"] < 0.08
    gaas = debye_waller_sigmas("gaas")
    b = {el: 8 * math.pi**2 * s**2 for el, s in gaas.items()}
    assert b == pytest.approx(library_entry("GaAs")["debye_waller_B"])


def test_debye_waller_sigmas_default_and_matching():
    assert debye_waller_sigmas("MoS2-2H") == {"Mo": 0.08, "S": 0.08}
    assert debye_waller_sigmas("MoS2-2H", default=0.05) == {"Mo": 0.05, "S": 0.05}
    # a structure from elsewhere is matched to the library by formula and space group
    assert debye_waller_sigmas(load_structure("ase:Si:diamond:5.43")) == debye_waller_sigmas("Si")
    assert debye_waller_sigmas("ase:Ge:diamond:5.658") == {"Ge": 0.08}
    # same formula, different space group (fcc Fe) -> no library value
    assert debye_waller_sigmas("ase:Fe:fcc:3.6") == {"Fe": 0.08}
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError):
            debye_waller_sigmas("Si", default=bad)


# --------------------------------------------------------------------------- package import
def test_package_import_is_light():
    code = (
        "import sys, stemforge.sim; assert 'abtem' not in sys.modules; print(stemforge.sim.list_structures()[0]); "
        "assert 'abtem' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == list_structures()[0]


def test_library_json_is_valid_and_documented():
    data = json.loads((REPO / "stemforge" / "sim" / "data" / "structures.json").read_text())
    for entry in data["structures"].values():
        assert {"space_group", "space_group_number", "lattice", "sites", "source", "debye_waller_B"} <= set(entry)
        if entry["debye_waller_B"]:
            assert entry["debye_waller_source"]
            assert all(0.05 < b < 3.0 for b in entry["debye_waller_B"].values())
