"""LightningModules, one per task family; each wraps a network passed in as ``net``.

Common constructor arguments
----------------------------
net : nn.Module
    The network, ``net(pattern, probe)`` with (B, 1, H, W) tensors (Hydra: ``model.net`` with ``_target_``).
optimizer : callable, optional
    ``optimizer(params) -> torch.optim.Optimizer``, e.g. a Hydra ``_partial_: true`` of ``torch.optim.Adam``;
    default Adam with lr 1e-3.
scheduler : callable, optional
    ``scheduler(optimizer) -> LRScheduler`` (also a partial); stepped every ``scheduler_interval``
    ("epoch" or "step"); ``ReduceLROnPlateau`` watches ``monitor``.
monitor : str
    Logged value for plateau schedulers (default ``"val/loss"``).
channels_last : bool
    Convert the network and its 4-D inputs to channels-last memory format (GPU convolutions).
compile : bool
    Run the network through ``torch.compile`` (compiled lazily at the first forward; the registered
    ``net`` and the checkpoint keys stay those of the plain module).

Hyper-parameters: every constructor argument except ``net``, ``optimizer`` and ``scheduler`` is saved with
``save_hyperparameters``; the two callables are recorded as strings ``optimizer_spec``/``scheduler_spec`` so
that checkpoints hold plain values only and load with ``torch.load(weights_only=True)``. Load with
``Module.load_from_checkpoint(path, net=<same architecture>)``.

Every train/validation/test step refuses non-finite input: if a tensor the module reads (or the training
loss) contains NaN or Inf, it raises ``FloatingPointError`` naming the key, the sample index and the batch
index, before the network sees the batch (so BatchNorm statistics stay clean). ``peaks`` may be NaN padded
but not Inf.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics import MeanAbsoluteError
from torchmetrics.classification import MulticlassAccuracy

from .losses import MapLoss, OrientationLoss
from .metrics import MisorientationMetric, PeakMatchMetric

__all__ = ["BraggMapModule", "ThicknessModule", "PhaseModule", "OrientationModule"]

_STAGES = ("train", "val", "test")


def check_finite(
    batch: Mapping[str, Any], keys: tuple[str, ...], batch_idx: int, nan_ok: tuple[str, ...] = ("peaks",)
) -> None:
    """Raise ``FloatingPointError`` if a floating tensor ``batch[key]`` holds NaN/Inf (keys in ``nan_ok``: Inf only).

    One device synchronisation for all keys together.
    """
    named = [
        (k, batch[k]) for k in keys if k in batch and isinstance(batch[k], Tensor) and batch[k].is_floating_point()
    ]
    if not named:
        return
    flags = torch.stack([(~torch.isinf(t)).all() if k in nan_ok else torch.isfinite(t).all() for k, t in named])
    if bool(flags.all()):
        return
    for (k, t), ok in zip(named, flags.tolist()):
        if not ok:
            bad = torch.isinf(t) if k in nan_ok else ~torch.isfinite(t)
            per_sample = bad.reshape(t.shape[0], -1).any(1) if t.ndim > 0 else bad.reshape(1)
            first = int(per_sample.nonzero()[0, 0])
            n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            raise FloatingPointError(
                f"batch {batch_idx}: non-finite values in '{k}' (first bad sample index {first} of {t.shape[0]}, "
                f"{n_nan} NaN, {n_inf} Inf); refusing to use this batch"
            )


def _describe(factory: Callable | None) -> str | None:
    """``"torch.optim.adam.Adam(lr=0.001)"`` for a partial, the qualified name for another callable."""
    if factory is None:
        return None
    func = getattr(factory, "func", factory)
    name = f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', repr(func))}".lstrip(".")
    args = [repr(a) for a in getattr(factory, "args", ())]
    args += [f"{k}={v!r}" for k, v in (getattr(factory, "keywords", None) or {}).items()]
    return f"{name}({', '.join(args)})" if hasattr(factory, "func") else name


class _TaskModule(pl.LightningModule):
    """Shared optimiser set-up, finite checks, channels-last and compile handling."""

    input_keys: tuple[str, ...] = ("pattern", "probe")
    target_keys: tuple[str, ...] = ()

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        monitor: str = "val/loss",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        # callables stay out of the checkpoint's hyper_parameters (plain values load with weights_only=True);
        # a readable description of them is kept instead
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.hparams["optimizer_spec"] = _describe(optimizer)
        self.hparams["scheduler_spec"] = _describe(scheduler)
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.monitor = monitor
        self.use_channels_last = bool(channels_last)
        self.use_compile = bool(compile)
        object.__setattr__(self, "_compiled_net", None)  # not a registered submodule
        if self.use_channels_last:
            self.net.to(memory_format=torch.channels_last)
            if hasattr(self.net, "channels_last"):
                self.net.channels_last = True

    def __getstate__(self) -> dict:  # the compiled wrapper is rebuilt lazily; do not pickle it
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_compiled_net"] = None
        return state

    # -- forward -------------------------------------------------------------------------------------------------
    def _net_fn(self) -> Callable:
        if not self.use_compile:
            return self.net
        if self._compiled_net is None:
            object.__setattr__(self, "_compiled_net", torch.compile(self.net))
        return self._compiled_net

    def forward(self, pattern: Tensor | Mapping[str, Tensor], probe: Tensor | None = None) -> Any:
        """``forward(batch)`` or ``forward(pattern, probe)``: the network's output."""
        if isinstance(pattern, Mapping):
            pattern, probe = pattern["pattern"], pattern["probe"]
        if self.use_channels_last:
            pattern = pattern.contiguous(memory_format=torch.channels_last)
            probe = probe.contiguous(memory_format=torch.channels_last)
        return self._net_fn()(pattern, probe)

    # -- checks ----------------------------------------------------------------------------------------------------
    def _check_batch(self, batch: Mapping[str, Any], batch_idx: int, targets: bool = True) -> None:
        missing = [k for k in self.input_keys + (self.target_keys if targets else ()) if k not in batch]
        if missing:
            raise KeyError(f"batch {batch_idx} lacks key(s) {missing}; it has {sorted(batch)}")
        check_finite(batch, self.input_keys + (self.target_keys if targets else ()), batch_idx)

    @staticmethod
    def _check_loss(loss: Tensor, batch_idx: int) -> None:
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(
                f"batch {batch_idx}: training loss is {loss.item()} (non-finite); refusing to back-propagate it"
            )

    # -- steps -------------------------------------------------------------------------------------------------------
    def _loss_and_update(self, batch: Mapping[str, Tensor], stage: str) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        self._check_batch(batch, batch_idx)
        loss = self._loss_and_update(batch, "train")
        self._check_loss(loss, batch_idx)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=self._bs(batch))
        return loss

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        self._check_batch(batch, batch_idx)
        loss = self._loss_and_update(batch, "val")
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=self._bs(batch))
        return loss

    def test_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        self._check_batch(batch, batch_idx)
        loss = self._loss_and_update(batch, "test")
        self.log("test/loss", loss, on_epoch=True, sync_dist=True, batch_size=self._bs(batch))
        return loss

    def predict_step(self, batch: Mapping[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> Any:
        self._check_batch(batch, batch_idx, targets=False)
        return self(batch)

    @staticmethod
    def _bs(batch: Mapping[str, Tensor]) -> int:
        return int(batch["pattern"].shape[0])

    # -- optimisation ----------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        opt = self.optimizer_factory(params) if self.optimizer_factory is not None else torch.optim.Adam(params, 1e-3)
        if self.scheduler_factory is None:
            return opt
        sched = self.scheduler_factory(opt)
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": sched, "interval": self.scheduler_interval, "monitor": self.monitor},
        }


class _PeakMetricsMixin:
    """Logs ``{stage}/peak_precision``, ``…/peak_recall``, ``…/peak_f1`` and ``…/peak_position_error_px`` of the
    module's ``val_peaks`` / ``test_peaks`` (:class:`PeakMatchMetric`) at the end of each epoch."""

    def _log_peaks(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_peaks")
        if metric.update_count == 0:
            return
        values = metric.compute()
        names = {
            "precision": "peak_precision",
            "recall": "peak_recall",
            "f1": "peak_f1",
            "position_error": "peak_position_error_px",
        }
        self.log_dict({f"{stage}/{names[k]}": v for k, v in values.items()}, sync_dist=False)
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_peaks("val")

    def on_test_epoch_end(self) -> None:
        self._log_peaks("test")


class BraggMapModule(_PeakMetricsMixin, _TaskModule):
    """Bragg-map regression (FCU-Net or U-Net): predicts ``batch[target_key]`` from pattern and probe.

    Batch keys: ``pattern``, ``probe``, ``target_key`` (default ``vg_map``, or ``disk_map``); ``peaks`` (B, R, 2)
    for the validation/test peak metrics when present.

    Parameters
    ----------
    loss : {"mse", "l1", "ssim+l1"}
        Map loss (:class:`~stemforge.networks.losses.MapLoss`); ``ssim_alpha`` weights SSIM in ``ssim+l1``.
    target_key : str
        Map to learn (volts for ``vg_map``, unitless for ``disk_map``).
    peak_tolerance_px, peak_threshold, peak_min_distance, peak_absolute_threshold, peak_refine
        :class:`~stemforge.networks.metrics.PeakMatchMetric` settings (tolerance px, relative threshold, spacing px,
        absolute threshold in map units, sub-pixel refinement).
    mc_samples : int
        ``predict_step`` returns ``{"prediction": mean, "variance": var}`` over this many MC-dropout passes
        when > 0, else ``{"prediction": map}``; all (B, 1, H, W) float32.

    Logs ``train/loss``, ``val/loss``, ``val/peak_precision``, ``val/peak_recall``, ``val/peak_f1``,
    ``val/peak_position_error_px`` (and ``test/…``).
    """

    def __init__(
        self,
        net: nn.Module,
        loss: Literal["mse", "l1", "ssim+l1"] = "mse",
        target_key: str = "vg_map",
        ssim_alpha: float = 0.84,
        peak_tolerance_px: float = 2.0,
        peak_threshold: float = 0.05,
        peak_min_distance: int = 2,
        peak_absolute_threshold: float | None = None,
        peak_refine: str = "gaussian",
        mc_samples: int = 0,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        scheduler_interval: str = "epoch",
        monitor: str = "val/loss",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(net, optimizer, scheduler, scheduler_interval, monitor, channels_last, compile)
        self.target_keys = (target_key,)
        self.target_key = target_key
        self.loss_fn = MapLoss(loss, alpha=ssim_alpha)
        self.mc_samples = int(mc_samples)
        peak = dict(
            tolerance=peak_tolerance_px,
            threshold=peak_threshold,
            min_distance=peak_min_distance,
            absolute_threshold=peak_absolute_threshold,
            refine=peak_refine,
        )
        self.val_peaks = PeakMatchMetric(**peak)
        self.test_peaks = PeakMatchMetric(**peak)

    def _check_batch(self, batch: Mapping[str, Any], batch_idx: int, targets: bool = True) -> None:
        super()._check_batch(batch, batch_idx, targets)
        if targets and "peaks" in batch:  # NaN padding allowed, Inf not
            check_finite(batch, ("peaks",), batch_idx)

    def _loss_and_update(self, batch: Mapping[str, Tensor], stage: str) -> Tensor:
        pred = self(batch)
        loss = self.loss_fn(pred, batch[self.target_key])
        if stage != "train" and "peaks" in batch:
            getattr(self, f"{stage}_peaks").update(pred.detach().float(), batch["peaks"])
        return loss

    def predict_step(self, batch: Mapping[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        self._check_batch(batch, batch_idx, targets=False)
        if self.mc_samples > 0:
            pattern, probe = batch["pattern"], batch["probe"]
            if self.use_channels_last:
                pattern = pattern.contiguous(memory_format=torch.channels_last)
                probe = probe.contiguous(memory_format=torch.channels_last)
            mean, var = self.net.predict_mc((pattern, probe), self.mc_samples)
            return {"prediction": mean, "variance": var}
        return {"prediction": self(batch).float()}


class BraggCentreModule(_PeakMetricsMixin, _TaskModule):
    """Bragg-disk centres (:mod:`stemforge.networks.centres`): a heat map of present-disk centres plus sub-pixel
    offsets, for a network whose ``forward(pattern, probe)`` returns (B, 3, H/stride, W/stride) (e.g.
    :class:`~stemforge.networks.centres.CentreNet`).

    Batch keys: ``pattern``, ``probe``, ``peaks`` (B, R, 2) the present reflections (x, y model px; NaN padded),
    from which the targets are rendered on the fly.

    Parameters
    ----------
    sigma_cells : float
        Gaussian width of the heat-map target around each centre (cells).
    focal_alpha, focal_beta : float
        Focal-loss exponents (2 and 4 as in CenterNet).
    offset_weight : float
        Weight of the offset L1 (cells) against the focal loss.
    peak_tolerance_px : float
        Matching radius of the validation metric (model px).
    peak_threshold : float
        Heat-map probability a peak needs in the validation metric.

    Logs ``{train,val,test}/loss``, ``…/focal``, ``…/offset_l1``, and ``val/peak_precision``, ``val/peak_recall``,
    ``val/peak_f1``, ``val/peak_position_error_px`` (and ``test/…``). ``predict_step`` returns ``{"output": (B, 3,
    h, w)}``.
    """

    target_keys = ("peaks",)

    def __init__(
        self,
        net: nn.Module,
        sigma_cells: float = 1.0,
        focal_alpha: float = 2.0,
        focal_beta: float = 4.0,
        offset_weight: float = 1.0,
        peak_tolerance_px: float = 2.0,
        peak_threshold: float = 0.3,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        scheduler_interval: str = "epoch",
        monitor: str = "val/loss",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(net, optimizer, scheduler, scheduler_interval, monitor, channels_last, compile)
        self.stride = int(getattr(net, "stride", 1))
        self.sigma_cells = float(sigma_cells)
        self.focal = (float(focal_alpha), float(focal_beta))
        self.offset_weight = float(offset_weight)
        self.peak_threshold = float(peak_threshold)
        self.val_peaks = PeakMatchMetric(tolerance=peak_tolerance_px)
        self.test_peaks = PeakMatchMetric(tolerance=peak_tolerance_px)

    def _loss_and_update(self, batch: Mapping[str, Tensor], stage: str) -> Tensor:
        from .centres import centre_loss, decode_centres, render_centre_targets

        out = self(batch)
        heat, offset, mask = render_centre_targets(batch["peaks"], out.shape[-2:], self.stride, self.sigma_cells)
        loss, focal, off = centre_loss(out, heat, offset, mask, *self.focal, offset_weight=self.offset_weight)
        bs = self._bs(batch)
        self.log(f"{stage}/focal", focal.detach(), on_epoch=True, on_step=False, batch_size=bs)
        self.log(f"{stage}/offset_l1", off.detach(), on_epoch=True, on_step=False, batch_size=bs)
        if stage != "train":
            found = decode_centres(out.detach(), self.stride, self.peak_threshold)
            getattr(self, f"{stage}_peaks").update([f.cpu() for f in found], batch["peaks"])
        return loss

    def predict_step(self, batch: Mapping[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        self._check_batch(batch, batch_idx, targets=False)
        return {"output": self(batch).float()}


class ThicknessModule(_TaskModule):
    """Thickness regression. Batch keys: ``pattern``, ``probe``, ``thickness_nm`` (B,).

    Parameters
    ----------
    loss : {"l1", "mse", "huber"}
        On thickness in nm (``huber_delta_nm`` is Huber's transition in nm).

    Logs ``{train,val,test}/loss`` and ``{train,val,test}/mae_nm``. ``predict_step`` -> (B,) thickness in nm.
    """

    target_keys = ("thickness_nm",)

    def __init__(
        self,
        net: nn.Module,
        loss: Literal["l1", "mse", "huber"] = "l1",
        huber_delta_nm: float = 5.0,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        scheduler_interval: str = "epoch",
        monitor: str = "val/loss",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(net, optimizer, scheduler, scheduler_interval, monitor, channels_last, compile)
        if loss not in ("l1", "mse", "huber"):
            raise ValueError(f"loss must be 'l1', 'mse' or 'huber', got {loss!r}")
        self.loss_kind, self.huber_delta_nm = loss, float(huber_delta_nm)
        for s in _STAGES:  # attributes (a ModuleDict cannot hold the key "train")
            setattr(self, f"{s}_mae", MeanAbsoluteError())

    def _loss_and_update(self, batch: Mapping[str, Tensor], stage: str) -> Tensor:
        pred = self(batch).float().reshape(-1)
        target = batch["thickness_nm"].float().reshape(-1)
        if self.loss_kind == "l1":
            loss = F.l1_loss(pred, target)
        elif self.loss_kind == "mse":
            loss = F.mse_loss(pred, target)
        else:
            loss = F.huber_loss(pred, target, delta=self.huber_delta_nm)
        metric = getattr(self, f"{stage}_mae")
        metric(pred.detach(), target)
        self.log(f"{stage}/mae_nm", metric, on_epoch=True, on_step=False, batch_size=self._bs(batch))
        return loss


class PhaseModule(_TaskModule):
    """Phase classification. Batch keys: ``pattern``, ``probe``, ``phase`` (B,) int64 in [0, num_phases).

    Parameters
    ----------
    num_phases : int, optional
        Classes; default ``net.num_phases``.
    label_smoothing : float
        Cross-entropy label smoothing.
    min_confidence : float
        Softmax probability below which an analysis calls a prediction "unknown" (recorded in the model card;
        not used in training).

    Logs ``{train,val,test}/loss`` (cross-entropy, nats) and ``{…}/accuracy``. ``predict_step`` -> (B, num_phases)
    logits.
    """

    target_keys = ("phase",)

    def __init__(
        self,
        net: nn.Module,
        num_phases: int | None = None,
        label_smoothing: float = 0.0,
        min_confidence: float = 0.5,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        scheduler_interval: str = "epoch",
        monitor: str = "val/loss",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(net, optimizer, scheduler, scheduler_interval, monitor, channels_last, compile)
        num_phases = int(num_phases if num_phases is not None else net.num_phases)
        self.num_phases, self.label_smoothing = num_phases, float(label_smoothing)
        if not 0.0 <= float(min_confidence) < 1.0:
            raise ValueError(f"min_confidence must lie in [0, 1), got {min_confidence!r}")
        self.min_confidence = float(min_confidence)
        for s in _STAGES:
            setattr(self, f"{s}_accuracy", MulticlassAccuracy(num_classes=num_phases, average="micro"))

    def _check_batch(self, batch: Mapping[str, Any], batch_idx: int, targets: bool = True) -> None:
        super()._check_batch(batch, batch_idx, targets)
        if targets:
            phase = batch["phase"]
            if phase.is_floating_point() or bool(((phase < 0) | (phase >= self.num_phases)).any()):
                raise ValueError(
                    f"batch {batch_idx}: 'phase' must hold integer class indices in "
                    f"[0, {self.num_phases}), got {phase.tolist()}"
                )

    def _loss_and_update(self, batch: Mapping[str, Tensor], stage: str) -> Tensor:
        logits = self(batch).float()
        target = batch["phase"].long().reshape(-1)
        loss = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
        metric = getattr(self, f"{stage}_accuracy")
        metric(logits.detach(), target)
        self.log(f"{stage}/accuracy", metric, on_epoch=True, on_step=False, batch_size=self._bs(batch))
        return loss


class OrientationModule(_TaskModule):
    """Orientation regression (6D representation) with the symmetry-aware loss.

    Batch keys: ``pattern``, ``probe``, ``rotation`` (B, 3, 3) crystal -> lab, ``symmetry`` (B, K, 3, 3)
    identity-padded proper point group (optional: without it no symmetry is used).

    Parameters
    ----------
    loss : {"geodesic", "chordal"}
        :class:`~stemforge.networks.losses.OrientationLoss` (geodesic in radians).

    Logs ``{train,val,test}/loss`` and ``{…}/misorientation_deg``. ``predict_step`` -> (B, 3, 3) rotations.
    """

    target_keys = ("rotation",)

    def __init__(
        self,
        net: nn.Module,
        loss: Literal["geodesic", "chordal"] = "geodesic",
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        scheduler_interval: str = "epoch",
        monitor: str = "val/loss",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(net, optimizer, scheduler, scheduler_interval, monitor, channels_last, compile)
        self.loss_fn = OrientationLoss(loss)
        for s in _STAGES:
            setattr(self, f"{s}_misorientation", MisorientationMetric())

    def _check_batch(self, batch: Mapping[str, Any], batch_idx: int, targets: bool = True) -> None:
        super()._check_batch(batch, batch_idx, targets)
        if targets:
            check_finite(batch, ("symmetry",), batch_idx)

    def _loss_and_update(self, batch: Mapping[str, Tensor], stage: str) -> Tensor:
        r_pred = self(batch).float()
        r_true, sym = batch["rotation"].float(), batch.get("symmetry")
        loss = self.loss_fn(r_pred, r_true, sym)
        metric = getattr(self, f"{stage}_misorientation")
        metric(r_pred.detach(), r_true, sym)
        self.log(f"{stage}/misorientation_deg", metric, on_epoch=True, on_step=False, batch_size=self._bs(batch))
        return loss
