"""Write a PNG grid that shows what an augmentation preset does to CBED patterns.

Rows are samples; columns are (1) the clean pattern, (2) the augmented pattern,
both on the same log10 intensity scale, and (3) the augmented pattern with the
augmented label maps (outlines of ``disk_map`` in red and ``vg_map`` in yellow)
and the augmented reflection positions (cyan +) on top -- labels must sit on
the diffraction disks.

Samples come from a simulator dataset (``--dataset PATH``, a zarr group of the data
contract) or, without one, from :func:`stemforge.augment.synthetic_sample` stand-ins.

Usage::

    python scripts/augment_preview.py --out outputs/augment_preview.png
    python scripts/augment_preview.py --dataset data/default.zarr --preset crystal4d --rows 6
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from stemforge import augment


def _log_image(img: np.ndarray, floor: float) -> np.ndarray:
    """log10 of an intensity image with a floor (fraction of the incident beam per pixel)."""
    return np.log10(np.maximum(img, floor))


def make_grid(samples: list[dict], outputs: list[dict], infos: list[str], out: Path) -> None:
    """Draw the grid and save it as PNG.

    Parameters
    ----------
    samples, outputs : list of dict
        Clean samples and the :func:`stemforge.augment.augment_sample` results.
    infos : list of str
        One caption per row (sampled parameters).
    out : Path
        PNG path (parent folders are created).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(samples)
    fig, axes = plt.subplots(rows, 3, figsize=(11, 3.7 * rows), squeeze=False)
    for r, (s, o, info) in enumerate(zip(samples, outputs, infos, strict=False)):
        clean = s["pattern"]
        vmax = float(np.log10(max(clean.max(), o["pattern"].max(), 1e-12)))
        floor = 10 ** (vmax - 5.0)  # five decades
        kw = {"cmap": "magma", "vmin": vmax - 5.0, "vmax": vmax, "interpolation": "nearest"}
        axes[r, 0].imshow(_log_image(clean, floor), **kw)
        axes[r, 0].set_title("clean (log10)", fontsize=9)
        axes[r, 1].imshow(_log_image(o["pattern"], floor), **kw)
        axes[r, 1].set_title("augmented (log10)", fontsize=9)
        axes[r, 1].set_xlabel(info, fontsize=7)
        axes[r, 2].imshow(
            _log_image(o["pattern"], floor), cmap="gray", vmin=vmax - 5.0, vmax=vmax, interpolation="nearest"
        )
        if o["labels"]:
            for key, color in (("disk_map", "red"), ("vg_map", "yellow")):
                lab = o["labels"].get(key)
                if lab is None or not lab.max() > 0:
                    continue
                # blob outlines at a quarter of each blob's typical height (robust to very uneven maxima)
                level = 0.25 * float(np.percentile(lab[lab > 0.05 * lab.max()], 50))
                axes[r, 2].contour(lab, levels=[level], colors=color, linewidths=0.6)
        if "reflections_px" in o:
            xy = o["reflections_px"][: int(o["num_reflections"])]
            axes[r, 2].scatter(xy[:, 0], xy[:, 1], s=14, marker="+", c="cyan", linewidths=0.7)
            h, w = clean.shape
            axes[r, 2].set_xlim(-0.5, w - 0.5)
            axes[r, 2].set_ylim(h - 0.5, -0.5)
        axes[r, 2].set_title("+ disk_map (red), vg_map (yellow), reflections (+)", fontsize=9)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def describe(pipeline) -> str:
    """Short caption of the parameters the pipeline drew for the last sample."""
    parts = []
    for t in pipeline.transforms:
        p = t.params
        if not p:
            continue
        if "dose_e" in p:
            parts.append(f"dose {p['dose_e']:.2g} e-")
        if "ellipticity" in p:
            dx, dy = p["shift_xy_px"]
            parts.append(f"e {p['ellipticity']:.3f}, shift ({dx:+.1f},{dy:+.1f}) px, scale {p['scale']:.3f}")
        if "total_weight" in p and p["total_weight"]:
            parts.append(f"bg {p['total_weight']:.3f}")
        if "sigma_px" in p:
            parts.append(f"PSF {p['sigma_px']:.2f} px")
        if "hot_index" in p:
            parts.append(f"hot {len(p['hot_index'])}, dead {len(p['dead_index'])}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, augment the samples and write the PNG."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default=None, help="zarr group of the simulator (default: synthetic stand-ins)")
    ap.add_argument("--preset", default="default", help="stemforge/conf/augment/<preset>.yaml (default: default)")
    ap.add_argument("--rows", type=int, default=4, help="number of samples (rows)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the pipeline and of the sample choice")
    ap.add_argument("--out", default="outputs/augment_preview.png", help="PNG path")
    args = ap.parse_args(argv)
    if args.rows < 1:
        ap.error("--rows must be >= 1")

    rng = np.random.default_rng(args.seed)
    if args.dataset:
        import zarr

        count = zarr.open_group(args.dataset, mode="r")["patterns"].shape[0]
        idx = np.sort(rng.choice(count, size=min(args.rows, count), replace=False))
        samples = augment.read_samples(args.dataset, idx)
    else:
        samples = [augment.synthetic_sample(rng) for _ in range(args.rows)]
    pipeline = augment.load_preset(args.preset, seed=args.seed)
    outputs, infos = [], []
    for s in samples:
        outputs.append(
            augment.augment_sample(
                pipeline,
                s["pattern"],
                s["probe"],
                s["labels"],
                s.get("reflections_px"),
                s.get("num_reflections"),
                pixel_size_inv_A=s["calibration"]["pixel_size_inv_A"],
            )
        )
        infos.append(describe(pipeline))
    out = Path(args.out)
    make_grid(samples, outputs, infos, out)
    print(f"wrote {out} ({len(samples)} rows, preset {args.preset})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
