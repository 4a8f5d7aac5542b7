"""Rotation utilities in torch: the continuous 6D representation, geodesic and symmetry-aware angles.

Conventions (the same as ``stemforge.sim.orientations``)
----------------------------------------------
* ``R`` (…, 3, 3) is a proper rotation from crystal to lab coordinates, ``x_lab = R @ x_crys``; the beam
  travels along lab +z.
* Symmetry operations ``S`` are proper point-group rotations in the crystal Cartesian frame; ``R`` and
  ``R @ S`` describe the same specimen.
* 6D representation (Zhou et al., CVPR 2019): the first two **columns** of ``R`` (the lab images of the
  crystal x and y axes), stored as ``(a1, a2)`` = 6 numbers. Gram–Schmidt turns any two non-parallel
  3-vectors into a rotation whose first two columns span the same half-plane.
* Angles are in radians unless a name ends in ``_deg``.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

__all__ = [
    "rotation_6d_to_matrix",
    "matrix_to_rotation_6d",
    "geodesic_angle",
    "symmetric_geodesic_angle",
    "axis_angle_to_matrix",
    "random_rotations",
    "cubic_group",
    "pad_symmetry",
    "is_rotation",
]

_NORM_EPS = 1e-8


def rotation_6d_to_matrix(d6: Tensor) -> Tensor:
    """Gram–Schmidt map from the 6D representation to rotation matrices.

    Parameters
    ----------
    d6 : Tensor
        (…, 6): two 3-vectors ``a1 = d6[..., :3]``, ``a2 = d6[..., 3:]`` (any scale).

    Returns
    -------
    Tensor
        (…, 3, 3) proper rotations with columns ``b1 = a1/|a1|``, ``b2`` = the normalised part of ``a2``
        orthogonal to ``b1``, ``b3 = b1 x b2``.
    """
    if d6.shape[-1] != 6:
        raise ValueError(f"expected (..., 6), got {tuple(d6.shape)}")
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = a1 / a1.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    a2p = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = a2p / a2p.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rotation_6d(rot: Tensor) -> Tensor:
    """First two columns of ``rot`` (…, 3, 3) as (…, 6); inverse of :func:`rotation_6d_to_matrix` on SO(3)."""
    return torch.cat([rot[..., :, 0], rot[..., :, 1]], dim=-1)


def geodesic_angle(r1: Tensor, r2: Tensor, eps: float = 1e-12) -> Tensor:
    """Rotation angle of ``r1.T @ r2`` in radians, in [0, pi], for broadcastable (…, 3, 3) stacks.

    Uses ``atan2(|axial part| , (tr - 1)/2)`` of ``M = r1.T @ r2``, which is accurate near 0 and pi and has
    finite gradients everywhere (``eps`` regularises the norm at M = I); better than ``arccos`` for training.
    """
    m = r1.transpose(-1, -2) @ r2
    cos = (m.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0) / 2.0
    axial = torch.stack([m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1)
    sin = 0.5 * torch.sqrt(axial.square().sum(-1) + eps)
    return torch.atan2(sin, cos)


def symmetric_geodesic_angle(
    r_pred: Tensor, r_true: Tensor, symmetry: Tensor | None = None, return_index: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Misorientation: min over ``S`` of the geodesic angle between ``r_pred`` and ``r_true @ S``.

    Parameters
    ----------
    r_pred, r_true : Tensor
        (B, 3, 3) rotations (crystal -> lab).
    symmetry : Tensor, optional
        (B, K, 3, 3) or (K, 3, 3) proper point-group rotations in the crystal frame, possibly padded with
        the identity (padding cannot lower the minimum below the identity's angle). None: no symmetry.
    return_index : bool
        Also return the index of the minimising ``S`` per sample.

    Returns
    -------
    Tensor
        (B,) angle in radians (and (B,) int64 indices when ``return_index``). Gradients flow through the
        minimising operation only.
    """
    if symmetry is None:
        ang = geodesic_angle(r_pred, r_true)
        return (ang, torch.zeros_like(ang, dtype=torch.long)) if return_index else ang
    if symmetry.ndim == 3:
        symmetry = symmetry.unsqueeze(0).expand(r_true.shape[0], -1, -1, -1)
    candidates = r_true.unsqueeze(1) @ symmetry.to(r_true.dtype)  # (B, K, 3, 3)
    angles = geodesic_angle(r_pred.unsqueeze(1), candidates)  # (B, K)
    best, idx = angles.min(dim=1)
    return (best, idx) if return_index else best


def axis_angle_to_matrix(axis: Tensor, angle: Tensor) -> Tensor:
    """Right-handed rotation by ``angle`` (radians, (…,)) about ``axis`` ((…, 3), any length; Rodrigues)."""
    axis = axis / axis.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*x.shape, 3, 3)
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device).expand_as(k)
    s, c = torch.sin(angle)[..., None, None], torch.cos(angle)[..., None, None]
    return eye + s * k + (1 - c) * (k @ k)


def random_rotations(n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """(n, 3, 3) rotations uniform on SO(3) (normalised Gaussian quaternions)."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - z * w),
            2 * (x * z + y * w),
            2 * (x * y + z * w),
            1 - 2 * (x * x + z * z),
            2 * (y * z - x * w),
            2 * (x * z - y * w),
            2 * (y * z + x * w),
            1 - 2 * (x * x + y * y),
        ],
        -1,
    )
    return rot.reshape(n, 3, 3).to(dtype)


def cubic_group(dtype: torch.dtype = torch.float32) -> Tensor:
    """The 24 proper rotations of the cubic point group 432 (signed permutation matrices, det +1), identity first."""
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = torch.zeros(3, 3, dtype=torch.float64)
            for row, (col, sgn) in enumerate(zip(perm, signs)):
                m[row, col] = sgn
            if torch.linalg.det(m) > 0:
                mats.append(m)
    return torch.stack(mats).to(dtype)


def pad_symmetry(ops: Tensor, size: int = 24) -> Tensor:
    """Pad (K, 3, 3) operations with identities to (size, 3, 3), the layout of the batch key ``symmetry``."""
    if ops.ndim != 3 or ops.shape[-2:] != (3, 3):
        raise ValueError(f"ops must be (K, 3, 3), got {tuple(ops.shape)}")
    if ops.shape[0] > size:
        raise ValueError(f"{ops.shape[0]} operations do not fit in {size}")
    eye = torch.eye(3, dtype=ops.dtype, device=ops.device).expand(size - ops.shape[0], 3, 3)
    return torch.cat([ops, eye], dim=0)


def is_rotation(rot: Tensor, atol: float = 1e-5) -> Tensor:
    """(…,) bool: orthonormal with determinant +1 within ``atol``."""
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
    ortho = (rot.transpose(-1, -2) @ rot - eye).abs().amax(dim=(-2, -1)) <= atol
    return ortho & ((torch.linalg.det(rot) - 1).abs() <= atol)


def degrees(rad: Tensor) -> Tensor:
    """Radians to degrees."""
    return rad * (180.0 / math.pi)
