"""Training throughput: samples per second and the share of step time spent waiting for data.

Trains the configured experiment for a fixed number of steps through the real stack (data module reading the
zarr store lazily with augmentation in a worker process, Lightning Trainer) and times every step with a
callback: *wait* is the time between the end of one step and the start of the next (fetching the batch),
*compute* the time inside the step. Target: data_wait_fraction ≤ 0.05.

Usage::

    python benchmarks/train_throughput.py --quick            # < 5 min: small dataset simulated if needed
    python benchmarks/train_throughput.py --dataset data/default.zarr --steps 200 --experiment bragg_fcunet
    python benchmarks/train_throughput.py --dataset data/default.zarr --experiment bragg_unet --fit 20

The last line reads ``RESULT samples_per_s=<float> data_wait_fraction=<float>``; with ``--fit N`` the script
then trains N epochs through ``scripts/train.py``'s code path and prints the validation peak F1 next to the F1 of
uniform-noise maps scored by the same metric on the same split (chance), as a second ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _timing_callback():
    import pytorch_lightning as pl

    class StepTimer(pl.Callback):
        def __init__(self):
            self.wait, self.compute, self.samples = [], [], []
            self._end = None
            self._start = None

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self._start = time.perf_counter()
            if self._end is not None:
                self.wait.append(self._start - self._end)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self._end = time.perf_counter()
            self.compute.append(self._end - self._start)
            self.samples.append(int(batch["pattern"].shape[0]))

        def on_train_epoch_end(self, trainer, module):
            self._end = None  # the validation pass between epochs is not data waiting

    return StepTimer()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small dataset and 40 steps (< 5 min)")
    parser.add_argument("--dataset", default=None, help="zarr dataset (default: simulate one for --quick)")
    parser.add_argument("--experiment", default="bragg_fcunet")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--augment", default="counting")
    parser.add_argument(
        "--fit",
        type=int,
        default=0,
        metavar="EPOCHS",
        help="also train this many epochs and report the validation peak F1 against chance",
    )
    args = parser.parse_args(argv)

    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from stemforge.networks.training import build_model

    tmp = Path(tempfile.mkdtemp(prefix="stemforge_train_bench_"))
    dataset = args.dataset
    steps = 40 if args.quick else args.steps
    if dataset is None:
        dataset = str(tmp / "bench.zarr")
        print(f"simulating a benchmark dataset at {dataset} (48 patterns, 128×128) ...", flush=True)
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "simulate.py"),
                f"dataset.path={dataset}",
                "dataset.num_patterns=48",
                "sampling.k_oversample=1",
                "dataset.progress=false",
                f"hydra.run.dir={tmp}/hydra",
            ],
            check=True,
            cwd=tmp,
        )
    overrides = [
        f"experiment={args.experiment}",
        f"data.path={dataset}",
        f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.workers}",
        f"augment={args.augment}",
        f"paths.output_dir={tmp}/run",
        f"paths.root_dir={tmp}",
        "data.split.val_fraction=0.1",
        "data.split.test_fraction=0.0",
    ]
    with initialize_config_module(config_module="stemforge.conf", version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True, overrides=overrides)
    HydraConfig().set_config(cfg)

    import pytorch_lightning as pl
    import torch

    pl.seed_everything(0)
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup()
    model = build_model(cfg, dm.info)
    timer = _timing_callback()
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    wall = time.perf_counter() - t0
    skip = 3  # warm-up steps (worker start-up, allocator) are not steady state
    wait = sum(timer.wait[skip:])
    compute = sum(timer.compute[skip:])
    samples = sum(timer.samples[skip:])
    rate = samples / (wait + compute)
    frac = wait / (wait + compute)
    print(
        f"experiment {args.experiment}, {dm.info['shape']} px, batch {args.batch_size}, workers {args.workers}, "
        f"augment {args.augment}, torch threads {torch.get_num_threads()}"
    )
    print(
        f"{len(timer.compute)} steps in {wall:.1f} s; steady state over {len(timer.compute) - skip} steps: "
        f"compute {compute:.2f} s, data wait {wait:.3f} s"
    )
    print(f"RESULT samples_per_s={rate:.3f} data_wait_fraction={frac:.4f}")
    if args.fit:
        fit_and_compare(overrides, args.fit, tmp)


def fit_and_compare(overrides, epochs: int, tmp: Path) -> None:
    """Train ``epochs`` epochs (the train app's code path) and compare the best validation peak F1 with chance."""
    import torch
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from stemforge.networks.metrics import PeakMatchMetric
    from stemforge.networks.training import train

    fit_overrides = [o for o in overrides if not o.startswith(("data.split.", "paths.output_dir"))] + [
        f"trainer.max_epochs={epochs}",
        "logger=csv",
        "test=false",
        "extras.print_config=false",
        f"paths.output_dir={tmp}/fit",
        f"callbacks.early_stopping.patience={epochs}",
    ]
    with initialize_config_module(config_module="stemforge.conf", version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True, overrides=fit_overrides)
    HydraConfig().set_config(cfg)
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    import pandas as pd

    log = pd.read_csv(next((tmp / "fit" / "csv").rglob("metrics.csv")))
    val = log[log["val/peak_f1"].notna()]
    best = val.loc[val["val/loss"].idxmin()]
    # chance: uniform-noise maps scored by the model's own peak metric settings on the same validation split
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup()
    m = cfg.model
    chance = PeakMatchMetric(
        tolerance=m.peak_tolerance_px,
        threshold=m.peak_threshold,
        min_distance=m.peak_min_distance,
        absolute_threshold=m.peak_absolute_threshold,
    )
    gen = torch.Generator().manual_seed(0)
    for batch in dm.val_dataloader():
        chance.update(torch.rand(batch["vg_map"].shape, generator=gen), batch["peaks"])
    c = {k: float(v) for k, v in chance.compute().items()}
    print(
        f"fit: {epochs} epochs in {wall / 60:.1f} min; best val/loss at epoch {int(best['epoch'])}: "
        f"F1 {best['val/peak_f1']:.3f}, precision {best['val/peak_precision']:.3f}, recall "
        f"{best['val/peak_recall']:.3f}, position error {best['val/peak_position_error_px']:.2f} px; "
        f"max val F1 over epochs {val['val/peak_f1'].max():.3f}"
    )
    print(
        f"chance (uniform-noise maps, same metric and split): F1 {c['f1']:.3f}, precision {c['precision']:.3f}, "
        f"recall {c['recall']:.3f}"
    )
    print(f"RESULT val_peak_f1={best['val/peak_f1']:.4f} chance_f1={c['f1']:.4f}")


if __name__ == "__main__":
    main()
