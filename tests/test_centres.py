"""Bragg-disk centre models: targets, loss, decoding, CentreNet, the Lightning module, inference, dose-aware peaks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stemforge import analysis
from stemforge.networks.centres import CentreNet, centre_loss, decode_centres, render_centre_targets

NAN = float("nan")


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_targets_decode_to_the_exact_sub_pixel_centres(stride):
    rng = np.random.default_rng(stride)
    true = rng.uniform(3, 60, (2, 5, 2)).astype(np.float32)
    peaks = torch.full((2, 7, 2), NAN)
    peaks[:, :5] = torch.from_numpy(true)
    heat, offset, mask = render_centre_targets(peaks, (64 // stride, 64 // stride), stride)
    assert heat.shape == (2, 1, 64 // stride, 64 // stride) and offset.shape == (2, 2, 64 // stride, 64 // stride)
    assert float(heat.max()) == 1.0 and offset.abs().max() <= 0.5 + 1e-6
    logits = torch.logit(heat.clamp(1e-6, 1 - 1e-6))
    for b, found in enumerate(decode_centres(torch.cat([logits, offset], 1), stride, threshold=0.99)):
        got = found[:, :2].numpy()
        d = np.sqrt(((got[:, None] - true[b][None]) ** 2).sum(-1))
        assert len(got) == 5 and d.min(0).max() < 1e-4, d.min(0)


def test_targets_ignore_padding_and_centres_off_the_grid():
    peaks = torch.tensor([[[NAN, NAN], [-3.0, 10.0], [10.0, 200.0], [20.2, 30.7]]])
    heat, offset, mask = render_centre_targets(peaks, (32, 32), 2)
    assert int(mask.sum()) == 1 and int(mask[0, 0, 15, 10]) == 1  # (20.2+0.5)/2-0.5 = 9.85 -> 10; 30.7 -> 15
    assert torch.allclose(offset[0, :, 15, 10], torch.tensor([-0.15, 0.1]), atol=1e-5)


def test_focal_loss_prefers_the_right_heat_map_and_offsets():
    peaks = torch.tensor([[[10.0, 12.0], [40.3, 22.6]]])
    heat, offset, mask = render_centre_targets(peaks, (32, 32), 2)
    good = torch.cat([torch.logit(heat.clamp(1e-4, 1 - 1e-4)), offset], 1)
    wrong = torch.cat([torch.logit(heat.flip(-1).clamp(1e-4, 1 - 1e-4)), -offset], 1)
    lg, fg, og = centre_loss(good, heat, offset, mask)
    lw, fw, ow = centre_loss(wrong, heat, offset, mask)
    assert float(og) < 1e-6 and float(ow) > 0.1
    assert float(fg) < 0.1 * float(fw)
    assert float(lg) < float(lw)


def test_centrenet_shapes_errors_and_mc_dropout():
    net = CentreNet(stride=2, filters=(8, 16, 16), dropout=0.2).eval()
    x = torch.rand(3, 1, 32, 32)
    out = net(x, x[:1].expand(3, -1, -1, -1))
    assert out.shape == (3, 3, 16, 16) and net.output_kind == "centres" and net.multiple == 8
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.rand(1, 1, 36, 36), torch.rand(1, 1, 36, 36))
    with torch.no_grad():
        assert torch.equal(net(x, x), net(x, x))  # eval: deterministic
        mean, var = net.predict_mc((x, x), 4)
    assert float(var.max()) > 0


def _spots(points, shape=(32, 32), sigma=1.3):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape, np.float32)
    for x, y in points:
        img += np.exp(-((rr - y) ** 2 + (cc - x) ** 2) / (2 * sigma**2))
    return img


def _batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    pats, peaks = [], torch.full((n, 6, 2), NAN)
    for i in range(n):
        pts = rng.uniform(5, 26, (4, 2))
        pts = pts[np.r_[True, [np.min(np.hypot(*(pts[:j] - p).T)) > 5 for j, p in enumerate(pts[1:], 1)]]]
        pats.append(_spots(pts))
        peaks[i, : len(pts)] = torch.from_numpy(pts.astype(np.float32))
    pattern = torch.from_numpy(np.stack(pats))[:, None]
    probe = torch.from_numpy(_spots([(16, 16)]))[None, None].expand(n, -1, -1, -1).contiguous()
    return {"pattern": pattern, "probe": probe, "peaks": peaks}


def test_module_learns_sub_pixel_centres_of_a_fixed_batch():
    pytest.importorskip("pytorch_lightning")
    from stemforge.networks.modules import BraggCentreModule

    torch.manual_seed(0)
    net = CentreNet(stride=2, filters=(16, 32, 32), dropout=0.0)
    module = BraggCentreModule(net, optimizer=lambda p: torch.optim.Adam(p, 3e-3))
    opt = module.configure_optimizers()
    batch = _batch()
    module.log = lambda *a, **k: None  # no trainer attached
    first = None
    for _ in range(150):
        loss = module._loss_and_update(batch, "train")
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()
    with torch.no_grad():
        module._loss_and_update(batch, "val")
    scores = module.val_peaks.compute()
    assert float(loss) < 0.2 * first
    assert float(scores["f1"]) > 0.9 and float(scores["position_error"]) < 0.4, scores


def test_find_bragg_disks_ml_decodes_centre_models():
    from test_analysis_inference import FakeModel, scan

    class Oracle(torch.nn.Module):
        """Returns the exact centre targets of known spots (so decoding and mapping back must be exact)."""

        output_kind, stride = "centres", 2

        def __init__(self, truth):
            super().__init__()
            self.truth = truth

        def forward(self, pattern, probe):
            heat, off, _ = render_centre_targets(self.truth[: pattern.shape[0]], (16, 16), 2)
            return torch.cat([torch.logit(heat.clamp(1e-4, 1 - 1e-4)), off], 1)

    pts = [(16.0, 16.0), (16.3, 24.6), (7.2, 15.9)]  # (row, col) scan px
    truth = torch.tensor([[[c, r] for r, c in pts]] * 4, dtype=torch.float32)
    bv = analysis.find_bragg_disks(scan([[pts, pts]]), method="ml", model=FakeModel(Oracle(truth)), progress=False)
    assert bv.info["output"] == "centres"
    got = np.sort(np.stack([bv.at(0, 0)["row"], bv.at(0, 0)["col"]], 1), axis=0)
    assert np.allclose(got, np.sort(np.array(pts), axis=0), atol=1e-3)


def test_fused_copy_gives_the_same_outputs_in_eval_mode():
    torch.manual_seed(1)
    net = CentreNet(stride=2, filters=(8, 16, 16)).eval()
    for m in net.modules():  # BatchNorm statistics other than the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    fused = net.fused()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is untouched
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x, x), fused(x, x), atol=1e-5)


def test_mc_dropout_gives_a_per_peak_spread_for_centre_models():
    from test_analysis_inference import FakeModel, grid_points, scan

    torch.manual_seed(0)
    net = CentreNet(stride=2, filters=(8, 16, 16), dropout=0.5, prior=0.5)
    cube = scan([[grid_points()]])
    one = analysis.find_bragg_disks(cube, method="ml", model=FakeModel(net), progress=False, max_peaks=20)
    mc = analysis.find_bragg_disks(cube, method="ml", model=FakeModel(net), mc_samples=4, progress=False, max_peaks=20)
    assert len(one.peaks) and np.isnan(one.peaks["sigma_px"]).all()
    assert len(mc.peaks) and np.isfinite(mc.peaks["sigma_px"]).all() and (mc.peaks["sigma_px"] > 0).any()
    assert mc.info["mc_samples"] == 4 and not net.training  # the network is left in eval mode
