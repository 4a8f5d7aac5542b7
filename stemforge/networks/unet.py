"""Real-valued U-Net baseline for the Bragg-map task, with the same knobs and MC-dropout API as FCU-Net."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .layers import MCDropoutMixin, RealConvBlock, check_image, level_filters, resolve_depth

__all__ = ["UNet"]


class UNet(MCDropoutMixin, nn.Module):
    """U-Net on the pattern and probe stacked as two input channels, predicting one map.

    Parameters
    ----------
    image_size : int, optional
        Detector side H = W in px (power of two). Needed only when ``depth`` is None.
    depth : int, optional
        Number of 2x max-pool steps; default ``log2(image_size)`` (down to 1x1).
    base_filters : int
        Channels at full resolution (level 0); level ``l`` has ``min(base_filters * 2**l, max_filters)``.
    max_filters : int
        Cap on channels per level.
    convs_per_block : int
        3x3 conv -> BatchNorm -> ReLU -> MC dropout layers per block.
    dropout : float
        MC-dropout probability.
    mc_dropout : bool
        Keep dropout active in eval mode (Monte-Carlo inference).
    upsample : {"nearest", "bilinear"}
        Decoder upsampling before the skip concatenation.

    Notes
    -----
    ``forward(pattern, probe)`` takes two (B, 1, H, W) tensors and returns (B, 1, H, W) (linear output in the
    target's units). Unlike :class:`~stemforge.networks.fcunet.FCUNet` it sees the raw intensities, so it is not
    invariant to their scale; the datamodule's normalisation matters here.
    """

    def __init__(
        self,
        image_size: int | None = None,
        depth: int | None = None,
        base_filters: int = 16,
        max_filters: int = 256,
        convs_per_block: int = 2,
        dropout: float = 0.1,
        mc_dropout: bool = False,
        upsample: Literal["nearest", "bilinear"] = "nearest",
    ) -> None:
        super().__init__()
        if upsample not in ("nearest", "bilinear"):
            raise ValueError(f"upsample must be 'nearest' or 'bilinear', got {upsample!r}")
        self.depth = resolve_depth(image_size, depth)
        self.image_size = image_size
        self.upsample = upsample
        filters = level_filters(base_filters, max_filters, self.depth)
        self.filters = filters
        self.encoder = nn.ModuleList(
            [
                RealConvBlock(2 if lvl == 0 else filters[lvl - 1], filters[lvl], convs_per_block, dropout)
                for lvl in range(self.depth + 1)
            ]
        )
        self.decoder = nn.ModuleList(
            [
                RealConvBlock(filters[lvl + 1] + filters[lvl], filters[lvl], convs_per_block, dropout)
                for lvl in range(self.depth)
            ]
        )
        self.final = nn.Conv2d(filters[0], 1, 3, padding=1)
        self.set_mc_dropout(mc_dropout)
        self.channels_last = False  # set by the LightningModule's channels_last flag

    def _up(self, x: Tensor) -> Tensor:
        if self.upsample == "nearest":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, pattern: Tensor, probe: Tensor) -> Tensor:
        check_image(pattern, self.depth, "pattern")
        check_image(probe, self.depth, "probe")
        x = torch.cat([pattern, probe], dim=1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for lvl, block in enumerate(self.encoder):
            if lvl > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for lvl in reversed(range(self.depth)):
            x = self.decoder[lvl](torch.cat([self._up(x), skips[lvl]], dim=1))
        return self.final(x)
