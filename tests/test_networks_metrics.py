"""Peak finding, matching and the peak metric; SSIM and map losses."""

import math

import numpy as np
import pytest
import torch

from stemforge.networks import find_peaks, match_peaks
from stemforge.networks.losses import MapLoss, ssim
from stemforge.networks.metrics import PeakMatchMetric

SIZE = 64
GT = torch.tensor([[32.0, 32.0], [12.3, 40.6], [50.0, 20.5], [20.7, 15.2], [45.4, 47.9]])  # (x, y) px


def render(points, size: int = SIZE, sigma: float = 1.0, heights=None) -> torch.Tensor:
    """Gaussian blobs (unit height unless ``heights``) at (x, y) points, on a (size, size) map."""
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij"
    )
    out = torch.zeros(size, size, dtype=torch.float64)
    for i, (x, y) in enumerate(torch.as_tensor(points, dtype=torch.float64).tolist()):
        h = 1.0 if heights is None else heights[i]
        out += h * torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return out.float()


def _padded(points, rows: int = 8) -> torch.Tensor:
    out = torch.full((rows, 2), math.nan)
    out[: len(points)] = torch.as_tensor(points)
    return out


@pytest.mark.parametrize("refine,tol", [("gaussian", 0.01), ("parabola", 0.1), ("centroid", 0.2), ("none", 0.71)])
def test_find_peaks_subpixel(refine, tol):
    peaks = find_peaks(render(GT), threshold=0.1, min_distance=2, refine=refine)
    assert peaks.shape == (5, 3)
    _, ti, d = match_peaks(peaks, GT, tolerance=1.0)
    assert len(d) == 5 and d.max() < tol
    assert torch.all(peaks[:-1, 2] >= peaks[1:, 2])  # sorted by value


def test_find_peaks_batched_thresholds_and_spacing():
    maps = torch.stack([render(GT), render(GT[:2]), torch.zeros(SIZE, SIZE)])[:, None]
    found = find_peaks(maps)
    assert isinstance(found, list) and [len(f) for f in found] == [5, 2, 0]
    weak = render(GT[:2], heights=[10.0, 0.3])
    assert len(find_peaks(weak, threshold=0.05)) == 1  # 0.3 < 0.05 * 10
    assert len(find_peaks(weak, threshold=0.01)) == 2
    assert len(find_peaks(weak, threshold=0.0, absolute_threshold=0.5)) == 1
    close = render([[20.0, 20.0], [22.0, 20.0]], sigma=0.6)
    assert len(find_peaks(close, min_distance=1)) == 2
    assert len(find_peaks(close, min_distance=3)) == 1
    flat = torch.zeros(16, 16)
    flat[5, 5] = flat[5, 6] = 1.0  # a two-pixel plateau is one peak
    assert len(find_peaks(flat, min_distance=1)) == 1
    assert len(find_peaks(render(GT), max_peaks=3)) == 3
    assert len(find_peaks(render(GT).numpy())) == 5  # numpy input


def test_match_peaks_hungarian():
    pred = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 10.0]])
    true = torch.tensor([[0.9, 0.0], [0.1, 0.0], [math.nan, math.nan]])
    pi, ti, d = match_peaks(pred, true, tolerance=2.0)
    # the globally best assignment pairs 0-1 and 1-0 (greedy nearest would too here, but both within 0.1 px)
    assert sorted(zip(pi.tolist(), ti.tolist())) == [(0, 1), (1, 0)]
    np.testing.assert_allclose(d, [0.1, 0.1], atol=1e-6)
    assert len(match_peaks(pred[:0], true, 2.0)[0]) == 0


def _metric(**kw) -> PeakMatchMetric:
    return PeakMatchMetric(tolerance=kw.pop("tolerance", 1.5), threshold=0.1, min_distance=2, **kw)


def test_peak_metric_perfect():
    m = _metric()
    m.update(render(GT)[None, None].repeat(2, 1, 1, 1), torch.stack([_padded(GT), _padded(GT)]))
    r = m.compute()
    assert r["precision"] == 1 and r["recall"] == 1 and r["f1"] == 1
    assert r["position_error"] < 0.01


def test_peak_metric_shift_is_the_error():
    m = _metric(tolerance=3.0)
    shift = torch.tensor([2.0, 0.0])
    m.update(render(GT + shift)[None, None], _padded(GT)[None])
    r = m.compute()
    assert r["f1"] == 1
    assert r["position_error"].item() == pytest.approx(2.0, abs=0.01)
    m = _metric(tolerance=1.5)  # beyond the tolerance: nothing matches
    m.update(render(GT + shift)[None, None], _padded(GT)[None])
    r = m.compute()
    assert r["precision"] == 0 and r["recall"] == 0 and r["f1"] == 0 and math.isnan(r["position_error"])


def test_peak_metric_missing_extra_and_accumulation():
    extra = torch.tensor([[5.0, 5.0], [58.0, 8.0]])
    m = _metric()
    m.update(render(GT[:3])[None, None], _padded(GT)[None])  # 2 of 5 missing
    r = m.compute()
    assert r["precision"] == 1 and r["recall"].item() == pytest.approx(3 / 5)
    m.update(render(torch.cat([GT, extra]))[None, None], _padded(GT)[None])  # 2 extra
    r = m.compute()  # accumulated: TP 3+5, FP 0+2, FN 2+0
    assert r["precision"].item() == pytest.approx(8 / 10)
    assert r["recall"].item() == pytest.approx(8 / 10)
    assert r["f1"].item() == pytest.approx(0.8)
    m.reset()
    m.update(render(torch.cat([GT, extra]))[None, None], _padded(GT)[None])
    r = m.compute()
    assert r["precision"].item() == pytest.approx(5 / 7) and r["recall"] == 1
    assert r["f1"].item() == pytest.approx(2 * (5 / 7) / (1 + 5 / 7))


def test_ssim_and_map_losses():
    x = render(GT)[None, None]
    y = render(GT + 1.0)[None, None]
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    assert ssim(x, y).item() < 0.9
    for kind in ("mse", "l1", "ssim+l1"):
        loss = MapLoss(kind)
        assert loss(x, x).item() == pytest.approx(0.0, abs=1e-5)
        assert loss(x, y).item() > 0
    assert ssim(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)).shape == (2,)  # window shrinks to 7
    with pytest.raises(ValueError):
        MapLoss("huber")
