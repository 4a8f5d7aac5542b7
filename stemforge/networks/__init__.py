"""Network stage: FCU-Net, U-Net baselines and property models as Lightning modules.

Networks (``forward(pattern, probe)`` with (B, 1, H, W) tensors)
    :class:`FCUNet` (complex Fourier cross-correlation U-Net, crystal4D), :class:`UNet` (real baseline),
    :class:`ThicknessNet`, :class:`PhaseNet`, :class:`OrientationNet` (ResNet-style encoder + head).
LightningModules (``stemforge.networks.modules``; import ``pytorch_lightning``)
    :class:`BraggMapModule`, :class:`ThicknessModule`, :class:`PhaseModule`, :class:`OrientationModule`.
Metrics and analysis helpers
    :func:`find_peaks`, :func:`match_peaks` (``stemforge.networks.peaks``, no torchmetrics needed),
    :class:`PeakMatchMetric`, :class:`MisorientationMetric` (``stemforge.networks.metrics``);
    rotations in ``stemforge.networks.rotations``; losses in ``stemforge.networks.losses``.

The LightningModules and metrics are imported lazily, so ``import stemforge.networks`` needs neither
``pytorch_lightning`` nor ``torchmetrics``.
"""

from .fcunet import FCUNet, fourier_cross_correlation, to_detector_space
from .layers import ComplexConv2d, MCDropout
from .losses import MapLoss, OrientationLoss, ssim
from .peaks import find_peaks, match_peaks
from .property import OrientationNet, PhaseNet, ResNetEncoder, ThicknessNet
from .rotations import geodesic_angle, rotation_6d_to_matrix, symmetric_geodesic_angle
from .unet import UNet

_LAZY = {
    "BraggMapModule",
    "ThicknessModule",
    "PhaseModule",
    "OrientationModule",
    "PeakMatchMetric",
    "MisorientationMetric",
}

__all__ = [
    "FCUNet",
    "UNet",
    "ThicknessNet",
    "PhaseNet",
    "OrientationNet",
    "ResNetEncoder",
    "ComplexConv2d",
    "MCDropout",
    "MapLoss",
    "OrientationLoss",
    "ssim",
    "fourier_cross_correlation",
    "to_detector_space",
    "find_peaks",
    "match_peaks",
    "geodesic_angle",
    "rotation_6d_to_matrix",
    "symmetric_geodesic_angle",
    *sorted(_LAZY),
]


def __getattr__(name: str):
    if name in {"PeakMatchMetric", "MisorientationMetric"}:
        from . import metrics

        return getattr(metrics, name)
    if name in _LAZY:
        from . import modules

        return getattr(modules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
