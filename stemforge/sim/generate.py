"""From a configuration to a labelled dataset: validate, lay out the store, compute the missing chunks, write them.

The dataset is written chunk by chunk (:class:`stemforge.sim.dataset.DatasetWriter`); what one chunk holds — its
runs, their specimen groups, engines and labels — is computed by :func:`stemforge.sim.chunks.simulate_chunk`
(see :mod:`stemforge.sim.chunks` for how runs and groups draw their parameters). Chunks are computed here, one
after the other, or on a dask cluster (:mod:`stemforge.sim.cluster`) whose workers run the same function; either
way this process writes them, so the bytes do not depend on where a chunk was computed.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from .chunks import ABERRATION_KEYS, CRYSTAL_SYSTEMS, build_catalog, simulate_chunk
from .cluster import connect, run_chunks, start_local
from .config import build_detector, validate
from .detector import Detector
from .provenance import software_versions

log = logging.getLogger(__name__)


def array_specs(cfg, detector: Detector) -> dict:
    """``name -> (per-pattern shape, dtype, fill)`` of every stored array (NaN / sentinel fills mark unwritten)."""
    H, W = detector.shape
    R = cfg.sampling.max_reflections
    nan = np.nan
    return {
        "patterns": ((H, W), "float32", nan),
        "probes": ((H, W), "float32", nan),
        "labels/structure_id": ((), "int32", -1),
        "labels/formula": ((), str, ""),
        "labels/space_group": ((), "int32", 0),
        "labels/crystal_system": ((), "int8", -1),
        "labels/zone": ((), str, ""),
        "labels/zone_axis": ((3,), "int32", 0),
        "labels/rotation": ((3, 3), "float64", nan),
        "labels/in_plane_deg": ((), "float32", nan),
        "labels/mistilt_mrad": ((2,), "float32", nan),
        "labels/thickness_A": ((), "float32", nan),
        "labels/energy_eV": ((), "float64", nan),
        "labels/semiangle_mrad": ((), "float32", nan),
        "labels/defocus_A": ((), "float32", nan),
        "labels/aberrations": ((len(ABERRATION_KEYS),), "float64", nan),
        "labels/source_size_A": ((), "float32", nan),
        "labels/probe_position_A": ((2,), "float32", nan),
        "labels/run_index": ((), "int32", -1),
        "labels/sim_grid_gpts": ((2,), "int32", 0),
        "labels/vg_map": ((H, W), "float32", nan),
        "labels/disk_map": ((H, W), "float32", nan),
        "labels/num_reflections": ((), "int32", -1),
        "labels/reflections_hkl": ((R, 3), "int32", 0),
        "labels/reflections_g": ((R, 3), "float32", nan),
        "labels/reflections_px": ((R, 2), "float32", nan),
        "labels/reflections_excitation_error": ((R,), "float32", nan),
        "labels/reflections_F": ((R,), "float32", nan),
        "labels/reflections_V": ((R,), "float32", nan),
        "labels/reflections_visible": ((R,), "bool", False),
        "labels/reflections_intensity": ((R,), "float32", nan),
        "labels/reflections_background": ((R,), "float32", nan),
        "labels/reflections_present": ((R,), "bool", False),
        "labels/disk_core_px": ((), "float32", nan),
    }


def identity_config(cfg) -> dict:
    """The configuration that defines a dataset's content (everything but where it lives, how it reports and
    where it is computed). ``sampling.engine`` and ``sampling.optics_per_specimen`` are left out while they
    cannot change the content (k = 1 with ``auto`` or ``multislice``), and ``orientation.mistilt_per_specimen``
    ``orientation.max_shear`` and ``optics.semiangle_per_specimen`` while they are off, so datasets written before
    those settings existed still resume."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    c = {k: v for k, v in c.items() if k in {"structure", "orientation", "optics", "detector", "sampling", "dataset"}}
    c["dataset"] = {k: v for k, v in c["dataset"].items() if k not in {"path", "progress"}}
    sampling = dict(c["sampling"])
    if int(sampling.get("optics_per_specimen", 1)) == 1:
        sampling.pop("optics_per_specimen", None)
        if sampling.get("engine", "auto") in ("auto", "multislice"):
            sampling.pop("engine", None)
    c["sampling"] = sampling
    off = {k for k in ("mistilt_per_specimen", "max_shear") if not c["orientation"].get(k)}
    c["orientation"] = {k: v for k, v in c["orientation"].items() if k not in off}
    if not c["optics"].get("semiangle_per_specimen"):
        c["optics"] = {k: v for k, v in c["optics"].items() if k != "semiangle_per_specimen"}
    return c


def cluster_address(cfg) -> str | None:
    """``cluster.address`` or None (local), also for configs without a ``cluster`` group."""
    cluster = getattr(cfg, "cluster", None) if not isinstance(cfg, dict) else cfg.get("cluster")
    if cluster is None:
        return None
    address = cluster.get("address") if hasattr(cluster, "get") else getattr(cluster, "address", None)
    return str(address) if address not in (None, "", "null", "local") else None


def generate_dataset(cfg) -> str:
    """Write (or finish) the dataset described by ``cfg``; returns its path.

    Validates everything first (:class:`stemforge.sim.config.ConfigError` before any file is created; with
    ``cluster.address`` the scheduler must answer and have workers before that), then simulates the missing chunks
    in order with a progress bar, writing each chunk as soon as it is computed (memory stays flat). On a cluster
    (:mod:`stemforge.sim.cluster`) the workers compute whole chunks and this process writes them as they arrive.
    """
    validate(cfg)
    client = None
    if cluster_address(cfg) is not None:
        client = connect(cfg.cluster)  # ConfigError (nothing written) when no scheduler or no worker answers
    elif int(getattr(getattr(cfg, "cluster", None), "local_workers", 0) or 0) > 0:
        client = start_local(cfg.cluster)
    try:
        return _generate(cfg, client)
    finally:
        if client is not None:
            cluster = getattr(client, "cluster", None)
            client.close()
            if cluster is not None and int(getattr(cfg.cluster, "local_workers", 0) or 0) > 0:
                cluster.close()


def _generate(cfg, client) -> str:
    from tqdm.auto import tqdm

    from .dataset import DatasetWriter
    from .setup import configure_abtem

    catalog = build_catalog(cfg)
    detector = build_detector(cfg.detector)
    T = len(cfg.sampling.thicknesses_nm)
    N = int(cfg.dataset.num_patterns)
    chunk_runs = int(cfg.dataset.chunk_runs)
    attrs = {
        "config": identity_config(cfg),
        "versions": software_versions(),
        "seed": int(cfg.dataset.seed),
        "calibration": detector.as_dict(),
        "structures": [{"name": e.name, **e.info} for e in catalog],
        "crystal_systems": CRYSTAL_SYSTEMS,
        "aberration_keys": ABERRATION_KEYS,
        "units": {
            "patterns": "fraction of incident beam per pixel",
            "thickness_A": "Å",
            "energy_eV": "eV",
            "reflections_g": "1/Å (lab frame)",
            "reflections_px": "px (x=col, y=row)",
            "reflections_F": "Å",
            "reflections_V": "V",
            "vg_map": "V (Ewald-weighted |V_g|)",
        },
    }
    writer = DatasetWriter(cfg.dataset.path, N, chunk_runs * T, array_specs(cfg, detector), attrs)
    configure_abtem(fftw_threads=cfg.sampling.fftw_threads)
    missing = writer.missing_chunks()
    where = f" on {len(client.nthreads())} cluster workers" if client is not None else ""
    log.info(
        "%s: %d of %d chunks to simulate%s (%d patterns per chunk, %d thicknesses per run)",
        cfg.dataset.path,
        len(missing),
        writer.num_chunks,
        where,
        writer.chunk_patterns,
        T,
    )
    bar = tqdm(
        total=sum(math.ceil(_len(writer.chunk_slice(c)) / T) for c in missing),
        desc="simulating runs",
        unit="run",
        disable=not cfg.dataset.progress,
    )
    if client is None:
        for c in missing:
            writer.write_chunk(c, simulate_chunk(cfg, catalog, detector, c, _len(writer.chunk_slice(c)), bar))
    else:
        run_chunks(client, cfg, catalog, writer, missing, bar)
    bar.close()
    writer.finalize()
    return str(cfg.dataset.path)


def _len(sl: slice) -> int:
    return sl.stop - sl.start
