"""Analysis stage: classical 4D-STEM analysis that can call registry models for inference.

Data come in as a :class:`DataCube` (``stemforge.analysis.load(path)``); Bragg disks come out as :class:`BraggVectors`
whichever method found them (``method="classical"`` or ``method="ml"``), so strain, orientation and phase
mapping take either.
"""

from __future__ import annotations

import importlib

from .braggvectors import PEAK_DTYPE, BraggVectors
from .datacube import AnalysisError, Calibration, DataCube, as_datacube

# name -> module that defines it (imported on first use, so `import stemforge.analysis` stays light)
_LAZY = {
    "load": "io",
    "save": "io",
    "find_bragg_disks": "disks",
    "find_bragg_disks_classical": "disks",
    "probe_from_data": "probe",
    "probe_template": "probe",
    "mean_pattern": "virtual",
    "max_pattern": "virtual",
    "virtual_bf": "virtual",
    "virtual_adf": "virtual",
    "virtual_image": "virtual",
    "origin_map": "calibration",
    "calibrate_origin": "calibration",
    "fit_origin_plane": "calibration",
    "correct_origin": "calibration",
    "ellipticity_from_bragg": "calibration",
    "calibrate_ellipticity": "calibration",
    "correct_ellipticity": "calibration",
    "lattice_candidates": "lattice",
    "choose_lattice_vectors": "lattice",
    "index_bragg_vectors": "lattice",
    "fit_lattice": "lattice",
    "keep_on_lattice": "lattice",
    "strain_map": "strain",
    "plot_strain_maps": "strain",
    "find_bragg_disks_ml": "inference",
    "predict_property_map": "inference",
    "load_model": "inference",
    "OrientationLibrary": "orientation_library",
    "build_orientation_library": "orientation_library",
    "kinematic_bragg_vectors": "orientation_library",
    "OrientationMap": "orientation",
    "orientation_map": "orientation",
    "PhaseMap": "phase",
    "phase_map": "phase",
    "ThicknessMap": "properties",
    "thickness_map": "properties",
    "window_average": "properties",
}

__all__ = ["AnalysisError", "BraggVectors", "Calibration", "DataCube", "PEAK_DTYPE", "as_datacube", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
