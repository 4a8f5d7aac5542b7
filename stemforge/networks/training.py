"""Training orchestration behind ``scripts/train.py`` (lightning-hydra-template conventions).

Everything is instantiated from the Hydra config by ``_target_``: the data module (with its augmentation
pipeline), the LightningModule (with its network), callbacks, loggers and the Trainer. The dataset facts a
model needs at inference — detector calibration, normalisation, energy / convergence ranges, structures,
split — are stored in every checkpoint under ``checkpoint["stemforge"]`` for the model registry.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class DatasetCardCallback(pl.Callback):
    """Writes the dataset / model facts into every checkpoint (``checkpoint["stemforge"]``)."""

    def __init__(self, card: dict):
        self.card = card

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        checkpoint["stemforge"] = self.card


def _optics_ranges(dataset_config: dict) -> dict:
    """Trained ranges of energy (eV) and convergence semi-angle (mrad) from the dataset's config."""

    def span(spec):
        if isinstance(spec, (int, float)):
            return [float(spec), float(spec)]
        if isinstance(spec, dict):
            return [float(spec["min"]), float(spec["max"])]
        return [float(min(spec)), float(max(spec))]

    optics = dataset_config.get("optics", {})
    return {"energy_eV": span(optics.get("energy", 0.0)), "semiangle_mrad": span(optics.get("semiangle_mrad", 0.0))}


def model_card_facts(cfg: DictConfig, info: dict) -> dict:
    """What the registry's model card needs to know about the data and the network."""
    return {
        "task": cfg.get("task_name", "train"),
        "model_config": resolve_model_config(cfg, info),
        "input": {
            "shape": info["shape"],
            "pixel_size_inv_A": info["pixel_size_inv_A"],
            "normalisation": info["normalisation"],
            "probe_convention": "vacuum probe image on the same detector grid, centred at (H//2, W//2)",
            "pacbed_average": int(info.get("average", 1)),
            **_optics_ranges(info["dataset_config"]),
        },
        "structures": info["structures"],
        "split": info["split"],
        "dataset_config": info["dataset_config"],
        "dataset_versions": info["versions"],
        "augment": OmegaConf.to_container(cfg.augment, resolve=True) if cfg.get("augment") else None,
    }


def _resolve_ckpt(cfg: DictConfig) -> str | None:
    ckpt = cfg.get("ckpt_path")
    if ckpt == "last":
        path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if not path.exists():
            raise FileNotFoundError(f"ckpt_path=last but {path} does not exist")
        return str(path)
    if ckpt and not Path(ckpt).exists():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist")
    return ckpt


def resolve_model_config(cfg: DictConfig, info: dict) -> dict:
    """``cfg.model`` as a plain dict with its ``auto`` values filled from the dataset: ``num_phases`` (number of
    structures) and ``image_size`` (detector side in px)."""
    from .autofill import dataset_auto_values, fill_auto

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    return fill_auto(model_cfg, dataset_auto_values(info["num_phases"], info["shape"]))


def build_model(cfg: DictConfig, info: dict):
    """Instantiate the LightningModule of ``cfg.model`` (see :func:`resolve_model_config`)."""
    # plain containers (not DictConfig/ListConfig) so checkpoints load with torch's weights_only=True
    return instantiate(OmegaConf.create(resolve_model_config(cfg, info)), _convert_="all")


def load_net_weights(model, path) -> None:
    """Start ``model.net`` from the network weights of the checkpoint at ``path`` (fine-tuning: the optimiser,
    schedule and epoch count start afresh, unlike ``ckpt_path`` which resumes a run). The checkpoint is read with
    ``weights_only=True``; the networks must match exactly."""
    import torch

    path = Path(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"init_weights: checkpoint {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True).get("state_dict", {})
    net = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
    if not net:
        raise ValueError(f"init_weights: {path} holds no 'net.*' weights")
    try:
        model.net.load_state_dict(net, strict=True)
    except RuntimeError as err:
        raise ValueError(f"init_weights: {path} does not fit this network: {str(err).splitlines()[0]}") from None
    log.info("network weights from %s (fine-tuning)", path)


def train(cfg: DictConfig) -> dict:
    """Fit (and test) the configured model; returns the final metrics as plain floats."""
    pl.seed_everything(int(cfg.seed), workers=True)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup()
    info = datamodule.info
    log.info("data: %s (%s patterns train/val/test)", cfg.data.path, info["split"]["sizes"])
    model = build_model(cfg, info)
    if cfg.get("init_weights"):
        load_net_weights(model, cfg.init_weights)
    card = model_card_facts(cfg, info)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    callbacks.append(DatasetCardCallback(card))
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    resolved = {
        k: (OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k])
        for k in cfg
        if k != "hydra"
    }
    for lg in loggers:
        lg.log_hyperparams({"config": resolved, "data": info})
    metrics: dict = {}
    if cfg.get("train", True):
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=_resolve_ckpt(cfg))
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    if cfg.get("test", False) and info["split"]["sizes"][2] > 0:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        trainer.test(model=model, datamodule=datamodule, ckpt_path=best or None)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "metrics": metrics,
        "best_checkpoint": getattr(trainer.checkpoint_callback, "best_model_path", None),
        "last_checkpoint": str(out / "checkpoints" / "last.ckpt"),
        "data": card["input"],
    }
    summary["metrics"] = {k: (v if np.isfinite(v) else None) for k, v in metrics.items()}  # strict JSON
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    log.info("metrics: %s", {k: round(v, 5) for k, v in metrics.items()})
    return metrics


def optimized_metric(cfg: DictConfig, metrics: dict) -> float | None:
    """The value a hyper-parameter search minimises or maximises (``cfg.optimized_metric``)."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        # e.g. a run stopped by max_steps before its first validation: not an error of the run itself,
        # but a sweep cannot rank it
        log.warning("optimized_metric %r was not logged (logged: %s); returning None", name, sorted(metrics))
        return None
    value = metrics[name]
    return float(value) if np.isfinite(value) else float("nan")
