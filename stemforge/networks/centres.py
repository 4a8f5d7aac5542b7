"""Bragg-disk centres as a heat map plus sub-pixel offsets (CenterNet-style), and the network that predicts them.

The target encodes what a disk finder measures: the centre of every *present* disk (a reflection a detector shows at
the pattern's dose, :func:`stemforge.sim.labels.present`), at its exact sub-pixel position. On a grid of stride ``s``
(model px per heat-map cell) a centre at pixel ``(x, y)`` (pixel centres at integers) has the cell coordinate
``u = (x + 0.5) / s - 0.5``; its cell is ``round(u)`` and its offset ``u - round(u)`` in [-0.5, 0.5] cells.

* :func:`render_centre_targets` -- (B, 1, h, w) Gaussian heat map equal to 1 exactly at each centre's cell, the
  (B, 2, h, w) offsets and a (B, 1, h, w) mask of the centre cells;
* :func:`centre_loss` -- penalty-reduced focal loss on the heat map (Law & Deng 2018; Zhou et al. 2019, "Objects as
  points") plus an L1 loss on the offsets at the centre cells;
* :func:`decode_centres` -- local maxima of the heat map above a threshold, positions from the offsets;
* :class:`CentreNet` -- a small encoder-decoder on the pattern and the probe (two channels, space-to-depth to the
  output stride, four levels down to 1/16 for lattice context) that returns ``(B, 3, H/s, W/s)``: heat-map logits
  and the two offsets (x, y) in cells.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .layers import MCDropout, MCDropoutMixin

__all__ = ["CentreNet", "render_centre_targets", "centre_loss", "decode_centres", "cell_coordinates"]


def cell_coordinates(xy_px: Tensor, stride: int) -> Tensor:
    """Pixel positions (x, y) -> heat-map cell coordinates ``(x + 0.5) / stride - 0.5``."""
    return (xy_px + 0.5) / stride - 0.5


def render_centre_targets(
    peaks: Tensor, shape: tuple[int, int], stride: int = 2, sigma_cells: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Heat map, offsets and centre mask for (B, R, 2) peak positions (x = col, y = row, model px; NaN padded).

    Parameters
    ----------
    peaks : Tensor
        (B, R, 2) centres in model pixels; rows with NaN and centres outside the grid are ignored.
    shape : (h, w)
        Heat-map size in cells (the model grid divided by ``stride``).
    stride : int
        Model pixels per cell.
    sigma_cells : float
        Width of the Gaussian around each centre cell (cells); the heat map is the maximum over centres.

    Returns
    -------
    heat : Tensor (B, 1, h, w)
        Exactly 1 at each centre's cell, ``exp(-d²/2σ²)`` around it (d from the cell to the centre's cell).
    offset : Tensor (B, 2, h, w)
        (dx, dy) in cells at centre cells, 0 elsewhere.
    mask : Tensor (B, 1, h, w)
        1 at centre cells.
    """
    b = peaks.shape[0]
    h, w = int(shape[0]), int(shape[1])
    dev = peaks.device
    heat = torch.zeros(b, 1, h, w, device=dev)
    offset = torch.zeros(b, 2, h, w, device=dev)
    mask = torch.zeros(b, 1, h, w, device=dev)
    u = cell_coordinates(peaks.float(), stride)
    cell = torch.round(u)
    ok = torch.isfinite(u).all(-1) & (cell[..., 0] >= 0) & (cell[..., 0] < w) & (cell[..., 1] >= 0) & (cell[..., 1] < h)
    if not bool(ok.any()):
        return heat, offset, mask
    bi, ri = torch.nonzero(ok, as_tuple=True)
    cx, cy = cell[bi, ri, 0].long(), cell[bi, ri, 1].long()
    off = u[bi, ri] - cell[bi, ri]
    yy = torch.arange(h, device=dev, dtype=torch.float32)
    xx = torch.arange(w, device=dev, dtype=torch.float32)
    g = torch.exp(
        -((yy[None, :, None] - cy[:, None, None].float()) ** 2 + (xx[None, None, :] - cx[:, None, None].float()) ** 2)
        / (2.0 * sigma_cells**2)
    )  # (N, h, w)
    flat = heat.view(b, h * w)
    flat.scatter_reduce_(0, bi[:, None].expand(-1, h * w), g.reshape(-1, h * w), "amax", include_self=True)
    offset[bi, 0, cy, cx] = off[:, 0]
    offset[bi, 1, cy, cx] = off[:, 1]
    mask[bi, 0, cy, cx] = 1.0
    heat[bi, 0, cy, cx] = 1.0
    return heat, offset, mask


def centre_loss(
    out: Tensor,
    heat: Tensor,
    offset: Tensor,
    mask: Tensor,
    alpha: float = 2.0,
    beta: float = 4.0,
    offset_weight: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Penalty-reduced focal loss on the heat-map logits ``out[:, :1]`` plus L1 on the offsets ``out[:, 1:3]`` at the
    centre cells, each normalised by the number of centres (at least 1). Returns (total, focal, offset L1)."""
    logits = out[:, :1].float()
    p = torch.sigmoid(logits)
    log_p = F.logsigmoid(logits)
    log_1mp = F.logsigmoid(-logits)
    pos = mask > 0
    n = mask.sum().clamp(min=1.0)
    pos_term = -((1 - p) ** alpha) * log_p * pos
    neg_term = -((1 - heat) ** beta) * (p**alpha) * log_1mp * (~pos)
    focal = (pos_term.sum() + neg_term.sum()) / n
    off_l1 = (torch.abs(out[:, 1:3].float() - offset) * mask).sum() / n
    return focal + offset_weight * off_l1, focal, off_l1


def decode_centres(
    out: Tensor, stride: int = 2, threshold: float = 0.3, max_peaks: int | None = None, window: int = 3
) -> list[Tensor]:
    """Peaks from network output ``(B, 3, h, w)`` (logits, dx, dy): cells whose probability is ≥ ``threshold``
    and the maximum of their ``window``² neighbourhood; position ``((cell + offset) + 0.5)·stride − 0.5`` model
    px. Returns per pattern a (P, 3) float32 tensor ``(x, y, probability)``, strongest first (at most
    ``max_peaks``)."""
    prob = torch.sigmoid(out[:, :1].float())
    pooled = F.max_pool2d(prob, window, stride=1, padding=window // 2)
    keep = (prob >= pooled) & (prob >= threshold)
    b, _, cy, cx = torch.nonzero(keep, as_tuple=True)  # all patterns at once, in batch order
    v = prob[b, 0, cy, cx]
    order = torch.argsort(b.double() * 2.0 - v.double())  # by pattern, then strongest first
    b, cy, cx, v = b[order], cy[order], cx[order], v[order]
    offs = out[:, 1:3].float()
    x = (cx.float() + offs[b, 0, cy, cx] + 0.5) * stride - 0.5
    y = (cy.float() + offs[b, 1, cy, cx] + 0.5) * stride - 0.5
    rows = torch.stack([x, y, v], 1)
    counts = torch.bincount(b, minlength=out.shape[0]).tolist()
    res = list(torch.split(rows, counts))
    if max_peaks is not None:
        res = [r[: int(max_peaks)] for r in res]
    return res


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class CentreNet(MCDropoutMixin, nn.Module):
    """Compact encoder-decoder predicting Bragg-disk centre heat maps and sub-pixel offsets.

    Parameters
    ----------
    stride : int
        Output stride (model px per heat-map cell); the two inputs go through space-to-depth by it (lossless).
    filters : sequence of int
        Channels per level; level ``l`` runs at ``1/(stride·2^l)`` of the input size.
    dropout : float
        MC-dropout probability before the head (0 disables it; MC inference needs > 0).
    mc_dropout : bool
        Keep that dropout active in eval mode.
    prior : float
        Initial heat-map probability (bias of the logit, as in focal-loss detectors).

    Notes
    -----
    ``forward(pattern, probe)`` takes two (B, 1, H, W) tensors (H, W divisible by ``stride·2^(levels-1)``) and
    returns (B, 3, H/stride, W/stride): heat-map logits, offset x, offset y (cells).
    """

    output_kind = "centres"

    def __init__(
        self,
        stride: int = 2,
        filters: tuple[int, ...] | list[int] = (16, 32, 64, 96),
        dropout: float = 0.1,
        mc_dropout: bool = False,
        prior: float = 0.01,
    ) -> None:
        super().__init__()
        if int(stride) < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        filters = [int(f) for f in filters]
        if len(filters) < 2:
            raise ValueError(f"need at least two levels of filters, got {filters}")
        self.stride = int(stride)
        self.filters = filters
        cin = 2 * self.stride**2
        self.enc = nn.ModuleList()
        for lvl, f in enumerate(filters):
            first = _conv_bn(cin if lvl == 0 else filters[lvl - 1], f, stride=1 if lvl == 0 else 2)
            self.enc.append(nn.Sequential(first, _conv_bn(f, f)))
        self.proj = nn.ModuleList([nn.Conv2d(filters[lvl + 1], filters[lvl], 1) for lvl in range(len(filters) - 1)])
        self.dec = nn.ModuleList([_conv_bn(filters[lvl], filters[lvl]) for lvl in range(len(filters) - 1)])
        self.drop = MCDropout(dropout)
        self.head = nn.Sequential(_conv_bn(filters[0], filters[0]), nn.Conv2d(filters[0], 3, 1))
        with torch.no_grad():
            self.head[-1].bias.zero_()
            self.head[-1].bias[0] = float(torch.logit(torch.tensor(prior)))
        self.set_mc_dropout(mc_dropout)
        self.channels_last = False  # run the convolutions in channels-last memory format (see fused())

    def fused(self, channels_last: bool = False) -> CentreNet:
        """A copy for inference with every BatchNorm folded into the convolution before it (same outputs in eval
        mode up to rounding, about a quarter less time on CPU), in channels-last memory format if asked; dropout
        and MC dropout stay as they are."""
        import copy

        net = copy.deepcopy(self).eval()
        for seq in [m for m in net.modules() if isinstance(m, nn.Sequential)]:
            for i in range(len(seq) - 1):
                conv, bn = seq[i], seq[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                    fusedc = nn.Conv2d(
                        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True
                    )
                    with torch.no_grad():
                        fusedc.weight.copy_(conv.weight * scale[:, None, None, None])
                        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                        fusedc.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
                    seq[i], seq[i + 1] = fusedc, nn.Identity()
        net.requires_grad_(False)
        if channels_last:
            net.to(memory_format=torch.channels_last)
            net.channels_last = True
        return net

    @property
    def multiple(self) -> int:
        """The input side must be a multiple of this (px)."""
        return self.stride * 2 ** (len(self.filters) - 1)

    def forward(self, pattern: Tensor, probe: Tensor) -> Tensor:
        for name, t in (("pattern", pattern), ("probe", probe)):
            if t.ndim != 4 or t.shape[1] != 1 or t.shape[-1] % self.multiple or t.shape[-2] % self.multiple:
                raise ValueError(
                    f"CentreNet: {name} must be (B, 1, H, W) with H and W multiples of {self.multiple}, got "
                    f"{tuple(t.shape)}"
                )
        x = torch.cat([pattern, probe.expand_as(pattern)], 1)
        if self.stride > 1:
            x = F.pixel_unshuffle(x, self.stride)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for block in self.enc:
            x = block(x)
            skips.append(x)
        for lvl in reversed(range(len(self.filters) - 1)):
            x = F.interpolate(self.proj[lvl](x), scale_factor=2, mode="nearest") + skips[lvl]
            x = self.dec[lvl](x)
        return self.head(self.drop(x))
