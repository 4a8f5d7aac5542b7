"""Thickness and phase maps from property models, PACBED windows, ML-assisted ACOM."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from test_analysis_inference import FakeModel, grid_points, scan

from stemforge.analysis import AnalysisError, BraggVectors, orientation_map, phase_map
from stemforge.analysis.properties import phase_map_ml, thickness_map, window_average
from stemforge.networks.property import PhaseNet, ThicknessNet


def brute_box(data, wr, wc):
    out = np.empty_like(data, dtype=np.float32)
    R, C = data.shape[:2]
    for i in range(R):
        for j in range(C):
            blk = data[max(0, i - wr // 2) : i + wr // 2 + 1, max(0, j - wc // 2) : j + wc // 2 + 1]
            out[i, j] = blk.reshape(-1, *data.shape[2:]).mean(0)
    return out


def test_window_average_matches_a_brute_force_box_and_dask():
    import dask.array as da

    data = np.random.default_rng(0).random((5, 7, 4, 3)).astype(np.float32)
    for w in ((3, 3), (3, 1), (1, 5)):
        want = brute_box(data, *w)
        assert np.allclose(window_average(data, w), want, atol=1e-6)
        lazy = window_average(da.from_array(data, chunks=(2, 3, 4, 3)), w)
        assert np.allclose(lazy.compute(), want, atol=1e-6)
    assert window_average(data, 1) is data
    with pytest.raises(AnalysisError, match="odd"):
        window_average(data, (2, 1))


class SumThickness(torch.nn.Module):
    """Known answer: "thickness" = the pattern's total intensity."""

    def forward(self, pattern, probe):
        return pattern.sum(dim=(1, 2, 3))


def thickness_model(net, structures=("Si", "GaAs"), average=9, trained=(2.0, 150.0)):
    m = FakeModel(net, family="thickness")
    m.card["labels"] = {"structures": list(structures), "pacbed_average": average, "trained_range_nm": list(trained)}
    return m


def test_thickness_map_averages_a_pacbed_window_and_checks_the_structure():
    cube = scan([[grid_points()[: 1 + (i + j) % 5] for j in range(4)] for i in range(3)])
    model = thickness_model(SumThickness())
    single = thickness_map(cube, model, structure="Si", window=1, mc_samples=0, progress=False).thickness_nm
    tm = thickness_map(cube, model, structure="Si", mc_samples=0, progress=False)  # card: PACBED -> 3x3
    assert tm.info["window"] == [3, 3] and tm.info["structure_checked"]
    assert np.allclose(tm.thickness_nm, brute_box(single[..., None, None], 3, 3)[..., 0, 0], rtol=1e-5)
    assert np.isnan(tm.uncertainty_nm).all()
    with pytest.raises(AnalysisError, match="only for the structures") as err:
        thickness_map(cube, model, structure="Au", progress=False)
    assert "\n" not in str(err.value) and "allow_out_of_range" in str(err.value)
    forced = thickness_map(cube, model, structure="Au", mc_samples=0, allow_out_of_range=True, progress=False)
    assert forced.info["allow_out_of_range"] and not forced.info["structure_checked"]
    with pytest.warns(UserWarning, match="no structure given"):
        unnamed = thickness_map(cube, model, mc_samples=0, progress=False)
    assert not unnamed.info["structure_checked"]
    # predictions outside the trained range are not valid
    narrow = thickness_model(SumThickness(), trained=(0.0, float(np.median(single))))
    tmn = thickness_map(cube, narrow, structure="Si", window=1, mc_samples=0, progress=False)
    assert tmn.valid.any() and not tmn.valid.all()
    fig = tm.figure()
    assert fig.axes[0].get_title() == "thickness"


def test_thickness_uncertainty_from_mc_dropout_of_the_head():
    torch.manual_seed(0)
    net = ThicknessNet(width=4, num_stages=2, hidden=16, dropout=0.3).eval()
    cube = scan([[grid_points()[:3], grid_points()]])
    tm = thickness_map(cube, thickness_model(net), structure="Si", window=1, mc_samples=8, progress=False)
    assert tm.thickness_nm.shape == (1, 2) and (tm.uncertainty_nm > 0).all()
    no_drop = thickness_model(ThicknessNet(width=4, num_stages=2, hidden=16).eval())
    with pytest.raises(AnalysisError, match="no dropout"):
        thickness_map(cube, no_drop, structure="Si", window=1, mc_samples=4, progress=False)


class ConfidenceByIntensity(torch.nn.Module):
    """Two classes; the logit gap grows with the pattern's total intensity (confident for bright patterns)."""

    num_phases = 2

    def forward(self, pattern, probe):
        s = pattern.sum(dim=(1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def test_ml_phase_map_flags_low_confidence_as_unknown():
    cube = scan([[grid_points()[:k] for k in (0, 1, 9)]])  # total intensity 0, ~2pi*1.44, 9x that
    model = FakeModel(ConfidenceByIntensity(), family="phase")
    model.card["labels"] = {"class_names": ["Si", "Cu"], "min_confidence": 0.9}
    pm = phase_map(cube, method="ml", model=model, progress=False)
    assert pm.names == ["Si", "Cu"] and pm.info["min_confidence"] == 0.9
    assert pm.phase.tolist() == [[-1, 0, 0]]  # 0.5 / 0.9998 / 1.0
    assert np.allclose(pm.scores.sum(-1), 1.0) and pm.margin[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert phase_map_ml(cube, model, min_confidence=0.0, progress=False).phase[0, 0] == 0
    assert np.isnan(pm.rotation()).all()  # no orientations from an ML phase map
    with pytest.raises(AnalysisError, match="DataCube"):
        phase_map(
            BraggVectors((1, 1), (32, 32), np.zeros(0, dtype=analysis_dtype()), cube.calibration, "ml"),
            method="ml",
            model=model,
        )
    with pytest.raises(AnalysisError, match="not a phase model"):
        phase_map(cube, method="ml", model=FakeModel(ConfidenceByIntensity(), family="thickness"))


def analysis_dtype():
    from stemforge.analysis import PEAK_DTYPE

    return PEAK_DTYPE


def test_mc_phase_probabilities_are_averaged():
    torch.manual_seed(1)
    net = PhaseNet(3, width=4, num_stages=2, hidden=16, dropout=0.3).eval()
    model = FakeModel(net, family="phase")
    model.card["labels"] = {"class_names": ["a", "b", "c"], "min_confidence": 0.0}
    pm = phase_map_ml(scan([[grid_points(), grid_points()[:2]]]), model, mc_samples=6, progress=False)
    assert np.allclose(pm.scores.sum(-1), 1.0, atol=1e-5) and (pm.phase >= 0).all()


def test_ml_assisted_acom_weights_the_models_disks_by_presence(silicon):
    from dataclasses import replace

    from stemforge.analysis.orientation_library import build_orientation_library, kinematic_bragg_vectors
    from stemforge.sim.orientations import random_orientations

    lib = build_orientation_library("Si", 200e3, 1.5, direction_step_deg=3.0, in_plane_step_deg=3.0, cache=False)
    R = random_orientations("Si", 3, seed=4)
    bv = kinematic_bragg_vectors("Si", R[None], 200e3, (110, 110), 0.03, k_max=1.5)
    rng = np.random.default_rng(0)
    peaks = bv.peaks.copy()
    peaks["intensity"] = rng.uniform(0.01, 100.0, len(peaks))  # dynamical-like intensities
    ml = replace(bv, peaks=peaks, method="ml", info={"model": "fake:1"})
    om = orientation_map(ml, lib, method="ml", progress=False)
    flat = peaks.copy()
    flat["intensity"] = 1.0
    ref = orientation_map(replace(bv, peaks=flat), lib, progress=False)
    assert np.allclose(om.rotation, ref.rotation, equal_nan=True, atol=1e-4)
    assert np.allclose(om.score, ref.score, atol=1e-4)
    assert om.info["method"] == "ml" and om.info["peak_weights"] == "presence" and om.info["bragg_model"] == "fake:1"
    assert np.median(om.misorientation_deg(R[None])) < 1.0
    with pytest.raises(AnalysisError, match="classical peaks"):
        orientation_map(bv, lib, method="ml", progress=False)
    with pytest.raises(AnalysisError, match="needs BraggVectors"):
        orientation_map(np.zeros((1, 1, 8, 8)), lib, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AnalysisError, match="peak_weights"):
            orientation_map(ml, lib, method="ml", peak_weights="loud", progress=False)


def test_property_net_without_the_probe_ignores_it():
    torch.manual_seed(0)
    net = PhaseNet(3, width=4, num_stages=2, hidden=8, use_probe=False).eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        a = net(x, torch.rand(2, 1, 16, 16))
        b = net(x, torch.zeros(2, 1, 16, 16))
    assert torch.equal(a, b) and net.encoder.stem[0].in_channels == 1
    assert ThicknessNet(width=4, num_stages=2).encoder.stem[0].in_channels == 2
