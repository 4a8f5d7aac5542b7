"""Model cards: what a published model is, how to feed it, what it predicts and what it was trained on.

A card is a JSON object (``card.json`` beside ``model.safetensors``) built from a training checkpoint's
``checkpoint["stemforge"]`` facts, its hyper-parameters and the run's ``metrics.json``:

``schema``                 ``"stemforge-model-card/1"``
``name``, ``version``      registry name and semantic version
``task``, ``task_family``  training task (``bragg_unet``) and family (bragg | thickness | phase | orientation)
``description``, ``license``, ``created`` (UTC ISO 8601)
``architecture``           ``module`` (LightningModule target), ``net`` (the network's Hydra config with its
                           ``_target_``, ``auto`` values filled; what :func:`stemforge.registry.load` instantiates),
                           ``net_class``, ``num_parameters``, ``module_hyper_parameters``
``input``                  ``shape`` [H, W], ``pixel_size_inv_A``, ``energy_eV`` and ``semiangle_mrad`` ranges
                           trained on, ``normalisation`` {mode, power}, ``probe_convention``, ``call``
``labels``                 what the output means: ``key``, ``definition``, ``unit``, ``output_shape``
                           (+ ``class_names`` for phase)
``training``               ``dataset_fingerprint`` (sha256 of the canonical JSON of the simulation config and
                           versions), ``dataset_config``, ``dataset_versions``, ``structures``, ``split``,
                           ``augment``, ``epoch``, ``global_step``, ``checkpoint`` {file, sha256}
``metrics``                ``test`` and ``validation`` metrics from ``metrics.json`` and which checkpoint was tested
``software``               stemforge version and git commit, python, torch, pytorch_lightning, numpy, abtem, ...
``files``                  ``{"model.safetensors": {"sha256", "size"}}`` (the card cannot hash itself; the
                           index records the card's own sha256 and size)
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from stemforge.core.jsonable import to_jsonable
from stemforge.core.legacy import upgrade_class_path, upgrade_config
from stemforge.core.provenance import checkout_commit, package_versions

from .errors import RegistryError
from .index import sha256_file, utc_now
from .naming import validate_name, validate_version

__all__ = [
    "CARD_SCHEMA",
    "build_card",
    "canonical_json",
    "dataset_fingerprint",
    "software_versions",
    "net_weights",
    "load_checkpoint",
    "read_metrics",
    "task_family",
    "label_spec",
    "trained_ranges",
    "upgrade_card",
]

log = logging.getLogger("registry")

CARD_SCHEMA = "stemforge-model-card/1"

_FAMILIES = {
    "BraggMapModule": "bragg",
    "BraggCentreModule": "bragg",
    "ThicknessModule": "thickness",
    "PhaseModule": "phase",
    "OrientationModule": "orientation",
}
_PACKAGES = (
    "torch",
    "pytorch_lightning",
    "numpy",
    "abtem",
    "safetensors",
    "hydra-core",
    "omegaconf",
    "torchmetrics",
    "scipy",
    "zarr",
    "pooch",
)


def upgrade_card(card: dict) -> dict:
    """A card with today's names, whichever stemforge version wrote it (a new object; the input is left alone).

    Cards published before the ``stemforge.*`` namespace (``bragg-fcunet`` 2.0.0 and older) name their classes
    ``networks.…``, ``sim.…`` and ``augment.…`` and the detector's pixel size ``detector.pixel_size``: every
    ``_target_``, ``architecture.module`` and ``architecture.net_class`` is mapped onto ``stemforge.…`` and the
    pixel size onto ``pixel_size_inv_A`` (:mod:`stemforge.core.legacy`), so the loader's allow-list (classes of
    ``stemforge.networks`` only) applies to them and a foreign top-level ``networks`` package is never imported.
    """
    card = upgrade_config(card)
    arch = card.get("architecture")
    if isinstance(arch, dict):
        card["architecture"] = {
            k: upgrade_class_path(v) if k in ("module", "net_class") else v for k, v in arch.items()
        }
    return card


def canonical_json(obj) -> bytes:
    """Canonical JSON bytes (sorted keys, no whitespace, ASCII) for hashing."""
    return json.dumps(
        to_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def dataset_fingerprint(dataset_config: dict, versions: dict) -> str:
    """``"sha256:<hex>"`` of the canonical JSON of ``{"config": dataset_config, "versions": versions}``.

    Two datasets simulated from the same config with the same code and library versions share it.
    """
    return "sha256:" + hashlib.sha256(canonical_json({"config": dataset_config, "versions": versions})).hexdigest()


def software_versions() -> dict:
    """Versions of stemforge (and its git commit when run from a checkout), python and key dependencies."""
    versions = package_versions(("stemforge", *_PACKAGES))
    return {**versions, **{f"stemforge_{k}": v for k, v in checkout_commit().items()}}


def load_checkpoint(path: str | Path) -> dict:
    """Load a local Lightning checkpoint with ``torch.load(weights_only=True)`` (no arbitrary unpickling)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - pickle.UnpicklingError, RuntimeError (zip), EOFError (truncated)
        raise RegistryError(
            f"cannot read checkpoint {path} with weights_only=True: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise RegistryError(f"{path} is not a Lightning checkpoint (no state_dict)")
    if not isinstance(ckpt.get("stemforge"), dict):
        raise RegistryError(f"{path} has no 'stemforge' facts (was it written by scripts/train.py?)")
    return ckpt


def read_metrics(path: str | Path | None) -> dict | None:
    """The parsed ``metrics.json`` of a training run, or None when ``path`` is None or absent."""
    if path is None or not Path(path).is_file():
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RegistryError(f"cannot read metrics file {path}: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics", {}), dict):
        raise RegistryError(f"metrics file {path} has no 'metrics' object")
    return data


def net_weights(state_dict: dict) -> dict:
    """The network's tensors: keys ``net.*`` of the module's state dict, prefix stripped, contiguous copies."""
    out = {k[4:]: v.detach().cpu().contiguous().clone() for k, v in state_dict.items() if k.startswith("net.")}
    if not out:
        raise RegistryError("checkpoint state_dict has no 'net.*' weights")
    return out


def task_family(module_target: str) -> str:
    """``bragg``/``thickness``/``phase``/``orientation`` from the LightningModule's ``_target_``."""
    return _FAMILIES.get(str(module_target).rsplit(".", 1)[-1], "unknown")


def _net_config(model_config: dict, structures: list, shape: list) -> dict:
    net = model_config.get("net")
    if not isinstance(net, dict) or not isinstance(net.get("_target_"), str):
        raise RegistryError("checkpoint's model_config has no 'net' with a '_target_'")
    # as stemforge.networks.training.resolve_model_config (older checkpoints kept "auto" in their model_config)
    from stemforge.networks.autofill import dataset_auto_values, fill_auto

    return to_jsonable(fill_auto(net, dataset_auto_values(len(structures), shape)))


def label_spec(family: str, facts: dict, hparams: dict, net_cfg: dict) -> dict:
    """What the network outputs, in words and units, for each task family."""
    h, w = facts["input"]["shape"]
    sampling = (facts.get("dataset_config") or {}).get("sampling", {})
    if family == "bragg" and str(facts["model_config"].get("_target_", "")).endswith("BraggCentreModule"):
        stride = int(net_cfg.get("stride", 1))
        return {
            "key": "peaks",
            "definition": (
                "centres of the Bragg disks present at the pattern's dose (S/sqrt(S+B) >= 5, "
                "stemforge.sim.labels.present): channel 0 heat-map logits on cells of "
                f"{stride} model px (Gaussian sigma={hparams.get('sigma_cells', 1.0)} cells around each centre "
                "cell), channels 1-2 the sub-pixel offset (x, y) of the centre from its cell in cells; "
                "decoded by stemforge.networks.centres.decode_centres"
            ),
            "unit": "logit, cells",
            "output": "centres",
            "min_probability": float(hparams.get("peak_threshold", 0.3)),
            "stride_px": stride,
            "output_shape": ["B", 3, h // stride, w // stride],
        }
    if family == "bragg":
        key = hparams.get("target_key") or facts["model_config"].get("target_key", "vg_map")
        sigma = sampling.get("blob_sigma_px", 1.0)
        if key == "disk_map":
            definition = (
                f"unit-height Gaussian blobs (sigma={sigma} px) at the centres of visible Bragg disks, clipped to 1"
            )
            unit = "1"
        else:
            definition = (
                f"Ewald-weighted |V_g| in volts rendered as Gaussian blobs sigma={sigma} px at the Bragg "
                "positions (peak |V_g| exp(-s_g^2 / 2 sigma_s^2), s_g the excitation error)"
            )
            unit = "V"
        return {
            "key": key,
            "definition": definition,
            "unit": unit,
            "output_shape": ["B", 1, h, w],
            "blob_sigma_px": sigma,
        }
    if family == "thickness":
        average = int((facts.get("input") or {}).get("pacbed_average", 1) or 1)
        spec = {
            "key": "thickness_nm",
            "definition": "specimen thickness"
            + (f" from position-averaged CBED (PACBED, mean of up to {average} patterns)" if average > 1 else ""),
            "unit": "nm",
            "output_shape": ["B"],
            # thickness fringes are specific to the crystal: the model is valid for these structures only
            "structures": list(facts.get("structures") or []),
            "pacbed_average": average,
        }
        if sampling.get("thicknesses_nm"):
            spec["trained_range_nm"] = [min(sampling["thicknesses_nm"]), max(sampling["thicknesses_nm"])]
        return spec
    if family == "phase":
        return {
            "key": "phase",
            "definition": "logits over the structures (softmax gives phase probabilities)",
            "unit": "1",
            "output_shape": ["B", len(facts["structures"])],
            "class_names": facts["structures"],
            # below this softmax probability a prediction is "unknown" (stemforge.analysis.phase_map(method="ml"))
            "min_confidence": float(hparams.get("min_confidence", 0.5)),
        }
    if family == "orientation":
        return {
            "key": "rotation",
            "definition": "rotation matrix crystal->lab (proper, det +1); equal up to the "
            "crystal's proper point-group symmetry",
            "unit": "1",
            "output_shape": ["B", 3, 3],
        }
    return {"key": None, "definition": f"unknown task family for {facts['model_config'].get('_target_')}"}


def trained_ranges(facts: dict) -> dict:
    """The ranges a network saw in training: beam energy (eV), convergence semi-angle (mrad), detector pixel size
    (Å⁻¹/px), thickness (nm) and dose (e⁻ per pattern, from the augmentation's shot noise; None: noise-free or
    given as probe-peak counts)."""
    inp = facts.get("input") or {}
    sampling = (facts.get("dataset_config") or {}).get("sampling") or {}
    aug = facts.get("augment") or {}
    thick = sampling.get("thicknesses_nm")
    dose = aug.get("dose_e_per_pattern") if isinstance(aug, dict) else None
    return to_jsonable(
        {
            "energy_eV": inp.get("energy_eV"),
            "semiangle_mrad": inp.get("semiangle_mrad"),
            "pixel_size_inv_A": inp.get("pixel_size_inv_A"),
            "thickness_nm": [min(thick), max(thick)] if thick else None,
            "dose_e_per_pattern": list(dose) if isinstance(dose, (list, tuple)) else dose,
        }
    )


def _metrics(data: dict | None, ckpt_path: Path | None) -> dict:
    if data is None:
        return {"test": {}, "validation": {}, "source": None}
    values = to_jsonable(data.get("metrics", {}))
    tested = data.get("best_checkpoint")
    out = {
        "test": {k: v for k, v in values.items() if k.startswith("test/")},
        "validation": {k: v for k, v in values.items() if k.startswith("val/")},
        # scores measured after training (e.g. benchmarks/analysis_accuracy.py), when the metrics file has them
        "benchmark": {k: v for k, v in values.items() if k.startswith("benchmark/")},
        "source": "metrics.json",
        "tested_checkpoint": Path(tested).name if tested else None,
    }
    if not out["benchmark"]:
        del out["benchmark"]
    if not out["test"]:
        log.warning("metrics file has no test/* metrics; the card records none")
    elif ckpt_path is not None and tested and Path(tested).name != ckpt_path.name:
        log.warning(
            "test metrics in metrics.json were computed with %s, not with the published %s",
            Path(tested).name,
            ckpt_path.name,
        )
    return out


def build_card(
    ckpt: dict,
    name: str,
    version: str,
    *,
    metrics: dict | None = None,
    license: str = "MIT",
    description: str | None = None,
    ckpt_path: str | Path | None = None,
) -> dict:
    """The model card of a checkpoint (without ``files``, which the publisher adds after writing the weights).

    Parameters
    ----------
    ckpt : dict
        A checkpoint loaded by :func:`load_checkpoint` (``state_dict``, ``hyper_parameters``, ``stemforge``).
    name, version : str
        Registry name and semantic version (validated).
    metrics : dict, optional
        Parsed ``metrics.json`` of the run.
    license : str
        License of the published weights (SPDX identifier).
    description : str, optional
        Free text.
    ckpt_path : path, optional
        The checkpoint file (its name and sha256 are recorded).
    """
    validate_name(name)
    validate_version(version)
    facts = upgrade_config(ckpt["stemforge"])  # a checkpoint written before 0.2.0 names networks.… classes
    for key in ("task", "model_config", "input"):
        if key not in facts:
            raise RegistryError(f"checkpoint's stemforge facts lack {key!r}")
    structures = list(facts.get("structures") or [])
    model_config = facts["model_config"]
    net_cfg = _net_config(model_config, structures, list(facts["input"].get("shape") or []))
    hparams = to_jsonable(upgrade_config(dict(ckpt.get("hyper_parameters") or {})))
    family = task_family(model_config.get("_target_", ""))
    weights = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    ckpt_path = Path(ckpt_path) if ckpt_path is not None else None
    checkpoint = None
    if ckpt_path is not None:
        checkpoint = {"file": ckpt_path.name, "sha256": sha256_file(ckpt_path)[0]}
    card = {
        "schema": CARD_SCHEMA,
        "name": name,
        "version": version,
        "task": facts["task"],
        "task_family": family,
        "description": description or f"{facts['task']} network trained by stemforge on simulated CBED",
        "license": license,
        "created": utc_now(),
        "architecture": {
            "module": model_config.get("_target_"),
            "net": net_cfg,
            "net_class": net_cfg["_target_"],
            "num_parameters": int(sum(v.numel() for v in weights.values())),
            "module_hyper_parameters": hparams,
        },
        "input": {
            **to_jsonable(facts["input"]),
            "call": "net(pattern, probe) with (B, 1, H, W) float32 tensors, both normalised as 'normalisation' says",
        },
        "labels": label_spec(family, facts, hparams, net_cfg),
        "trained_ranges": trained_ranges(facts),
        "training": {
            "dataset_fingerprint": dataset_fingerprint(
                facts.get("dataset_config") or {}, facts.get("dataset_versions") or {}
            ),
            "dataset_config": to_jsonable(facts.get("dataset_config")),
            "dataset_versions": to_jsonable(facts.get("dataset_versions")),
            "structures": structures,
            "split": to_jsonable(facts.get("split")),
            "augment": to_jsonable(facts.get("augment")),
            "epoch": ckpt.get("epoch"),
            "global_step": ckpt.get("global_step"),
            "checkpoint": checkpoint,
        },
        "metrics": _metrics(metrics, ckpt_path),
        "software": {**software_versions(), "pytorch_lightning_checkpoint": ckpt.get("pytorch-lightning_version")},
    }
    return card
