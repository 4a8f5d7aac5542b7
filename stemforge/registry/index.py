"""The registry index (``index.json``): format, validation and reference resolution.

An index is data from elsewhere: :func:`check_index` validates every name, version, alias, hash, size and path
in it before anything is built from them (see :mod:`stemforge.registry.store` for the format).
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime

from .errors import InvalidNameError, NotFoundError, RegistryError
from .naming import FILE_NAMES, SemVer, validate_alias, validate_name, validate_relpath, validate_version

__all__ = [
    "INDEX",
    "LOCK",
    "FORMAT",
    "FORMAT_VERSION",
    "utc_now",
    "sha256_file",
    "empty_index",
    "check_index",
    "resolve",
    "malformed",
]

INDEX = "index.json"
LOCK = "index.lock"
FORMAT = "stemforge-registry"
FORMAT_VERSION = 1
_HEX = set("0123456789abcdef")


def utc_now() -> str:
    """Current UTC time as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> tuple[str, int]:
    """``(sha256 hex digest, size in bytes)`` of a local file."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def empty_index() -> dict:
    """An index with no models."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "updated": utc_now(), "models": {}}


def malformed(where: str, why: str) -> RegistryError:
    """The error for an index that fails validation."""
    return RegistryError(f"registry index at {where} is malformed: {why}")


def check_index(index: object, where: str) -> dict:
    """Validate an index read from a store (names, versions, aliases, hashes, paths); return it.

    An index is data from elsewhere: every name, version and path in it is validated before it is used
    to build a path or URL.
    """
    if not isinstance(index, dict) or not isinstance(index.get("models"), dict):
        raise malformed(where, "no 'models' object")
    fmt, fmt_version = index.get("format", FORMAT), index.get("format_version", 1)
    if fmt != FORMAT or not isinstance(fmt_version, int) or fmt_version > FORMAT_VERSION:
        raise malformed(
            where, f"format {fmt!r} v{fmt_version!r} is not {FORMAT} v<={FORMAT_VERSION} (upgrade stemforge?)"
        )
    try:
        for name, model in index["models"].items():
            validate_name(name)
            versions = model.get("versions")
            if not isinstance(versions, dict):
                raise malformed(where, f"model {name!r} has no 'versions' object")
            for version, entry in versions.items():
                validate_version(version)
                files = entry.get("files") if isinstance(entry, dict) else None
                if not isinstance(files, dict) or any(f not in files for f in FILE_NAMES):
                    raise malformed(where, f"{name} {version} does not list {' and '.join(FILE_NAMES)}")
                for fname, rec in files.items():
                    if fname not in FILE_NAMES:
                        raise malformed(where, f"{name} {version} lists unexpected file {fname!r}")
                    digest, size = rec.get("sha256"), rec.get("size")
                    if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= _HEX):
                        raise malformed(where, f"{name} {version} {fname}: sha256 is not 64 lowercase hex digits")
                    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                        raise malformed(where, f"{name} {version} {fname}: size is not a non-negative integer")
                    if "url" in rec:
                        if not isinstance(rec["url"], str) or "://" not in rec["url"]:
                            raise malformed(where, f"{name} {version} {fname}: 'url' is not an absolute URL")
                    else:
                        validate_relpath(rec.get("path"))
            aliases = model.get("aliases", {})
            if not isinstance(aliases, dict):
                raise malformed(where, f"model {name!r}: 'aliases' is not an object")
            for alias, target in aliases.items():
                validate_alias(alias)
                if target not in versions:
                    raise malformed(where, f"alias {name}:{alias} points to {target!r}, which is not a version")
    except InvalidNameError as err:
        raise malformed(where, str(err)) from None
    except (AttributeError, TypeError, ValueError) as err:
        raise malformed(where, f"{type(err).__name__}: {err}") from None
    return index


def resolve(index: dict, name: str, target: str, where: str) -> str:
    """The version that ``target`` (a version or an alias) of model ``name`` means in ``index``."""
    model = index["models"].get(name)
    if model is None:
        known = ", ".join(sorted(index["models"])) or "none"
        raise NotFoundError(f"no model {name!r} in the registry at {where} (models: {known})")
    if target in model["versions"]:
        return target
    if target in model.get("aliases", {}):
        return model["aliases"][target]
    versions = ", ".join(sorted(model["versions"], key=SemVer)) or "none"
    aliases = ", ".join(f"{a}->{v}" for a, v in sorted(model.get("aliases", {}).items())) or "none"
    raise NotFoundError(
        f"model {name!r} has no version or alias {target!r} at {where} (versions: {versions}; aliases: {aliases})"
    )
