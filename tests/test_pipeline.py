"""The main job's plan (stemforge.pipeline): stage commands, skipping finished stages, resuming training, and
publishing the checkpoint whose test metrics the card will carry."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pipeline():
    from stemforge import pipeline

    return pipeline


def compose(workdir):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="stemforge.conf", version_base="1.3"):
        return hydra_compose(config_name="pipeline", overrides=[f"workdir={workdir}"])


def arg(cmd, key):
    return next(a.split("=", 1)[1] for a in cmd if a.startswith(f"{key}="))


def test_plan_follows_the_training_run(pipeline, tmp_path):
    cfg = compose(tmp_path)
    ckpts = tmp_path / "train" / "checkpoints"
    plan = pipeline.plan(cfg)
    assert list(plan) == list(pipeline.STAGES)
    assert not plan["train"][1] and "ckpt_path=last" not in plan["train"][0]
    assert arg(plan["train"][0], "trainer.max_epochs") == str(cfg.train.epochs)
    assert not plan["publish"][1] and arg(plan["analyze"][0], "ml.store") == str(cfg.publish.store)

    ckpts.mkdir(parents=True)  # interrupted: a last.ckpt but no metrics -> resume
    (ckpts / "last.ckpt").write_bytes(b"x")
    plan = pipeline.plan(cfg)
    assert not plan["train"][1] and "ckpt_path=last" in plan["train"][0]
    assert arg(plan["publish"][0], "ckpt") == str(ckpts / "last.ckpt")

    # finished: metrics.json names the tested (best) checkpoint; publish takes it, also after the folder moved
    (ckpts / "epoch_003.ckpt").write_bytes(b"y")
    metrics = tmp_path / "train" / "metrics.json"
    metrics.write_text(json.dumps({"best_checkpoint": "/elsewhere/checkpoints/epoch_003.ckpt"}))
    plan = pipeline.plan(cfg)
    assert plan["train"][1] and arg(plan["publish"][0], "ckpt") == str(ckpts / "epoch_003.ckpt")
    metrics.write_text(json.dumps({"best_checkpoint": None}))
    assert arg(pipeline.plan(cfg)["publish"][0], "ckpt") == str(ckpts / "last.ckpt")


def test_unknown_stage_is_one_error_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "pipeline.py"),
            "stages=[simulate,bogus]",
            f"workdir={tmp_path / 'w'}",
            f"hydra.run.dir={tmp_path / 'h'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown stage" in lines[0] and "bogus" in lines[0]
    assert not (tmp_path / "w").exists()
