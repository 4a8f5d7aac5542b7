"""Cluster engine (stemforge.sim.cluster): a LocalCluster on loopback writes the same bytes as a local run, resumes the
same way, and a bad address is one error with nothing written."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stemforge.sim.config import compose_simulate as compose

ROOT = Path(__file__).resolve().parents[1]
# 2 chunks of 2 runs × 2 thicknesses on a 48-px detector; default physics otherwise (mistilt, frozen phonons)
TINY = [
    "structure=si",
    "sampling=fast",
    "detector.shape=[48,48]",
    "sampling.real_space_A=0.2",
    "sampling.thicknesses_nm=[1.0,2.0]",
    "sampling.frozen_phonons=1",
    "orientation.mistilt_max_mrad=0.5",
    "dataset.num_patterns=8",
    "dataset.chunk_runs=2",
    "dataset.progress=false",
]


@pytest.fixture(scope="module")
def scheduler():
    distributed = pytest.importorskip("distributed")
    # two worker processes: the two chunks run at once and may arrive in either order
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def arrays(path) -> dict:
    """Every array's bytes (the data, not the attrs that hold timestamps)."""
    import zarr

    g = zarr.open_group(str(path), mode="r")
    out = {}

    def walk(group, prefix=""):
        for name, arr in group.arrays():
            out[prefix + name] = (arr.dtype, arr.shape, np.asarray(arr[:]).tobytes())
        for name, sub in group.groups():
            walk(sub, prefix + name + "/")

    walk(g)
    return out


def assert_same(a, b):
    A, B = arrays(a), arrays(b)
    assert A.keys() == B.keys()
    for name in A:
        assert A[name] == B[name], name


def test_cluster_dataset_equals_local_and_resumes(scheduler, tmp_path):
    import zarr

    from stemforge.sim.generate import generate_dataset

    local, remote = tmp_path / "local.zarr", tmp_path / "remote.zarr"
    generate_dataset(compose(*TINY, f"dataset.path={local}"))
    generate_dataset(compose(*TINY, f"dataset.path={remote}", f"cluster.address={scheduler}"))
    g = zarr.open_group(str(remote), mode="r")
    assert g.attrs["status"] == "complete" and np.asarray(g["chunk_complete"][:]).all()
    assert g.attrs["config"] == zarr.open_group(str(local), mode="r").attrs["config"]
    assert_same(local, remote)
    # lose chunk 1 (an interrupted run): the cluster recomputes only that chunk, to the same bytes
    g = zarr.open_group(str(remote), mode="r+")
    g["chunk_complete"][1] = False
    g["patterns"][4:] = np.nan
    g.attrs["status"] = "incomplete"
    kept = {p: p.stat().st_mtime_ns for p in (remote / "patterns" / "c" / "0").rglob("*") if p.is_file()}
    assert kept
    generate_dataset(compose(*TINY, f"dataset.path={remote}", f"cluster.address={scheduler}"))
    assert zarr.open_group(str(remote), mode="r").attrs["status"] == "complete"
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # chunk 0 was not recomputed and rewritten
    assert_same(local, remote)


def test_cluster_smatrix_groups_equal_local(scheduler, tmp_path):
    """S-matrix groups (batched reductions, scipy FFTs) give the same bytes on a worker as locally."""
    from stemforge.sim.generate import generate_dataset

    args = [
        *TINY,
        "sampling.frozen_phonons=0",
        "orientation.mistilt_max_mrad=0",
        "orientation.zone_axes=[100]",
        "sampling.optics_per_specimen=2",
        "sampling.engine=smatrix",
    ]
    local, remote = tmp_path / "local.zarr", tmp_path / "remote.zarr"
    generate_dataset(compose(*args, f"dataset.path={local}"))
    generate_dataset(compose(*args, f"dataset.path={remote}", f"cluster.address={scheduler}"))
    assert_same(local, remote)


def test_bad_address_is_one_error_and_nothing_written(tmp_path):
    out = tmp_path / "out.zarr"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "simulate.py"),
            *TINY,
            f"dataset.path={out}",
            "cluster.address=tcp://127.0.0.1:1",
            "cluster.connect_timeout_s=1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: cluster.address") and "127.0.0.1:1" in lines[0], proc.stderr
    assert not out.exists()


def test_malformed_address_is_refused(tmp_path):
    from stemforge.sim.config import ConfigError
    from stemforge.sim.generate import generate_dataset

    out = tmp_path / "out.zarr"
    with pytest.raises(ConfigError, match="cluster.address"):
        generate_dataset(
            compose(*TINY, f"dataset.path={out}", "cluster.address=nonsense://x", "cluster.connect_timeout_s=1")
        )
    assert not out.exists()


def test_scheduler_without_workers_is_refused(tmp_path):
    distributed = pytest.importorskip("distributed")
    from stemforge.sim.config import ConfigError
    from stemforge.sim.generate import generate_dataset

    out = tmp_path / "out.zarr"
    with distributed.LocalCluster(
        n_workers=0, processes=False, protocol="tcp://", host="127.0.0.1", dashboard_address=None
    ) as cl:
        with pytest.raises(ConfigError, match="no workers"):
            generate_dataset(
                compose(
                    *TINY,
                    f"dataset.path={out}",
                    f"cluster.address={cl.scheduler_address}",
                    "cluster.connect_timeout_s=1",
                )
            )
    assert not out.exists()


def test_failed_chunk_is_one_line_error_and_resumable(tmp_path):
    """A task that fails on a worker: one stderr line naming the chunk, exit 2, the chunk before it stays complete."""
    pytest.importorskip("distributed")
    out = tmp_path / "out.zarr"
    driver = f"""
import logging, runpy, sys
import distributed
import stemforge.sim.chunks
real = stemforge.sim.chunks.simulate_chunk
def flaky(cfg, catalog, detector, c, length, *a, **k):
    if c == 1:
        raise RuntimeError("injected failure")
    return real(cfg, catalog, detector, c, length, *a, **k)
stemforge.sim.chunks.simulate_chunk = flaky
# the worker runs in this process (threads); a real worker logs in its own process, not on the client's stderr
for name in ("distributed", "distributed.worker", "distributed.core", "distributed.scheduler"):
    logging.getLogger(name).setLevel(logging.CRITICAL)
cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://",
                                   host="127.0.0.1",
                                   dashboard_address=":0")  # no port clash with another cluster
sys.argv = ["simulate.py", *{TINY!r}, "cluster.max_in_flight=1",
            "dataset.path={out}", "cluster.address=" + cluster.scheduler_address]
try:
    runpy.run_path({str(ROOT / "scripts" / "simulate.py")!r}, run_name="__main__")
finally:
    cluster.close()
"""
    proc = subprocess.run([sys.executable, "-c", driver], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: chunk 1 failed on the cluster: RuntimeError: injected"), (
        proc.stderr[-3000:]
    )
    assert "1 of 2 chunks are complete" in lines[0] and "re-run" in lines[0]
    import zarr

    g = zarr.open_group(str(out), mode="r")
    assert g.attrs["status"] != "complete" and list(g["chunk_complete"][:]) == [True, False]


def test_cluster_does_not_import_generate():
    """Workers import stemforge.sim.cluster (and through it stemforge.sim.chunks), never the dataset orchestration."""
    code = (
        "import sys, stemforge.sim.cluster, stemforge.sim.chunks\n"
        "assert 'stemforge.sim.generate' not in sys.modules, sorted(m for m in sys.modules if 'stemforge' in m)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_only_orchestration_imports_generate():
    """No module of stemforge.sim imports stemforge.sim.generate (it orchestrates; nothing under it may need it)."""
    import ast

    sim = ROOT / "stemforge" / "sim"
    offenders = []
    for path in sorted(sim.glob("*.py")):
        if path.name == "generate.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                names = {a.name for a in node.names}
                relative_hit = node.level == 1 and (module == "generate" or (not module and "generate" in names))
                absolute_hit = module == "stemforge.sim.generate" or (module == "stemforge.sim" and "generate" in names)
                if relative_hit or absolute_hit:
                    offenders.append(f"{path.name}:{node.lineno}")
            elif isinstance(node, ast.Import) and any(a.name == "stemforge.sim.generate" for a in node.names):
                offenders.append(f"{path.name}:{node.lineno}")
    assert not offenders, offenders
