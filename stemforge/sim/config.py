"""Structured configuration of the simulation stage and its validation.

The dataclasses here back the Hydra config groups in ``conf/`` (structure, orientation, optics, detector,
sampling, dataset); :func:`validate` refuses impossible values before any compute with one clear message.

A *sampled* value is written as a number (fixed), a list (uniform choice among its items) or a mapping
``{min: a, max: b}`` (uniform; add ``log: true`` for log-uniform).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class ConfigError(ValueError):
    """An invalid simulation configuration (message is one line)."""


@dataclass
class StructureConfig:
    """Which crystals to simulate: built-in names, CIF / JSON paths, ``ase:NAME`` or Materials Project ids."""

    names: list[str] = field(default_factory=lambda: ["Si", "GaAs", "SrTiO3", "Cu", "GaN", "TiO2-rutile"])
    debye_waller_default_A: float = 0.08


@dataclass
class OrientationConfig:
    """How crystals are oriented: zone axes or uniform random orientations in the fundamental zone."""

    random_fraction: float = 0.15
    zone_axes: list[str] = field(default_factory=list)  # empty: symmetry-distinct axes up to max_index
    max_index: int = 1
    in_plane_deg: Any = field(default_factory=lambda: {"min": 0.0, "max": 360.0})
    mistilt_max_mrad: float = 1.0
    mistilt_per_specimen: bool = False  # one mistilt per specimen group (the S-matrix then reuses it), else per run
    max_shear: float = 0.0  # > 0: zone axes of low-symmetry crystals on cells sheared by at most this (e.g. 0.005)


@dataclass
class OpticsConfig:
    """Probe optics (units in the names; energy in eV, abTEM's aberration symbols in Å and rad)."""

    energy: Any = field(default_factory=lambda: [200e3, 300e3])
    semiangle_mrad: Any = field(default_factory=lambda: {"min": 1.0, "max": 3.0})
    defocus_A: Any = field(default_factory=lambda: {"min": -100.0, "max": 100.0})
    aberrations_A: dict = field(
        default_factory=lambda: {
            "C30": {"min": 0.0, "max": 1.2e7},
            "C12": {"min": 0.0, "max": 20.0},
            "phi12": {"min": 0.0, "max": 3.14159},
        }
    )
    source_size_A: Any = 0.0
    coherence_order: int = 3
    device: str = "cpu"
    semiangle_per_specimen: bool = (
        False  # one α per specimen group (its S-matrix then needs no more beams), else per run
    )


@dataclass
class DetectorConfig:
    """Calibrated detector grid (``_target_`` builds a :class:`stemforge.sim.detector.Detector`) and label settings."""

    _target_: str = "stemforge.sim.detector.Detector"
    shape: list[int] = field(default_factory=lambda: [128, 128])
    pixel_size_inv_A: float = 0.03
    supersample: int = 4


@dataclass
class SamplingConfig:
    """Numerical sampling: grid, slices, thickness series, frozen phonons and label rendering."""

    real_space_A: float = 0.12
    k_oversample: float = 2.0
    slice_thickness_A: float = 2.0
    thicknesses_nm: list[float] = field(default_factory=lambda: [5.0, 10.0, 15.0, 20.0, 25.0, 30.0])
    frozen_phonons: int = 1
    sigmas_A: dict = field(default_factory=dict)
    parametrization: str = "lobato"
    fftw_threads: int = 2
    max_excitation_error: float = 0.1
    max_reflections: int = 256
    blob_sigma_px: float = 1.0
    optics_per_specimen: int = 1  # runs sharing one specimen (optics/positions reused; stemforge.sim.chunks)
    engine: str = "auto"  # auto | multislice | smatrix, per specimen group (stemforge.sim.engine)


@dataclass
class DatasetConfig:
    """Where and how much: ``num_patterns`` = runs × thicknesses; ``chunk_runs`` runs per zarr chunk."""

    path: str = "data/default.zarr"
    num_patterns: int = 300
    seed: int = 0
    chunk_runs: int = 2
    progress: bool = True


@dataclass
class ScanConfig:
    """A synthetic 4D-STEM scan with ground truth (:mod:`stemforge.sim.synthetic_scan`, profiles in
    :mod:`stemforge.sim.scan_profiles`);
    ``profile: none`` writes the ordinary training dataset instead. Strain in %, rotations in degrees, thickness in
    nm, step in Å, energy in eV."""

    profile: str = "none"
    path: str = "data/scan.zarr"
    scan_shape: list[int] = field(default_factory=lambda: [16, 16])
    step_A: float = 5.0
    structures: list[str] = field(default_factory=lambda: ["Si"])
    zone_axis: str = "[110]"
    band_strain_percent: list[float] = field(default_factory=lambda: [0.0, 1.0, 0.0, -0.5])
    band_rotation_deg: list[float] = field(default_factory=lambda: [0.0])
    poisson_ratio: float = 0.28
    thickness_nm: list[float] = field(default_factory=lambda: [50.0])
    strain_amplitude_percent: float = 1.0  # smooth: peak of the bump (stemforge.sim.scan_profiles)
    shear_ratio: float = 0.5
    strain_levels: int = 6
    bump_width: float = 0.25
    rotation_amplitude_deg: float = 2.0
    num_grains: int = 4
    grain_rotation_deg: float = 30.0
    energy_eV: float = 300e3
    semiangle_mrad: float = 2.0
    defocus_A: float = 0.0
    seed: int = 0
    dedupe: bool = True  # share multislices between equal positions (same bytes; false only to check that)
    progress: bool = True


@dataclass
class ClusterConfig:
    """Where the dataset's chunks are computed (:mod:`stemforge.sim.cluster`): ``address: null`` in this process, else
    an existing dask.distributed scheduler such as ``tcp://HOST:PORT``; the chunks are written here."""

    address: str | None = None
    connect_timeout_s: float = 10.0
    max_in_flight: int = 0  # chunks submitted at once; 0: twice the cluster's worker threads
    local_workers: int = 0  # without an address: N > 0 starts N worker processes here (1 thread each)


@dataclass
class SimulateConfig:
    structure: StructureConfig = field(default_factory=StructureConfig)
    orientation: OrientationConfig = field(default_factory=OrientationConfig)
    optics: OpticsConfig = field(default_factory=OpticsConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def _spec_values(name: str, spec) -> list[float]:
    """The numbers a sampled value can take at its extremes (for validation)."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return [float(spec)]
    if isinstance(spec, (list, tuple)) or (hasattr(spec, "__len__") and not hasattr(spec, "keys")):
        vals = list(spec)
        if not vals or not all(isinstance(v, (int, float)) for v in vals):
            raise ConfigError(f"{name}: a list must hold numbers to choose from, got {list(vals)}")
        return [float(v) for v in vals]
    if hasattr(spec, "keys"):
        if set(spec.keys()) - {"min", "max", "log"} or not {"min", "max"} <= set(spec.keys()):
            raise ConfigError(f"{name}: a range needs exactly the keys min, max (and optional log), got {dict(spec)}")
        lo, hi = float(spec["min"]), float(spec["max"])
        if lo > hi:
            raise ConfigError(f"{name}: min {lo} is larger than max {hi}")
        if spec.get("log") and lo <= 0:
            raise ConfigError(f"{name}: a log-uniform range needs min > 0, got {lo}")
        return [lo, hi]
    raise ConfigError(f"{name}: expected a number, a list of choices or {{min, max}}, got {spec!r}")


def draw(spec, rng: np.random.Generator) -> float:
    """Draw one value from a sampled-value spec (number, list of choices or {min, max[, log]})."""
    if isinstance(spec, (int, float)):
        return float(spec)
    if hasattr(spec, "keys"):
        lo, hi = float(spec["min"]), float(spec["max"])
        if spec.get("log"):
            return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        return float(rng.uniform(lo, hi))
    vals = list(spec)
    return float(vals[int(rng.integers(len(vals)))])


def validate(cfg) -> None:
    """Raise :class:`ConfigError` (one line) for values no simulation can use. Cheap: no abTEM import."""
    o, s, d, ds, orr = cfg.optics, cfg.sampling, cfg.detector, cfg.dataset, cfg.orientation

    def positive(name, spec, allow_zero=False):
        for v in _spec_values(name, spec):
            if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
                raise ConfigError(f"{name} must be {'≥ 0' if allow_zero else '> 0'}, got {v:g}")

    positive("optics.energy (eV)", o.energy)
    if max(_spec_values("optics.energy", o.energy)) < 1e3:
        raise ConfigError("optics.energy is in eV (e.g. 300e3 for 300 keV); values below 1 keV are refused")
    positive("optics.semiangle_mrad", o.semiangle_mrad)
    _spec_values("optics.defocus_A", o.defocus_A)
    for key, spec in o.aberrations_A.items():
        _spec_values(f"optics.aberrations_A.{key}", spec)
    positive("optics.source_size_A", o.source_size_A, allow_zero=True)
    if o.device not in ("cpu", "gpu"):
        raise ConfigError(f"optics.device must be 'cpu' or 'gpu', got {o.device!r}")
    if not s.thicknesses_nm:
        raise ConfigError("sampling.thicknesses_nm must list at least one thickness")
    for t in s.thicknesses_nm:
        if not np.isfinite(t) or t < 0:
            raise ConfigError(f"sampling.thicknesses_nm must be ≥ 0 nm, got {t:g}")
    if len(set(s.thicknesses_nm)) != len(s.thicknesses_nm):
        raise ConfigError(f"sampling.thicknesses_nm has repeated values: {list(s.thicknesses_nm)}")
    positive("sampling.real_space_A", s.real_space_A)
    positive("sampling.slice_thickness_A", s.slice_thickness_A)
    if s.k_oversample < 1:
        raise ConfigError(
            f"sampling.k_oversample must be ≥ 1 (simulated pixels per detector pixel), got {s.k_oversample}"
        )
    if s.frozen_phonons < 0:
        raise ConfigError(f"sampling.frozen_phonons must be ≥ 0, got {s.frozen_phonons}")
    for el, v in s.sigmas_A.items():
        if v < 0:
            raise ConfigError(f"sampling.sigmas_A.{el} must be ≥ 0 Å, got {v}")
    if s.max_reflections < 1 or s.blob_sigma_px <= 0 or s.max_excitation_error <= 0:
        raise ConfigError("sampling.max_reflections, blob_sigma_px and max_excitation_error must be positive")
    if not 0.0 <= orr.random_fraction <= 1.0:
        raise ConfigError(f"orientation.random_fraction must lie in [0, 1], got {orr.random_fraction}")
    if orr.mistilt_max_mrad < 0 or orr.max_index < 1:
        raise ConfigError("orientation.mistilt_max_mrad must be ≥ 0 and orientation.max_index ≥ 1")
    _spec_values("orientation.in_plane_deg", orr.in_plane_deg)
    if ds.num_patterns < 1 or ds.chunk_runs < 1:
        raise ConfigError(
            f"dataset.num_patterns and dataset.chunk_runs must be ≥ 1, got {ds.num_patterns}, {ds.chunk_runs}"
        )
    if not str(ds.path):
        raise ConfigError("dataset.path must be set")
    if not cfg.structure.names:
        raise ConfigError("structure.names must list at least one structure")
    try:
        build_detector(d).check_sampling(float(s.real_space_A))
    except ValueError as err:
        raise ConfigError(f"detector: {err}") from None
    _validate_engine(cfg)
    cl = getattr(cfg, "cluster", None)
    if cl is not None and (float(cl.connect_timeout_s) <= 0 or int(cl.max_in_flight) < 0):
        raise ConfigError("cluster.connect_timeout_s must be > 0 s and cluster.max_in_flight ≥ 0")


def _validate_engine(cfg) -> None:
    """Specimen groups and the engine choice (stemforge.sim.engine): an S-matrix request the physics forbids is
    refused."""
    s, ds = cfg.sampling, cfg.dataset
    engine = str(getattr(s, "engine", "auto"))
    k = int(getattr(s, "optics_per_specimen", 1))
    if engine not in ("auto", "multislice", "smatrix"):
        raise ConfigError(f"sampling.engine must be auto, multislice or smatrix, got {engine!r}")
    if k < 1:
        raise ConfigError(f"sampling.optics_per_specimen must be ≥ 1, got {k}")
    if ds.chunk_runs % k:
        raise ConfigError(
            f"dataset.chunk_runs ({ds.chunk_runs}) must be a multiple of sampling.optics_per_specimen "
            f"({k}) so that no specimen group is split between chunks"
        )
    if engine == "smatrix":
        blockers = []
        if cfg.orientation.mistilt_max_mrad > 0 and not getattr(cfg.orientation, "mistilt_per_specimen", False):
            blockers.append(
                f"a beam tilt per run (orientation.mistilt_max_mrad={cfg.orientation.mistilt_max_mrad:g}; "
                "orientation.mistilt_per_specimen=true gives each specimen group one tilt, which it can)"
            )
        if max(_spec_values("optics.source_size_A", cfg.optics.source_size_A)) > 0:
            blockers.append("partial spatial coherence (optics.source_size_A > 0)")
        if s.frozen_phonons > 1:
            blockers.append(f"frozen phonons > 1 (sampling.frozen_phonons={s.frozen_phonons})")
        if blockers:
            raise ConfigError(
                "sampling.engine=smatrix cannot simulate "
                + ", ".join(blockers)
                + "; set them to 0 (frozen_phonons ≤ 1) or use sampling.engine=auto"
            )


def build_detector(d):
    """The :class:`stemforge.sim.detector.Detector` of a ``detector`` config group (the fields of its ``_target_``)."""
    from .detector import Detector

    return Detector(
        shape=tuple(int(v) for v in d.shape), pixel_size_inv_A=float(d.pixel_size_inv_A), supersample=int(d.supersample)
    )


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore (``stemforge/conf/simulate.yaml`` starts from
    ``simulate_schema``)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="simulate_schema", node=SimulateConfig)


def compose_simulate(*overrides: str, config_dir: str | None = None):
    """The simulation config as ``scripts/simulate.py`` would see it, through Hydra's compose API.

    Parameters
    ----------
    *overrides : str
        Hydra overrides, e.g. ``"structure=si"``, ``"dataset.num_patterns=8"``.
    config_dir : str, optional
        A folder of configs searched beside the shipped ones (:mod:`stemforge.conf`), as ``--config-dir`` does
        for the apps.

    Returns
    -------
    omegaconf.DictConfig
        The composed (not yet validated) config; pass it to :func:`validate`.
    """
    from pathlib import Path

    from hydra import compose, initialize_config_module

    register_configs()
    if config_dir is not None:
        overrides = (f"hydra.searchpath=[file://{Path(config_dir).resolve()}]", *overrides)
    with initialize_config_module(config_module="stemforge.conf", version_base="1.3"):
        return compose(config_name="simulate", overrides=list(overrides))
