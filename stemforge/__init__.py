"""stemforge: train deep networks on simulated 4D-STEM diffraction and use them on real experiments.

One package per pipeline stage, data flowing one way::

    stemforge.sim -> stemforge.augment -> stemforge.datamodules -> stemforge.networks -> stemforge.registry
                                                                                      -> stemforge.analysis

plus :mod:`stemforge.core` (what the stages share: calibration, units, streaming, sub-pixel refinement, JSON),
:mod:`stemforge.conf` (the Hydra configs, shipped with the package), :mod:`stemforge.pipeline` (the main job) and
:mod:`stemforge.cli` (the console scripts ``stemforge-simulate``, ``-train``, ``-publish``, ``-analyze``,
``-pipeline`` and ``-registry``).

Importing ``stemforge`` is cheap; each stage is imported the first time it is used (``stemforge.analysis.load``).
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_STAGES = ("core", "sim", "augment", "datamodules", "networks", "registry", "analysis", "pipeline", "cli")
__all__ = ["__version__", *_STAGES]


def __getattr__(name: str):
    if name in _STAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
