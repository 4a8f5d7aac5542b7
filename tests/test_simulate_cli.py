"""scripts/simulate.py end to end: bad input, resume, determinism, kill -9 safety, sweeps, config composition."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "simulate.py"
TINY = [
    "structure=si",
    "sampling=fast",
    "detector.shape=[64,64]",
    "orientation.mistilt_max_mrad=0.5",
    "dataset.progress=false",
]


def run(args, cwd, check=True):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def chunk_files(path: Path) -> dict:
    """Every stored chunk file's bytes, keyed by relative path (metadata excluded)."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    }


@pytest.mark.parametrize(
    "override, message",
    [
        ("optics.energy=-1", "optics.energy"),
        ("sampling.thicknesses_nm=[-5]", "thicknesses_nm"),
        ("detector.pixel_size_inv_A=0.2", "antialiasing limit"),
        ("structure.names=[Unobtainium]", "Unobtainium"),
        ("optics.semiangle_mrad={min:3,max:1}", "min"),
    ],
)
def test_bad_input_is_refused_before_compute(tmp_path, override, message):
    out = tmp_path / "out.zarr"
    proc = run([*TINY, override, f"dataset.path={out}"], cwd=tmp_path, check=False)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
    assert not out.exists()


def test_malformed_cif_is_refused(tmp_path):
    bad = tmp_path / "broken.cif"
    bad.write_text("data_broken\n_cell_length_a 5.4\nthis is not a CIF loop\n")
    out = tmp_path / "out.zarr"
    proc = run([*TINY, f"structure.names=[{bad}]", f"dataset.path={out}"], cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "broken.cif" in proc.stderr and not out.exists()
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A complete 6-pattern dataset (3 runs × 2 thicknesses, one run per chunk)."""
    tmp = tmp_path_factory.mktemp("ref")
    out = tmp / "ref.zarr"
    run([*TINY, f"dataset.path={out}", "dataset.num_patterns=6", "dataset.chunk_runs=1"], cwd=tmp)
    return out


def test_dataset_layout(reference):
    import zarr

    from stemforge.sim.dataset import open_dataset

    g, valid = open_dataset(reference, require_complete=True)
    assert valid.all() and g.attrs["status"] == "complete"
    assert g["patterns"].shape == (6, 64, 64) and g["patterns"].dtype == np.float32
    assert g["probes"].shape == (6, 64, 64)
    for key in ("config", "versions", "calibration", "seed", "created"):
        assert key in g.attrs
    assert g.attrs["versions"]["abtem"].startswith("1.0")
    labels = g["labels"]
    assert isinstance(labels, zarr.Group)
    for name in (
        "structure_id",
        "formula",
        "space_group",
        "crystal_system",
        "rotation",
        "zone_axis",
        "zone",
        "mistilt_mrad",
        "thickness_A",
        "energy_eV",
        "semiangle_mrad",
        "defocus_A",
        "aberrations",
        "probe_position_A",
        "vg_map",
        "disk_map",
        "reflections_hkl",
        "reflections_px",
        "num_reflections",
    ):
        assert labels[name].shape[0] == 6, name
    p = g["patterns"][:]
    assert np.isfinite(p).all() and (p >= 0).all()
    assert np.all(p.sum(axis=(1, 2)) <= 1.0 + 1e-4) and np.all(p.sum(axis=(1, 2)) > 0.9)
    assert np.allclose(g["probes"][:].sum(axis=(1, 2)), 1.0, atol=1e-3)
    assert set(labels["formula"][:]) == {"Si"} and set(labels["space_group"][:]) == {227}
    # the disk map peaks on the reflections present at the reference dose, in every pattern (per thickness), and
    # the present flags follow from the stored disk intensities
    from stemforge.sim.labels import REFERENCE_DOSE_E, present

    for i in range(6):
        n = int(labels["num_reflections"][i])
        px = labels["reflections_px"][i][:n]
        shown = labels["reflections_present"][i][:n]
        inten, bg = labels["reflections_intensity"][i][:n], labels["reflections_background"][i][:n]
        assert shown.any() and np.array_equal(shown, present(inten, bg, REFERENCE_DOSE_E))
        assert (inten >= 0).all() and np.nansum(inten) <= p[i].sum() + 1e-6
        dm = labels["disk_map"][i]
        for x, y in px[shown]:
            assert dm[int(round(y)), int(round(x))] > 0.5
        for x, y in px[~shown]:  # an absent reflection is no target (unless a present one sits next to it)
            if np.hypot(*(px[shown] - (x, y)).T).min() > 4.0:
                assert dm[int(round(y)), int(round(x))] < 0.01
        assert labels["disk_core_px"][i] >= 1.0


def test_rerun_computes_nothing_new(reference):
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*") if p.is_file()}
    proc = run(
        [*TINY, f"dataset.path={reference}", "dataset.num_patterns=6", "dataset.chunk_runs=1"], cwd=reference.parent
    )
    assert "0 of 3 chunks to simulate" in proc.stdout + proc.stderr
    after = {p: p.stat().st_mtime_ns for p in reference.rglob("*") if p.is_file()}
    assert before == after


def test_changed_config_on_existing_path_is_refused(reference):
    proc = run(
        [*TINY, f"dataset.path={reference}", "dataset.num_patterns=6", "dataset.chunk_runs=1", "dataset.seed=5"],
        cwd=reference.parent,
        check=False,
    )
    assert proc.returncode != 0 and "different configuration" in proc.stderr


def test_same_config_and_seed_give_identical_bytes(reference, tmp_path):
    out = tmp_path / "again.zarr"
    run([*TINY, f"dataset.path={out}", "dataset.num_patterns=6", "dataset.chunk_runs=1"], cwd=tmp_path)
    assert chunk_files(out) == chunk_files(reference)


def test_kill_9_then_resume(reference, tmp_path):
    from stemforge.sim.dataset import open_dataset

    out = tmp_path / "killed.zarr"
    args = [sys.executable, str(SCRIPT), *TINY, f"dataset.path={out}", "dataset.num_patterns=6", "dataset.chunk_runs=1"]
    proc = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    marker = out / "chunk_complete" / "c" / "0"
    deadline = time.time() + 240
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    g, valid = open_dataset(out)
    ref_g, _ = open_dataset(reference)
    assert g.attrs["status"] == "incomplete" or valid.all()
    assert valid.any()
    pats = g["patterns"][:]
    # every sample that reads as complete is whole and equal to the uninterrupted run's
    assert np.array_equal(pats[valid], ref_g["patterns"][:][valid])
    # samples of unfinished chunks never look like data: their chunks are absent (NaN fill) or unmarked
    if (~valid).any():
        assert not np.asarray(g["chunk_complete"][:]).all()
    # the resume computes only the unfinished chunks: the finished ones' pattern files are not rewritten
    done = np.flatnonzero(np.asarray(g["chunk_complete"][:]))
    kept = {p: p.stat().st_mtime_ns for c in done for p in (out / "patterns" / "c" / str(c)).rglob("*") if p.is_file()}
    assert kept, "no pattern file of a finished chunk found"
    proc = run([*TINY, f"dataset.path={out}", "dataset.num_patterns=6", "dataset.chunk_runs=1"], cwd=tmp_path)
    assert f"{3 - len(done)} of 3 chunks to simulate" in proc.stdout + proc.stderr
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert chunk_files(out) == chunk_files(reference)


def test_multirun_sweep(tmp_path):
    run(
        [
            "-m",
            *TINY,
            "sampling.thicknesses_nm=[2.0]",
            "dataset.num_patterns=1",
            "dataset.seed=1,2",
            f"dataset.path={tmp_path}/sweep_" + "${dataset.seed}.zarr",
        ],
        cwd=tmp_path,
    )
    assert (tmp_path / "sweep_1.zarr").exists() and (tmp_path / "sweep_2.zarr").exists()


def test_compose_api_defaults_are_valid():
    from hydra import compose, initialize_config_module
    from hydra.errors import ConfigCompositionException

    from stemforge.sim.config import register_configs, validate

    register_configs()
    with initialize_config_module(config_module="stemforge.conf", version_base="1.3"):
        cfg = compose(config_name="simulate")
        validate(cfg)
        assert cfg.dataset.num_patterns >= 200 and len(cfg.structure.names) >= 4
        with pytest.raises(ConfigCompositionException):
            compose(config_name="simulate", overrides=["optics.not_a_key=1"])
        cfg2 = compose(config_name="simulate", overrides=["detector=256px", "structure=si"])
        assert list(cfg2.detector.shape) == [256, 256]


def test_compose_simulate_adds_a_users_config_folder(tmp_path):
    """compose_simulate(config_dir=...) searches a user's folder beside the shipped stemforge.conf."""
    from stemforge.sim.config import compose_simulate, validate

    (tmp_path / "detector").mkdir()
    (tmp_path / "detector" / "tiny.yaml").write_text(
        "_target_: stemforge.sim.detector.Detector\nshape: [48, 48]\npixel_size_inv_A: 0.05\nsupersample: 2\n"
    )
    cfg = compose_simulate("detector=tiny", "structure=si", config_dir=str(tmp_path))
    validate(cfg)
    assert list(cfg.detector.shape) == [48, 48] and cfg.detector.pixel_size_inv_A == 0.05
    assert list(compose_simulate("structure=si").detector.shape) == [128, 128]
