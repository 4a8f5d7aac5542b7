"""ML inference on scans: calibration checks, resampling, streaming, MC-dropout uncertainty, registry errors."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from stemforge import analysis
from stemforge.analysis.datacube import AnalysisError, Calibration, DataCube
from stemforge.analysis.inference import GridMap, check_calibration, find_bragg_disks_ml, predict_property_map
from stemforge.registry.loading import Preprocessor

H = W = 32
P = 0.05  # Å⁻¹/px of the fake model


def spot_pattern(points, shape=(H, W), sigma=1.2, amp=1.0):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    img = np.zeros(shape, np.float32)
    for r, c in points:
        img += amp * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * sigma**2))
    return img


class BlurNet(torch.nn.Module):
    """A stand-in network with a known answer: its output map is the input pattern blurred by a Gaussian, so
    its peaks sit on the spots. ``jitter`` adds random per-pass noise while MC dropout is on."""

    def __init__(self, jitter: float = 0.0):
        super().__init__()
        x = torch.arange(-3, 4, dtype=torch.float32)
        g = torch.exp(-(x**2) / 2)
        self.register_buffer("kernel", (g[:, None] * g[None, :] / g.sum() ** 2)[None, None])
        self.jitter, self._mc = jitter, False
        self.calls = []

    @contextlib.contextmanager
    def _mc_state(self, enabled):
        prev, self._mc = self._mc, enabled
        try:
            yield
        finally:
            self._mc = prev

    def forward(self, pattern, probe):
        self.calls.append((pattern.shape[0], probe.data_ptr(), probe.stride()))
        y = torch.nn.functional.conv2d(pattern, self.kernel, padding=3)
        if self._mc and self.jitter:
            y = y + self.jitter * torch.rand_like(y)
        return y


class FakeModel:
    """Duck-typed registry model (card / input_spec / preprocess / net) around a known-answer network."""

    def __init__(self, net, family="bragg", energy=(200e3, 300e3), alpha=(1.0, 3.0), shape=(H, W), pixel=P):
        self.name, self.version = "fake", "0.0.0"
        self.input_spec = {
            "shape": list(shape),
            "pixel_size_inv_A": pixel,
            "energy_eV": list(energy),
            "semiangle_mrad": list(alpha),
            "normalisation": {"mode": "probe_max", "power": 1.0},
        }
        self.card = {"task_family": family, "input": self.input_spec, "labels": {"definition": "blurred pattern"}}
        self.preprocess = Preprocessor(self.input_spec)
        self.net = net.eval()
        self.device = "cpu"


def scan(points_per_position, pixel=P, shape=(H, W), energy=300e3, origin=None):
    rx, ry = len(points_per_position), len(points_per_position[0])
    data = np.stack([np.stack([spot_pattern(points_per_position[i][j], shape) for j in range(ry)]) for i in range(rx)])
    probe = spot_pattern([(shape[0] // 2, shape[1] // 2)], shape, sigma=2.0)
    cal = Calibration(pixel_size_inv_A=pixel, energy_eV=energy, semiangle_mrad=2.0, origin_px=origin)
    return DataCube(data, cal, probe=probe)


def grid_points(shift=(0.0, 0.0)):
    c = H // 2
    return [(c + shift[0] + dr, c + shift[1] + dc) for dr in (-8, 0, 8) for dc in (-8, 0, 8)]


def test_peaks_on_the_spots_with_a_partial_last_batch():
    rng = np.random.default_rng(0)
    truths = [[grid_points(rng.uniform(-0.4, 0.4, 2)) for _ in range(3)] for _ in range(3)]
    net = BlurNet()
    bv = find_bragg_disks_ml(scan(truths), FakeModel(net), batch_size=4, mc_samples=0, threshold=0.2, progress=False)
    assert bv.method == "ml" and bv.scan_shape == (3, 3)
    assert [c[0] for c in net.calls] == [4, 4, 1]  # 9 patterns: two full batches and the partial last one
    assert (bv.counts() == 9).all()
    for i in range(3):
        for j in range(3):
            got = np.stack([bv.at(i, j)["row"], bv.at(i, j)["col"]], 1)
            true = np.asarray(truths[i][j])
            d = np.sqrt(((got[:, None] - true[None]) ** 2).sum(-1)).min(0)
            assert d.max() < 0.1, d  # Gaussian-blob refinement on a Gaussian map
    assert np.isnan(bv.peaks["sigma_px"]).all()


def test_probe_is_broadcast_not_copied():
    net = BlurNet()
    find_bragg_disks_ml(scan([[grid_points()] * 3] * 2), FakeModel(net), batch_size=4, mc_samples=0, progress=False)
    ptrs = {c[1] for c in net.calls}
    assert len(ptrs) == 1  # the same probe storage for every batch
    assert all(c[2][0] == 0 for c in net.calls)  # batch stride 0: an expanded view, not B copies


def test_resampling_to_the_model_grid_maps_peaks_back():
    # the scan has half the model's pixel size and 2x the pixels, and its origin is off-centre (descan)
    origin = (30.5, 33.0)
    k = [(-0.4, -0.4), (0.0, 0.4), (0.4, 0.0), (0.0, 0.0)]  # (ky, kx) Å⁻¹
    pts = [(origin[0] + ky / (P / 2), origin[1] + kx / (P / 2)) for ky, kx in k]
    cube = scan([[pts]], pixel=P / 2, shape=(64, 64), origin=origin)
    cube.probe = spot_pattern([origin], (64, 64), sigma=4.0)
    bv = find_bragg_disks_ml(cube, FakeModel(BlurNet()), mc_samples=0, threshold=0.2, progress=False)
    got = np.stack([bv.peaks["row"], bv.peaks["col"]], 1)
    d = np.sqrt(((got[:, None] - np.asarray(pts)[None]) ** 2).sum(-1)).min(0)
    assert len(bv) == 4 and d.max() < 0.35, d  # within a third of a scan pixel after 2x binning
    assert bv.info["resampled"]


def test_grid_map_conserves_intensity_per_area():
    g = GridMap((32, 32), 0.05, (64, 64), 0.025, (32.0, 32.0))
    img = spot_pattern([(32, 32)], (64, 64), sigma=5.0)
    out = (g.matrix() @ img.ravel()).reshape(32, 32)
    assert abs(out.sum() - img.sum()) / img.sum() < 1e-3


def test_mc_dropout_gives_a_per_peak_spread():
    cube = scan([[grid_points()]])
    calm = find_bragg_disks_ml(cube, FakeModel(BlurNet(jitter=1e-4)), mc_samples=6, progress=False)
    noisy = find_bragg_disks_ml(cube, FakeModel(BlurNet(jitter=0.05)), mc_samples=6, progress=False)
    assert np.isfinite(calm.peaks["sigma_px"]).all() and np.isfinite(noisy.peaks["sigma_px"]).all()
    assert noisy.peaks["sigma_px"].mean() > 5 * calm.peaks["sigma_px"].mean()


def test_lazy_scan_gives_the_same_peaks():
    da = pytest.importorskip("dask.array")
    cube = scan([[grid_points()] * 3] * 2)
    lazy = DataCube(da.from_array(cube.data, chunks=(1, 3, H, W)), cube.calibration, probe=cube.probe)
    a = find_bragg_disks_ml(cube, FakeModel(BlurNet()), mc_samples=0, progress=False)
    b = find_bragg_disks_ml(lazy, FakeModel(BlurNet()), mc_samples=0, progress=False)
    for name in a.peaks.dtype.names:  # field by field: NaN sigma_px compares equal
        np.testing.assert_array_equal(a.peaks[name], b.peaks[name])


def test_calibration_checks():
    cube = scan([[grid_points()]], energy=80e3)
    with pytest.raises(AnalysisError, match="outside the range"):
        check_calibration(cube, FakeModel(BlurNet()))
    check_calibration(cube, FakeModel(BlurNet()), allow_out_of_range=True)
    no_cal = DataCube(cube.data, Calibration(), probe=cube.probe)
    with pytest.raises(AnalysisError, match="Å⁻¹/px"):
        find_bragg_disks_ml(no_cal, FakeModel(BlurNet()), progress=False)


def test_bad_inputs_are_refused():
    cube = scan([[grid_points()] * 2])
    bad = cube.data.copy()
    bad[0, 1, 3, 3] = np.nan
    with pytest.raises(AnalysisError, match=r"\(0, 1\) holds NaN"):
        find_bragg_disks_ml(
            DataCube(bad, cube.calibration, probe=cube.probe), FakeModel(BlurNet()), mc_samples=0, progress=False
        )
    with pytest.raises(AnalysisError, match="4D"):
        find_bragg_disks_ml(cube.data[0], FakeModel(BlurNet()), progress=False)
    with pytest.raises(AnalysisError, match="not Bragg"):
        find_bragg_disks_ml(cube, FakeModel(BlurNet(), family="thickness"), progress=False)
    with pytest.raises(AnalysisError, match="not a property model"):
        predict_property_map(cube, FakeModel(BlurNet()), progress=False)
    with pytest.raises(AnalysisError, match="probe shape"):
        find_bragg_disks_ml(cube, FakeModel(BlurNet()), probe=np.ones((8, 8)), progress=False)
    # without a probe the direct beam is cut out of the mean pattern (stemforge.analysis.probe.probe_from_data)
    bv = find_bragg_disks_ml(DataCube(cube.data, cube.calibration), FakeModel(BlurNet()), mc_samples=0, progress=False)
    assert len(bv) > 0


def test_unknown_model_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("STEMFORGE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "store").mkdir()
    with pytest.raises(AnalysisError, match="cannot load model 'no-such-model:stable'") as err:
        find_bragg_disks_ml(
            scan([[grid_points()]]), "no-such-model:stable", store=str(tmp_path / "store"), progress=False
        )
    assert "\n" not in str(err.value)


def test_property_maps_from_a_thickness_model():
    class Thick(torch.nn.Module):
        def forward(self, pattern, probe):  # "thickness" = total intensity, a known answer per position
            return pattern.sum(dim=(1, 2, 3))

    cube = scan([[grid_points()[: k + 1] for k in range(3)]])
    out = predict_property_map(cube, FakeModel(Thick(), family="thickness"), batch_size=2, progress=False)
    t = out["thickness_nm"]
    assert t.shape == (1, 3) and np.all(np.diff(t[0]) > 0)


def test_analysis_exports_the_ml_finder():
    assert analysis.find_bragg_disks_ml is find_bragg_disks_ml


def test_precision_bf16_matches_fp32_and_is_recorded(monkeypatch):
    """bf16 autocast places the peaks of the blur network within 0.1 px of float32; ``auto`` follows the CPU's
    native bf16 support; a wrong value is one clear error."""
    from stemforge.analysis import inference

    rng = np.random.default_rng(1)
    truths = [[grid_points(rng.uniform(-0.4, 0.4, 2)) for _ in range(2)] for _ in range(2)]
    cube = scan(truths)
    a = find_bragg_disks_ml(cube, FakeModel(BlurNet()), precision="fp32", threshold=0.2, progress=False)
    b = find_bragg_disks_ml(cube, FakeModel(BlurNet()), precision="bf16", threshold=0.2, progress=False)
    assert a.info["precision"] == "fp32" and b.info["precision"] == "bf16"
    assert len(a.peaks) == len(b.peaks) == 4 * 9
    for i in range(2):  # the same peaks (order among equal maxima may differ)
        for j in range(2):
            pa, pb = a.at(i, j), b.at(i, j)
            d = np.hypot(pa["row"][:, None] - pb["row"][None], pa["col"][:, None] - pb["col"][None])
            assert d.min(1).max() < 0.1 and d.min(0).max() < 0.1, d.min(1)
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(inference, "native_bf16", lambda native=native: native)
        assert inference.resolve_precision("auto") == want
        c = find_bragg_disks_ml(cube, FakeModel(BlurNet()), threshold=0.2, progress=False)
        assert c.info["precision"] == want
    assert inference.resolve_precision("auto", device="cuda") == "fp32"
    with pytest.raises(AnalysisError, match="precision"):
        find_bragg_disks_ml(cube, FakeModel(BlurNet()), precision="fp16", progress=False)
