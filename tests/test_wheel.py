"""The wheel: one top-level package with its configs and pretrained model as package data, console scripts, and
Hydra configs composed from the installed package (not from this checkout), a user's config folder beside them."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_TOP_LEVEL_OUTPUTS = {".git", "data", "build", "dist", "logs", "outputs", "multirun", ".pytest_cache"}


def _ignore(folder: str, names: list[str]) -> set[str]:
    """Build outputs, caches and (at the top level only) datasets and run folders are not copied."""
    skip = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
    return skip | (_TOP_LEVEL_OUTPUTS & set(names) if Path(folder) == ROOT else set())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel`` of a copy of this checkout (so the build leaves nothing in the working tree)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_ignore)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (found,) = tmp.glob("stemforge-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed without dependencies into a temporary target folder."""
    target = tmp_path_factory.mktemp("target")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return target


def run_installed(target: Path, cwd: Path, *args, **kw):
    """Python with the installed wheel first on the path, in an empty folder (this checkout is not importable)."""
    env = {k: v for k, v in os.environ.items() if k != "STEMFORGE_STORE"}
    env["PYTHONPATH"] = str(target)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, **kw)


def test_wheel_holds_one_package_with_configs_and_the_shipped_model(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"stemforge", wheel.name.split("-py")[0] + ".dist-info"}
    shipped = {str(p.relative_to(ROOT)) for p in (ROOT / "stemforge" / "conf").rglob("*.yaml")}
    assert shipped and shipped <= set(names)
    assert "stemforge/conf/__init__.py" in names and "stemforge/core/calibration.py" in names
    assert "stemforge/registry/pretrained/bragg-fcunet/2.0.0/model.safetensors" in names
    assert "stemforge/sim/data/structures.json" in names
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for app in ("simulate", "train", "publish", "analyze", "pipeline", "registry"):
        assert f"stemforge-{app} = " in entry


def test_configs_compose_from_the_installed_package(installed, tmp_path):
    code = """
import json
import stemforge, stemforge.conf
from hydra import compose, initialize_config_module
from stemforge.sim.config import register_configs, validate

register_configs()
with initialize_config_module(config_module="stemforge.conf", version_base="1.3"):
    sim = compose(config_name="simulate", overrides=["structure=si", "detector.pixel_size_inv_A=0.02"])
    validate(sim)
    train = compose(config_name="train", overrides=["experiment=bragg_fcunet", "augment=crystal4d"])
print(json.dumps({"file": stemforge.__file__, "conf": str(stemforge.conf.CONF_DIR),
                  "pixel": sim.detector.pixel_size_inv_A, "names": list(sim.structure.names),
                  "model": train.model._target_, "net": train.model.net._target_,
                  "augment": train.augment._target_, "data": train.data._target_}))
"""
    proc = run_installed(installed, tmp_path, "-c", code, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(installed)) and out["conf"].startswith(str(installed))
    assert out["pixel"] == 0.02 and out["names"] == ["Si"]
    assert out["model"] == "stemforge.networks.modules.BraggMapModule"
    assert out["net"] == "stemforge.networks.fcunet.FCUNet"
    assert out["augment"] == "stemforge.augment.build_pipeline" and out["data"].startswith("stemforge.datamodules.")


def test_installed_app_adds_a_users_config_folder(installed, tmp_path):
    """``--config-dir PATH``: a user's group file (here a model preset built on the shipped one) is selected like
    a shipped one by the installed app."""
    user = tmp_path / "my_conf"
    (user / "model").mkdir(parents=True)
    (user / "model" / "small_unet.yaml").write_text("defaults:\n  - bragg_unet\n  - _self_\nnet:\n  depth: 2\n")
    proc = run_installed(
        installed,
        tmp_path,
        "-m",
        "stemforge.cli.train",
        "--config-dir",
        str(user),
        "model=small_unet",
        "--cfg",
        "job",
        "--resolve",
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "_target_: stemforge.networks.unet.UNet" in proc.stdout and "depth: 2" in proc.stdout
