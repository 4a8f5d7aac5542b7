"""Validation of model names, semantic versions, aliases, references and store-relative paths.

Everything that becomes part of a path or URL (in the store or in the cache) passes through here, both when
publishing and when reading an index written by somebody else.

Rules
-----
name
    1–64 characters of lowercase letters, digits, ``-`` and ``_``, starting with a letter or digit
    (``bragg-unet``, ``thickness_resnet2``). No ``/``, ``.``, ``..``, spaces or capitals.
version
    Semantic version ``MAJOR.MINOR.PATCH`` with an optional pre-release (``1.0.0``, ``2.1.0-rc.1``); no leading
    zeros, no ``v`` prefix, no ``+build`` metadata (it does not order versions, so two builds of one version
    could not be told apart).
alias
    Like a name but starting with a letter, so it never looks like a version (``latest``, ``stable``, ``paper``).
reference
    ``NAME``, ``NAME:VERSION`` or ``NAME:ALIAS``; a bare name means ``NAME:latest``.
"""

from __future__ import annotations

import re
from functools import total_ordering

from .errors import InvalidNameError

__all__ = [
    "validate_name",
    "validate_version",
    "validate_alias",
    "parse_ref",
    "is_version",
    "SemVer",
    "latest_version",
    "validate_relpath",
    "FILE_NAMES",
]

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_ALIAS = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_NUM = r"(0|[1-9][0-9]*)"
_PRE_ID = r"(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_SEMVER = re.compile(rf"{_NUM}\.{_NUM}\.{_NUM}(?:-({_PRE_ID}(?:\.{_PRE_ID})*))?")
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}")

#: The files of one published version (weights, then the card).
FILE_NAMES = ("model.safetensors", "card.json")


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid model name, else raise :class:`InvalidNameError`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidNameError(
            f"invalid model name {name!r}: use 1-64 lowercase letters, digits, '-' or '_' starting with a letter "
            "or digit (no '/', '.', '..', spaces or capitals)"
        )
    return name


def validate_alias(alias: object) -> str:
    """Return ``alias`` if it is a valid alias (a name starting with a letter), else raise."""
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
        raise InvalidNameError(
            f"invalid alias {alias!r}: use 1-64 lowercase letters, digits, '-' or '_' starting with a letter"
        )
    return alias


def is_version(text: object) -> bool:
    """True if ``text`` is a valid semantic version for the registry."""
    return isinstance(text, str) and _SEMVER.fullmatch(text) is not None


def validate_version(version: object) -> str:
    """Return ``version`` if it is ``MAJOR.MINOR.PATCH[-PRERELEASE]``, else raise :class:`InvalidNameError`."""
    if isinstance(version, str) and "+" in version and is_version(version.split("+", 1)[0]):
        raise InvalidNameError(
            f"invalid version {version!r}: build metadata ('+...') is not allowed; "
            "bump the patch or pre-release instead"
        )
    if not is_version(version):
        raise InvalidNameError(
            f"invalid version {version!r}: expected a semantic version MAJOR.MINOR.PATCH "
            "such as 1.0.0 or 1.1.0-rc.1 (no 'v' prefix, no leading zeros)"
        )
    return version  # type: ignore[return-value]


def parse_ref(ref: str, version: str | None = None) -> tuple[str, str]:
    """Split a reference into ``(name, version_or_alias)``.

    Parameters
    ----------
    ref : str
        ``NAME``, ``NAME:VERSION`` or ``NAME:ALIAS``.
    version : str, optional
        A version or alias given separately; it must agree with one given in ``ref``.

    Returns
    -------
    name, target : str
        The validated name and a validated version or alias (``"latest"`` when neither says).
    """
    if not isinstance(ref, str):
        raise InvalidNameError(f"invalid model reference {ref!r}: expected 'NAME', 'NAME:VERSION' or 'NAME:ALIAS'")
    name, sep, target = ref.partition(":")
    if sep and not target:
        raise InvalidNameError(f"invalid model reference {ref!r}: nothing after ':'")
    if version is not None:
        if target and target != version:
            raise InvalidNameError(f"model reference {ref!r} contradicts version={version!r}")
        target = version
    target = target or "latest"
    validate_name(name)
    if not is_version(target):
        if target[:1].isdigit():
            validate_version(target)  # raises with the version message
        validate_alias(target)
    return name, target


@total_ordering
class SemVer:
    """Semantic-version precedence (semver.org §11): ``SemVer("1.0.0-rc.1") < SemVer("1.0.0")``."""

    def __init__(self, text: str):
        validate_version(text)
        core, _, pre = text.partition("-")
        self.text = text
        self.core = tuple(int(x) for x in core.split("."))
        self.pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")) if pre else ()

    def _key(self):
        # a release sorts after its pre-releases: compare (core, has-no-prerelease, identifiers)
        return self.core, not self.pre, self.pre

    def __eq__(self, other):
        return isinstance(other, SemVer) and self._key() == other._key()

    def __lt__(self, other):
        return self._key() < other._key()

    def __hash__(self):
        return hash(self._key())

    @property
    def prerelease(self) -> bool:
        """True for versions such as ``1.0.0-rc.1``."""
        return bool(self.pre)

    def __repr__(self):
        return f"SemVer({self.text!r})"


def latest_version(versions) -> str | None:
    """The highest release in ``versions`` (or the highest pre-release if there is no release); None if empty."""
    parsed = [SemVer(v) for v in versions]
    if not parsed:
        return None
    releases = [v for v in parsed if not v.prerelease]
    return max(releases or parsed).text


def validate_relpath(path: object) -> str:
    """Return ``path`` if it is a safe store-relative path (``name/1.0.0/model.safetensors``), else raise.

    Refused: absolute paths, URLs, backslashes, empty, ``.`` or ``..`` segments, or segments starting with
    a dot.
    """
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path or ":" in path:
        raise InvalidNameError(f"unsafe store path {path!r}: expected a relative path like NAME/VERSION/FILE")
    for segment in path.split("/"):
        if not _SEGMENT.fullmatch(segment):
            raise InvalidNameError(f"unsafe store path {path!r}: bad segment {segment!r}")
    return path
