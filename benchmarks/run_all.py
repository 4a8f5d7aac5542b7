"""Run every benchmark and rewrite the summary at the top of ``benchmarks/RESULTS.md``.

Usage::

    python benchmarks/run_all.py                 # every benchmark in its --quick form (~30 min on 2 cores)
    python benchmarks/run_all.py --only augment  # one or more by name (augment, sim_sampling, sim_throughput,
                                                 # train, orientation, analysis)
    python benchmarks/run_all.py --full          # the benchmarks' full forms (hours on a laptop)

Each benchmark prints ``RESULT key=value ...`` lines; this script runs them one after another, collects those
values and replaces the block between the ``run_all`` markers of RESULTS.md with a table of every value, the
target where the issues set one, and the machine and versions it was measured on. A benchmark that fails is
recorded as failed with its exit code (nothing is invented); the hand-written sections below the block, with
their methods and caveats, are kept. A benchmark left out with ``--only`` keeps its previous rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from stemforge.core.provenance import package_versions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- run_all:begin -->", "<!-- run_all:end -->"
STATE = ROOT / "benchmarks" / ".run_all.json"  # last collected values (kept in git: the source of the table)

# name -> (script, quick args, full args, {key: (target text, check)}); check(value) or check(value, run's values)
BENCHMARKS = {
    "sim_sampling": ("sim_sampling.py", [], [], {}),
    "sim_throughput": (
        "sim_throughput.py",
        ["--quick"],
        [],
        {"ratio": ("≥ 100", lambda v: v >= 100), "max_rel_dev": ("≤ 1e-3", lambda v: v <= 1e-3)},
    ),
    "sim_corpus": (
        "sim_corpus.py",
        ["--quick"],
        [],
        {
            "projected_minutes_50k": ("≤ 60", lambda v: v <= 60),
            "max_rel_dev": ("≤ 1e-3", lambda v: v <= 1e-3),
        },
    ),
    "augment": ("augment_throughput.py", ["--quick"], [], {"patterns_per_s_per_core": ("≥ 500", lambda v: v >= 500)}),
    "train": ("train_throughput.py", ["--quick"], ["--fit", "40"], {}),
    "orientation": ("orientation_accuracy.py", ["--quick"], [], {}),
    "analysis": (
        "analysis_accuracy.py",
        ["--quick"],
        [],
        {
            "ml_f1": ("≥ classical_f1", lambda v, r: v >= r.get("classical_f1", float("inf"))),
            "ml_pos_rmse_px": ("≤ classical, ≤ 0.5", lambda v, r: v <= min(0.5, r.get("classical_pos_rmse_px", 0.0))),
            "ml_strain_rmse": ("≤ 0.5 × classical", lambda v, r: v <= 0.5 * r.get("classical_strain_rmse", 0.0)),
            "ml_patterns_per_s": ("≥ 0.2 × classical", lambda v, r: v >= 0.2 * r.get("classical_patterns_per_s", 1e30)),
        },
    ),
    "properties": (
        "property_accuracy.py",
        ["--quick"],
        [],
        {
            "thickness_mae_nm": ("≤ 2", lambda v: v <= 2.0),
            "phase_accuracy": ("≥ 0.99", lambda v: v >= 0.99),
            "orientation_err_deg": ("≤ 1", lambda v: v <= 1.0),
            "acom_ml_err_deg": (
                "≤ 1, < classical",
                lambda v, r: v <= 1.0 and v < r.get("acom_classical_err_deg", float("-inf")),
            ),
        },
    ),
    "ml_inference": (
        "ml_inference.py",
        ["--batch-sizes", "16", "32"],
        [],
        {"ratio": ("≥ 0.2", lambda v: v >= 0.2)},
    ),
}
PACKAGES = [
    "numpy",
    "scipy",
    "abtem",
    "torch",
    "pytorch-lightning",
    "zarr",
    "dask",
    "albumentations",
    "opencv-python-headless",
    "hydra-core",
]
RESULT_RE = re.compile(r"^RESULT\s+(.*)$")


def parse_results(text: str) -> dict:
    """Every ``key=value`` of every ``RESULT`` line (later lines win)."""
    out = {}
    for line in text.splitlines():
        m = RESULT_RE.match(line.strip())
        if m:
            for item in m.group(1).split():
                if "=" in item:
                    k, v = item.split("=", 1)
                    try:
                        out[k] = float(v)
                    except ValueError:
                        out[k] = v
    return out


def machine() -> dict:
    """CPU model, cores, memory, GPU and package versions of this machine."""

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(
            next(li for li in Path("/proc/meminfo").read_text().splitlines() if li.startswith("MemTotal")).split()[1]
        )
        mem = f"{kb / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except Exception:  # noqa: BLE001 - any torch problem just means no GPU to report
        gpu = "none"
    versions = package_versions(PACKAGES)
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "memory": mem, "gpu": gpu, "versions": versions}


def run_one(name: str, full: bool, timeout: float) -> dict:
    script, quick, full_args, _ = BENCHMARKS[name]
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), *(full_args if full else quick)]
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        rc, out = "timeout", (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
    wall = time.perf_counter() - start
    values = parse_results(out) if rc == 0 else {}
    tail = "\n".join(out.strip().splitlines()[-3:])
    print(tail, flush=True)
    return {
        "rc": rc,
        "wall_s": round(wall, 1),
        "values": values,
        "args": cmd[2:],
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def fmt(v) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5):
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)


def render(state: dict) -> str:
    m = state["machine"]
    lines = [
        BEGIN,
        "## Summary (generated by `python benchmarks/run_all.py`; do not edit by hand)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, GPU: {m['gpu']}.  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        "",
        "| benchmark | command | metric | value | target | met | when | wall |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, (script, *_rest, targets) in BENCHMARKS.items():
        r = state["runs"].get(name)
        if r is None:
            lines.append(f"| {name} | `{script}` | — | not run | | | | |")
            continue
        cmd = f"`{script} {' '.join(r['args'])}`".replace(" `", "`")
        if r["rc"] != 0:
            lines.append(f"| {name} | {cmd} | — | **failed (exit {r['rc']})** | | | {r['date']} | {r['wall_s']} s |")
            continue
        for key, value in r["values"].items():
            target, check = targets.get(key, ("", None))
            if check is None or not isinstance(value, float):
                met = ""
            else:  # a check of one value, or of the value and the run's other values (targets relative to a baseline)
                ok = check(value, r["values"]) if check.__code__.co_argcount == 2 else check(value)
                met = "yes" if ok else "**no**"
            lines.append(
                f"| {name} | {cmd} | {key} | {fmt(value)} | {target} | {met} | {r['date']} | {r['wall_s']} s |"
            )
    lines += ["", "The sections below describe each benchmark's method, baseline and caveats.", END]
    return "\n".join(lines)


def write_results(block: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Measured results\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        first, _, rest = text.partition("\n")
        text = f"{first}\n\n{block}\n{rest}"
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(RESULTS)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these benchmarks")
    ap.add_argument("--full", action="store_true", help="the benchmarks' full forms instead of --quick")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds allowed per benchmark (default 3600)")
    args = ap.parse_args(argv)
    state = {"runs": {}}
    if STATE.exists():
        try:
            state = json.loads(STATE.read_text())
        except json.JSONDecodeError:
            pass
    names = args.only or list(BENCHMARKS)
    state["machine"] = machine()
    failed = []
    for name in names:
        state["runs"][name] = run_one(name, args.full, args.timeout)
        if state["runs"][name]["rc"] != 0:
            failed.append(name)
        STATE.write_text(json.dumps(state, indent=1))
        write_results(render(state))  # after each benchmark, so an interrupted run keeps what it measured
    print(f"\nwrote {RESULTS.relative_to(ROOT)}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
