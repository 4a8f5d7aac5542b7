"""Simulate a labelled CBED dataset: ``python scripts/simulate.py [group=option] [key=value ...]``.

Examples::

    python scripts/simulate.py                                   # the default dataset (data/default.zarr)
    python scripts/simulate.py dataset.path=out.zarr dataset.num_patterns=24 structure=si
    python scripts/simulate.py -m optics.semiangle_mrad=1.0,2.0 dataset.path='si_${optics.semiangle_mrad}.zarr'
    python scripts/simulate.py scan=multilayer scan.path=data/scan_multilayer.zarr   # a 4D-STEM scan with ground truth

Running the same command again resumes: only missing chunks are computed.
"""

from __future__ import annotations

import sys
import time

import hydra

from stemforge.sim.cluster import ClusterTaskError
from stemforge.sim.config import ConfigError, register_configs
from stemforge.sim.dataset import DatasetMismatch

register_configs()


@hydra.main(version_base="1.3", config_path="pkg://stemforge.conf", config_name="simulate")
def main(cfg) -> None:
    from stemforge.sim.generate import generate_dataset
    from stemforge.sim.synthetic_scan import generate_scan, scan_summary

    start = time.perf_counter()
    try:
        if cfg.scan.profile != "none":
            path = generate_scan(cfg)
            print(f"{scan_summary(path)}\n  ready in {time.perf_counter() - start:.1f} s")
            return
        path = generate_dataset(cfg)
    except (ConfigError, DatasetMismatch, ClusterTaskError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {cfg.dataset.num_patterns} patterns to {path} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
