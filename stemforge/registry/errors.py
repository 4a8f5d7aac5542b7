"""Exceptions of the model registry; every message is one line a user can act on."""

from __future__ import annotations

__all__ = [
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


class RegistryError(Exception):
    """Base class: a registry operation that cannot be done (the CLI prints its message on one line)."""


class InvalidNameError(RegistryError, ValueError):
    """A model name, version, alias, reference or file path that the registry refuses."""


class NotFoundError(RegistryError, LookupError):
    """No such store, model, version or alias."""


class VersionExistsError(RegistryError):
    """Publishing a version that is already in the store (versions are immutable)."""


class ReadOnlyStoreError(RegistryError):
    """Writing to a store that can only be read (http/https)."""


class StoreUnreachableError(RegistryError, OSError):
    """The store could not be reached (network down, server gone); cached models may still load."""


class IntegrityError(RegistryError):
    """A file whose size or sha256 differs from the registry's record (tampered, truncated, or corrupt)."""


class LockTimeoutError(RegistryError, TimeoutError):
    """Another publisher held the store's lock for longer than the timeout."""


class UnsafeModelError(RegistryError):
    """A model card asking to build something other than a ``networks.`` module."""
