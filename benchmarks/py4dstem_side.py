"""py4DSTEM's classical Bragg disk finding on a scan exported by ``benchmarks/analysis_accuracy.py``.

Runs with the python of a separate environment that has py4DSTEM 0.14 (which needs numpy<2); it imports only
numpy and py4DSTEM, never stemforge. Everything goes through plain files in one folder:

* in: ``scan.npy`` (Rx, Ry, H, W) float32, ``probe.npy`` (H, W) vacuum probe, ``params.json`` (kernel settings and
  the ``find_Bragg_disks`` keyword arguments);
* out: ``peaks.npz`` with ``counts`` (Rx·Ry peaks per position, row-major over the scan), ``qx`` (detector row, px),
  ``qy`` (detector column, px), ``intensity`` (correlation), ``kernel_s``, ``disks_s`` (wall), ``disks_cpu_s``,
  ``probe_radius_px``, ``probe_origin_px``, ``kernel_radii_px`` and ``versions`` (a JSON string).

Usage: ``<py4DSTEM-venv>/bin/python benchmarks/py4dstem_side.py FOLDER``. Exit 2 with one line when py4DSTEM cannot
be imported.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: py4dstem_side.py FOLDER (with scan.npy, probe.npy, params.json)", file=sys.stderr)
        return 2
    try:
        import numpy as np
        import py4DSTEM
        from py4DSTEM.process.calibration import get_probe_size
    except Exception as err:  # noqa: BLE001 - any import failure means: not a usable py4DSTEM environment
        print(f"error: cannot import py4DSTEM with {sys.executable}: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    params = json.loads((folder / "params.json").read_text())
    scan = np.load(folder / "scan.npy")
    probe_img = np.asarray(np.load(folder / "probe.npy"), dtype=np.float64)

    t0 = time.perf_counter()
    datacube = py4DSTEM.DataCube(data=scan)
    probe = py4DSTEM.Probe(probe_img)
    radius, qx0, qy0 = get_probe_size(probe_img)  # qx0: row, qy0: column of the probe's centre
    kernel_kw = {}
    mode = params.get("kernel_mode", "sigmoid")
    if mode in ("sigmoid", "sigmoid_log"):
        fi, fo = params.get("kernel_radii_factors", [1.0, 2.0])
        kernel_kw["radii"] = (fi * radius, fo * radius)
    elif mode == "gaussian":
        kernel_kw["sigma"] = float(params.get("kernel_sigma", 2.0))
    kernel = probe.get_kernel(mode=mode, origin=(qx0, qy0), **kernel_kw)
    kernel_s = time.perf_counter() - t0

    kw = dict(params["find_Bragg_disks"])
    kw["edgeBoundary"] = int(kw["edgeBoundary"])  # py4DSTEM asserts an integer
    w0, c0 = time.perf_counter(), time.process_time()
    bv = datacube.find_Bragg_disks(kernel, **kw)
    disks_s, disks_cpu_s = time.perf_counter() - w0, time.process_time() - c0

    rx_n, ry_n = datacube.Rshape
    counts, qx, qy, inten = [], [], [], []
    for rx in range(rx_n):
        for ry in range(ry_n):
            p = bv.raw[rx, ry]  # uncalibrated: detector pixels, qx along axis 2 (rows), qy along axis 3 (columns)
            counts.append(len(p.data))
            qx.append(np.asarray(p.data["qx"], dtype=np.float64))
            qy.append(np.asarray(p.data["qy"], dtype=np.float64))
            inten.append(np.asarray(p.data["intensity"], dtype=np.float64))
    import scipy

    versions = {
        "py4DSTEM": py4DSTEM.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": sys.version.split()[0],
    }
    np.savez(
        folder / "peaks.npz",
        counts=np.asarray(counts, dtype=np.int64),
        qx=np.concatenate(qx) if qx else np.zeros(0),
        qy=np.concatenate(qy) if qy else np.zeros(0),
        intensity=np.concatenate(inten) if inten else np.zeros(0),
        kernel_s=kernel_s,
        disks_s=disks_s,
        disks_cpu_s=disks_cpu_s,
        probe_radius_px=radius,
        probe_origin_px=np.array([qx0, qy0]),
        kernel_radii_px=np.array(kernel_kw.get("radii", (np.nan, np.nan)), dtype=np.float64),
        versions=json.dumps(versions),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
