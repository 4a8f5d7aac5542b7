"""LightningModules: two optimisation steps on tiny random batches, prediction, NaN refusal."""

import functools
import math

import pytest
import torch
from torch.utils.data import DataLoader

pl = pytest.importorskip("pytorch_lightning")

from stemforge.networks import FCUNet, OrientationNet, PhaseNet, ThicknessNet, UNet  # noqa: E402
from stemforge.networks.modules import BraggMapModule, OrientationModule, PhaseModule, ThicknessModule  # noqa: E402
from stemforge.networks.rotations import cubic_group, pad_symmetry, random_rotations  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`"),
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated"),
]

SIZE, N, NUM_PHASES = 32, 8, 3
PROPERTY = dict(width=8, num_stages=2, blocks_per_stage=1, hidden=16)


def _samples(n: int = N, size: int = SIZE, seed: int = 0) -> list[dict]:
    """Random samples following the batch contract (one dict per sample; the DataLoader stacks them)."""
    g = torch.Generator().manual_seed(seed)
    rots = random_rotations(n, g)
    sym = pad_symmetry(cubic_group())
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = []
    for i in range(n):
        peaks = torch.full((6, 2), math.nan)
        pts = torch.tensor([[size // 2, size // 2], [size // 2 + 6, size // 2], [size // 2, size // 2 - 7]]).float()
        peaks[:3] = pts
        blob = sum(torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 2.0) for x, y in pts.tolist())
        out.append(
            {
                "pattern": torch.rand(1, size, size, generator=g),
                "probe": torch.rand(1, size, size, generator=g),
                "vg_map": (blob * 3.0)[None].float(),
                "disk_map": blob[None].float(),
                "peaks": peaks,
                "thickness_nm": torch.rand((), generator=g) * 50 + 5,
                "phase": torch.randint(0, NUM_PHASES, (), generator=g),
                "rotation": rots[i],
                "symmetry": sym,
            }
        )
    return out


def _loader(samples=None, batch_size: int = 4) -> DataLoader:
    return DataLoader(samples or _samples(), batch_size=batch_size, shuffle=False)


def _trainer(**kw) -> "pl.Trainer":
    return pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )


ADAM = functools.partial(torch.optim.Adam, lr=1e-3)
STEP = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)


def _modules():
    return {
        "fcunet": lambda: BraggMapModule(
            FCUNet(image_size=SIZE, depth=3, base_filters=4, max_filters=8),
            loss="ssim+l1",
            optimizer=ADAM,
            scheduler=STEP,
            mc_samples=3,
        ),
        "unet": lambda: BraggMapModule(
            UNet(image_size=SIZE, base_filters=4, max_filters=8), loss="mse", target_key="disk_map", optimizer=ADAM
        ),
        "thickness": lambda: ThicknessModule(ThicknessNet(**PROPERTY), loss="huber", optimizer=ADAM),
        "phase": lambda: PhaseModule(
            PhaseNet(NUM_PHASES, **PROPERTY), optimizer=ADAM, scheduler=STEP, scheduler_interval="step"
        ),
        "orientation": lambda: OrientationModule(OrientationNet(**PROPERTY), optimizer=ADAM),
    }


@pytest.mark.parametrize("name", list(_modules()))
def test_fit_two_steps(name):
    torch.manual_seed(0)
    module = _modules()[name]()
    before = [p.detach().clone() for p in module.net.parameters()]
    trainer = _trainer(limit_val_batches=1)
    trainer.fit(module, train_dataloaders=_loader(), val_dataloaders=_loader())
    assert trainer.global_step == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, module.net.parameters()))
    metrics = trainer.callback_metrics
    assert "train/loss_epoch" in metrics or "train/loss" in metrics
    assert "val/loss" in metrics and math.isfinite(metrics["val/loss"])
    if name in ("fcunet", "unet"):
        for key in ("val/peak_precision", "val/peak_recall", "val/peak_f1", "val/peak_position_error_px"):
            assert key in metrics
    expected = {"thickness": "val/mae_nm", "phase": "val/accuracy", "orientation": "val/misorientation_deg"}
    if name in expected:
        assert expected[name] in metrics
    assert "net" not in module.hparams and "channels_last" in module.hparams
    assert module.hparams.optimizer_spec == "torch.optim.adam.Adam(lr=0.001)"
    if name in ("fcunet", "unet", "thickness", "orientation"):
        assert "loss" in module.hparams


def test_bragg_predict_returns_mc_mean_and_variance():
    module = _modules()["fcunet"]()
    samples = [{k: s[k] for k in ("pattern", "probe")} for s in _samples(4)]  # inputs only
    out = _trainer().predict(module, dataloaders=_loader(samples, batch_size=2))
    assert len(out) == 2
    assert set(out[0]) == {"prediction", "variance"}
    assert out[0]["prediction"].shape == (2, 1, SIZE, SIZE) and (out[0]["variance"] > 0).any()
    plain = BraggMapModule(UNet(image_size=SIZE, depth=2, base_filters=4, max_filters=8))
    pred = plain.predict_step(_loader(batch_size=2).__iter__().__next__(), 0)
    assert set(pred) == {"prediction"} and pred["prediction"].shape == (2, 1, SIZE, SIZE)


@pytest.mark.parametrize(
    "name,key",
    [
        ("fcunet", "pattern"),
        ("unet", "probe"),
        ("unet", "disk_map"),
        ("thickness", "thickness_nm"),
        ("phase", "pattern"),
        ("orientation", "rotation"),
        ("orientation", "symmetry"),
    ],
)
def test_non_finite_batch_is_refused(name, key):
    module = _modules()[name]()
    batch = next(iter(_loader()))
    batch[key] = batch[key].clone()
    batch[key][1].view(-1)[0] = math.nan if key != "probe" else math.inf
    bn = next(m for m in module.net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    stats = bn.running_mean.clone()
    with pytest.raises(FloatingPointError, match=rf"batch 7: non-finite values in '{key}' \(first bad sample index 1"):
        module.training_step(batch, 7)
    assert torch.equal(bn.running_mean, stats)  # refused before the network saw the batch
    if key == "disk_map":  # BraggMapModule learning vg_map does not read disk_map
        module = BraggMapModule(UNet(image_size=SIZE, depth=2, base_filters=4, max_filters=8))
        assert torch.isfinite(module.training_step(batch, 7))


def test_nan_peak_padding_is_fine_but_inf_is_not():
    module = _modules()["unet"]()
    batch = next(iter(_loader()))
    module.validation_step(batch, 0)  # NaN-padded peaks are normal
    batch["peaks"][0, 5] = math.inf
    with pytest.raises(FloatingPointError, match="'peaks'"):
        module.validation_step(batch, 0)


def test_non_finite_loss_is_refused_and_trainer_stops():
    class Exploding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, pattern, probe):
            return pattern * self.w / 0.0

    module = BraggMapModule(Exploding(), optimizer=ADAM)
    with pytest.raises(FloatingPointError, match="batch 0: training loss is"):
        module.training_step(next(iter(_loader())), 0)
    samples = _samples(4)
    samples[2]["pattern"][0, 3, 3] = math.nan
    good = _modules()["thickness"]()
    with pytest.raises(FloatingPointError, match="batch 1: non-finite values in 'pattern'"):
        _trainer().fit(good, train_dataloaders=_loader(samples, batch_size=2))


def test_channels_last_flag():
    module = BraggMapModule(
        FCUNet(image_size=SIZE, depth=2, base_filters=4, max_filters=8), channels_last=True, optimizer=ADAM
    )
    assert module.net.channels_last
    batch = next(iter(_loader()))
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    unet = ThicknessModule(ThicknessNet(**PROPERTY), channels_last=True)
    assert unet.net.encoder.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert unet(batch).shape == (4,)


def test_missing_key_and_bad_arguments():
    module = _modules()["phase"]()
    batch = next(iter(_loader()))
    del batch["phase"]
    with pytest.raises(KeyError, match="phase"):
        module.training_step(batch, 0)
    batch = next(iter(_loader()))
    batch["phase"][2] = NUM_PHASES
    with pytest.raises(ValueError, match="phase"):
        module.training_step(batch, 0)
    with pytest.raises(ValueError):
        BraggMapModule(UNet(depth=2), loss="huber")
    with pytest.raises(ValueError):
        ThicknessModule(ThicknessNet(**PROPERTY), loss="ce")


def test_hydra_instantiate_and_checkpoint_round_trip(tmp_path):
    hydra_utils = pytest.importorskip("hydra.utils")
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {
            "_target_": "stemforge.networks.modules.BraggMapModule",
            "loss": "l1",
            "net": {
                "_target_": "stemforge.networks.UNet",
                "image_size": SIZE,
                "depth": 2,
                "base_filters": 4,
                "max_filters": 8,
            },
            "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
            "scheduler": {"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau", "_partial_": True, "patience": 2},
        }
    )
    module = hydra_utils.instantiate(cfg)
    trainer = _trainer(limit_val_batches=1)
    trainer.fit(module, train_dataloaders=_loader(), val_dataloaders=_loader())
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    loaded = BraggMapModule.load_from_checkpoint(path, net=hydra_utils.instantiate(cfg.net))
    assert loaded.hparams.loss == "l1"
    saved = torch.load(path, weights_only=True)["hyper_parameters"]  # plain values only
    assert saved["scheduler_spec"] == "torch.optim.lr_scheduler.ReduceLROnPlateau(patience=2)"
    for a, b in zip(module.net.state_dict().values(), loaded.net.state_dict().values()):
        assert torch.equal(a, b)
