"""FCU-Net: a complex-valued U-Net on the Fourier cross-correlation of a CBED pattern with its vacuum probe.

After crystal4D (Munshi et al., npj Comput. Mater. 8, 254 (2022)), with the input size and depth as
parameters instead of a fixed 256x256 input:

1. **Fourier cross-correlation layer** (no weights): ``ifftshift`` pattern and probe (k = 0 to pixel
   (0, 0)), ``FFT2``, ``P · conj(Q)``, ``fftshift`` (zero frequency back to (H//2, W//2)), normalise each
   image to unit RMS (L2 norm ``sqrt(H W)``), split into real and imaginary channels. Its inverse FFT is the
   cross-correlation of the pattern with the probe, which peaks at the Bragg disk positions.
2. **Complex U-Net**: blocks of complex 3x3 convolutions (:class:`~stemforge.networks.layers.ComplexConv2d`), each
   followed by BatchNorm -> ReLU -> MC dropout on the real/imaginary channels; ``depth`` max-pool
   (2x2) steps; the decoder upsamples 2x and concatenates the encoder's skip at each level. Level
   ``l`` has ``min(base_filters * 2**l, max_filters)`` **complex** channels (twice as many real ones).
3. **Back to detector space**: ``ifftshift`` of the decoder output, inverse FFT2, ``fftshift`` (lag 0 at
   the pattern centre, so the map is on the same grid as the target), then ``output`` = the real part,
   the magnitude, or both stacked (default ``"both"``); then a real conv block (3x3 conv, BN, ReLU, MC
   dropout) and a linear ``Conv2d(., 1, 3x3)``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .layers import (
    ComplexConvBlock,
    MCDropoutMixin,
    RealConvBlock,
    check_image,
    complex_cat,
    level_filters,
    merge_complex,
    resolve_depth,
    split_complex,
)

__all__ = ["FCUNet", "fourier_cross_correlation", "to_detector_space"]


def fourier_cross_correlation(pattern: Tensor, probe: Tensor, normalize: bool = True, eps: float = 1e-12) -> Tensor:
    """Fourier cross-correlation of a centred pattern with a centred probe image.

    Parameters
    ----------
    pattern, probe : Tensor
        (B, C, H, W) real images with k = 0 at pixel (H//2, W//2) (any intensity units).
    normalize : bool
        Scale each image (over H, W) to unit RMS modulus, i.e. L2 norm ``sqrt(H W)``, which makes the
        result independent of the overall intensities of pattern and probe.
    eps : float
        Guards the division for an all-zero input.

    Returns
    -------
    Tensor
        Complex (B, C, H, W), ``fftshift(FFT2(ifftshift(pattern)) * conj(FFT2(ifftshift(probe))))``
        (zero spatial frequency at (H//2, W//2)); dtype complex64 for float32 input.
    """
    dims = (-2, -1)
    p = torch.fft.fft2(torch.fft.ifftshift(pattern.float(), dim=dims))
    q = torch.fft.fft2(torch.fft.ifftshift(probe.float(), dim=dims))
    z = torch.fft.fftshift(p * q.conj(), dim=dims)
    if normalize:
        n = pattern.shape[-2] * pattern.shape[-1]
        rms = torch.sqrt((z.real.square() + z.imag.square()).sum(dim=dims, keepdim=True) / n)
        z = z / (rms + eps)
    return z


def to_detector_space(z: Tensor) -> Tensor:
    """Inverse of the Fourier step: ``fftshift(IFFT2(ifftshift(z)))`` (lag 0 at (H//2, W//2)); complex output."""
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(z, dim=dims)), dim=dims)


class FCUNet(MCDropoutMixin, nn.Module):
    """Fourier cross-correlation U-Net (complex valued) mapping (pattern, probe) to a Bragg map.

    Parameters
    ----------
    image_size : int, optional
        Detector side H = W in px (power of two). Needed only when ``depth`` is None.
    depth : int, optional
        Number of 2x max-pool steps; default ``log2(image_size)`` (down to 1x1 as in crystal4D). Inputs
        must be divisible by ``2**depth``; any such size works with one set of weights.
    base_filters : int
        Complex channels at full resolution (level 0).
    max_filters : int
        Cap on complex channels per level.
    convs_per_block : int
        Complex conv layers per encoder/decoder block.
    dropout : float
        MC-dropout probability after every BatchNorm -> ReLU (crystal4D: 0.1).
    mc_dropout : bool
        Keep dropout active in eval mode (Monte-Carlo inference).
    output : {"both", "real", "abs"}
        What leaves the inverse FFT for the real head: real part, magnitude, or both stacked.
    head_filters : int, optional
        Channels of the real conv block after the inverse FFT (default ``base_filters``).
    upsample : {"nearest", "bilinear"}
        Decoder upsampling (applied to real and imaginary parts, both linear operations).

    Notes
    -----
    ``forward(pattern, probe)`` takes two (B, 1, H, W) tensors and returns (B, 1, H, W) in the units of the
    training target (volts for ``vg_map``). The Fourier layer is computed in float32 even under autocast.
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
        output: Literal["both", "real", "abs"] = "both",
        head_filters: int | None = None,
        upsample: Literal["nearest", "bilinear"] = "nearest",
    ) -> None:
        super().__init__()
        if output not in ("both", "real", "abs"):
            raise ValueError(f"output must be 'both', 'real' or 'abs', got {output!r}")
        if upsample not in ("nearest", "bilinear"):
            raise ValueError(f"upsample must be 'nearest' or 'bilinear', got {upsample!r}")
        self.depth = resolve_depth(image_size, depth)
        self.image_size = image_size
        self.output = output
        self.upsample = upsample
        filters = level_filters(base_filters, max_filters, self.depth)
        self.filters = filters
        self.encoder = nn.ModuleList(
            [
                ComplexConvBlock(1 if lvl == 0 else filters[lvl - 1], filters[lvl], convs_per_block, dropout)
                for lvl in range(self.depth + 1)
            ]
        )
        self.decoder = nn.ModuleList(  # decoder[lvl] produces level lvl from level lvl+1 and the skip
            [
                ComplexConvBlock(filters[lvl + 1] + filters[lvl], filters[lvl], convs_per_block, dropout)
                for lvl in range(self.depth)
            ]
        )
        head_in = filters[0] * (2 if output == "both" else 1)
        head_filters = int(head_filters or base_filters)
        self.head = RealConvBlock(head_in, head_filters, n_convs=1, dropout=dropout)
        self.final = nn.Conv2d(head_filters, 1, 3, padding=1)
        self.set_mc_dropout(mc_dropout)
        self.channels_last = False  # set by the LightningModule's channels_last flag

    def first_layer(self, pattern: Tensor, probe: Tensor) -> Tensor:
        """Fourier cross-correlation as a real (B, 2, H, W) block-layout tensor (real, imaginary)."""
        z = fourier_cross_correlation(pattern, probe)
        return merge_complex(z.real, z.imag)

    def _up(self, x: Tensor) -> Tensor:
        if self.upsample == "nearest":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, pattern: Tensor, probe: Tensor) -> Tensor:
        check_image(pattern, self.depth, "pattern")
        check_image(probe, self.depth, "probe")
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = self.first_layer(pattern, probe).contiguous(memory_format=fmt)
        skips = []
        for lvl, block in enumerate(self.encoder):
            if lvl > 0:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for lvl in reversed(range(self.depth)):
            x = self.decoder[lvl](complex_cat(self._up(x), skips[lvl]))
        re, im = split_complex(x.float())
        y = to_detector_space(torch.complex(re, im))
        if self.output == "real":
            feats = y.real
        elif self.output == "abs":
            feats = torch.sqrt(y.real.square() + y.imag.square() + 1e-12)
        else:
            feats = torch.cat([y.real, torch.sqrt(y.real.square() + y.imag.square() + 1e-12)], dim=1)
        return self.final(self.head(feats.to(pattern.dtype).contiguous(memory_format=fmt)))
