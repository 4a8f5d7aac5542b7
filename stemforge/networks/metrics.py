"""torchmetrics metrics for Bragg maps (peak detection) and orientations (misorientation).

Peak finding and matching live in :mod:`stemforge.networks.peaks` (re-exported here).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from .peaks import Refine, find_peaks, match_peaks
from .rotations import symmetric_geodesic_angle

__all__ = ["find_peaks", "match_peaks", "PeakMatchMetric", "MisorientationMetric"]


class PeakMatchMetric(Metric):
    """Bragg-peak detection quality of predicted maps against true positions, accumulated over batches.

    ``update(pred_maps, peaks)``: ``pred_maps`` (B, 1, H, W) or (B, H, W), or a list of already found (P, ≥ 2)
    ``(x, y, ...)`` peaks per pattern; ``peaks`` (B, R, 2) true ``(x, y)``
    px, NaN padded. Peaks are found with :func:`find_peaks` and matched with :func:`match_peaks`.

    ``compute()`` returns a dict of scalar tensors: ``precision`` = TP/(TP+FP), ``recall`` = TP/(TP+FN),
    ``f1``, and ``position_error`` = mean distance (px) of the matched pairs. A 0/0 ratio is 0 (NaN for
    ``position_error``).

    Parameters
    ----------
    tolerance : float
        Matching radius in px.
    threshold, min_distance, absolute_threshold, refine, max_peaks
        Passed to :func:`find_peaks`.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(
        self,
        tolerance: float = 2.0,
        threshold: float = 0.05,
        min_distance: int = 2,
        absolute_threshold: float | None = None,
        refine: Refine = "gaussian",
        max_peaks: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if tolerance <= 0:
            raise ValueError(f"tolerance must be > 0 px, got {tolerance}")
        self.tolerance = float(tolerance)
        self.peak_kwargs = dict(
            threshold=threshold,
            min_distance=min_distance,
            absolute_threshold=absolute_threshold,
            refine=refine,
            max_peaks=max_peaks,
        )
        for name in ("tp", "fp", "fn", "error_sum"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred_maps: Tensor | list, peaks: Tensor) -> None:
        if isinstance(pred_maps, (list, tuple)):  # peaks already found: (P, >= 2) (x, y, ...) per pattern
            found = list(pred_maps)
        else:
            found = find_peaks(pred_maps, **self.peak_kwargs)
            found = [found] if isinstance(found, Tensor) else found
        if len(found) != peaks.shape[0]:
            raise ValueError(f"{len(found)} maps but {peaks.shape[0]} peak lists")
        peaks_np = peaks.detach().cpu().double().numpy()
        tp = fp = fn = 0
        err = 0.0
        for pred, true in zip(found, peaks_np):
            n_true = int(np.isfinite(true).all(1).sum())
            _, _, dist = match_peaks(pred, true, self.tolerance)
            tp += len(dist)
            fp += len(pred) - len(dist)
            fn += n_true - len(dist)
            err += float(dist.sum())
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.error_sum += err

    def compute(self) -> dict[str, Tensor]:
        tp, fp, fn = self.tp, self.fp, self.fn
        precision = tp / (tp + fp) if tp + fp > 0 else torch.zeros_like(tp)
        recall = tp / (tp + fn) if tp + fn > 0 else torch.zeros_like(tp)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else torch.zeros_like(tp)
        error = self.error_sum / tp if tp > 0 else torch.full_like(tp, math.nan)
        return {
            "precision": precision.float(),
            "recall": recall.float(),
            "f1": f1.float(),
            "position_error": error.float(),
        }


class MisorientationMetric(Metric):
    """Mean symmetry-reduced misorientation angle in degrees, accumulated over batches.

    ``update(r_pred, r_true, symmetry=None)``: (B, 3, 3) rotations and (B, K, 3, 3) proper point-group
    operations (identity-padded; None: no symmetry). ``compute()`` -> scalar mean angle (deg).
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("angle_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, r_pred: Tensor, r_true: Tensor, symmetry: Tensor | None = None) -> None:
        ang = symmetric_geodesic_angle(
            r_pred.detach().double(), r_true.detach().double(), None if symmetry is None else symmetry.detach().double()
        )
        self.angle_sum += torch.rad2deg(ang).sum()
        self.count += ang.numel()

    def compute(self) -> Tensor:
        return (self.angle_sum / self.count).float() if self.count > 0 else torch.tensor(math.nan)
