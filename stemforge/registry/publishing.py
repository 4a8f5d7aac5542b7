"""Publish a training checkpoint (or an already built model folder) to a store.

Publishing a checkpoint:

1. validates the name, version and aliases, and that the store is writable and lacks the version;
2. loads the checkpoint with ``torch.load(weights_only=True)`` and the run's ``metrics.json``;
3. writes the network's weights (``net.*``, prefix stripped) as ``model.safetensors`` and the model card
   (:mod:`stemforge.registry.card`) with the weights' sha256 and size as ``card.json``;
4. rebuilds the network from the card exactly as :func:`stemforge.registry.load` will (allowed ``_target_`` only,
   ``strict=True`` weights) so that nothing unloadable is published;
5. uploads both files and records them in the index under the store's lock (:meth:`Store.add_version`);
6. logs both files as a W&B ``model`` artifact when W&B is online and logged in, else skips with a notice.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from .card import build_card, load_checkpoint, net_weights, read_metrics
from .errors import RegistryError, VersionExistsError
from .naming import FILE_NAMES, validate_alias, validate_name, validate_version
from .store import Store, sha256_file

__all__ = ["publish", "push_folder", "log_wandb_artifact"]

log = logging.getLogger("registry")


def _precheck(store: Store, name: str, version: str, aliases) -> list[str]:
    validate_name(name)
    validate_version(version)
    aliases = [validate_alias(a) for a in aliases]
    if "latest" in aliases:
        raise RegistryError("'latest' is maintained automatically (highest version); do not pass it as an alias")
    store._require_writable()
    model = store.read_index(missing_ok=True)["models"].get(name, {})
    if version in model.get("versions", {}):  # early, friendly; the authoritative check is under the lock
        raise VersionExistsError(
            f"{name} {version} is already published in {store.url} (versions are immutable; "
            "publish a new version, e.g. a higher patch number, and move an alias to it)"
        )
    return aliases


def _verify_loadable(card: dict, weights: Path) -> None:
    from .card import upgrade_card
    from .loading import build_net, load_weights

    net = build_net(upgrade_card(card)["architecture"]["net"])
    load_weights(net, weights, "the weights being published")


def _write_card(card: dict, path: Path) -> None:
    path.write_text(json.dumps(card, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def publish(
    ckpt: str | os.PathLike,
    name: str,
    version: str,
    store: str | Store | None = None,
    aliases: list[str] | tuple[str, ...] = (),
    license: str = "MIT",
    metrics: str | os.PathLike | None = None,
    description: str | None = None,
    wandb: str | bool = "auto",
    wandb_project: str = "stemforge",
) -> dict:
    """Publish a Lightning checkpoint written by ``scripts/train.py``.

    Parameters
    ----------
    ckpt : path
        Checkpoint file (``<run>/checkpoints/last.ckpt`` or ``epoch_XXX.ckpt``).
    name, version : str
        Registry name (``bragg-unet``) and semantic version (``1.0.0``).
    store : str or Store, optional
        Store URL (default ``$STEMFORGE_STORE`` or the local default store).
    aliases : sequence of str
        Aliases to point at this version (``stable``...); ``latest`` follows the highest version by itself.
    license : str
        License of the weights (SPDX identifier), recorded in the card.
    metrics : path, optional
        The run's ``metrics.json`` (default: ``metrics.json`` beside the checkpoints folder, if present).
    description : str, optional
        Free text for the card.
    wandb : "auto" | bool
        Log the files as a W&B artifact when online (``"auto"``); False never tries.
    wandb_project : str
        W&B project of the artifact.

    Returns
    -------
    dict
        ``name``, ``version``, ``store`` (URL), ``entry`` (the index entry with file hashes), ``aliases``,
        ``card`` and ``wandb`` (what happened with the artifact).
    """
    st = store if isinstance(store, Store) else Store(store)
    aliases = _precheck(st, name, version, aliases)
    ckpt = Path(ckpt)
    explicit_metrics = metrics is not None
    metrics = Path(metrics) if explicit_metrics else ckpt.absolute().parent.parent / "metrics.json"
    if explicit_metrics and not metrics.is_file():
        raise RegistryError(f"metrics file {metrics} does not exist")
    checkpoint = load_checkpoint(ckpt)
    card = build_card(
        checkpoint,
        name,
        version,
        metrics=read_metrics(metrics),
        license=license,
        description=description,
        ckpt_path=ckpt,
    )
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="stemforge-publish-") as tmp:
        tmp = Path(tmp)
        weights = tmp / "model.safetensors"
        save_file(
            net_weights(checkpoint["state_dict"]),
            str(weights),
            metadata={"format": "pt", "name": name, "version": version, "producer": "stemforge.registry"},
        )
        digest, size = sha256_file(weights)
        card["files"] = {"model.safetensors": {"sha256": digest, "size": size}}
        _write_card(card, tmp / "card.json")
        _verify_loadable(card, weights)
        entry = st.add_version(
            name,
            version,
            {"model.safetensors": weights, "card.json": tmp / "card.json"},
            task=card["task"],
            aliases=aliases,
        )
        status = log_wandb_artifact(tmp, card, aliases, wandb, wandb_project)
    return {
        "name": name,
        "version": version,
        "store": st.url,
        "entry": entry,
        "aliases": aliases,
        "card": card,
        "wandb": status,
    }


def push_folder(
    folder: str | os.PathLike,
    store: str | Store | None = None,
    aliases=(),
    name: str | None = None,
    version: str | None = None,
) -> dict:
    """Publish an already built model folder (``card.json`` + ``model.safetensors``, e.g. a pulled cache entry).

    This copies a version between stores (mirroring); the card is not modified, its weights hash is checked
    and the network is rebuilt from it before anything is uploaded.
    """
    folder = Path(folder)
    missing = [f for f in FILE_NAMES if not (folder / f).is_file()]
    if missing:
        raise RegistryError(f"{folder} is not a model folder (missing {', '.join(missing)})")
    try:
        card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RegistryError(f"{folder / 'card.json'} is not valid JSON: {err}") from None
    cname, cversion = card.get("name"), card.get("version")
    if (name and name != cname) or (version and version != cversion):
        raise RegistryError(
            f"{folder} holds {cname} {cversion}, not {name or cname} {version or cversion} "
            "(a card's name and version cannot be changed; publish the checkpoint again)"
        )
    st = store if isinstance(store, Store) else Store(store)
    aliases = _precheck(st, cname, cversion, aliases)
    listed = (card.get("files") or {}).get("model.safetensors") or {}
    got = sha256_file(folder / "model.safetensors")
    if (listed.get("sha256"), listed.get("size")) != got:
        raise RegistryError(
            f"{folder / 'model.safetensors'} does not match its card (sha256 {got[0][:12]}..., "
            f"card says {str(listed.get('sha256'))[:12]}...)"
        )
    _verify_loadable(card, folder / "model.safetensors")
    entry = st.add_version(cname, cversion, {f: folder / f for f in FILE_NAMES}, task=card.get("task"), aliases=aliases)
    return {
        "name": cname,
        "version": cversion,
        "store": st.url,
        "entry": entry,
        "aliases": aliases,
        "card": card,
        "wandb": "not attempted (push of a built folder)",
    }


def log_wandb_artifact(folder: Path, card: dict, aliases, mode: str | bool = "auto", project: str = "stemforge") -> str:
    """Log ``model.safetensors`` and ``card.json`` as a W&B ``model`` artifact when online; say what happened.

    Skipped (with a notice) when ``mode`` is False, ``WANDB_MODE`` is offline/disabled/dryrun, or there are no
    W&B credentials. A failure to log is reported, not raised: the model is already published.
    """
    if mode in (False, "false", "off", "no", "0"):
        return "skipped (wandb=false)"
    wandb_mode = os.environ.get("WANDB_MODE", "").lower()
    if wandb_mode in ("offline", "disabled", "dryrun"):
        msg = f"skipped: WANDB_MODE={wandb_mode} (the files are published in the store only)"
        log.info("W&B artifact %s", msg)
        return msg
    try:
        import wandb
    except ImportError:
        return "skipped: wandb is not installed"
    try:
        if not wandb.login(prompt=False, verify=False):
            return "skipped: not logged in to W&B (run `wandb login`)"
        run = wandb.init(
            project=project,
            job_type="publish",
            name=f"publish-{card['name']}-{card['version']}",
            config={"registry": {"name": card["name"], "version": card["version"]}},
        )
        artifact = wandb.Artifact(
            card["name"],
            type="model",
            description=card.get("description"),
            metadata={
                k: card.get(k)
                for k in ("version", "task", "architecture", "input", "labels", "metrics", "license", "files")
            },
        )
        for fname in FILE_NAMES:
            artifact.add_file(str(folder / fname), name=fname)
        run.log_artifact(artifact, aliases=[card["version"], *aliases])
        run.finish()
        return f"logged W&B artifact {project}/{card['name']}:{card['version']}"
    except Exception as err:  # noqa: BLE001 - never fail a publish that already happened
        log.warning("W&B artifact not logged: %s: %s", type(err).__name__, err)
        return f"failed: {type(err).__name__}: {err}"
