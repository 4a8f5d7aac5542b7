"""Publish a trained checkpoint to a model registry store.

Usage::

    python scripts/publish.py ckpt=CHECKPOINT name=NAME version=X.Y.Z [store=STORE_URL] [alias=stable[,other]]
                              [license=MIT] [metrics=PATH] [description=TEXT] [wandb=auto|false]
                              [wandb_project=stemforge]

``store`` defaults to ``$STEMFORGE_STORE`` or ``~/.local/share/stemforge/registry``; ``metrics`` defaults to
``metrics.json`` beside the checkpoints folder. The weights go to the store as safetensors with a JSON model
card, both recorded with sha256 and size in the store's ``index.json``; a version that exists is refused.
On failure: exit status 1 (2 for bad arguments) and one line ``error: ...`` on stderr.

Example::

    python scripts/publish.py ckpt=logs/train/runs/2026-01-01_00-00-00/checkpoints/last.ckpt \\
        name=bragg-unet version=1.0.0 store=/srv/stemforge-models alias=stable
"""

from __future__ import annotations

import os
import sys

KEYS = {"ckpt", "name", "version", "store", "alias", "license", "metrics", "description", "wandb", "wandb_project"}
REQUIRED = ("ckpt", "name", "version")


class UsageError(Exception):
    pass


def parse(argv: list[str]) -> dict:
    """``key=value`` arguments → dict (``alias`` may be ``a,b``, ``[a,b]`` or repeated)."""
    out: dict = {"alias": []}
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("+").strip()
        if not sep or key not in KEYS:
            raise UsageError(f"unexpected argument {arg!r}: expected key=value with key in {sorted(KEYS)}")
        if key == "alias":
            out["alias"] += [a.strip() for a in value.strip("[]").split(",") if a.strip()]
        else:
            out[key] = value
    missing = [k for k in REQUIRED if not out.get(k)]
    if missing:
        raise UsageError(
            f"missing {', '.join(f'{k}=' for k in missing)} "
            "(usage: publish.py ckpt=CKPT name=NAME version=X.Y.Z store=URL)"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        return 0
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        opts = parse(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from stemforge.registry.cli import DeferredWarnings, report
    from stemforge.registry.errors import RegistryError
    from stemforge.registry.publishing import publish

    with DeferredWarnings() as warnings:  # printed only on success: a failure is exactly one line
        try:
            result = publish(
                opts["ckpt"],
                opts["name"],
                opts["version"],
                store=opts.get("store") or None,
                aliases=opts["alias"],
                license=opts.get("license", "MIT"),
                metrics=opts.get("metrics"),
                description=opts.get("description"),
                wandb=opts.get("wandb", "auto"),
                wandb_project=opts.get("wandb_project", "stemforge"),
            )
        except Exception as err:
            if os.environ.get("STEMFORGE_DEBUG", "") not in ("", "0"):
                raise
            text = str(err).replace("\n", " ").strip()
            kind = "" if isinstance(err, RegistryError) else f"{type(err).__name__}: "
            print(f"error: {kind}{text}", file=sys.stderr)
            return 1
        warnings.flush_to(sys.stderr)
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
