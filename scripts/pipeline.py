"""The main job end to end: simulate, train, publish, simulate a held-out scan, analyse it both ways.

``python scripts/pipeline.py [stages='[...]'] [train.epochs=N] [workdir=PATH]`` (config: ``conf/pipeline.yaml``).
Each stage runs one entry script in a subprocess (its output and progress bars stream through), with a banner
and its elapsed time; finished stages are skipped on a rerun. A failing stage stops the job with its exit code.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import hydra

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = ("simulate", "train", "publish", "scan", "analyze")


def banner(text: str) -> None:
    print(f"\n{'=' * 100}\n{text}\n{'=' * 100}", flush=True)


def published(store: str, name: str, version: str) -> bool:
    from registry.errors import RegistryError
    from registry.store import Store

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
    import json

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


def commands(cfg) -> dict:
    """Each stage's command line (and whether it is already done)."""
    py = sys.executable
    work = Path(cfg.workdir)
    run_dir = work / "train"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    trained = ckpt.exists() and (run_dir / "metrics.json").exists()
    tested = tested_checkpoint(run_dir) if trained else ckpt
    train = [py, "scripts/train.py", *cfg.train.overrides, f"trainer.max_epochs={int(cfg.train.epochs)}",
             f"paths.output_dir={run_dir}", f"hydra.run.dir={run_dir}"]
    if ckpt.exists() and not trained:
        train.append("ckpt_path=last")  # an interrupted run resumes
    p = cfg.publish
    ref = f"{p.name}:{p.alias or p.version}"
    return {
        "simulate": ([py, "scripts/simulate.py", *cfg.simulate.overrides], False),
        "train": (train, trained),
        "publish": ([py, "scripts/publish.py", f"ckpt={tested}", f"name={p.name}", f"version={p.version}",
                     f"store={p.store}", *([f"alias={p.alias}"] if p.alias else []), "wandb=false"],
                    published(str(p.store), p.name, str(p.version))),
        "scan": ([py, "scripts/simulate.py", *cfg.scan.overrides], False),
        "analyze": ([py, "scripts/analyze.py", *cfg.analyze.overrides, f"ml.model={ref}", f"ml.store={p.store}"],
                    False),
    }


@hydra.main(version_base="1.3", config_path="../conf", config_name="pipeline")
def main(cfg) -> None:
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        print(f"error: unknown stage(s) {unknown}; choose from {list(STAGES)}", file=sys.stderr)
        sys.exit(2)
    Path(cfg.workdir).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i, stage in enumerate([s for s in STAGES if s in cfg.stages], 1):
        cmd, done = commands(cfg)[stage]  # planned when the stage starts: publish needs the trained checkpoint
        if done:
            banner(f"[{i}/{len(cfg.stages)}] {stage}: already done, skipped")
            continue
        banner(f"[{i}/{len(cfg.stages)}] {stage}: {' '.join(cmd[1:])}")
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        if rc != 0:
            print(f"error: stage {stage!r} failed with exit code {rc}", file=sys.stderr)
            sys.exit(rc)
        print(f"--- {stage} finished in {time.perf_counter() - t0:.0f} s", flush=True)
    banner(f"pipeline finished in {(time.perf_counter() - start) / 60:.1f} min; results in {cfg.workdir}")


if __name__ == "__main__":
    main()
