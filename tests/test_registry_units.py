"""Registry units without a trained model: names and versions, index validation, safe building, preprocessing,
cards of every task family, fsspec (memory://) stores, the store lock and cache-folder selection."""

import json
import threading
import time

import numpy as np
import pytest
import torch

from stemforge import registry
from stemforge.registry.card import build_card, dataset_fingerprint
from stemforge.registry.errors import (
    IntegrityError,
    InvalidNameError,
    LockTimeoutError,
    ReadOnlyStoreError,
    RegistryError,
    UnsafeModelError,
    VersionExistsError,
)
from stemforge.registry.loading import Preprocessor, build_net, check_net_config
from stemforge.registry.naming import SemVer, latest_version, parse_ref, validate_relpath
from stemforge.registry.store import Store, check_index

BAD_NAMES = [
    "../evil",
    "..",
    "a/b",
    "a\\b",
    "Bragg",
    "bragg unet",
    "",
    "-lead",
    ".hidden",
    "a.b",
    "x" * 65,
    "name\n",
    "%2e%2e",
]
BAD_VERSIONS = ["1.0", "v1.0.0", "01.0.0", "1.0.0+build.1", "1.0.0-", "1.0.0/../..", "latest", "1.0.0-rc..1", ""]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_refused(name):
    with pytest.raises(InvalidNameError, match="invalid model name"):
        registry.validate_name(name)
    with pytest.raises(InvalidNameError):
        parse_ref(f"{name}:1.0.0")


@pytest.mark.parametrize("version", BAD_VERSIONS)
def test_bad_versions_refused(version):
    with pytest.raises(InvalidNameError, match="version"):
        registry.validate_version(version)


def test_good_names_refs_and_semver_order():
    assert parse_ref("bragg-unet") == ("bragg-unet", "latest")
    assert parse_ref("bragg-unet:stable") == ("bragg-unet", "stable")
    assert parse_ref("bragg_unet2:1.2.3-rc.1") == ("bragg_unet2", "1.2.3-rc.1")
    assert parse_ref("bragg-unet", version="1.0.0") == ("bragg-unet", "1.0.0")
    with pytest.raises(InvalidNameError, match="contradicts"):
        parse_ref("bragg-unet:1.0.0", version="2.0.0")
    with pytest.raises(InvalidNameError):
        parse_ref("bragg-unet:../../etc")
    with pytest.raises(InvalidNameError):
        parse_ref("bragg-unet:")
    order = [
        "0.9.9",
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.2.0",
        "1.10.0",
        "10.0.0",
    ]
    assert sorted(reversed(order), key=SemVer) == order
    assert latest_version(["1.0.0", "1.10.0", "2.0.0-rc.1"]) == "1.10.0"  # releases win over pre-releases
    assert latest_version(["2.0.0-rc.1", "2.0.0-rc.2"]) == "2.0.0-rc.2"
    for bad in ["../x", "/abs", "a/../b", "a//b", "http://x/y", "a/.b", "c:\\x"]:
        with pytest.raises(InvalidNameError):
            validate_relpath(bad)


def _index(files=None, aliases=None, name="m"):
    rec = {"path": f"{name}/1.0.0/card.json", "sha256": "a" * 64, "size": 1}
    files = files or {"card.json": rec, "model.safetensors": {**rec, "path": f"{name}/1.0.0/model.safetensors"}}
    return {
        "format": "stemforge-registry",
        "format_version": 1,
        "models": {name: {"versions": {"1.0.0": {"files": files}}, "aliases": aliases or {}}},
    }


def test_malicious_index_refused():
    check_index(_index(), "x")
    rec = {"sha256": "a" * 64, "size": 1}
    cases = [
        _index(name="../x"),
        _index(files={"card.json": {**rec, "path": "../../../etc/passwd"}, "model.safetensors": {**rec, "path": "a"}}),
        _index(files={"card.json": {**rec, "path": "/etc/passwd"}, "model.safetensors": {**rec, "path": "a"}}),
        _index(
            files={"card.json": {"path": "a", "sha256": "z" * 64, "size": 1}, "model.safetensors": {**rec, "path": "a"}}
        ),
        _index(files={"card.json": {**rec, "path": "a"}}),
        _index(
            files={
                "card.json": {**rec, "path": "a"},
                "model.safetensors": {**rec, "path": "b"},
                "evil.pkl": {**rec, "path": "c"},
            }
        ),
        _index(aliases={"stable": "9.9.9"}),
        _index(aliases={"../x": "1.0.0"}),
        {"models": []},
    ]
    for case in cases:
        with pytest.raises(RegistryError, match="malformed"):
            check_index(case, "x")


@pytest.mark.parametrize(
    "target",
    [
        "os.system",
        "builtins.eval",
        "stemforge.networks.fcunet.torch.load",
        "stemforge.networks.layers.np.load",
        "torch.nn.Linear",
        "stemforge.networks.training.train",
        "stemforge.networks.peaks.find_peaks",
        "networks..UNet",
        "networksx.UNet",
    ],
)
def test_unsafe_targets_refused(target):
    with pytest.raises(UnsafeModelError, match="refusing"):
        build_net({"_target_": target})


def test_unsafe_config_keys_refused():
    ok = {"_target_": "stemforge.networks.unet.UNet", "depth": 2, "base_filters": 4}
    check_net_config(ok)
    assert isinstance(build_net(ok), torch.nn.Module)
    for bad in [
        {**ok, "_partial_": True},
        {**ok, "depth": "${oc.env:HOME}"},
        {**ok, "extra": {"_target_": "os.getcwd"}},
        {**ok, "xs": [{"_target_": "subprocess.run"}]},
    ]:
        with pytest.raises(UnsafeModelError):
            check_net_config(bad)


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_preprocess_matches_training_normalisation(power):
    from stemforge.datamodules import normalise

    rng = np.random.default_rng(0)
    pattern, probe = rng.random((2, 16, 16)) * 50, rng.random((2, 16, 16)) * 30
    pre = Preprocessor({"shape": [16, 16], "normalisation": {"mode": "probe_max", "power": power}})
    p, q = pre(pattern, probe)
    assert p.shape == q.shape == (2, 1, 16, 16) and p.dtype == torch.float32
    for i in range(2):
        ep, eq = normalise(pattern[i], probe[i], mode="probe_max", power=power)
        np.testing.assert_allclose(p[i, 0].numpy(), ep, rtol=1e-5)
        np.testing.assert_allclose(q[i, 0].numpy(), eq, rtol=1e-5)
    p1, q1 = pre(pattern, probe[0])  # one probe for a batch
    assert q1.shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="trained on"):
        pre(np.ones((8, 8)), np.ones((8, 8)))
    with pytest.raises(ValueError, match="no positive pixel"):
        pre(np.ones((16, 16)), np.zeros((16, 16)))


def _fake_checkpoint(module: str, net_cfg: dict, structures=("Si", "Cu")) -> dict:
    """A checkpoint as scripts/train.py writes it (same keys), with a freshly built network's weights."""
    auto = {"num_phases": len(structures), "image_size": 32}
    cfg = {k: (auto[k] if v == "auto" else v) for k, v in net_cfg.items()}
    net = build_net(cfg)
    return {
        "epoch": 1,
        "global_step": 10,
        "pytorch-lightning_version": "2.6.6",
        "state_dict": {**{f"net.{k}": v for k, v in net.state_dict().items()}, "val_metric.total": torch.tensor(3)},
        "hyper_parameters": {"loss": "l1", "optimizer_spec": "torch.optim.adam.Adam(lr=0.001)"},
        "stemforge": {
            "task": module.lower(),
            "model_config": {"_target_": f"stemforge.networks.modules.{module}", "net": net_cfg},
            "input": {
                "shape": [32, 32],
                "pixel_size_inv_A": 0.06,
                "normalisation": {"mode": "probe_max", "power": 1.0},
                "probe_convention": "vacuum probe",
                "energy_eV": [2e5, 3e5],
                "semiangle_mrad": [1.5, 3.0],
            },
            "structures": list(structures),
            "split": {"method": "random", "sizes": [8, 4, 4]},
            "dataset_config": {"sampling": {"thicknesses_nm": [2.0, 5.0], "blob_sigma_px": 1.0}},
            "dataset_versions": {"stemforge": "0.1.0"},
            "augment": None,
        },
    }


PROPERTY = {"width": 4, "num_stages": 2, "blocks_per_stage": 1, "hidden": 8}
FAMILIES = [
    ("PhaseModule", {"_target_": "stemforge.networks.property.PhaseNet", "num_phases": "auto", **PROPERTY}, (2, 2)),
    ("ThicknessModule", {"_target_": "stemforge.networks.property.ThicknessNet", **PROPERTY}, (2,)),
    ("OrientationModule", {"_target_": "stemforge.networks.property.OrientationNet", **PROPERTY}, (2, 3, 3)),
    (
        "BraggMapModule",
        {"_target_": "stemforge.networks.fcunet.FCUNet", "image_size": "auto", "depth": 2, "base_filters": 2},
        (2, 1, 32, 32),
    ),
]


@pytest.mark.parametrize("module,net_cfg,out_shape", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_every_family_publishes_to_fsspec_store_and_loads(module, net_cfg, out_shape, tmp_path):
    """memory:// exercises the fsspec store (exclusive lock, object writes) and pooch's fsspec downloader."""
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save(_fake_checkpoint(module, net_cfg), ckpt)
    store = f"memory://stemforge-{module.lower()}-{time.time_ns()}"
    name = f"{module.lower()[:-6]}-net"
    result = registry.publish(ckpt, name, "0.1.0", store=store, aliases=["stable"], wandb=False)
    card = result["card"]
    assert (
        card["task_family"]
        == {
            "PhaseModule": "phase",
            "ThicknessModule": "thickness",
            "OrientationModule": "orientation",
            "BraggMapModule": "bragg",
        }[module]
    )
    assert card["training"]["dataset_fingerprint"].startswith("sha256:")
    assert card["architecture"]["num_parameters"] > 0 and "auto" not in json.dumps(card["architecture"]["net"])
    if module == "PhaseModule":
        assert card["labels"]["class_names"] == ["Si", "Cu"] and card["architecture"]["net"]["num_phases"] == 2
    if module == "BraggMapModule":
        assert card["architecture"]["net"]["image_size"] == 32
    if module == "ThicknessModule":
        assert card["labels"]["unit"] == "nm" and card["labels"]["trained_range_nm"] == [2.0, 5.0]
    if module == "OrientationModule":
        assert "crystal->lab" in card["labels"]["definition"]
    assert card["metrics"] == {"test": {}, "validation": {}, "source": None}  # no metrics.json in this run
    model = registry.load(f"{name}:stable", store=store, cache=tmp_path / "cache")
    assert not model.net.training and model.card["version"] == "0.1.0"
    rng = np.random.default_rng(1)
    out = model(rng.random((2, 32, 32)), rng.random((2, 32, 32)) + 0.1)
    assert tuple(out.shape) == out_shape and torch.isfinite(out).all()
    with pytest.raises(VersionExistsError):
        registry.publish(ckpt, name, "0.1.0", store=store, wandb=False)


def test_dataset_fingerprint_is_canonical():
    a = dataset_fingerprint({"b": 1, "a": [1.0, 2]}, {"abtem": "1.0.11"})
    assert a == dataset_fingerprint({"a": [1.0, 2], "b": 1}, {"abtem": "1.0.11"})
    assert a != dataset_fingerprint({"b": 2, "a": [1.0, 2]}, {"abtem": "1.0.11"})
    assert a != dataset_fingerprint({"b": 1, "a": [1.0, 2]}, {"abtem": "1.0.12"})


def test_card_refuses_checkpoint_without_net_target():
    ckpt = _fake_checkpoint("ThicknessModule", {"_target_": "stemforge.networks.property.ThicknessNet", **PROPERTY})
    del ckpt["stemforge"]["model_config"]["net"]
    with pytest.raises(RegistryError, match="no 'net'"):
        build_card(ckpt, "x", "1.0.0")


def _files(tmp_path, tag=b""):
    w, c = tmp_path / f"w{tag.decode()}", tmp_path / f"c{tag.decode()}"
    w.write_bytes(b"weights" + tag)
    c.write_bytes(b"{}" + tag)
    return {"model.safetensors": w, "card.json": c}


def test_lock_blocks_a_second_publisher_until_released(tmp_path):
    store = Store(tmp_path / "store")
    done = {}

    def second():
        store.add_version("m", "2.0.0", _files(tmp_path, b"2"))
        done["t"] = time.monotonic()

    with store.lock("test"):
        assert (tmp_path / "store" / "index.lock").exists()
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.6)
        assert "t" not in done  # waiting for the lock
        released = time.monotonic()
    thread.join(10)
    assert done["t"] >= released and not (tmp_path / "store" / "index.lock").exists()
    assert "2.0.0" in store.read_index()["models"]["m"]["versions"]


def test_lock_timeout_names_the_holder(tmp_path):
    holder = Store(tmp_path / "store")
    waiter = Store(tmp_path / "store", lock_timeout=0.3)
    with holder.lock("publish m 1.0.0"):
        with pytest.raises(LockTimeoutError, match=r"locked \(publish m 1.0.0 by pid \d+.*delete .*index.lock"):
            waiter.add_version("m", "1.0.0", _files(tmp_path))
    (tmp_path / "store" / "index.lock").write_text(
        json.dumps(
            {"pid": 2**22 + 12345, "host": __import__("socket").gethostname(), "what": "publish", "since": "then"}
        )
    )
    with pytest.raises(LockTimeoutError, match="no longer running"):
        waiter.add_version("m", "1.0.0", _files(tmp_path))


def test_http_store_is_read_only_and_aliases_validated(tmp_path):
    with pytest.raises(ReadOnlyStoreError, match="read-only"):
        Store("http://127.0.0.1:9/models").add_version("m", "1.0.0", _files(tmp_path))
    store = Store(tmp_path / "s")
    store.add_version("m", "1.0.0", _files(tmp_path), aliases=["stable"])
    with pytest.raises(InvalidNameError, match="latest"):
        store.set_alias("m", "latest", "1.0.0")
    with pytest.raises(registry.NotFoundError, match="versions: 1.0.0"):
        store.set_alias("m", "stable", "3.0.0")
    with pytest.raises(InvalidNameError):
        store.set_alias("m", "../x", "1.0.0")
    with pytest.raises(InvalidNameError):
        store.add_version("m", "1.0.1", _files(tmp_path), aliases=["latest"])


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("STEMFORGE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert registry.cache_dir() == tmp_path / "xdg" / "stemforge"
    monkeypatch.setenv("STEMFORGE_CACHE", str(tmp_path / "sf"))
    assert registry.cache_dir() == tmp_path / "sf"
    assert registry.cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("STEMFORGE_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert registry.default_store_url() == str(tmp_path / "data" / "stemforge" / "registry")


def test_weights_must_fit_the_architecture(tmp_path):
    from safetensors.torch import save_file

    from stemforge.registry.loading import load_weights

    net = build_net({"_target_": "stemforge.networks.unet.UNet", "depth": 2, "base_filters": 4})
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    sd.pop(next(iter(sd)))
    save_file(sd, str(tmp_path / "w.safetensors"))
    with pytest.raises(IntegrityError, match="do not fit"):
        load_weights(net, tmp_path / "w.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(IntegrityError, match="not a valid safetensors"):
        load_weights(net, tmp_path / "junk.safetensors")


def test_local_store_with_spaces_by_path_and_file_url(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    torch.save(
        _fake_checkpoint("ThicknessModule", {"_target_": "stemforge.networks.property.ThicknessNet", **PROPERTY}), ckpt
    )
    store = tmp_path / "my store"
    registry.publish(ckpt, "thick", "1.0.0", store=str(store), wandb=False)
    assert registry.list_models(store.as_uri())["thick"]["versions"] == ["1.0.0"]
    by_path = registry.pull("thick:1.0.0", store=str(store), cache=tmp_path / "c1")
    by_url = registry.pull("thick", store=store.as_uri(), cache=tmp_path / "c2")  # file:///.../my%20store
    assert by_path.records == by_url.records and by_url.version == "1.0.0"
