"""One namespace: stemforge installs nothing at top level, a user's own ``analysis.py`` or ``networks/`` beside a
notebook shadows nothing, and what stemforge 0.1 wrote (datasets, scans, checkpoints, the shipped 2.0.0 card) still
opens with today's names (files in tests/data/legacy_0.1, see its README)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
LEGACY = ROOT / "tests" / "data" / "legacy_0.1"
STAGES = ("sim", "augment", "datamodules", "networks", "registry", "analysis")


def isolated_env(tmp_path: Path) -> dict:
    """No store or cache of the user's: a fresh XDG store (seeded with the shipped model) and cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("STEMFORGE_STORE", "PYTHONPATH")}
    env.update(XDG_DATA_HOME=str(tmp_path / "xdg"), STEMFORGE_CACHE=str(tmp_path / "cache"), WANDB_MODE="offline")
    return env


def test_nothing_squats_the_stage_names(tmp_path):
    code = (
        "import importlib.util, json, stemforge, stemforge.sim, stemforge.analysis, stemforge.registry\n"
        f"names = {[*STAGES, 'scripts']!r}\n"
        "specs = {n: importlib.util.find_spec(n) for n in names}\n"
        "print(json.dumps({'version': stemforge.__version__,\n"
        "    'found': {n: (s.origin or list(s.submodule_search_locations or [])) for n, s in specs.items() if s}}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=isolated_env(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["version"] == __import__("stemforge").__version__
    found = out["found"]
    assert not set(found) & set(STAGES), found
    # palettable 3.3.3 (a pymatgen dependency) installs a top-level scripts/ of its own; stemforge's is never
    # importable
    assert "scripts" not in found or str(ROOT) not in str(found["scripts"]), found


def test_a_users_analysis_and_networks_shadow_nothing(tmp_path):
    """A notebook folder with its own analysis.py and networks/ package: stemforge.analysis.load_model loads the
    shipped model (a card with the old class paths networks.…), and neither foreign module is ever imported."""
    work = tmp_path / "notebook"
    (work / "networks").mkdir(parents=True)
    marker = tmp_path / "imported.txt"
    trap = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\nraise RuntimeError('foreign module imported')\n"
    (work / "analysis.py").write_text(trap)
    (work / "networks" / "__init__.py").write_text(trap)
    (work / "networks" / "fcunet.py").write_text(trap)
    code = (
        "import stemforge.analysis\n"
        "m = stemforge.analysis.load_model('bragg-fcunet:stable')\n"
        "print(type(m.net).__module__, m.version, m.card['architecture']['net']['_target_'])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=work, capture_output=True, text=True, env=isolated_env(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["stemforge.networks.fcunet", "2.0.0", "stemforge.networks.fcunet.FCUNet"]
    assert not marker.exists()


def test_old_class_paths_are_refused_unless_a_card_is_upgraded():
    from stemforge.core.legacy import upgrade_class_path
    from stemforge.registry.errors import UnsafeModelError
    from stemforge.registry.loading import build_net

    old = {"_target_": "networks.unet.UNet", "depth": 2, "base_filters": 4}
    with pytest.raises(UnsafeModelError, match="only classes of the 'stemforge.networks' package"):
        build_net(old)
    net = build_net({**old, "_target_": upgrade_class_path(old["_target_"])})
    assert type(net).__module__ == "stemforge.networks.unet"
    assert upgrade_class_path("stemforge.networks.unet.UNet") == "stemforge.networks.unet.UNet"
    assert upgrade_class_path("torch.nn.Linear") == "torch.nn.Linear" and upgrade_class_path("networks") == "networks"


def test_the_shipped_card_keeps_its_bytes_and_reads_with_todays_names():
    from stemforge.registry.card import upgrade_card
    from stemforge.registry.index import sha256_file

    shipped = ROOT / "stemforge" / "registry" / "pretrained"
    card_path = shipped / "bragg-fcunet" / "2.0.0" / "card.json"
    index = json.loads((shipped / "index.json").read_text())
    record = index["models"]["bragg-fcunet"]["versions"]["2.0.0"]["files"]["card.json"]
    assert sha256_file(card_path) == (record["sha256"], record["size"])  # published bytes, unchanged
    raw = json.loads(card_path.read_text())
    assert raw["architecture"]["module"] == "networks.modules.BraggMapModule"  # written before the move
    card = upgrade_card(raw)
    assert raw["architecture"]["module"] == "networks.modules.BraggMapModule"  # the input is left alone
    assert card["architecture"]["module"] == "stemforge.networks.modules.BraggMapModule"
    assert card["architecture"]["net"]["_target_"] == card["architecture"]["net_class"]
    assert card["architecture"]["net_class"] == "stemforge.networks.fcunet.FCUNet"
    detector = card["training"]["dataset_config"]["detector"]
    assert detector["_target_"] == "stemforge.sim.detector.Detector" and detector["pixel_size_inv_A"] == 0.03
    assert (
        "pixel_size" not in detector and card["training"]["augment"]["_target_"] == "stemforge.augment.build_pipeline"
    )
    assert card["input"]["pixel_size_inv_A"] == 0.03


def test_an_old_dataset_opens_and_trains_but_is_not_resumed(tmp_path):
    """A dataset written by stemforge 0.1 (calibration.pixel_size, detector.pixel_size, sim.detector.Detector):
    read with today's names and loaded by the data module (its peaks from the kinematic flag: it has no present
    reflections). Today's simulate with the same settings refuses to resume it in one line (its arrays lack the
    present-reflection labels) and changes nothing in it."""
    from stemforge.datamodules import CBEDDataModule
    from stemforge.sim.dataset import dataset_attrs, open_dataset

    path = tmp_path / "old.zarr"
    shutil.copytree(LEGACY / "dataset_v0.1.zarr", path)
    group, valid = open_dataset(path)
    attrs = dataset_attrs(group)
    assert valid.all() and attrs["calibration"]["pixel_size_inv_A"] == 0.06
    assert attrs["calibration"]["origin_px"] == [16, 16] and "pixel_size" not in attrs["calibration"]
    assert attrs["config"]["detector"] == {
        "_target_": "stemforge.sim.detector.Detector",
        "shape": [32, 32],
        "pixel_size_inv_A": 0.06,
        "supersample": 4,
    }
    dm = CBEDDataModule(
        str(path), batch_size=2, num_workers=0, split={"method": "random", "val_fraction": 0.25, "test_fraction": 0.25}
    )
    dm.setup()
    assert dm.info["pixel_size_inv_A"] == 0.06 and dm.info["calibration"]["pixel_size_inv_A"] == 0.06
    batch = next(iter(dm.train_dataloader()))
    assert batch["pattern"].shape[-2:] == (32, 32) and np.isfinite(batch["peaks"].numpy()).any()
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "simulate.py"),
            "structure.names=[Si]",
            "sampling=fast",
            "sampling.thicknesses_nm=[1.0,2.0]",
            "sampling.slice_thickness_A=4.0",
            "detector.shape=[32,32]",
            "detector.pixel_size_inv_A=0.06",
            "dataset.num_patterns=8",
            "dataset.chunk_runs=2",
            "orientation.random_fraction=0",
            f"dataset.path={path}",
            "dataset.progress=false",
            f"hydra.run.dir={tmp_path / 'h'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "written by an earlier stemforge without labels/" in lines[0]
    assert "not resumed" in lines[0] and "another dataset.path" in lines[0]
    assert before == {p: p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


def test_an_old_scan_opens_with_its_calibration():
    from stemforge import analysis
    from stemforge.sim.synthetic_scan import scan_summary

    cube = analysis.load(LEGACY / "scan_v0.1.zarr")  # calibration.q_pixel_size
    assert cube.calibration.pixel_size_inv_A == 0.06 and cube.calibration.energy_eV == 300e3
    assert cube.calibration.origin_px == (16.0, 16.0) and cube.scan_shape == (2, 2)
    assert "0.06 Å⁻¹/px" in scan_summary(LEGACY / "scan_v0.1.zarr")


def test_an_old_checkpoint_publishes_with_todays_class_paths(tmp_path):
    """A checkpoint trained by stemforge 0.1 (its model config names networks.…): publishing writes a card on the
    final stemforge.* paths, which the loader builds and runs."""
    from stemforge import registry

    run = tmp_path / "run"
    shutil.copytree(LEGACY / "bragg_unet_run", run)
    store = tmp_path / "store"
    registry.publish(run / "checkpoints" / "last.ckpt", "old-unet", "1.0.0", store=str(store), wandb=False)
    card = json.loads((store / "old-unet" / "1.0.0" / "card.json").read_text())
    assert card["architecture"]["module"] == "stemforge.networks.modules.BraggMapModule"
    assert card["architecture"]["net"]["_target_"] == "stemforge.networks.unet.UNet"
    text = json.dumps(card)
    assert '"networks.' not in text and '"sim.' not in text and '"augment.' not in text
    assert card["training"]["dataset_config"]["detector"]["pixel_size_inv_A"] == 0.06
    model = registry.load("old-unet:1.0.0", store=str(store), cache=tmp_path / "cache")
    x = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    assert np.isfinite(model(x, x + 1.0).numpy()).all()
