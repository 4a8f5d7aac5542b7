"""Registry end to end: a model trained by scripts/train.py is published to a file:// store, served over a
loopback HTTP server, pulled into an empty cache by a second process and run — and every corrupted variant of
it (tampered or truncated, in the store or in the cache) is refused. Also: offline cache loads, immutable
versions, alias moves, bad names, concurrent publishers, CLI exit codes with one-line errors, mirrors."""

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from stemforge import registry
from stemforge.registry.errors import IntegrityError, StoreUnreachableError, VersionExistsError

ROOT = Path(__file__).resolve().parents[1]
NAME = "bragg-unet"


def env(**extra):
    e = {**os.environ, "WANDB_MODE": "offline", "STEMFORGE_LOCK_TIMEOUT": "60"}
    e.pop("STEMFORGE_STORE", None)
    e.update({k: str(v) for k, v in extra.items()})
    return e


def run(args, cache=None, extra_env=None, **kw):
    """Run a python command (list of args) with the test environment; returns the CompletedProcess."""
    extra = {"STEMFORGE_CACHE": cache} if cache is not None else {}
    return subprocess.run(
        [sys.executable, *args],
        cwd=kw.pop("cwd", ROOT),
        capture_output=True,
        text=True,
        timeout=kw.pop("timeout", 120),
        env=env(**extra, **(extra_env or {})),
        **kw,
    )


def cli(*args, cache=None, extra_env=None):
    return run(["-m", "stemforge.registry", *map(str, args)], cache=cache, extra_env=extra_env)


def publish_script(*args):
    return run([str(ROOT / "scripts" / "publish.py"), *map(str, args)])


def one_error_line(proc, *needles):
    assert proc.returncode != 0, proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny dataset and a 2-step bragg_unet run of scripts/train.py: (checkpoint, dataset path)."""
    tmp = tmp_path_factory.mktemp("registry_train")
    data = tmp / "tiny.zarr"
    # 4 runs x 2 thin thicknesses: the fewest runs the 0.25/0.25 split accepts, and few multislice steps
    proc = run(
        [
            str(ROOT / "scripts" / "simulate.py"),
            "structure.names=[Si,Cu]",
            "sampling=fast",
            "sampling.thicknesses_nm=[1.0,2.0]",
            "sampling.slice_thickness_A=4.0",
            "detector.shape=[32,32]",
            "detector.pixel_size_inv_A=0.06",
            "dataset.num_patterns=8",
            "dataset.chunk_runs=2",
            f"dataset.path={data}",
            "dataset.progress=false",
        ],
        cwd=tmp,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp / "run"
    proc = run(
        [
            str(ROOT / "scripts" / "train.py"),
            "experiment=bragg_unet",
            f"data.path={data}",
            "trainer.max_steps=2",
            f"paths.output_dir={out}",
            "model.net.depth=3",
            "model.net.base_filters=4",
            "data.batch_size=4",
            "data.num_workers=0",
            "data.split.val_fraction=0.25",
            "data.split.test_fraction=0.25",
            "extras.print_config=false",
            "logger=csv",
            "callbacks.model_summary=null",
            "callbacks.progress_bar=null",
        ],
        cwd=tmp,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt.exists() and (out / "metrics.json").exists()
    return ckpt, data


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A loopback HTTP server on 127.0.0.1 serving a folder; yields (folder, base URL)."""
    root = tmp_path_factory.mktemp("served")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def published(trained, served):
    """scripts/publish.py (the acceptance interface) publishes 1.0.0 with alias stable to a file:// store."""
    ckpt, _ = trained
    root, base = served
    store = root / "store"
    proc = publish_script(f"ckpt={ckpt}", f"name={NAME}", "version=1.0.0", f"store={store.as_uri()}", "alias=stable")
    assert proc.returncode == 0, proc.stderr
    return {"store": store, "url": f"{base}/store", "stdout": proc.stdout, "stderr": proc.stderr}


def dead_url():
    """A loopback URL on which nothing listens."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/store"


def copy_store(published, served, tag):
    root, base = served
    shutil.copytree(published["store"], root / tag)
    return root / tag, f"{base}/{tag}"


def flip_byte(path: Path, offset: int | None = None):
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def cached_version(cache: Path, url: str, version: str = "1.0.0") -> Path:
    """The cache folder of NAME ``version`` pulled from the store at ``url``."""
    return cache / "models" / registry.download.store_key(registry.Store(url)) / NAME / version


def cached_files(cache: Path):
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def test_publish_writes_safetensors_card_and_index(published, trained):
    store = published["store"]
    index = json.loads((store / "index.json").read_text())
    model = index["models"][NAME]
    assert model["aliases"] == {"latest": "1.0.0", "stable": "1.0.0"} and model["task"] == "bragg_unet"
    files = model["versions"]["1.0.0"]["files"]
    for fname in ("model.safetensors", "card.json"):
        assert files[fname]["path"] == f"{NAME}/1.0.0/{fname}"
        digest, size = registry.store.sha256_file(store / files[fname]["path"])
        assert (digest, size) == (files[fname]["sha256"], files[fname]["size"])
    card = json.loads((store / NAME / "1.0.0" / "card.json").read_text())
    assert card["files"]["model.safetensors"] == {k: files["model.safetensors"][k] for k in ("sha256", "size")}
    for key in (
        "name",
        "version",
        "task",
        "architecture",
        "input",
        "labels",
        "training",
        "metrics",
        "software",
        "created",
        "license",
    ):
        assert key in card
    assert (
        card["architecture"]["net"]["_target_"] == "stemforge.networks.unet.UNet"
        and card["architecture"]["net"]["depth"] == 3
    )
    assert card["input"]["shape"] == [32, 32] and card["input"]["pixel_size_inv_A"] == 0.06
    assert card["input"]["normalisation"] == {"mode": "probe_max", "power": 1.0}
    assert card["input"]["energy_eV"][0] <= card["input"]["energy_eV"][1] and "probe_convention" in card["input"]
    assert card["labels"]["unit"] == "V" and "|V_g|" in card["labels"]["definition"]
    assert "test/peak_f1" in card["metrics"]["test"] and card["training"]["dataset_fingerprint"].startswith("sha256:")
    assert card["training"]["structures"] == ["Si", "Cu"]
    for pkg in ("stemforge", "torch", "pytorch_lightning", "numpy", "abtem"):
        assert card["software"][pkg]
    # the weights are the checkpoint's net.* tensors, and a plain safetensors file (no pickle)
    from safetensors.torch import load_file

    ckpt = torch.load(trained[0], weights_only=True, map_location="cpu")
    weights = load_file(str(store / NAME / "1.0.0" / "model.safetensors"))
    expected = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights)
    # W&B: offline in tests -> skipped with a notice, nothing logged
    assert "W&B artifact: skipped: WANDB_MODE=offline" in published["stdout"]
    assert not (store / "index.lock").exists()


def reference_output(trained):
    """What the trained network (from the checkpoint itself) predicts for pattern 0 of the dataset."""
    import zarr

    from stemforge.datamodules import normalise
    from stemforge.networks.unet import UNet

    ckpt, data = trained
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    net_cfg = dict(state["stemforge"]["model_config"]["net"])
    net_cfg.pop("_target_")
    net = UNet(**net_cfg)
    net.load_state_dict({k[4:]: v for k, v in state["state_dict"].items() if k.startswith("net.")})
    group = zarr.open_group(str(data), mode="r")
    pattern, probe = np.asarray(group["patterns"][0], np.float32), np.asarray(group["probes"][0], np.float32)
    p, q = normalise(pattern, probe, mode="probe_max", power=1.0)
    with torch.no_grad():
        return pattern, probe, net.eval()(torch.as_tensor(p)[None, None], torch.as_tensor(q)[None, None]).numpy()


def test_http_pull_by_second_process_then_run(published, trained, tmp_path):
    """The acceptance path: empty cache, `python -m stemforge.registry pull` over loopback HTTP, load and run
    elsewhere."""
    pattern, probe, expected = reference_output(trained)
    np.save(tmp_path / "pattern.npy", pattern)
    np.save(tmp_path / "probe.npy", probe)
    cache = tmp_path / "cache"
    url = published["url"]
    proc = cli("pull", f"{NAME}:1.0.0", "--store", url, cache=cache)
    assert proc.returncode == 0, proc.stderr
    assert "verified" in proc.stdout
    folder = f"models/{registry.download.store_key(registry.Store(url))}/bragg-unet/1.0.0"
    assert {f"{folder}/model.safetensors", f"{folder}/card.json"} <= set(cached_files(cache))
    script = (
        "import sys, numpy as np, stemforge.registry\n"
        "m = stemforge.registry.load('bragg-unet:stable', store=sys.argv[1])\n"
        "assert not m.net.training and m.version == '1.0.0' and m.input_spec['shape'] == [32, 32]\n"
        "y = m(np.load(sys.argv[2] + '/pattern.npy'), np.load(sys.argv[2] + '/probe.npy'))\n"
        "np.save(sys.argv[2] + '/out.npy', y.numpy())\n"
    )
    xdg = tmp_path / "xdg-cache"  # STEMFORGE_CACHE wins over XDG_CACHE_HOME
    proc = run(["-c", script, url, str(tmp_path)], cache=cache, extra_env={"XDG_CACHE_HOME": xdg})
    assert proc.returncode == 0, proc.stderr
    assert not xdg.exists()
    out = np.load(tmp_path / "out.npy")
    assert out.shape == (1, 1, 32, 32) and np.isfinite(out).all()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    # the cache is where STEMFORGE_CACHE says, and nothing was unpickled: model = safetensors + JSON only
    assert all(f.endswith((".safetensors", ".json")) for f in cached_files(cache))


def test_offline_loads_from_cache(published, tmp_path):
    cache = tmp_path / "cache"
    live = registry.load(NAME, version="1.0.0", store=published["url"], cache=cache)
    assert not live.offline
    # another store (a dead loopback port) never served this model: the cached copy is not its to serve
    with pytest.raises(StoreUnreachableError, match="not in the cache"):
        registry.load(NAME, version="1.0.0", store=dead_url(), cache=cache)
    with pytest.raises(StoreUnreachableError, match="no cached index"):
        registry.load(f"{NAME}:stable", store=dead_url(), cache=cache)
    # the store's own URL with the network off: the verified copy, aliases through its cached index
    os.environ["STEMFORGE_OFFLINE"] = "1"
    try:
        model = registry.load(NAME, version="1.0.0", store=published["url"], cache=cache)
        assert model.offline and model.version == "1.0.0" and not model.net.training
        x = np.random.default_rng(0).random((32, 32))
        assert torch.equal(model(x, x + 0.5), live(x, x + 0.5))
        model = registry.load(f"{NAME}:stable", store=published["url"], cache=cache)
        assert model.offline and model.version == "1.0.0"
        with pytest.raises(StoreUnreachableError, match="no version or alias '9.9.9'"):
            registry.load(NAME, version="9.9.9", store=published["url"], cache=cache)
        with pytest.raises(StoreUnreachableError, match="not in the cache"):
            registry.load(NAME, version="1.0.0", store=published["url"], cache=tmp_path / "empty")
    finally:
        del os.environ["STEMFORGE_OFFLINE"]


@pytest.mark.parametrize("damage", ["flip_weights", "truncate_weights", "flip_card", "truncate_card"])
def test_corrupt_store_files_are_refused(published, served, damage, tmp_path):
    store, url = copy_store(published, served, f"bad-{damage}")
    fname = "model.safetensors" if "weights" in damage else "card.json"
    target = store / NAME / "1.0.0" / fname
    flip_byte(target) if damage.startswith("flip") else truncate(target)
    cache = tmp_path / "cache"
    # over HTTP with pooch, from a second process
    proc = cli("pull", f"{NAME}:1.0.0", "--store", url, cache=cache)
    line = one_error_line(proc, fname, "does not match the registry index", "refused")
    assert ("truncated" in line) == damage.startswith("truncate")
    assert not (cached_version(cache, url) / fname).exists()
    assert not [f for f in cached_files(cache) if f.endswith(".tmp") or "/tmp" in f]
    assert not (cached_version(cache, url) / "manifest.json").exists()
    # and through the file:// store (fsspec downloader)
    with pytest.raises(IntegrityError, match="does not match"):
        registry.pull(f"{NAME}:1.0.0", store=store.as_uri(), cache=tmp_path / "cache2")
    assert not (cached_version(tmp_path / "cache2", store.as_uri()) / fname).exists()


@pytest.mark.parametrize("damage", [flip_byte, truncate], ids=["tampered", "truncated"])
def test_corrupt_cache_files_are_refused_or_replaced(published, damage, tmp_path, caplog):
    cache = tmp_path / "cache"
    cached = cached_version(cache, published["url"]) / "model.safetensors"
    registry.pull(f"{NAME}:1.0.0", store=published["url"], cache=cache)
    good = cached.read_bytes()
    # store reachable: the corrupt cached file is discarded (warning) and downloaded again
    damage(cached)
    with caplog.at_level("WARNING", logger="registry"):
        model = registry.load(f"{NAME}:1.0.0", store=published["url"], cache=cache)
    assert "failed verification" in caplog.text and cached.read_bytes() == good and model.version == "1.0.0"
    # store unreachable (offline): refused with a clear message, and the corrupt file is not kept
    damage(cached)
    os.environ["STEMFORGE_OFFLINE"] = "1"
    try:
        with pytest.raises(IntegrityError, match="missing or corrupt .*tampered or truncated"):
            registry.load(f"{NAME}:1.0.0", store=published["url"], cache=cache)
    finally:
        del os.environ["STEMFORGE_OFFLINE"]
    assert not cached.exists()
    # the CLI says so in one line (the deletion warning is not printed on top of the error)
    registry.pull(f"{NAME}:1.0.0", store=published["url"], cache=cache)
    damage(cached)
    proc = cli("pull", f"{NAME}:1.0.0", "--store", published["url"], cache=cache, extra_env={"STEMFORGE_OFFLINE": "1"})
    one_error_line(proc, "model.safetensors of bragg-unet 1.0.0 is missing or corrupt", "pull it again when online")
    assert not cached.exists()
    proc = cli("pull", f"{NAME}:1.0.0", "--store", published["url"], cache=cache)  # heals when online
    assert proc.returncode == 0 and cached.read_bytes() == good, proc.stderr


def test_same_version_from_two_stores_never_serves_the_other_stores_weights(published, trained, tmp_path, caplog):
    """Two stores holding the same name and version with different weights (two clones' `make run`): the cache
    keeps one copy per store, each load gets its own store's weights, online and offline, with no tampering
    warning and no download when the copy is already there."""
    ckpt, _ = trained
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    key = next(k for k in state["state_dict"] if k.startswith("net.") and state["state_dict"][k].is_floating_point())
    state["state_dict"][key] = state["state_dict"][key] + 0.5  # other weights under the same name and version
    (tmp_path / "run2" / "checkpoints").mkdir(parents=True)
    other_ckpt = tmp_path / "run2" / "checkpoints" / "last.ckpt"
    torch.save(state, other_ckpt)
    other = tmp_path / "other"
    proc = publish_script(
        f"ckpt={other_ckpt}", f"name={NAME}", "version=1.0.0", f"store={other.as_uri()}", "alias=stable"
    )
    assert proc.returncode == 0, proc.stderr
    cache = tmp_path / "cache"
    with caplog.at_level("INFO", logger="registry"):
        first = registry.load(f"{NAME}:1.0.0", store=published["url"], cache=cache)
        second = registry.load(f"{NAME}:1.0.0", store=other.as_uri(), cache=cache)
    assert "failed verification" not in caplog.text
    w1, w2 = (dict(m.net.named_parameters())[key[len("net.") :]].detach() for m in (first, second))
    assert torch.allclose(w2, w1 + 0.5)
    folders = {registry.download.store_key(registry.Store(u)) for u in (published["url"], other.as_uri())}
    assert len(folders) == 2 and {p.name for p in (cache / "models").iterdir()} == folders
    assert first.files["model.safetensors"] != second.files["model.safetensors"]
    mtime = first.files["model.safetensors"].stat().st_mtime_ns
    again = registry.load(f"{NAME}:1.0.0", store=published["url"], cache=cache)  # cached: not downloaded again
    assert again.files["model.safetensors"].stat().st_mtime_ns == mtime
    os.environ["STEMFORGE_OFFLINE"] = "1"
    try:
        for url, expect in ((published["url"], w1), (other.as_uri(), w2), (published["url"], w1)):
            for ref in (f"{NAME}:1.0.0", f"{NAME}:stable"):
                m = registry.load(ref, store=url, cache=cache)
                assert m.offline and torch.equal(dict(m.net.named_parameters())[key[len("net.") :]].detach(), expect)
        with pytest.raises(StoreUnreachableError, match="not in the cache"):
            registry.load(f"{NAME}:1.0.0", store=(tmp_path / "third").as_uri(), cache=cache)
    finally:
        del os.environ["STEMFORGE_OFFLINE"]


def test_versions_are_immutable(published, trained):
    ckpt, _ = trained
    store = published["store"]
    before = (store / NAME / "1.0.0" / "model.safetensors").read_bytes(), (store / "index.json").read_bytes()
    proc = publish_script(f"ckpt={ckpt}", f"name={NAME}", "version=1.0.0", f"store={store}")
    one_error_line(proc, "already published", "immutable")
    with pytest.raises(VersionExistsError):
        registry.publish(ckpt, NAME, "1.0.0", store=str(store), wandb=False)
    assert before == ((store / NAME / "1.0.0" / "model.safetensors").read_bytes(), (store / "index.json").read_bytes())


def test_aliases_move_and_latest_follows_highest(published, served, trained, tmp_path):
    ckpt, _ = trained
    store, url = copy_store(published, served, "aliases")
    proc = cli("push", ckpt, "--name", NAME, "--version", "1.1.0", "--store", store, "--no-wandb")
    assert proc.returncode == 0, proc.stderr
    registry.publish(ckpt, NAME, "1.0.1-rc.1", store=str(store), wandb=False)
    listing = registry.list_models(url)[NAME]
    assert listing["versions"] == ["1.0.0", "1.0.1-rc.1", "1.1.0"]
    assert listing["aliases"] == {"latest": "1.1.0", "stable": "1.0.0"}
    proc = cli("list", "--store", url)
    assert proc.returncode == 0 and "1.0.0, 1.0.1-rc.1, 1.1.0" in proc.stdout and "stable -> 1.0.0" in proc.stdout
    proc = cli("alias", NAME, "stable", "1.1.0", "--store", store)
    assert proc.returncode == 0 and "(was 1.0.0)" in proc.stdout, proc.stderr
    cache = tmp_path / "cache"
    assert registry.load(f"{NAME}:stable", store=url, cache=cache).version == "1.1.0"
    assert registry.load(NAME, store=url, cache=cache).version == "1.1.0"  # bare name = latest
    proc = cli("alias", NAME, "paper", "1.0.0", "--store", store)
    assert proc.returncode == 0
    assert registry.load(f"{NAME}:paper", store=url, cache=cache).card["version"] == "1.0.0"
    one_error_line(cli("alias", NAME, "stable", "7.0.0", "--store", store), "no version or alias '7.0.0'")
    one_error_line(cli("alias", NAME, "latest", "1.0.0", "--store", store), "maintained automatically")
    one_error_line(cli("alias", NAME, "stable", "1.0.0", "--store", url), "read-only")
    assert cli("alias", NAME, "paper", "--delete", "--store", store).returncode == 0
    assert "paper" not in registry.list_models(store)[NAME]["aliases"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["name=../evil", "version=1.0.0"], "invalid model name"),
        (["name=a/b", "version=1.0.0"], "invalid model name"),
        (["name=Bragg", "version=1.0.0"], "invalid model name"),
        (["name=ok", "version=1.0"], "invalid version"),
        (["name=ok", "version=../../1.0.0"], "invalid version"),
        (["name=ok", "version=1.0.0", "alias=../x"], "invalid alias"),
    ],
)
def test_bad_names_refused_before_anything_is_written(trained, tmp_path, args, needle):
    store = tmp_path / "store"
    proc = publish_script(f"ckpt={trained[0]}", *args, f"store={store}")
    one_error_line(proc, needle)
    assert not store.exists() or not any(store.rglob("*"))


def test_cli_failures_are_one_line(published, tmp_path):
    url = published["url"]
    one_error_line(cli("list", "--store", tmp_path / "nowhere"), "no registry at")
    one_error_line(cli("pull", "nope:1.0.0", "--store", url, cache=tmp_path / "c"), "no model 'nope'")
    one_error_line(cli("pull", f"{NAME}:2.0.0", "--store", url, cache=tmp_path / "c"), "versions: 1.0.0")
    one_error_line(cli("pull", "../../etc:1.0.0", "--store", url, cache=tmp_path / "c"), "invalid model name")
    one_error_line(cli("show", f"{NAME}:stable", "--store", dead_url(), cache=tmp_path / "c"), "cannot reach")
    one_error_line(cli("push", published["store"] / NAME / "1.0.0", "--store", url), "read-only")
    proc = cli("frobnicate")
    assert proc.returncode == 2
    one_error_line(proc, "invalid choice")
    one_error_line(publish_script("ckpt=x", "name=a"), "missing version=")
    one_error_line(
        publish_script(f"ckpt={tmp_path}/none.ckpt", "name=a", "version=1.0.0", f"store={tmp_path}/s"), "does not exist"
    )
    proc = cli("show", f"{NAME}:stable", "--store", url, cache=tmp_path / "c")
    assert proc.returncode == 0 and "stemforge.networks.unet.UNet" in proc.stdout and "test/peak_f1" in proc.stdout
    proc = cli("--store", url, "list", "--json")  # --store before the command works too
    assert proc.returncode == 0 and json.loads(proc.stdout)[NAME]["aliases"]["stable"] == "1.0.0"


def test_concurrent_publishers_keep_the_index_whole(published, served, trained, tmp_path):
    """Two processes publish different versions at the same moment: the test holds the store's lock until both
    are waiting for it, then releases it so that they race for it."""
    ckpt, _ = trained
    store, _ = copy_store(published, served, "concurrent")
    go = tmp_path / "go"
    script = (
        "import os, sys, time\n"
        "import stemforge.registry.lock as rl\n"
        "from stemforge.registry.publishing import publish\n"
        "import safetensors.torch, torch, hydra.utils\n"  # imports done before the start signal
        "try_create, busy = rl.StoreLock._try_create, [0]\n"
        "def counting(self):\n"
        "    ok = try_create(self)\n"
        "    if not ok:\n"
        "        busy[0] += 1\n"
        "        if busy[0] == 1: print('waiting', flush=True)\n"
        "    return ok\n"
        "rl.StoreLock._try_create = counting\n"
        "print('ready', flush=True)\n"
        "while not os.path.exists(sys.argv[1]): time.sleep(0.002)\n"
        "publish(sys.argv[2], 'bragg-unet', sys.argv[3], store=sys.argv[4], wandb=False)\n"
        "print('busy polls', busy[0], flush=True)\n"
    )
    versions = ["1.2.0", "2.0.0"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(go), str(ckpt), v, str(store)],
            cwd=ROOT,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for v in versions
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    holder = registry.Store(store)
    with holder.lock("test holds the lock"):
        go.touch()
        for p in procs:  # both publishers are blocked on the lock
            assert p.stdout.readline().strip() == "waiting"
        assert sorted(holder.read_index()["models"][NAME]["versions"]) == ["1.0.0"]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert int(out.split()[-1]) > 0
    index = registry.Store(store).read_index()
    model = index["models"][NAME]
    assert sorted(model["versions"]) == ["1.0.0", *versions]
    assert model["aliases"] == {"latest": "2.0.0", "stable": "1.0.0"}
    for v in versions:
        for rec in model["versions"][v]["files"].values():
            assert registry.store.sha256_file(store / rec["path"]) == (rec["sha256"], rec["size"])
    assert not (store / "index.lock").exists() and not list(store.glob(".index.json.*"))


def test_mirrors_absolute_urls_and_push_of_a_pulled_folder(published, served, tmp_path):
    """A mirror store whose index points at absolute URLs (as for the Hugging Face Hub), and copying a pulled
    version to another store with `push FOLDER`."""
    root, base = served
    pulled = registry.pull(f"{NAME}:1.0.0", store=published["url"], cache=tmp_path / "cache")
    proc = cli("push", pulled.folder, "--store", tmp_path / "copy", "--alias", "stable")
    assert proc.returncode == 0, proc.stderr
    copy = json.loads((tmp_path / "copy" / "index.json").read_text())["models"][NAME]
    original = json.loads((published["store"] / "index.json").read_text())["models"][NAME]
    assert copy["versions"]["1.0.0"]["files"] == original["versions"]["1.0.0"]["files"]
    # mirror: only index.json in the mirror folder, files served from elsewhere by absolute URL
    mirror = root / "mirror"
    mirror.mkdir()
    index = json.loads((published["store"] / "index.json").read_text())
    for rec in index["models"][NAME]["versions"]["1.0.0"]["files"].values():
        rec["url"] = f"{published['url']}/{rec.pop('path')}"
    (mirror / "index.json").write_text(json.dumps(index))
    model = registry.load(f"{NAME}:stable", store=f"{base}/mirror", cache=tmp_path / "cache2")
    assert model.version == "1.0.0"


@pytest.mark.parametrize("target", ["os.system", "stemforge.networks.fcunet.torch.load", "builtins.exec"])
def test_card_that_builds_something_else_is_refused(published, served, target, tmp_path):
    """A store whose card (with the index's hashes updated to match) asks for a non-network _target_."""
    store, url = copy_store(published, served, f"evil-{target.replace('.', '-')}")
    card_path = store / NAME / "1.0.0" / "card.json"
    card = json.loads(card_path.read_text())
    card["architecture"]["net"] = {"_target_": target, "_args_": [str(tmp_path / "pwned")]}
    card_path.write_text(json.dumps(card))
    index = json.loads((store / "index.json").read_text())
    digest, size = registry.store.sha256_file(card_path)
    index["models"][NAME]["versions"]["1.0.0"]["files"]["card.json"].update(sha256=digest, size=size)
    (store / "index.json").write_text(json.dumps(index))
    with pytest.raises(registry.UnsafeModelError, match=f"refusing _target_ '{target}'"):
        registry.load(f"{NAME}:1.0.0", store=url, cache=tmp_path / "cache")
    assert not (tmp_path / "pwned").exists()
