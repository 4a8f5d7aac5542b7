"""Train a network on a simulated dataset: ``python scripts/train.py experiment=bragg_fcunet [key=value ...]``.

Examples::

    python scripts/train.py experiment=bragg_fcunet data.path=data/default.zarr
    python scripts/train.py experiment=thickness trainer.max_epochs=5 logger=csv
    python scripts/train.py experiment=bragg_unet ckpt_path=last paths.output_dir=logs/train/runs/RUN   # resume
    python scripts/train.py -m experiment=bragg_fcunet model.optimizer.lr=1e-3,3e-4                     # grid
    python scripts/train.py -m hparams_search=bragg_optuna                                             # Optuna
    python scripts/train.py -m hydra/launcher=slurm experiment=bragg_fcunet trainer=gpu seed=1,2,3      # SLURM
"""

from __future__ import annotations

import os
import sys

import hydra

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@hydra.main(version_base="1.3", config_path="pkg://stemforge.conf", config_name="train")
def main(cfg):
    from omegaconf import OmegaConf

    from stemforge.networks.training import optimized_metric, train

    if cfg.extras.get("print_config"):
        print(OmegaConf.to_yaml(cfg, resolve=False))
    try:
        metrics = train(cfg)
    except (FloatingPointError, FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(1)
    return optimized_metric(cfg, metrics)


if __name__ == "__main__":
    main()
