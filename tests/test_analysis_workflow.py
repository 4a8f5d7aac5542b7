"""stemforge.analysis.workflow: both methods on one scan, scored against its ground truth, and the text report."""

import numpy as np
from test_analysis_classical import G1, G2, H, W, disk, strained_scan
from test_analysis_inference import BlurNet, FakeModel

from stemforge.analysis.workflow import add_dose_noise, analyse, report


def test_both_methods_scored_against_the_ground_truth():
    cube, gt, truth = strained_scan(dose=2e6)
    cube.ground_truth = {**gt, "reflections_px": truth}
    model = FakeModel(BlurNet(), shape=(H, W), pixel=0.03)
    res = analyse(
        cube,
        ["classical", "ml"],
        classical={"min_relative_intensity": 0.1},
        ml={"model": model, "mc_samples": 0, "threshold": 0.2},
        strain_reference=[0, 1, None, None],
        orientation={"enabled": False},
        progress=False,
    )
    for name in ("classical", "ml"):
        s = res[name].scores
        assert s["disks"]["f1"] > 0.95, (name, s["disks"])
        assert s["strain"]["rmse"] < 2e-3, (name, s["strain"])
        assert res[name].timings["patterns_per_s"] > 0
    text = report(res, cube)
    assert "disk F1" in text and "strain RMSE (%)" in text and "classical" in text and "ml" in text
    # with the lattice filter: a blob between the disks of every pattern is found, then dropped as off-lattice
    data = np.array(cube.data, dtype=np.float64)
    blob = disk((H, W), (H // 2 + 3 * G2[1], W // 2 - 0.5 * G1[0]), amp=0.3)  # half a g1 off a lattice row
    data += blob * data.max(axis=(2, 3), keepdims=True) / 3
    cube.data = data.astype(np.float32)
    loose = {"classical": {"min_relative_intensity": 0.05}}
    plain = analyse(
        cube,
        ["classical"],
        **loose,
        strain_reference=[0, 1, None, None],
        orientation={"enabled": False},
        progress=False,
    )["classical"]
    kept = analyse(
        cube,
        ["classical"],
        **loose,
        strain_reference=[0, 1, None, None],
        orientation={"enabled": False},
        lattice_filter_px=1.5,
        progress=False,
    )["classical"]
    assert kept.bragg.info["lattice_filter"]["dropped"] > 0
    assert len(kept.bragg.peaks) == len(plain.bragg.peaks) - kept.bragg.info["lattice_filter"]["dropped"]
    assert kept.scores["disks"]["precision"] > plain.scores["disks"]["precision"]
    assert kept.scores["disks"]["recall"] == plain.scores["disks"]["recall"]


def test_dose_noise_keeps_units_and_is_seeded():
    cube, _, _ = strained_scan()
    a = add_dose_noise(cube, 1e4, seed=1)
    b = add_dose_noise(cube, 1e4, seed=1)
    np.testing.assert_array_equal(a.data, b.data)
    counts = a.data.astype(np.float64) * 1e4
    np.testing.assert_allclose(counts, np.rint(counts), atol=1e-2)  # counts / dose: quantised
    ratio = a.data.sum((2, 3)) / cube.data.sum((2, 3))
    assert np.all(np.abs(ratio - 1) < 0.01)  # many counts per pattern: the mean is kept


def test_a_second_ml_model_runs_beside_the_first_and_is_reported():
    import pytest

    from stemforge.analysis.datacube import AnalysisError

    cube, gt, truth = strained_scan(dose=2e6)
    cube.ground_truth = {**gt, "reflections_px": truth}
    demo, shipped = FakeModel(BlurNet(), shape=(H, W), pixel=0.03), FakeModel(BlurNet(), shape=(H, W), pixel=0.03)
    shipped.name = "shipped-fake"
    kw = dict(strain_reference=[0, 1, None, None], orientation={"enabled": False}, progress=False)
    res = analyse(
        cube,
        ["ml", "shipped"],
        ml={"model": demo, "threshold": 0.2},
        ml_models={"shipped": {"model": shipped}},
        **kw,
    )
    assert res["ml"].bragg.info["model"].startswith("fake:")
    assert res["shipped"].bragg.info["model"].startswith("shipped-fake:")
    assert res["shipped"].scores["disks"]["f1"] == res["ml"].scores["disks"]["f1"]  # same network, same threshold
    text = report(res, cube)
    assert "shipped: model shipped-fake:0.0.0" in text and "ml: model fake:0.0.0" in text
    with pytest.raises(AnalysisError, match="unknown method 'other'"):
        analyse(cube, ["other"], ml={"model": demo}, **kw)


def test_property_maps_are_scored_reported_and_written(tmp_path):
    import torch
    import zarr

    from stemforge.analysis.results import write_results

    class Thick(torch.nn.Module):  # a constant 42 nm everywhere
        def forward(self, pattern, probe):
            return torch.full((pattern.shape[0],), 42.0)

    class Phase(torch.nn.Module):  # always confident in class 1
        def forward(self, pattern, probe):
            return torch.tensor([[0.0, 9.0]]).expand(pattern.shape[0], -1)

    cube, gt, truth = strained_scan(dose=2e6)
    cube.metadata = {**cube.metadata, "phases": ["Si"]}
    cube.ground_truth = {
        **gt,
        "reflections_px": truth,
        "thickness_A": np.full(cube.scan_shape, 400.0),
        "phase": np.zeros(cube.scan_shape, int),
    }
    thick = FakeModel(Thick(), family="thickness", shape=(H, W), pixel=0.03)
    thick.card["labels"] = {"structures": ["Si"], "pacbed_average": 9, "trained_range_nm": [2, 150]}
    phase = FakeModel(Phase(), family="phase", shape=(H, W), pixel=0.03)
    phase.card["labels"] = {"class_names": ["Cu", "Si"], "min_confidence": 0.5}
    res = analyse(
        cube,
        ["classical"],
        classical={"min_relative_intensity": 0.1},
        strain_reference=[0, 1, None, None],
        orientation={"enabled": False},
        properties={"enabled": True, "thickness_model": thick, "phase_model": phase},
        progress=False,
    )
    props = res["properties"]
    assert props.scores["thickness_mae_nm"] == np.float32(2.0) or abs(props.scores["thickness_mae_nm"] - 2.0) < 1e-5
    assert props.scores["phase_accuracy"] == 1.0 and props.scores["unknown_fraction"] == 0.0
    assert props.thickness.info["structure"] == "Si" and props.thickness.info["window"] == [3, 3]
    text, written = write_results(cube, res, tmp_path)
    assert "thickness 42.0–42.0 nm" in text and "accuracy against the ground truth 1.000" in text
    assert "thickness_properties.png" in written and "phase_properties.png" in written
    g = zarr.open_group(str(tmp_path / "maps.zarr"), mode="r")
    assert np.allclose(g["properties/thickness/thickness_nm"][:], 42.0)
    assert g["properties"].attrs["phase_names"] == ["Cu", "Si"] and g["properties/phase/probability"].shape[-1] == 2
