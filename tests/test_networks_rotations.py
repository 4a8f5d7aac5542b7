"""Rotation utilities, orientation losses and the property networks."""

import math

import numpy as np
import pytest
import torch

from stemforge.networks import OrientationNet, PhaseNet, ThicknessNet
from stemforge.networks.losses import OrientationLoss
from stemforge.networks.metrics import MisorientationMetric
from stemforge.networks.rotations import (
    axis_angle_to_matrix,
    cubic_group,
    geodesic_angle,
    is_rotation,
    matrix_to_rotation_6d,
    pad_symmetry,
    random_rotations,
    rotation_6d_to_matrix,
    symmetric_geodesic_angle,
)

Z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)


def _rz(deg: float) -> torch.Tensor:
    return axis_angle_to_matrix(Z, torch.tensor(math.radians(deg), dtype=torch.float64))


def test_6d_gives_proper_rotations():
    d6 = torch.randn(1000, 6, generator=torch.Generator().manual_seed(0))
    rot = rotation_6d_to_matrix(d6)
    assert rot.shape == (1000, 3, 3)
    assert is_rotation(rot, atol=1e-5).all()
    r = random_rotations(50, torch.Generator().manual_seed(1), dtype=torch.float64)
    assert is_rotation(r, atol=1e-10).all()
    torch.testing.assert_close(rotation_6d_to_matrix(matrix_to_rotation_6d(r)), r)
    # any positive scaling of the two vectors gives the same rotation
    torch.testing.assert_close(
        rotation_6d_to_matrix(torch.cat([3 * d6[:, :3], 0.2 * d6[:, 3:]], 1)), rot, rtol=1e-4, atol=1e-5
    )


def test_geodesic_angle_known_values():
    for deg in (0.0, 1e-3, 30.0, 90.0, 179.0):
        axis = torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)
        r = axis_angle_to_matrix(axis, torch.tensor(math.radians(deg), dtype=torch.float64))
        base = random_rotations(1, torch.Generator().manual_seed(2), torch.float64)[0]
        assert math.degrees(geodesic_angle(base, base @ r)) == pytest.approx(deg, abs=1e-4)


def test_cubic_group():
    ops = cubic_group(torch.float64)
    assert ops.shape == (24, 3, 3) and is_rotation(ops).all()
    torch.testing.assert_close(ops[0], torch.eye(3, dtype=torch.float64))
    # closed under multiplication
    prods = (ops[:, None] @ ops[None]).reshape(-1, 1, 9)
    assert (torch.cdist(prods, ops.reshape(1, 24, 9)).squeeze(1).amin(-1) < 1e-12).all()
    assert pad_symmetry(ops[:4]).shape == (24, 3, 3)


def test_misorientation_symmetric():
    cubic = pad_symmetry(cubic_group(torch.float64))
    r = random_rotations(24, torch.Generator().manual_seed(3), torch.float64)
    sym = cubic.expand(24, -1, -1, -1)
    # R vs R @ S: zero for every S
    ang = symmetric_geodesic_angle(r @ cubic, r, sym)
    assert ang.abs().max().item() < 1e-5
    eye = torch.eye(3, dtype=torch.float64).expand(1, 24, 3, 3)  # no symmetry (identity padding only)
    for deg, expect_cubic, expect_none in [(90.0, 0.0, 90.0), (30.0, 30.0, 30.0), (-45.0, 45.0, 45.0)]:
        r_pred = r[:1] @ _rz(deg)
        assert math.degrees(symmetric_geodesic_angle(r_pred, r[:1], cubic[None])) == pytest.approx(
            expect_cubic, abs=1e-4
        )
        assert math.degrees(symmetric_geodesic_angle(r_pred, r[:1], eye)) == pytest.approx(expect_none, abs=1e-4)
    # the same for the identity orientation and a (K, 3, 3) symmetry tensor
    assert math.degrees(
        symmetric_geodesic_angle(_rz(90)[None], torch.eye(3, dtype=torch.float64)[None], cubic)
    ) == pytest.approx(0.0, abs=1e-4)


def test_misorientation_matches_sim_orientations():
    from stemforge.sim.orientations import misorientation_deg

    ops = cubic_group(torch.float64)
    g = torch.Generator().manual_seed(4)
    r1, r2 = random_rotations(64, g, torch.float64), random_rotations(64, g, torch.float64)
    ours = torch.rad2deg(symmetric_geodesic_angle(r1, r2, ops)).numpy()
    ref = misorientation_deg(r1.numpy(), r2.numpy(), ops.numpy())
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    assert ours.max() <= 62.8 + 1e-3  # cubic disorientations never exceed 62.8 degrees


def test_orientation_losses_and_gradients():
    cubic = pad_symmetry(cubic_group())
    r = random_rotations(6, torch.Generator().manual_seed(5))
    d6 = matrix_to_rotation_6d(r @ cubic[7]).requires_grad_(True)  # exact symmetry-equivalent prediction
    for kind in ("geodesic", "chordal"):
        loss = OrientationLoss(kind)(rotation_6d_to_matrix(d6), r, cubic.expand(6, -1, -1, -1))
        assert loss.item() < 1e-3
        (grad,) = torch.autograd.grad(loss, d6)
        assert torch.isfinite(grad).all()
    off = rotation_6d_to_matrix(matrix_to_rotation_6d(r @ _rz(20).float()))
    assert OrientationLoss("geodesic")(off, r, cubic).item() == pytest.approx(math.radians(20), abs=1e-4)
    with pytest.raises(ValueError):
        OrientationLoss("l2")


def test_misorientation_metric_accumulates_and_resets():
    cubic = pad_symmetry(cubic_group()).expand(2, -1, -1, -1)
    eye = torch.eye(3).expand(2, 3, 3)
    metric = MisorientationMetric()
    metric.update(torch.stack([_rz(10), _rz(30)]).float(), eye, cubic)
    metric.update(torch.stack([_rz(90), _rz(20)]).float(), eye, cubic)
    assert metric.compute().item() == pytest.approx((10 + 30 + 0 + 20) / 4, abs=1e-3)
    metric.reset()
    metric.update(_rz(5).float()[None], eye[:1], None)
    assert metric.compute().item() == pytest.approx(5.0, abs=1e-3)


def test_property_nets_shapes():
    pattern, probe = torch.rand(3, 1, 32, 32), torch.rand(3, 1, 32, 32)
    kw = dict(width=8, num_stages=2, blocks_per_stage=1, hidden=16)
    t = ThicknessNet(scale_nm=20.0, offset_nm=40.0, **kw)
    assert t(pattern, probe).shape == (3,)
    p = PhaseNet(num_phases=5, **kw)
    assert p(pattern, probe).shape == (3, 5)
    o = OrientationNet(**kw)
    rot = o(pattern, probe)
    assert rot.shape == (3, 3, 3) and is_rotation(rot, atol=1e-5).all()
    assert o.forward_6d(pattern, probe).shape == (3, 6)
    assert ThicknessNet(**kw)(torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64)).shape == (2,)
    with pytest.raises(ValueError):
        PhaseNet(num_phases=1)
