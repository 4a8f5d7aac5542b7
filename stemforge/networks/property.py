"""Property models: a small ResNet-style encoder on (pattern, probe) with thickness, phase and orientation heads.

Every model takes ``forward(pattern, probe)`` with two (B, 1, H, W) tensors (any H, W; global pooling) and returns

* :class:`ThicknessNet` -> (B,) thickness in nm,
* :class:`PhaseNet` -> (B, num_phases) logits,
* :class:`OrientationNet` -> (B, 3, 3) rotation (crystal -> lab) from the 6D representation
  (:func:`~stemforge.networks.rotations.rotation_6d_to_matrix`); ``forward_6d`` gives the raw (B, 6).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .layers import MCDropout
from .rotations import rotation_6d_to_matrix

__all__ = ["ResNetEncoder", "ThicknessNet", "PhaseNet", "OrientationNet"]


NORMS = ("batch", "group")


def _norm(kind: str, channels: int) -> nn.Module:
    """BatchNorm, or GroupNorm (8 groups or fewer), which does not depend on what else is in the batch."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class _BasicBlock(nn.Module):
    """Pre-activation-free ResNet basic block: conv-norm-ReLU-conv-norm + (projected) shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = _norm(norm, cout)
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _norm(norm, cout))
        )
        nn.init.zeros_(self.bn2.weight)  # start as identity (stable early training)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x), inplace=True)


class ResNetEncoder(nn.Module):
    """ResNet-style CNN encoder with global average pooling.

    Parameters
    ----------
    in_channels : int
        Input channels (2: pattern and probe).
    width : int
        Channels of the stem and the first stage; stage ``s`` has ``min(width * 2**s, max_width)``.
    num_stages : int
        Stages; every stage after the first halves the resolution (stride-2 first block). The stem
        also halves it, so the last stage sees ``H / 2**num_stages``.
    blocks_per_stage : int
        Basic residual blocks per stage.
    max_width : int
        Cap on channels.
    norm : {"batch", "group"}
        Normalisation layers. ``"group"`` (GroupNorm) behaves the same in training and inference whatever the
        batch holds; BatchNorm learned batch-composition shortcuts on the corpus, whose chunks are single
        specimen groups (RESULTS.md, issue 17).

    Attributes
    ----------
    out_features : int
        Length of the pooled feature vector.
    """

    def __init__(
        self,
        in_channels: int = 2,
        width: int = 32,
        num_stages: int = 4,
        blocks_per_stage: int = 2,
        max_width: int = 512,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if num_stages < 1 or blocks_per_stage < 1 or width < 1:
            raise ValueError("width, num_stages and blocks_per_stage must be >= 1")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False),
            _norm(norm, width),
            nn.ReLU(inplace=True),
        )
        layers, cin = [], width
        for s in range(num_stages):
            cout = min(width * 2**s, max_width)
            for b in range(blocks_per_stage):
                layers.append(_BasicBlock(cin, cout, stride=2 if (b == 0 and s > 0) else 1, norm=norm))
                cin = cout
        self.stages = nn.Sequential(*layers)
        self.out_features = cin

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x)).mean(dim=(-2, -1))


class _PropertyNet(nn.Module):
    """Encoder on the stacked (pattern, probe) (or the pattern alone, ``use_probe=False``) + an MLP head with
    ``out_dim`` outputs."""

    def __init__(
        self,
        out_dim: int,
        width: int = 32,
        num_stages: int = 4,
        blocks_per_stage: int = 2,
        max_width: int = 512,
        hidden: int = 128,
        dropout: float = 0.0,
        use_probe: bool = True,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        # without the probe channel: for labels constant over a specimen group (the phase), the probe (alpha,
        # energy, defocus of that group) is a shortcut to memorise groups instead of learning the lattice
        self.use_probe = bool(use_probe)
        self.encoder = ResNetEncoder(2 if self.use_probe else 1, width, num_stages, blocks_per_stage, max_width, norm)
        self.head = nn.Sequential(
            nn.Linear(self.encoder.out_features, hidden),
            nn.ReLU(inplace=True),
            MCDropout(dropout),
            nn.Linear(hidden, out_dim),
        )
        self.channels_last = False  # set by the LightningModule's channels_last flag

    def from_features(self, f: Tensor) -> Tensor:  # pragma: no cover - each task defines it
        raise NotImplementedError

    def mc_predict(self, pattern: Tensor, probe: Tensor, samples: int) -> Tensor:
        """``samples`` outputs (S, B, ...) with the head's dropout active, the encoder run once."""
        from .layers import MCDropout

        f = self.features(pattern, probe)
        drops = [m for m in self.head.modules() if isinstance(m, MCDropout)]
        if not any(m.p > 0 for m in drops):
            raise ValueError(f"{type(self).__name__} has no dropout in its head; Monte-Carlo samples need one")
        old = [m.mc for m in drops]
        try:
            for m in drops:
                m.mc = True
            return torch.stack([self.from_features(f) for _ in range(int(samples))])
        finally:
            for m, o in zip(drops, old):
                m.mc = o

    def features(self, pattern: Tensor, probe: Tensor) -> Tensor:
        if pattern.ndim != 4 or pattern.shape[1] != 1 or probe.shape != pattern.shape:
            raise ValueError(
                f"pattern and probe must both be (B, 1, H, W), got {tuple(pattern.shape)} and {tuple(probe.shape)}"
            )
        x = torch.cat([pattern, probe], dim=1) if self.use_probe else pattern
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.encoder(x)


class ThicknessNet(_PropertyNet):
    """Thickness regression: ``forward(pattern, probe)`` -> (B,) thickness in nm.

    Parameters
    ----------
    scale_nm : float
        The last linear layer predicts thickness / ``scale_nm`` (keeps outputs O(1)); ``offset_nm`` is
        added: ``t = offset_nm + scale_nm * head(x)``.
    offset_nm : float
        Initial prediction in nm (set it near the dataset's mean thickness).
    **encoder
        ``width``, ``num_stages``, ``blocks_per_stage``, ``max_width``, ``hidden``, ``dropout`` (see
        :class:`ResNetEncoder`).
    """

    def __init__(self, scale_nm: float = 50.0, offset_nm: float = 50.0, **encoder) -> None:
        super().__init__(1, **encoder)
        self.scale_nm, self.offset_nm = float(scale_nm), float(offset_nm)

    def from_features(self, f: Tensor) -> Tensor:
        return self.offset_nm + self.scale_nm * self.head(f).squeeze(-1)

    def forward(self, pattern: Tensor, probe: Tensor) -> Tensor:
        return self.from_features(self.features(pattern, probe))


class PhaseNet(_PropertyNet):
    """Phase classification: ``forward(pattern, probe)`` -> (B, num_phases) logits."""

    def __init__(self, num_phases: int, **encoder) -> None:
        if int(num_phases) < 2:
            raise ValueError(f"num_phases must be >= 2, got {num_phases}")
        super().__init__(int(num_phases), **encoder)
        self.num_phases = int(num_phases)

    def from_features(self, f: Tensor) -> Tensor:
        return self.head(f)

    def forward(self, pattern: Tensor, probe: Tensor) -> Tensor:
        return self.from_features(self.features(pattern, probe))


class OrientationNet(_PropertyNet):
    """Orientation regression in the continuous 6D representation.

    ``forward(pattern, probe)`` -> (B, 3, 3) rotation crystal -> lab; ``forward_6d`` -> the raw (B, 6).
    The last layer's bias starts at the identity's 6D vector ``(1, 0, 0, 0, 1, 0)``.
    """

    def __init__(self, **encoder) -> None:
        super().__init__(6, **encoder)
        last = self.head[-1]
        nn.init.normal_(last.weight, 0.0, 1e-2)
        with torch.no_grad():
            last.bias.copy_(last.bias.new_tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

    def forward_6d(self, pattern: Tensor, probe: Tensor) -> Tensor:
        return self.head(self.features(pattern, probe))

    def from_features(self, f: Tensor) -> Tensor:
        return rotation_6d_to_matrix(self.head(f))

    def forward(self, pattern: Tensor, probe: Tensor) -> Tensor:
        return rotation_6d_to_matrix(self.forward_6d(pattern, probe))
