"""Training stage: every experiment fits two steps on a tiny simulated dataset; configs compose; resume;
NaN refusal; sweeps (grid and Optuna) run; the SLURM launcher config composes."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = [
    "bragg_fcunet",
    "bragg_unet",
    "bragg_centres",
    "bragg_fcunet_corpus",
    "thickness",
    "phase",
    "orientation",
]
SMALL = [
    "data.batch_size=4",
    "data.num_workers=0",
    "data.split.val_fraction=0.25",
    "data.split.test_fraction=0.25",
    "extras.print_config=false",
    "logger=csv",
    "callbacks.model_summary=null",
    "callbacks.progress_bar=null",
]
NET = {
    "bragg_fcunet": ["model.net.depth=3", "model.net.base_filters=4"],
    "bragg_unet": ["model.net.depth=3", "model.net.base_filters=4"],
    "bragg_centres": ["model.net.filters=[8,8]", "data.split.holdout_val=[Cu]"],
    "bragg_fcunet_corpus": ["model.net.depth=3", "model.net.base_filters=4", "data.split.holdout_val=[Cu]"],
    "thickness": ["model.net.width=4", "model.net.num_stages=2"],
    "phase": ["model.net.width=4", "model.net.num_stages=2"],
    "orientation": ["model.net.width=4", "model.net.num_stages=2"],
}


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train_data")
    out = tmp / "tiny.zarr"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "simulate.py"),
            "structure.names=[Si,Cu]",
            "sampling=fast",
            "detector.shape=[32,32]",
            "detector.pixel_size_inv_A=0.06",
            "dataset.num_patterns=16",
            "dataset.chunk_runs=2",
            f"dataset.path={out}",
            "dataset.progress=false",
        ],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def compose_train(overrides, output_dir):
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_module(config_module="stemforge.conf", version_base="1.3"):
        cfg = compose(
            config_name="train",
            return_hydra_config=True,
            overrides=[*overrides, f"paths.output_dir={output_dir}", f"paths.root_dir={output_dir}"],
        )
    HydraConfig().set_config(cfg)
    return cfg


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_fits_two_steps(experiment, tiny_dataset, tmp_path):
    from stemforge.networks.training import train

    cfg = compose_train(
        [f"experiment={experiment}", f"data.path={tiny_dataset}", "trainer.max_steps=2", *SMALL, *NET[experiment]],
        tmp_path,
    )
    metrics = train(cfg)
    assert np.isfinite(metrics["train/loss"]) and "val/loss" in metrics
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    ckpt = __import__("torch").load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    card = ckpt["stemforge"]
    assert card["input"]["shape"] == [32, 32] and card["input"]["pixel_size_inv_A"] == 0.06
    assert card["structures"] == ["Si", "Cu"]
    assert card["model_config"]["_target_"].startswith("stemforge.networks.modules.")
    assert '"auto"' not in __import__("json").dumps(card["model_config"])  # filled from the dataset


def test_compose_all_experiments_and_launchers(tmp_path):
    for experiment in EXPERIMENTS:
        cfg = compose_train([f"experiment={experiment}"], tmp_path)
        assert cfg.model._target_.startswith("stemforge.networks.modules.")
        assert cfg.task_name == experiment and cfg.optimized_metric.startswith("val/")
    cfg = compose_train(["experiment=bragg_fcunet", "trainer=gpu"], tmp_path)
    assert cfg.trainer.precision == "bf16-mixed"
    cfg = compose_train(["trainer=ddp"], tmp_path)
    assert cfg.trainer.strategy == "ddp"
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="stemforge.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
        assert "SlurmLauncher" in cfg.hydra.launcher._target_
        cfg = compose(config_name="train", overrides=["hparams_search=bragg_optuna"], return_hydra_config=True)
        assert "OptunaSweeper" in cfg.hydra.sweeper._target_ and cfg.optimized_metric == "val/peak_f1"


def run_train(args, cwd, check=True):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_train_script_checkpoint_and_resume(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    base = [
        "experiment=bragg_unet",
        f"data.path={tiny_dataset}",
        f"paths.output_dir={out}",
        *SMALL,
        *NET["bragg_unet"],
        "test=false",
    ]
    run_train([*base, "trainer.max_steps=2"], tmp_path)
    last = out / "checkpoints" / "last.ckpt"
    assert last.exists()
    import torch

    assert torch.load(last, weights_only=True, map_location="cpu")["global_step"] == 2
    run_train([*base, "trainer.max_steps=4", "ckpt_path=last"], tmp_path)
    assert torch.load(last, weights_only=True, map_location="cpu")["global_step"] == 4


def test_nan_in_data_is_a_clear_error(tiny_dataset, tmp_path):
    import zarr

    bad = tmp_path / "bad.zarr"
    shutil.copytree(tiny_dataset, bad)
    g = zarr.open_group(str(bad), mode="r+")
    p = g["patterns"][:]
    p[:, 10, 10] = np.nan
    g["patterns"][:] = p
    proc = run_train(
        [
            "experiment=bragg_unet",
            f"data.path={bad}",
            f"paths.output_dir={tmp_path}/out",
            *SMALL,
            *NET["bragg_unet"],
            "trainer.max_steps=2",
        ],
        tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    assert "FloatingPointError" in proc.stderr and "non-finite" in proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]) == 1


def test_grid_and_optuna_sweeps(tiny_dataset, tmp_path):
    common = [
        f"data.path={tiny_dataset}",
        *SMALL,
        "trainer.max_steps=2",
        "test=false",
        f"paths.log_dir={tmp_path}/logs",
        f"paths.root_dir={tmp_path}",
    ]
    run_train(["-m", "experiment=bragg_unet", *NET["bragg_unet"], "model.optimizer.lr=0.001,0.0001", *common], tmp_path)
    runs = list((tmp_path / "logs").rglob("last.ckpt"))
    assert len(runs) == 2
    proc = run_train(
        [
            "-m",
            "hparams_search=bragg_optuna",
            "experiment=bragg_unet",
            *NET["bragg_unet"],
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=1",
            "optimized_metric=val/loss",
            "hydra.sweeper.direction=minimize",
            *common,
        ],
        tmp_path,
    )
    assert "Best parameters" in proc.stdout + proc.stderr or len(list((tmp_path / "logs").rglob("last.ckpt"))) == 4


def test_acceptance_command_stopping_before_validation(tiny_dataset, tmp_path):
    """`train.py experiment=... data.path=... trainer.max_steps=N paths.output_dir=OUT` exits 0 with a checkpoint
    even when it stops before the first validation (the optimized metric then is simply absent)."""
    out = tmp_path / "acc"
    run_train(
        [
            "experiment=bragg_fcunet",
            f"data.path={tiny_dataset}",
            "trainer.max_steps=1",
            f"paths.output_dir={out}",
            "model.net.base_filters=4",
            "data.num_workers=0",
            "logger=csv",
            "extras.print_config=false",
        ],
        tmp_path,
    )
    assert list((out / "checkpoints").glob("*.ckpt"))


def test_init_weights_starts_a_new_run_from_a_checkpoints_network(tiny_dataset, tmp_path):
    import torch

    from stemforge.networks.training import build_model, load_net_weights, train

    over = [f"data.path={tiny_dataset}", "trainer.max_steps=2", *SMALL, *NET["bragg_centres"]]
    first = compose_train(["experiment=bragg_centres", *over], tmp_path / "a")
    train(first)
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    trained = torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]
    second = compose_train(["experiment=bragg_centres", f"init_weights={ckpt}", *over], tmp_path / "b")
    from stemforge.datamodules import CBEDDataModule

    dm = CBEDDataModule(str(tiny_dataset), split=dict(second.data.split))
    dm.setup()
    model = build_model(second, dm.info)
    load_net_weights(model, second.init_weights)
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, trained[f"net.{k}"]), k
    other = compose_train(["experiment=bragg_centres", *over, "model.net.filters=[8,16]"], tmp_path / "c")
    with pytest.raises(ValueError, match="does not fit this network"):
        load_net_weights(build_model(other, dm.info), ckpt)
    with pytest.raises(FileNotFoundError, match="init_weights"):
        load_net_weights(model, tmp_path / "missing.ckpt")
