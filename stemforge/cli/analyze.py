"""Analyse a 4D-STEM scan classically and with registry models: ``python scripts/analyze.py data.path=SCAN``.

Writes into ``output.dir`` what :func:`stemforge.analysis.results.write_results` writes: ``maps.zarr`` (schema in
:mod:`stemforge.analysis.results`), PNG figures and ``report.txt`` (the comparison, also printed; against the ground
truth when the scan is synthetic). Bad input (missing file, wrong rank, NaN, mismatched calibration, unknown model):
one line on stderr, exit 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra

os.environ.setdefault("WANDB_MODE", "offline")


@hydra.main(version_base="1.3", config_path="pkg://stemforge.conf", config_name="analyze")
def main(cfg) -> None:
    from omegaconf import OmegaConf

    from stemforge import analysis
    from stemforge.analysis.datacube import AnalysisError
    from stemforge.analysis.results import write_results
    from stemforge.analysis.workflow import add_dose_noise, analyse

    out = Path(cfg.output.dir)
    try:
        cube = analysis.load(cfg.data.path, **OmegaConf.to_container(cfg.data.options, resolve=True))
        overrides = {k: v for k, v in OmegaConf.to_container(cfg.data.calibration, resolve=True).items()}
        if overrides:
            cube.calibration = cube.calibration.with_(**overrides)
        if cfg.data.dose_e_per_pattern:
            cube = add_dose_noise(cube, float(cfg.data.dose_e_per_pattern), int(cfg.data.noise_seed))
        results = analyse(
            cube,
            list(cfg.methods),
            classical=OmegaConf.to_container(cfg.classical, resolve=True),
            ml=OmegaConf.to_container(cfg.ml, resolve=True),
            strain_reference=OmegaConf.to_container(cfg.strain, resolve=True).get("reference"),
            orientation=OmegaConf.to_container(cfg.orientation, resolve=True),
            truth_tolerance_px=float(cfg.truth_tolerance_px),
            truth=str(cfg.get("truth", "present")),
            ml_models=OmegaConf.to_container(cfg.ml_models, resolve=True) if cfg.get("ml_models") else None,
            properties=OmegaConf.to_container(cfg.properties, resolve=True) if cfg.get("properties") else None,
            progress=bool(cfg.progress),
        )
    except (AnalysisError, TypeError) as err:
        print(f"error: {err}".replace("\n", " "), file=sys.stderr)
        sys.exit(2)
    text, written = write_results(cube, results, out)
    print(text)
    print(f"\nwrote {', '.join(written)} in {out}")


if __name__ == "__main__":
    main()
