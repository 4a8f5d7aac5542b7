"""Cluster engine: a dataset's chunks computed on an existing dask.distributed scheduler, written locally.

``python scripts/simulate.py cluster.address=tcp://HOST:PORT`` connects a client to the scheduler and submits
one task per missing chunk: a work unit of ``dataset.chunk_runs`` consecutive runs (whole specimen groups), so
a worker keeps its FFTW plans and abTEM caches warm from one run to the next. Each task runs
:func:`stemforge.sim.chunks.simulate_chunk`, the function the local path runs, in the worker process with abTEM
configured as locally (``sampling.fftw_threads`` FFTW threads, FFTW_ESTIMATE planning:
:func:`stemforge.sim.setup.configure_abtem`). The client gathers results as they complete and writes each chunk and
its "complete" marker exactly as the local path does, so resuming, crash safety and the bytes of every chunk
are the same wherever a chunk was computed (every random draw comes from ``default_rng([seed, r])``).

At most ``cluster.max_in_flight`` chunks (default: twice the cluster's worker threads) are submitted at once,
so finished chunks never pile up in worker memory while the client writes. Workers need stemforge importable
(the same installation as the client). Without ``cluster.address`` nothing here is used: on small machines
the local path (eager batched waves, 2 FFTW threads) is the fastest (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager

from .config import ConfigError

log = logging.getLogger(__name__)

_WORKER_STATE: dict = {}


class ClusterTaskError(RuntimeError):
    """A chunk's task failed on a worker; chunks written before it stay complete, so re-running resumes."""


@contextmanager
def _quiet(*names: str):
    """Silence distributed's own retry/connection logging while we report the failure in one line."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def connect(cluster_cfg):
    """A ``distributed.Client`` on ``cluster_cfg.address`` with at least one worker.

    Raises :class:`stemforge.sim.config.ConfigError` (one line) when the address is malformed, no scheduler answers
    within ``connect_timeout_s`` seconds, or the scheduler has no worker in that time. The client is not made
    the process's default dask scheduler, so abTEM's own dask use in this process stays local.
    """
    from distributed import Client

    address = str(cluster_cfg.address).strip()
    timeout = float(getattr(cluster_cfg, "connect_timeout_s", 10.0))
    _check_address(address)
    with _quiet("distributed", "distributed.client", "distributed.comm", "distributed.core", "tornado"):
        try:
            client = Client(address, timeout=timeout, set_as_default=False)
        except Exception as err:  # noqa: BLE001 - OSError, TimeoutError, ValueError (bad scheme), ...
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError(
                f"cluster.address {address!r}: no dask scheduler reachable within {timeout:g} s "
                f"({type(err).__name__}: {msg})"
            ) from None
        try:
            client.wait_for_workers(1, timeout=timeout)
        except Exception:  # noqa: BLE001 - dask raises TimeoutError or OSError; both mean no workers
            client.close()
            raise ConfigError(
                f"cluster.address {address!r}: the scheduler has no workers (waited {timeout:g} s)"
            ) from None
    return client


def start_local(cluster_cfg):
    """A ``distributed.Client`` on a ``LocalCluster`` of ``cluster_cfg.local_workers`` worker processes with one
    thread each, on this machine (no dashboard); closing the client also closes the cluster."""
    from distributed import Client, LocalCluster

    n = int(cluster_cfg.local_workers)
    if n < 1:
        raise ConfigError(f"cluster.local_workers must be ≥ 1 to start local workers, got {n}")
    with _quiet("distributed", "distributed.nanny", "distributed.scheduler", "distributed.worker"):
        cluster = LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
        )
    client = Client(cluster, set_as_default=False)
    client.wait_for_workers(n, timeout=float(getattr(cluster_cfg, "connect_timeout_s", 10.0)) * 6)
    return client


def _check_address(address: str) -> None:
    """Refuse what is not a scheduler address (unknown scheme, missing port) before any connection attempt."""
    from distributed.comm import parse_address, parse_host_port
    from distributed.comm.registry import backends

    try:
        scheme, location = parse_address(address)
        known = sorted(set(backends) - {"inproc"})  # inproc: this process only, never a scheduler elsewhere
        if scheme not in known:
            raise ValueError(f"unknown protocol {scheme!r} (known: {', '.join(known)})")
        if scheme in ("tcp", "tls"):
            parse_host_port(location)
    except ValueError as err:
        raise ConfigError(
            f"cluster.address {address!r} is not a dask scheduler address ({err}); use tcp://HOST:PORT"
        ) from None


def worker_payload(cfg) -> dict:
    """The resolved configuration sent to workers (plain containers; no Hydra state)."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    return {
        k: v for k, v in c.items() if k in {"structure", "orientation", "optics", "detector", "sampling", "dataset"}
    }


def chunk_task(payload: dict, catalog: list, c: int, length: int) -> dict:
    """Compute chunk ``c`` (``length`` patterns) in a worker process; returns the arrays to write.

    ``catalog`` is the client's structure catalogue (:func:`stemforge.sim.chunks.build_catalog`, broadcast once to the
    workers). The first task of a configuration in a worker applies abTEM's configuration; later tasks reuse
    it (and the FFTW plans abTEM keeps).
    """
    from omegaconf import OmegaConf

    from . import chunks
    from .config import build_detector
    from .setup import configure_abtem

    key = json.dumps(payload, sort_keys=True, default=str)
    state = _WORKER_STATE.get(key)
    if state is None:
        cfg = OmegaConf.create(payload)
        configure_abtem(fftw_threads=int(cfg.sampling.fftw_threads))
        state = (cfg, build_detector(cfg.detector))
        _WORKER_STATE.clear()
        _WORKER_STATE[key] = state
    cfg, detector = state
    return chunks.simulate_chunk(cfg, catalog, detector, c, length)


def run_chunks(client, cfg, catalog: list, writer, missing: list[int], progress=None) -> None:
    """Compute ``missing`` chunks on the cluster and write each with ``writer`` as it completes.

    A chunk is written and marked complete only after its whole result has arrived; a task that fails raises
    here (chunks written before stay complete, so re-running resumes).
    """
    import math

    from distributed import as_completed

    payload = worker_payload(cfg)
    catalog_data = client.scatter(catalog, broadcast=True, hash=False) if missing else None
    T = len(cfg.sampling.thicknesses_nm)
    limit = int(getattr(cfg.cluster, "max_in_flight", 0) or 0)
    if limit <= 0:
        limit = max(2, 2 * sum(client.nthreads().values()))
    todo = iter(missing)
    running = {}  # future key -> (chunk index, future)
    pending = as_completed(loop=client.loop)

    def submit_next() -> bool:
        c = next(todo, None)
        if c is None:
            return False
        sl = writer.chunk_slice(c)
        fut = client.submit(chunk_task, payload, catalog_data, c, sl.stop - sl.start, pure=False)
        running[fut.key] = (c, fut)
        pending.add(fut)
        return True

    for _ in range(limit):
        if not submit_next():
            break
    for fut in pending:
        c, _ = running.pop(fut.key)
        try:
            data = fut.result()
        except Exception as err:
            client.cancel([f for _, f in running.values()])  # stop the chunks still queued or running
            done = writer.num_chunks - len(writer.missing_chunks())
            raise ClusterTaskError(
                f"chunk {c} failed on the cluster: {type(err).__name__}: {err} "
                f"({done} of {writer.num_chunks} chunks are complete; re-run the same command to resume)"
            ) from err
        writer.write_chunk(c, data)
        fut.release()
        if progress is not None:
            sl = writer.chunk_slice(c)
            progress.update(math.ceil((sl.stop - sl.start) / T))
        submit_next()
