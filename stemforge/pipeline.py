"""The main job end to end: simulate, train, publish, simulate a held-out scan, analyse it both ways.

Each stage runs one stemforge app (``python -m stemforge.cli.<app>``, the same as the ``stemforge-<app>`` console
script) in a subprocess, so its output and progress bars stream through and any stage can be rerun by hand with the
printed arguments. :func:`plan` says what each stage will run and whether it is already done; :func:`run` runs the
stages in order with a banner and the elapsed time of each. Config: ``stemforge/conf/pipeline.yaml``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["STAGES", "PipelineError", "plan", "run", "published", "tested_checkpoint"]

STAGES = ("simulate", "train", "publish", "scan", "analyze")


class PipelineError(RuntimeError):
    """A stage failed or the plan is invalid (``exit_code`` is what the job should exit with)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def banner(text: str) -> None:
    print(f"\n{'=' * 100}\n{text}\n{'=' * 100}", flush=True)


def app(name: str) -> list[str]:
    """The command that runs stemforge app ``name`` with this Python (``python -m stemforge.cli.NAME``)."""
    return [sys.executable, "-m", f"stemforge.cli.{name}"]


def published(store: str, name: str, version: str) -> bool:
    """Whether ``name`` ``version`` is already in the local registry ``store``."""
    from stemforge.registry.errors import RegistryError
    from stemforge.registry.store import Store

    if not (Path(store) / "index.json").exists():
        return False
    try:
        index = Store(store).read_index(missing_ok=True)
    except RegistryError:
        return False
    return version in index.get("models", {}).get(name, {}).get("versions", {})


def tested_checkpoint(run_dir: Path) -> Path:
    """The checkpoint whose test metrics ``metrics.json`` records (the best by the monitored metric), so that the
    published card's metrics describe the published weights; ``last.ckpt`` when none is recorded."""
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        best = json.loads((run_dir / "metrics.json").read_text()).get("best_checkpoint")
    except (OSError, ValueError, AttributeError):
        return last
    if not best:
        return last
    for path in (Path(best), run_dir / "checkpoints" / Path(best).name):  # the run folder may have moved
        if path.exists():
            return path
    return last


def plan(cfg) -> dict[str, tuple[list[str], bool]]:
    """Each stage's command line and whether it is already done (planned when a stage starts: publishing needs the
    trained checkpoint)."""
    work = Path(cfg.workdir)
    run_dir = work / "train"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    trained = ckpt.exists() and (run_dir / "metrics.json").exists()
    tested = tested_checkpoint(run_dir) if trained else ckpt
    train = [
        *app("train"),
        *cfg.train.overrides,
        f"trainer.max_epochs={int(cfg.train.epochs)}",
        f"paths.output_dir={run_dir}",
        f"hydra.run.dir={run_dir}",
    ]
    if ckpt.exists() and not trained:
        train.append("ckpt_path=last")  # an interrupted run resumes
    p = cfg.publish
    ref = f"{p.name}:{p.alias or p.version}"
    publish = [
        *app("publish"),
        f"ckpt={tested}",
        f"name={p.name}",
        f"version={p.version}",
        f"store={p.store}",
        *([f"alias={p.alias}"] if p.alias else []),
        "wandb=false",
    ]
    return {
        "simulate": ([*app("simulate"), *cfg.simulate.overrides], False),
        "train": (train, trained),
        "publish": (publish, published(str(p.store), p.name, str(p.version))),
        "scan": ([*app("simulate"), *cfg.scan.overrides], False),
        "analyze": ([*app("analyze"), *cfg.analyze.overrides, f"ml.model={ref}", f"ml.store={p.store}"], False),
    }


def run(cfg) -> None:
    """Run the configured stages in order; a failing stage raises :class:`PipelineError` with its exit code."""
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise PipelineError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    Path(cfg.workdir).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    stages = [s for s in STAGES if s in cfg.stages]
    for i, stage in enumerate(stages, 1):
        cmd, done = plan(cfg)[stage]
        if done:
            banner(f"[{i}/{len(stages)}] {stage}: already done, skipped")
            continue
        banner(f"[{i}/{len(stages)}] {stage}: python {' '.join(cmd[1:])}")
        t0 = time.perf_counter()
        rc = subprocess.run(cmd).returncode
        if rc != 0:
            raise PipelineError(f"stage {stage!r} failed with exit code {rc}", rc)
        print(f"--- {stage} finished in {time.perf_counter() - t0:.0f} s", flush=True)
    banner(f"pipeline finished in {(time.perf_counter() - start) / 60:.1f} min; results in {cfg.workdir}")
