"""FCU-Net, U-Net and their layers: shapes, Fourier layer, complex convolution, MC dropout."""

import math

import pytest
import torch
from torch.nn import functional as F

from stemforge.networks import FCUNet, UNet
from stemforge.networks.fcunet import fourier_cross_correlation, to_detector_space
from stemforge.networks.layers import ComplexConv2d, MCDropout, complex_cat, resolve_depth

SMALL = dict(base_filters=4, max_filters=16)


def _disk(size: int, radius: float, cx: float | None = None, cy: float | None = None) -> torch.Tensor:
    cx = size // 2 if cx is None else cx
    cy = size // 2 if cy is None else cy
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((xx - cx) ** 2 + (yy - cy) ** 2) <= radius**2).float()


def _inputs(b: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    probe = _disk(size, size / 8)[None, None].repeat(b, 1, 1, 1)
    pattern = probe + 0.3 * torch.rand(b, 1, size, size, generator=g)
    return pattern, probe


@pytest.mark.parametrize("cls", [FCUNet, UNet])
@pytest.mark.parametrize("size,depth", [(32, None), (64, None), (128, None), (64, 3), (128, 2)])
def test_shapes(cls, size, depth):
    net = cls(image_size=size, depth=depth, **SMALL)
    assert net.depth == (depth if depth is not None else int(math.log2(size)))
    pattern, probe = _inputs(2, size)
    out = net(pattern, probe)
    assert out.shape == (2, 1, size, size) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("cls", [FCUNet, UNet])
def test_one_net_many_sizes_and_bad_sizes(cls):
    net = cls(depth=3, **SMALL).eval()
    for size in (32, 64, 128):
        assert net(*_inputs(1, size)).shape == (1, 1, size, size)
    with pytest.raises(ValueError, match="divisible"):
        net(*_inputs(1, 20))
    with pytest.raises(ValueError):
        cls(**SMALL)  # neither depth nor image_size
    with pytest.raises(ValueError):
        cls(image_size=48, **SMALL)  # not a power of two
    with pytest.raises(ValueError):
        cls(image_size=32, depth=6, **SMALL)


def test_filters_and_depth_knobs():
    net = FCUNet(image_size=64, base_filters=8, max_filters=32)
    assert net.filters == [8, 16, 32, 32, 32, 32, 32]
    assert resolve_depth(256, None) == 8


@pytest.mark.parametrize("output", ["both", "real", "abs"])
def test_fcunet_output_modes(output):
    net = FCUNet(image_size=32, depth=2, output=output, **SMALL)
    assert net(*_inputs(2, 32)).shape == (2, 1, 32, 32)


def test_fourier_layer_intensity_invariant():
    pattern, probe = _inputs(3, 64, seed=1)
    net = FCUNet(image_size=64, depth=3, **SMALL).eval()
    ref = net.first_layer(pattern, probe)
    assert ref.shape == (3, 2, 64, 64)
    rms = ref.square().sum(1).mean((-2, -1)).sqrt()  # unit RMS modulus per image
    torch.testing.assert_close(rms, torch.ones(3), rtol=1e-5, atol=1e-5)
    for scale_pattern, scale_probe in [(1e-3, 1.0), (37.0, 1.0), (1.0, 5e-4), (250.0, 80.0)]:
        out = net.first_layer(scale_pattern * pattern, scale_probe * probe)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    # ... and so is the whole network (eval mode)
    torch.testing.assert_close(net(1e3 * pattern, probe), net(pattern, probe), rtol=1e-3, atol=1e-4)


def test_fourier_cross_correlation_peaks_at_the_shift():
    size, dy, dx = 64, 5, -9
    probe = _disk(size, 6)[None, None] + 0.5 * _disk(size, 2, cx=size // 2 + 3, cy=size // 2)[None, None]
    pattern = torch.roll(probe, shifts=(dy, dx), dims=(-2, -1))
    xc = to_detector_space(fourier_cross_correlation(pattern, probe)).real[0, 0]
    row, col = divmod(int(xc.argmax()), size)
    assert (row, col) == (size // 2 + dy, size // 2 + dx)
    # without normalisation it is exactly the circular cross-correlation
    xc_raw = to_detector_space(fourier_cross_correlation(pattern, probe, normalize=False)).real[0, 0]
    assert xc_raw.max().item() == pytest.approx(probe.square().sum().item(), rel=1e-4)


def _explicit_complex_conv(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Complex 'same' cross-correlation with torch.complex tensors, by explicit shifts."""
    k = w.shape[-1]
    p = k // 2
    zp = torch.complex(F.pad(z.real, (p, p, p, p)), F.pad(z.imag, (p, p, p, p)))
    h, wd = z.shape[-2:]
    out = torch.zeros(z.shape[0], w.shape[0], h, wd, dtype=z.dtype)
    for dy in range(k):
        for dx in range(k):
            out += torch.einsum("oc,bchw->bohw", w[:, :, dy, dx], zp[:, :, dy : dy + h, dx : dx + wd])
    if b is not None:
        out += b[None, :, None, None]
    return out


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_complex_conv_equals_explicit_complex_convolution(kernel):
    torch.manual_seed(0)
    conv = ComplexConv2d(3, 4, kernel, bias=True).double()
    with torch.no_grad():
        conv.bias_re.normal_()
        conv.bias_im.normal_()
    z = torch.complex(torch.randn(2, 3, 9, 11, dtype=torch.float64), torch.randn(2, 3, 9, 11, dtype=torch.float64))
    out = conv(torch.cat([z.real, z.imag], 1))
    w = torch.complex(conv.weight_re, conv.weight_im)
    ref = _explicit_complex_conv(z, w, torch.complex(conv.bias_re, conv.bias_im))
    torch.testing.assert_close(out[:, :4], ref.real)
    torch.testing.assert_close(out[:, 4:], ref.imag)


def test_complex_cat_keeps_block_layout():
    a = torch.arange(4.0).view(1, 4, 1, 1)  # re (0, 1), im (2, 3)
    b = torch.arange(10.0, 12.0).view(1, 2, 1, 1)  # re 10, im 11
    assert complex_cat(a, b).flatten().tolist() == [0, 1, 10, 2, 3, 11]


def test_complex_dropout_drops_pairs():
    drop = MCDropout(0.5, complex_pairs=True).train()
    y = drop(torch.ones(4, 6, 5, 5))
    assert torch.equal(y[:, :3] == 0, y[:, 3:] == 0)
    with pytest.raises(ValueError):
        MCDropout(1.0)


@pytest.mark.parametrize("cls", [FCUNet, UNet])
def test_mc_dropout(cls):
    pattern, probe = _inputs(2, 32)
    torch.manual_seed(0)
    plain = cls(image_size=32, depth=3, dropout=0.2, **SMALL)
    plain.train()
    plain(pattern, probe)  # give BatchNorm some running statistics
    plain.eval()
    a, b = plain(pattern, probe), plain(pattern, probe)
    assert torch.equal(a, b)  # plain eval is deterministic
    mean, var = plain.predict_mc({"pattern": pattern, "probe": probe}, n_samples=4, force_dropout=False)
    assert var.shape == (2, 1, 32, 32) and torch.all(var == 0)
    torch.testing.assert_close(mean, a)
    mean, var = plain.predict_mc((pattern, probe), n_samples=4)  # dropout forced on
    assert var.min() >= 0 and var.mean() > 0
    assert not plain.training and not plain.mc_dropout  # state restored

    mc = cls(image_size=32, depth=3, dropout=0.2, mc_dropout=True, **SMALL).eval()
    assert not torch.equal(mc(pattern, probe), mc(pattern, probe))  # MC dropout stays on in eval
    mean, var = mc.predict_mc(torch.cat([pattern, probe], 1), n_samples=5, force_dropout=False)
    assert var.mean() > 0 and mc.mc_dropout


def test_mc_dropout_without_dropout_has_zero_variance():
    net = UNet(image_size=32, depth=2, dropout=0.0, **SMALL)
    _, var = net.predict_mc(_inputs(2, 32), n_samples=3)
    assert torch.all(var == 0)
