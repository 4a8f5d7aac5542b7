"""Registry stage: publish, version, download and load trained models (safetensors + model cards).

Publish a checkpoint written by ``scripts/train.py`` to a store (a folder, bucket or web server with an
``index.json``), then load it anywhere::

    python scripts/publish.py ckpt=logs/train/runs/RUN/checkpoints/last.ckpt name=bragg-unet version=1.0.0 \\
        store=/srv/models alias=stable

    from stemforge import registry
    model = stemforge.registry.load("bragg-unet:stable", store="https://models.example.org/stemforge")
    vg_map = model(pattern, probe)        # normalised as in training, no gradients, eval mode

API
---
:func:`load` (``name[:version|alias]`` → :class:`~stemforge.registry.loading.RegisteredModel` with ``.net`` in eval
mode,
``.card``, ``.input_spec``, ``.labels``, ``.preprocess``), :func:`pull` (download + verify into the cache),
:func:`publish` (checkpoint → store), :func:`push_folder` (built model folder → store), :func:`list_models`,
:func:`set_alias`, :func:`remove_alias`, :class:`Store`, :func:`cache_dir`; errors derive from
:class:`RegistryError`. CLI: ``python -m stemforge.registry list|show|pull|push|alias`` (:mod:`stemforge.registry.cli`).

Safety: weights are safetensors and cards JSON — nothing downloaded is ever unpickled; every file's sha256
and size come from the index and are enforced; a card may only build ``nn.Module`` classes of the
``networks`` package; names, versions and paths are validated (no path traversal). See ``docs/registry.md``.

Modules: :mod:`~stemforge.registry.naming` (names, versions, references), :mod:`~stemforge.registry.index` (index
format and
validation), :mod:`~stemforge.registry.store` (stores), :mod:`~stemforge.registry.lock` (publisher lock),
:mod:`~stemforge.registry.card`
(model cards), :mod:`~stemforge.registry.download` (pooch, cache, offline), :mod:`~stemforge.registry.loading` (safe
building),
:mod:`~stemforge.registry.publishing`, :mod:`~stemforge.registry.cli`.
Torch is imported only by loading and publishing, so listing and pulling stay light.
"""

from __future__ import annotations

from .download import cache_dir, pull
from .errors import (
    IntegrityError,
    InvalidNameError,
    LockTimeoutError,
    NotFoundError,
    ReadOnlyStoreError,
    RegistryError,
    StoreUnreachableError,
    UnsafeModelError,
    VersionExistsError,
)
from .naming import parse_ref, validate_alias, validate_name, validate_version
from .store import Store, default_store_url

__all__ = [
    "load",
    "pull",
    "publish",
    "push_folder",
    "list_models",
    "set_alias",
    "remove_alias",
    "Store",
    "cache_dir",
    "default_store_url",
    "parse_ref",
    "validate_name",
    "validate_version",
    "validate_alias",
    "RegisteredModel",
    "RegistryError",
    "InvalidNameError",
    "NotFoundError",
    "VersionExistsError",
    "ReadOnlyStoreError",
    "StoreUnreachableError",
    "IntegrityError",
    "LockTimeoutError",
    "UnsafeModelError",
]

_LAZY = {"load": "loading", "RegisteredModel": "loading", "publish": "publishing", "push_folder": "publishing"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def list_models(store: str | Store | None = None) -> dict:
    """``{name: {"task", "versions": [sorted], "aliases": {alias: version}}}`` of a store."""
    from .naming import SemVer

    st = store if isinstance(store, Store) else Store(store)
    index = st.read_index()
    return {
        name: {
            "task": m.get("task"),
            "versions": sorted(m["versions"], key=SemVer),
            "aliases": dict(sorted(m.get("aliases", {}).items())),
        }
        for name, m in sorted(index["models"].items())
    }


def set_alias(name: str, alias: str, version: str, store: str | Store | None = None) -> str | None:
    """Point ``name:alias`` at ``version`` in a store; returns the version it pointed to before (or None)."""
    st = store if isinstance(store, Store) else Store(store)
    return st.set_alias(name, alias, version)


def remove_alias(name: str, alias: str, store: str | Store | None = None) -> str:
    """Delete ``name:alias`` from a store; returns the version it pointed to."""
    st = store if isinstance(store, Store) else Store(store)
    return st.remove_alias(name, alias)
