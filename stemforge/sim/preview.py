"""Write a PNG grid of a simulated dataset: pattern (log scale) with its reflections, probe, and label maps.

Usage: ``python scripts/preview_dataset.py PATH [--out preview.png] [--n 6] [--seed 0]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--out", default=None, help="PNG path (default: <dataset>.png)")
    parser.add_argument("--n", type=int, default=6, help="number of patterns shown")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stemforge.sim.dataset import open_dataset

    try:
        g, valid = open_dataset(args.path)
    except (FileNotFoundError, KeyError) as err:
        print(f"error: {args.path} is not a stemforge dataset ({err})", file=sys.stderr)
        return 2
    idx = np.flatnonzero(valid)
    if len(idx) == 0:
        print(f"error: {args.path} has no completed chunk yet", file=sys.stderr)
        return 2
    pick = np.sort(np.random.default_rng(args.seed).choice(idx, size=min(args.n, len(idx)), replace=False))
    lab = g["labels"]
    fig, axes = plt.subplots(len(pick), 4, figsize=(12, 3 * len(pick)), squeeze=False)
    for row, i in zip(axes, pick):
        p = g["patterns"][i]
        n = int(lab["num_reflections"][i])
        px = lab["reflections_px"][i][:n]
        vis = lab["reflections_visible"][i][:n]
        shown = lab["reflections_present"][i][:n] if "reflections_present" in lab else vis
        row[0].imshow(np.log10(p + 1e-6), cmap="magma")
        row[0].scatter(px[vis & ~shown, 0], px[vis & ~shown, 1], s=8, facecolors="none", edgecolors="0.6", lw=0.4)
        row[0].scatter(px[shown, 0], px[shown, 1], s=12, facecolors="none", edgecolors="cyan", linewidths=0.6)
        row[0].set_title(
            f"#{i} {lab['formula'][i]} {lab['zone'][i]} t={lab['thickness_A'][i] / 10:.1f} nm\n"
            f"{lab['energy_eV'][i] / 1e3:.0f} keV α={lab['semiangle_mrad'][i]:.2f} mrad",
            fontsize=8,
        )
        row[1].imshow(g["probes"][i], cmap="gray")
        row[1].set_title("vacuum probe", fontsize=8)
        row[2].imshow(lab["vg_map"][i], cmap="viridis")
        row[2].set_title("Ewald-weighted |V_g| (V)", fontsize=8)
        row[3].imshow(lab["disk_map"][i], cmap="gray")
        row[3].set_title("present disks (1e4 e⁻)" if "reflections_present" in lab else "disk positions", fontsize=8)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    out = Path(args.out or str(Path(args.path).with_suffix("")) + "_preview.png")
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
