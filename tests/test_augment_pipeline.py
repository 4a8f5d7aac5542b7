"""Pipeline assembly: Hydra presets, seeding and determinism, the sample API, the preview script."""

from __future__ import annotations

import hashlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from stemforge import augment
from stemforge.augment import augment_sample, build_pipeline, reseed
from stemforge.conf import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
CONF = CONF_DIR
PRESETS = ["none", "crystal4d", "counting", "default", "corpus", "phase"]


def _compose(preset: str):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="stemforge.conf", version_base="1.3"):
        return compose(config_name=None, overrides=[f"+augment={preset}"])


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_instantiate_through_hydra(preset):
    from hydra.utils import instantiate

    cfg = _compose(preset)
    assert list(cfg.keys()) == ["augment"]
    pipe = instantiate(cfg.augment, seed=0)
    names = [type(t).__name__ for t in pipe.transforms]
    if preset == "none":
        assert names == []
    else:
        assert {"SpecimenBackground", "AffineDistortion", "ShotNoise", "HotPixels"} <= set(names)
    s = augment.synthetic_sample(0, shape=(64, 64))
    out = augment_sample(
        pipe, s["pattern"], s["probe"], s["labels"], s["reflections_px"], s["num_reflections"], pixel_size_inv_A=0.04
    )
    assert out["pattern"].shape == (64, 64) and out["pattern"].dtype == np.float32


def test_preset_keys_map_one_to_one_to_build_pipeline_arguments():
    params = set(inspect.signature(build_pipeline).parameters)
    for path in sorted((CONF / "augment").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        keys = set(raw) - {"_target_", "defaults"}
        if path.stem == "default":
            assert keys == set()
            continue
        if "defaults" in raw:  # a preset built on another one: its composed keys are the arguments
            assert keys <= params, (path.name, keys - params)
            assert set(_compose(path.stem).augment) - {"_target_"} == params, path.name
            continue
        assert keys == params, (path.name, keys ^ params)
        assert yaml.safe_load(path.read_text())["_target_"] == "stemforge.augment.build_pipeline"
    assert set(_compose("default").augment) - {"_target_"} == params


def test_default_preset_is_the_counting_preset():
    assert _compose("default") == _compose("counting")


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_config_matches_hydra_compose(preset):
    """stemforge.augment.preset_config (no Hydra global state) resolves presets exactly as Hydra's compose does."""
    assert augment.preset_config(preset) == _compose(preset).augment
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        augment.preset_config("no_such_preset")


def _digest(out: dict) -> str:
    h = hashlib.sha256()
    for key in ("pattern", "probe", "reflections_px"):
        h.update(np.ascontiguousarray(out[key]).tobytes())
    for key in sorted(out["labels"]):
        h.update(np.ascontiguousarray(out["labels"][key]).tobytes())
    return h.hexdigest()


_SCRIPT = """
import sys, hashlib
import numpy as np
import stemforge.augment
pipe = stemforge.augment.load_preset("crystal4d", seed=1234)
h = hashlib.sha256()
for i in range(3):
    s = stemforge.augment.synthetic_sample(i, shape=(64, 64))
    out = stemforge.augment.augment_sample(pipe, s["pattern"], s["probe"], s["labels"], s["reflections_px"],
                                 s["num_reflections"], pixel_size_inv_A=0.04)
    for key in ("pattern", "probe", "reflections_px"):
        h.update(np.ascontiguousarray(out[key]).tobytes())
    for key in sorted(out["labels"]):
        h.update(np.ascontiguousarray(out["labels"][key]).tobytes())
print(h.hexdigest())
"""


def _local_digest(seed: int) -> str:
    pipe = augment.load_preset("crystal4d", seed=seed)
    h = hashlib.sha256()
    for i in range(3):
        s = augment.synthetic_sample(i, shape=(64, 64))
        out = augment_sample(
            pipe,
            s["pattern"],
            s["probe"],
            s["labels"],
            s["reflections_px"],
            s["num_reflections"],
            pixel_size_inv_A=0.04,
        )
        for key in ("pattern", "probe", "reflections_px"):
            h.update(np.ascontiguousarray(out[key]).tobytes())
        for key in sorted(out["labels"]):
            h.update(np.ascontiguousarray(out["labels"][key]).tobytes())
    return h.hexdigest()


def test_seeded_pipeline_is_deterministic_across_processes():
    np.random.seed(999)  # noqa: NPY002 - the legacy global seed must not matter
    local = _local_digest(1234)
    assert local == _local_digest(1234)
    assert local != _local_digest(1235)
    env = dict(os.environ, PYTHONHASHSEED="12345")
    res = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    assert res.stdout.strip().splitlines()[-1] == local


def test_transforms_draw_independent_streams_and_reseed_repeats():
    pipe = build_pipeline(
        plasmon_weight=(0.0, 0.1),
        ellipticity=(0.0, 0.1),
        shift_x_px=(-5, 5),
        dose_e_per_pattern=(1e3, 1e5),
        hot_pixel_fraction=(0, 1e-3),
        seed=7,
    )
    firsts = [t.random_generator.random() for t in pipe.transforms]
    assert len(set(firsts)) == len(firsts)  # albumentations alone would give every transform the same stream
    s = augment.synthetic_sample(3, shape=(64, 64))
    run = lambda: augment_sample(pipe, s["pattern"], s["probe"], s["labels"], pixel_size_inv_A=0.04)["pattern"]  # noqa: E731
    reseed(pipe, 42)
    a = [run() for _ in range(3)]
    reseed(pipe, 42)
    b = [run() for _ in range(3)]
    reseed(pipe, 43)
    c = run()
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=False))
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[0], c)


def test_noise_and_background_only_touch_the_pattern():
    s = augment.synthetic_sample(5, shape=(64, 64))
    pipe = build_pipeline(
        plasmon_weight=(0.05, 0.1),
        ring_weight=(0.0, 0.05),
        psf_sigma_px=(0.5, 1.0),
        dose_e_per_pattern=(1e4, 1e4),
        bit_depth=12,
        hot_pixel_fraction=(1e-3, 1e-3),
        seed=0,
    )
    out = augment_sample(
        pipe, s["pattern"], s["probe"], s["labels"], s["reflections_px"], s["num_reflections"], pixel_size_inv_A=0.04
    )
    assert not np.array_equal(out["pattern"], s["pattern"])
    assert np.array_equal(out["probe"], s["probe"])
    assert all(np.array_equal(out["labels"][k], s["labels"][k]) for k in s["labels"])
    assert np.array_equal(out["reflections_px"], s["reflections_px"], equal_nan=True)
    assert out["num_reflections"] == s["num_reflections"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dose_e_per_pattern": (-10.0, 1e4)}, "dose_e_per_pattern must be > 0"),
        ({"dose_e_per_pattern": (1e4, 1e3)}, "low <= high"),
        ({"ellipticity": (0.0, 1.0)}, "ellipticity must be < 1"),
        ({"dose_e_per_pattern": 1e4, "bit_depth": 10}, "bit_depth must be None or one of"),
        ({"bit_depth": 12}, "need a dose"),
        ({"dose_e_per_pattern": 1e4, "probe_peak_counts": 100.0}, "exactly one"),
        ({"shift_x_px": [1.0]}, r"\(low, high\) pair"),
        ({"p_noise": 1.5}, "p_noise must be a probability"),
        ({"label_keys": ["probe"]}, "label_keys"),
        ({"label_keys": "vg_map"}, "label_keys"),
        ({"seed": -1}, "seed"),
        ({"plasmon_weight": 0.6, "diffuse_weight": 0.6}, "sum to"),
        ({"ring_weight": 0.1, "ring_q_inv_A": [0.43, 0.51]}, "one per ring"),
        ({"hot_pixel_fraction": (0.0, 1.1)}, "must be <= 1"),
    ],
)
def test_build_pipeline_refuses_invalid_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_pipeline(**kwargs)


def test_augment_sample_checks_shapes():
    s = augment.synthetic_sample(0, shape=(32, 32))
    pipe = build_pipeline(shift_x_px=(-1, 1), seed=0)
    with pytest.raises(ValueError, match="2-D float"):
        augment_sample(pipe, s["pattern"][None], s["probe"])
    with pytest.raises(ValueError, match="probe shape"):
        augment_sample(pipe, s["pattern"], s["probe"][:16])
    with pytest.raises(ValueError, match="not targets of this pipeline"):
        augment_sample(pipe, s["pattern"], s["probe"], {"zone_map": s["pattern"]})
    with pytest.raises(ValueError, match="label map 'vg_map' shape"):
        augment_sample(pipe, s["pattern"], s["probe"], {"vg_map": s["pattern"][:8]})
    with pytest.raises(ValueError, match=r"\(R, 2\)"):
        augment_sample(pipe, s["pattern"], s["probe"], reflections_px=np.zeros((4, 3), np.float32))
    bad = s["reflections_px"].copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="contain NaN"):
        augment_sample(pipe, s["pattern"], s["probe"], reflections_px=bad, num_reflections=s["num_reflections"])


def test_dataset_round_trip_and_preview_png(tmp_path):
    samples = [augment.synthetic_sample(i, shape=(64, 64), pixel_size_inv_A=0.04) for i in range(3)]
    path = tmp_path / "tiny.zarr"
    augment.write_samples(path, samples)
    back = augment.read_samples(path, [1, 2])
    assert np.array_equal(back[0]["pattern"], samples[1]["pattern"])
    assert back[1]["num_reflections"] == samples[2]["num_reflections"]
    assert back[0]["calibration"]["pixel_size_inv_A"] == 0.04

    from stemforge.augment import preview as augment_preview

    for args, name in (([], "synthetic.png"), (["--dataset", str(path), "--preset", "crystal4d"], "dataset.png")):
        out = tmp_path / name
        assert augment_preview.main([*args, "--rows", "2", "--out", str(out)]) == 0
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


@pytest.mark.slow
def test_throughput_benchmark_compares_a_revision_side_by_side():
    """benchmarks/augment_throughput.py --compare REV: two workers alternate; the ratio line is printed.

    Slow (~20 s): the exported copy's numba kernels compile from scratch.
    """
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    script = ROOT / "benchmarks" / "augment_throughput.py"
    cmd = [
        sys.executable,
        str(script),
        "--compare",
        "HEAD",
        "--rounds",
        "2",
        "--patterns",
        "4",
        "--samples",
        "2",
        "--size",
        "32",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert sum(line.startswith("round ") for line in lines) == 2
    assert lines[-1].startswith("RESULT patterns_per_s_per_core=") and "ratio_vs_" in lines[-1]
    bad = subprocess.run(
        [sys.executable, str(script), "--compare", "no-such-revision"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "not a git revision" in bad.stderr
