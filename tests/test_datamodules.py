"""The CBED data module: lazy worker-safe reading, held-out splits, augmentation, normalisation."""

import pickle

import numpy as np
import pytest
import torch

from stemforge.datamodules import CBEDDataModule, ChunkShuffleSampler, normalise, split_indices


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    tmp = tmp_path_factory.mktemp("dm")
    out = tmp / "dm.zarr"
    proc = subprocess.run(
        [
            sys.executable,
            str(root / "scripts" / "simulate.py"),
            "structure.names=[Si,Cu]",
            "sampling=fast",
            "detector.shape=[32,32]",
            "detector.pixel_size_inv_A=0.06",
            "dataset.num_patterns=24",
            "dataset.chunk_runs=2",
            "orientation.random_fraction=0.5",
            f"dataset.path={out}",
            "dataset.progress=false",
        ],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_batches_follow_the_contract(dataset):
    dm = CBEDDataModule(
        str(dataset), batch_size=4, split={"method": "random", "val_fraction": 0.25, "test_fraction": 0.25}
    )
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["pattern"].shape == (4, 1, 32, 32) and batch["probe"].shape == (4, 1, 32, 32)
    assert batch["vg_map"].shape == (4, 1, 32, 32) and batch["disk_map"].shape == (4, 1, 32, 32)
    assert batch["peaks"].shape == (4, 128, 2) and batch["rotation"].shape == (4, 3, 3)
    assert batch["symmetry"].shape == (4, 24, 3, 3)
    assert torch.allclose(batch["probe"].amax(dim=(1, 2, 3)), torch.ones(4))  # probe_max normalisation
    assert batch["phase"].shape == (4,) and batch["thickness_nm"].shape == (4,)
    assert set(batch["phase"].tolist()) <= {0, 1}
    assert (batch["thickness_nm"] > 0).all()
    # symmetry ops are proper rotations of the right crystal (Si and Cu: 24 proper ops)
    R = batch["symmetry"]
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3).expand_as(R), atol=1e-5)


def test_dataset_is_lazy_and_picklable(dataset):
    dm = CBEDDataModule(str(dataset), batch_size=2)
    dm.setup()
    ds = dm._sets["train"]
    assert ds._group is None and not ds._cache  # nothing read until a sample is asked for
    clone = pickle.loads(pickle.dumps(ds))
    sample = clone[0]
    assert sample["pattern"].shape == (1, 32, 32)
    # only one chunk per array is held
    assert all(len(d) == 1 and all(a.shape[0] <= 4 for a in d.values()) for d in clone._cache.values())


def test_workers_see_every_sample_once(dataset):
    dm = CBEDDataModule(
        str(dataset), batch_size=3, num_workers=2, split={"method": "random", "val_fraction": 0.0, "test_fraction": 0.0}
    )
    dm.setup()
    seen = torch.cat([b["index"] for b in dm.train_dataloader()]).tolist()
    expected = dm._sets["train"].indices.tolist()
    assert len(seen) == len(set(seen)) and set(seen) <= set(expected)  # no sample twice, none foreign
    # every sample, except a last batch of one that training drops (BatchNorm cannot normalise one sample)
    assert len(seen) == len(expected) - (1 if len(expected) % 3 == 1 else 0)


def test_chunk_sampler_visits_chunks_contiguously():
    idx = np.arange(20)
    order = list(ChunkShuffleSampler(idx, chunk_size=4, seed=1))
    assert sorted(order) == list(range(20))
    chunks = [idx[o] // 4 for o in order]
    changes = sum(a != b for a, b in zip(chunks, chunks[1:]))
    assert changes == 4  # five chunks, each visited in one stretch
    assert order != list(ChunkShuffleSampler(idx, chunk_size=4, seed=2))


def test_chunk_sampler_mixes_blocks_of_chunks():
    idx = np.arange(40)
    order = list(ChunkShuffleSampler(idx, chunk_size=4, seed=1, mix_chunks=5))
    assert sorted(order) == list(range(40))
    chunks = np.asarray([idx[o] // 4 for o in order])
    first, second = set(chunks[:20]), set(chunks[20:])
    assert len(first) == 5 and not first & second  # two blocks of five chunks each, one after the other
    assert sum(a != b for a, b in zip(chunks, chunks[1:])) > 10  # members interleaved within a block


def test_dataset_keeps_as_many_chunks_as_asked(dataset):
    from stemforge.datamodules.cbed import CBEDDataset

    sym = np.tile(np.eye(3, dtype=np.float32), (2, 24, 1, 1))
    ds = CBEDDataset(dataset, np.arange(24), sym, cache_chunks=2)
    for k in (0, 8, 16, 0):  # chunks of 4 patterns (2 runs x 2 thicknesses)
        ds[k]
    assert sorted(ds._cache["patterns"]) == [0, 16]  # the least recently used chunk (8) went


def test_random_split_keeps_runs_together(dataset):
    import zarr

    lab = zarr.open_group(str(dataset), mode="r")["labels"]
    labels = {k: lab[k][:] for k in ("run_index", "structure_id", "thickness_A")}
    valid = np.ones(len(labels["run_index"]), dtype=bool)
    tr, va, te = split_indices(labels, valid, "random", 0.25, 0.25, seed=3)
    runs = labels["run_index"]
    assert not (set(runs[tr]) & set(runs[va])) and not (set(runs[tr]) & set(runs[te]))
    assert len(tr) + len(va) + len(te) == len(valid)


def test_holdout_splits(dataset):
    dm = CBEDDataModule(str(dataset), split={"method": "structure", "holdout_val": ["Cu"]})
    dm.setup()
    assert all(dm._sets["val"][i]["phase"].item() == 1 for i in range(len(dm._sets["val"])))
    assert all(dm._sets["train"][i]["phase"].item() == 0 for i in range(len(dm._sets["train"])))
    dm = CBEDDataModule(str(dataset), split={"method": "thickness", "holdout_test": [[4.0, 6.0]]})
    dm.setup()
    assert all(abs(dm._sets["test"][i]["thickness_nm"].item() - 5.0) < 1.0 for i in range(len(dm._sets["test"])))
    assert all(dm._sets["train"][i]["thickness_nm"].item() < 4.0 for i in range(len(dm._sets["train"])))
    dm = CBEDDataModule(str(dataset), split={"method": "orientation", "holdout_val": ["[111]"], "max_angle_deg": 15.0})
    dm.setup()
    from stemforge.sim.orientations import proper_point_group
    from stemforge.sim.structures import load_structure

    for i in range(len(dm._sets["val"])):
        s = dm._sets["val"][i]
        st = load_structure(["Si", "Cu"][s["phase"].item()])
        beam = s["rotation"].numpy()[2]
        d = np.array([1.0, 1.0, 1.0]) @ st.lattice.matrix
        dirs = proper_point_group(st) @ (d / np.linalg.norm(d))
        assert np.abs(dirs @ beam).max() >= np.cos(np.radians(15.0)) - 1e-6
    with pytest.raises(ValueError, match="not in the dataset"):
        CBEDDataModule(str(dataset), split={"method": "structure", "holdout_val": ["Au"]}).setup()


def test_augmentation_moves_peaks_and_is_seeded(dataset):
    from stemforge.augment import load_preset

    pipe = load_preset("crystal4d", seed=7)
    dm = CBEDDataModule(
        str(dataset), batch_size=2, augment=pipe, split={"method": "random", "val_fraction": 0.0, "test_fraction": 0.0}
    )
    dm.setup()
    ds = dm._sets["train"]
    a = ds[0]
    pipe2 = load_preset("crystal4d", seed=7)
    dm2 = CBEDDataModule(str(dataset), batch_size=2, augment=pipe2, split=dm.split)
    dm2.setup()
    b = dm2._sets["train"][0]
    assert torch.equal(a["pattern"], b["pattern"])
    plain = CBEDDataModule(str(dataset), split=dm.split)
    plain.setup()
    c = plain._sets["train"][0]
    assert not torch.equal(a["pattern"], c["pattern"])
    # label maps were moved with the pattern: disk-map maxima sit on the (moved) peaks
    peaks = a["peaks"][~torch.isnan(a["peaks"][:, 0])]
    dm_ = a["disk_map"][0]
    inside = [(x, y) for x, y in peaks.tolist() if 1 <= x < 31 and 1 <= y < 31]
    for x, y in inside[:8]:
        assert dm_[int(round(y)), int(round(x))] > 0.4


def test_normalise():
    pattern = np.full((4, 4), 2.0)
    probe = np.zeros((4, 4))
    probe[1, 1] = 4.0
    p, q = normalise(pattern, probe, "probe_max", 1.0)
    assert p.max() == 0.5 and q.max() == 1.0
    p, q = normalise(pattern, probe, "probe_max", 0.5)
    assert np.isclose(p.max(), np.sqrt(0.5))
    with pytest.raises(ValueError):
        normalise(pattern, np.zeros((4, 4)), "probe_max")
    with pytest.raises(ValueError):
        normalise(pattern, probe, "log")


def test_peaks_are_the_reflections_present_at_the_drawn_dose(dataset):
    import zarr

    from stemforge.augment import build_pipeline
    from stemforge.sim.labels import present

    lab = zarr.open_group(str(dataset), mode="r")["labels"]
    counts = {}
    for dose in (1e2, 1e6):
        pipe = build_pipeline(dose_e_per_pattern=[dose, dose], seed=0, label_keys=["vg_map", "disk_map"])
        dm = CBEDDataModule(
            str(dataset), augment=pipe, split={"method": "random", "val_fraction": 0.0, "test_fraction": 0.0}
        )
        dm.setup()
        ds = dm._sets["train"]
        n = 0
        for k in range(len(ds)):
            s = ds[k]
            i = int(s["index"])
            assert np.isclose(float(s["dose_e"]), dose, rtol=1e-6)
            want = present(lab["reflections_intensity"][i], lab["reflections_background"][i], dose)
            got = int(torch.isfinite(s["peaks"][:, 0]).sum())
            assert got == min(int(want.sum()), 128)
            n += got
        counts[dose] = n
    assert counts[1e2] < counts[1e6]
    plain = CBEDDataModule(str(dataset), split={"method": "random", "val_fraction": 0.0, "test_fraction": 0.0})
    plain.setup()
    assert np.isnan(float(plain._sets["train"][0]["dose_e"]))  # no shot noise: the stored reference-dose flag


def test_validation_subset_is_spread_and_seeded_per_pattern(dataset):
    from stemforge.augment import load_preset
    from stemforge.datamodules.datamodule import spread_subset

    idx = spread_subset(np.arange(100, 400), 64, 20)
    assert len(idx) <= 20 and len(np.unique(idx // 64)) == 6  # every chunk touched: 100..399 spans chunks 1-6
    assert np.array_equal(spread_subset(np.arange(10), 64, 20), np.arange(10))
    dm = CBEDDataModule(
        str(dataset),
        augment=load_preset("corpus"),
        augment_val=True,
        max_val_patterns=4,
        split={"method": "random", "val_fraction": 0.5, "test_fraction": 0.0},
    )
    dm.setup()
    val = dm._sets["val"]
    assert len(val) <= 4
    a, b = val[0], val[0]
    assert torch.equal(a["pattern"], b["pattern"]) and float(a["dose_e"]) == float(b["dose_e"])  # same noise each pass
    train = dm._sets["train"]
    assert not torch.equal(train[0]["pattern"], train[0]["pattern"])  # training draws anew


def test_random_split_keeps_specimen_groups_together():
    runs = np.repeat(np.arange(40), 3)  # 40 runs x 3 thicknesses
    labels = {"run_index": runs, "structure_id": np.zeros_like(runs), "thickness_A": np.tile([1.0, 2.0, 3.0], 40)}
    valid = np.ones(len(runs), dtype=bool)
    tr, va, te = split_indices(labels, valid, "random", 0.25, 0.25, seed=1, group_runs=4)
    groups = runs // 4
    assert not (set(groups[tr]) & set(groups[va])) and not (set(groups[va]) & set(groups[te]))
    assert len(tr) + len(va) + len(te) == len(runs) and len(va) > 0
    with pytest.raises(ValueError, match="group_runs"):
        split_indices(labels, valid, "random", group_runs=0)


def test_pacbed_average_is_the_mean_of_one_group_at_one_thickness(dataset):
    import zarr

    from stemforge.datamodules.cbed import CBEDDataset
    from stemforge.datamodules.datamodule import _layout

    g = zarr.open_group(str(dataset), mode="r")
    T = len(g.attrs["config"]["sampling"]["thicknesses_nm"])
    assert _layout(g.attrs["config"]) == (1, T)  # the fixture's runs are groups of one
    n = g["patterns"].shape[0]
    sym = np.tile(np.eye(3, dtype=np.float32), (2, 24, 1, 1))
    norm = {"mode": "none", "power": 1.0}
    layout = (2, T)  # pretend pairs of runs share a specimen
    ds = CBEDDataset(dataset, np.arange(n), sym, normalisation=norm, sample_seed=0, average=2, layout=layout)
    i = T + 1  # run 1, thickness 1: its partner is run 0 at thickness 1
    assert ds.partners(i) == [i, 1]
    expected = (g["patterns"][i] + g["patterns"][1]) / 2
    got = ds[int(np.flatnonzero(ds.indices == i)[0])]["pattern"][0].numpy()
    assert np.allclose(got, expected, rtol=1e-5, atol=1e-7)
    # outside the split a partner is not used; unseeded samples draw 1..average patterns
    ds2 = CBEDDataset(dataset, [i], sym, normalisation=norm, average=2, layout=layout)
    assert ds2.partners(i) == [i] and np.allclose(ds2[0]["pattern"][0].numpy(), g["patterns"][i])
    with pytest.raises(ValueError, match="layout"):
        CBEDDataset(dataset, [i], sym, average=2)
