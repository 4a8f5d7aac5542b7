"""Command line: ``python -m stemforge.registry COMMAND ... [--store URL]``.

Commands
--------
``list``                               models with their versions and aliases
``show NAME[:VERSION|ALIAS]``          the model card (summary; ``--json`` for all of it)
``pull NAME[:VERSION|ALIAS]``          download into the cache (``--cache DIR`` or ``$STEMFORGE_CACHE``) and verify
``push CKPT --name N --version V``     publish a checkpoint (as ``scripts/publish.py``)
``push FOLDER``                        publish a built model folder (``card.json`` + ``model.safetensors``,
                                       e.g. a pulled cache entry: copies a version to another store)
``alias NAME ALIAS VERSION``           point an alias at a version (``--delete`` removes it)

``--store`` defaults to ``$STEMFORGE_STORE`` or ``~/.local/share/stemforge/registry``. Every failure exits
with status 1 (2 for a usage error) and one line ``error: ...`` on stderr, no traceback
(``STEMFORGE_DEBUG=1`` re-raises).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

__all__ = ["main", "build_parser", "report", "DeferredWarnings"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise _UsageError(
            f"{message} (see `stemforge-registry {self.prog.split()[-1]} --help`)"
            if " " in self.prog
            else f"{message} (see `stemforge-registry --help`)"
        )


class _UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m stemforge.registry`` argument parser."""
    store_help = (
        "store URL: folder, file://, http(s):// (read-only), s3://... "
        "(default $STEMFORGE_STORE or ~/.local/share/stemforge/registry)"
    )
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: an option given after the command wins, one given before it (on the main parser) still counts
    common.add_argument("--store", default=argparse.SUPPRESS, help=store_help)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    parser = _Parser(prog="stemforge-registry", description="stemforge model registry: list, show, pull, push, alias.")
    parser.add_argument("--store", default=None, help=store_help)
    parser.add_argument("--json", action="store_true", help="print JSON")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("list", parents=[common], help="list models, versions and aliases")
    p = sub.add_parser("show", parents=[common], help="show a model card")
    p.add_argument("ref", help="NAME, NAME:VERSION or NAME:ALIAS")
    p = sub.add_parser("pull", parents=[common], help="download into the cache and verify")
    p.add_argument("ref", help="NAME, NAME:VERSION or NAME:ALIAS")
    p.add_argument("--cache", default=None, help="cache folder (default $STEMFORGE_CACHE or ~/.cache/stemforge)")
    p = sub.add_parser("push", parents=[common], help="publish a checkpoint or a built model folder")
    p.add_argument("source", help="checkpoint file, or folder with card.json + model.safetensors")
    p.add_argument("--name", help="model name (required for a checkpoint)")
    p.add_argument("--version", help="semantic version X.Y.Z (required for a checkpoint)")
    p.add_argument("--alias", action="append", default=[], help="alias to point at it (repeatable)")
    p.add_argument("--license", default="MIT", help="license of the weights (default MIT)")
    p.add_argument("--metrics", default=None, help="metrics.json (default: beside the checkpoints folder)")
    p.add_argument("--description", default=None)
    p.add_argument("--no-wandb", action="store_true", help="do not log a W&B artifact")
    p = sub.add_parser("alias", parents=[common], help="point an alias at a version, or delete it")
    p.add_argument("name")
    p.add_argument("alias")
    p.add_argument("version", nargs="?")
    p.add_argument("--delete", action="store_true", help="remove the alias")
    return parser


def _list(args) -> None:
    from . import list_models

    models = list_models(args.store)
    if args.json:
        print(json.dumps(models, indent=2))
        return
    if not models:
        print("(no models)")
    for name, m in models.items():
        aliases = ", ".join(f"{a} -> {v}" for a, v in m["aliases"].items()) or "-"
        print(f"{name}  [{m['task'] or '?'}]  versions: {', '.join(m['versions'])}  aliases: {aliases}")


def _summary(card: dict) -> str:
    arch, inp, labels = card.get("architecture", {}), card.get("input", {}), card.get("labels", {})
    test = (card.get("metrics") or {}).get("test") or {}
    lines = [
        f"{card.get('name')} {card.get('version')}  ({card.get('task')}, {card.get('task_family')})",
        f"  network:   {arch.get('net_class')}  {arch.get('num_parameters')} parameters",
        f"  input:     {inp.get('shape')} px at {inp.get('pixel_size_inv_A')} 1/A per px; energy "
        f"{inp.get('energy_eV')} eV; semi-angle {inp.get('semiangle_mrad')} mrad; normalisation "
        f"{inp.get('normalisation')}",
        f"  output:    {labels.get('definition')} [{labels.get('unit')}] shape {labels.get('output_shape')}"
        + (f" classes {labels['class_names']}" if labels.get("class_names") else ""),
        "  test:      "
        + (", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(test.items())) or "-"),
        f"  data:      {(card.get('training') or {}).get('dataset_fingerprint')}  structures "
        f"{(card.get('training') or {}).get('structures')}",
        f"  created:   {card.get('created')}  license {card.get('license')}  stemforge "
        f"{(card.get('software') or {}).get('stemforge')}",
    ]
    for fname, rec in (card.get("files") or {}).items():
        lines.append(f"  {fname}: sha256 {rec.get('sha256')}  {rec.get('size')} bytes")
    return "\n".join(lines)


def _show(args) -> None:
    from .download import pull

    pulled = pull(args.ref, store=args.store, card_only=True)
    print(json.dumps(pulled.card, indent=2) if args.json else _summary(pulled.card))


def _pull(args) -> None:
    from .download import pull

    pulled = pull(args.ref, store=args.store, cache=args.cache)
    if args.json:
        print(
            json.dumps(
                {
                    "name": pulled.name,
                    "version": pulled.version,
                    "folder": str(pulled.folder),
                    "offline": pulled.offline,
                    "files": pulled.records,
                },
                indent=2,
            )
        )
        return
    hashes = ", ".join(f"{f} sha256 {r['sha256'][:12]}... ({r['size']} bytes)" for f, r in pulled.records.items())
    print(f"{pulled.name} {pulled.version} verified in {pulled.folder}: {hashes}")


def _push(args) -> None:
    from .publishing import publish, push_folder

    source = Path(args.source)
    if source.is_dir():
        result = push_folder(source, args.store, args.alias, name=args.name, version=args.version)
    else:
        if not args.name or not args.version:
            raise _UsageError("push of a checkpoint needs --name and --version")
        result = publish(
            source,
            args.name,
            args.version,
            store=args.store,
            aliases=args.alias,
            license=args.license,
            metrics=args.metrics,
            description=args.description,
            wandb=not args.no_wandb and "auto",
        )
    print(report(result))


def report(result: dict) -> str:
    """Human-readable lines about a publish result."""
    files = ", ".join(
        f"{f} sha256 {r['sha256'][:12]}... ({r['size']} bytes)" for f, r in result["entry"]["files"].items()
    )
    aliases = f"; aliases {', '.join(result['aliases'])}" if result["aliases"] else ""
    return (
        f"published {result['name']} {result['version']} to {result['store']}{aliases}\n  {files}\n"
        f"  W&B artifact: {result['wandb']}"
    )


def _alias(args) -> None:
    from . import remove_alias, set_alias

    if args.delete:
        if args.version:
            raise _UsageError("alias --delete takes NAME ALIAS only")
        old = remove_alias(args.name, args.alias, args.store)
        print(f"removed {args.name}:{args.alias} (was {old})")
        return
    if not args.version:
        raise _UsageError("alias needs NAME ALIAS VERSION (or --delete)")
    old = set_alias(args.name, args.alias, args.version, args.store)
    print(f"{args.name}:{args.alias} -> {args.version}" + (f" (was {old})" if old and old != args.version else ""))


class DeferredWarnings(logging.Handler):
    """Collects the ``registry`` logger's warnings during a command and prints them (one line each, on stderr)
    only if the command succeeds, so that a failure prints exactly one line."""

    def __init__(self, logger_name: str = "registry"):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []
        self.logger = logging.getLogger(logger_name)

    def emit(self, record):
        self.lines.append(f"{record.levelname.lower()}: {record.getMessage()}".replace("\n", " "))

    def __enter__(self):
        self._saved = (self.logger.level, self.logger.propagate)
        self.logger.addHandler(self)
        self.logger.setLevel(logging.WARNING)
        self.logger.propagate = False
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)
        self.logger.setLevel(self._saved[0])
        self.logger.propagate = self._saved[1]
        return False

    def flush_to(self, stream) -> None:
        for line in self.lines:
            print(line, file=stream)
        self.lines.clear()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 failure, 2 usage error)."""
    with DeferredWarnings() as warnings:
        status = _run(argv)
        if status == 0:
            warnings.flush_to(sys.stderr)
    return status


def _run(argv: list[str] | None) -> int:
    from .errors import RegistryError

    debug = os.environ.get("STEMFORGE_DEBUG", "") not in ("", "0")
    try:
        args = build_parser().parse_args(argv)
        {"list": _list, "show": _show, "pull": _pull, "push": _push, "alias": _alias}[args.command](args)
        return 0
    except _UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SystemExit as err:  # --help
        return int(err.code or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        text = str(err).replace("\n", " ").strip()
        prefix = "" if isinstance(err, RegistryError) else f"{type(err).__name__}: "
        print(f"error: {prefix}{text}", file=sys.stderr)
        return 1
