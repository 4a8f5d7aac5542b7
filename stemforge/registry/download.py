"""Download published models into a user cache with pooch, verifying every file's sha256 and size.

Cache layout (``cache_dir()``: ``$STEMFORGE_CACHE``, else ``$XDG_CACHE_HOME/stemforge``, else
``~/.cache/stemforge``), keyed by store (``<store>`` = :func:`store_key`, the first 16 hex digits of the sha256 of
the store's URL)::

    models/<store>/<name>/<version>/model.safetensors
    models/<store>/<name>/<version>/card.json
    models/<store>/<name>/<version>/manifest.json   # sha256/size of both files + the store's URL
    indexes/<store>.json                            # last index read from that store (resolves aliases offline)

The same ``name:version`` published to two stores (two clones each running ``make run``, a mirror that was
republished) is cached twice and never serves the other store's weights, online or offline.

Guarantees
----------
* pooch downloads each file to a temporary file in the target folder, checks the sha256 recorded in the
  store's index, and only then renames it into place; a file that fails the check is deleted and the pull
  fails with :class:`~stemforge.registry.errors.IntegrityError` (nothing invalid is left in the cache).
* a cached file is re-hashed on every use; a corrupt one (tampered, truncated) is deleted with a warning
  and downloaded again, or — when the store cannot be reached — refused.
* when the store cannot be reached (or ``STEMFORGE_OFFLINE=1``), cached models are used without network:
  ``NAME:VERSION`` through its manifest, ``NAME:ALIAS`` through the cached index of that store.

pooch only speaks http(s)/ftp/doi; files of ``file://`` and other fsspec stores are fetched with
:class:`FsspecDownloader`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from .card import upgrade_card
from .errors import IntegrityError, NotFoundError, RegistryError, StoreUnreachableError
from .index import check_index, resolve, sha256_file, utc_now
from .naming import FILE_NAMES, parse_ref, validate_name, validate_version
from .store import Store

__all__ = ["cache_dir", "store_key", "pull", "Pulled", "FsspecDownloader", "read_card"]

log = logging.getLogger("registry")


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache`` if given, else ``$STEMFORGE_CACHE``, else ``$XDG_CACHE_HOME/stemforge``."""
    if cache is not None:
        return Path(cache).expanduser().absolute()
    if os.environ.get("STEMFORGE_CACHE"):
        return Path(os.environ["STEMFORGE_CACHE"]).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "stemforge").absolute()


@dataclass
class Pulled:
    """A verified model in the cache.

    Attributes
    ----------
    name, version : str
    files : dict
        ``{"model.safetensors": Path, "card.json": Path}`` in the cache.
    card : dict
        The parsed model card.
    store : str
        URL of the store it came from.
    offline : bool
        True when the store could not be reached and the cached copy was used.
    """

    name: str
    version: str
    files: dict
    card: dict
    store: str
    offline: bool = False
    records: dict = field(default_factory=dict, repr=False)

    @property
    def folder(self) -> Path:
        """The cache folder holding this version's files."""
        return self.files["card.json"].parent


class FsspecDownloader:
    """A pooch downloader for any fsspec URL (``file://``, ``s3://``, ``memory://``...).

    Called by pooch as ``downloader(url, output_file, pooch)``; streams the URL into ``output_file``.
    """

    def __call__(self, url: str, output_file, pooch=None, check_only: bool = False):
        import fsspec

        if url.startswith("file://"):  # a percent-encoded file URL (Path.as_uri); fsspec would not decode it
            parsed = urlparse(url)
            url = unquote(parsed.path) if parsed.netloc in ("", "localhost") else url
        if check_only:
            fs, path = fsspec.core.url_to_fs(url)
            return bool(fs.exists(path))
        with fsspec.open(url, "rb") as src:
            if isinstance(output_file, (str, os.PathLike)):
                with open(output_file, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            else:
                shutil.copyfileobj(src, output_file, 1 << 20)
        return None


class _Measured:
    """Wraps a downloader to remember the sha256 and size of what it wrote (for clear error messages)."""

    def __init__(self, inner):
        self.inner = inner
        self.got: tuple[str, int] | None = None

    def __call__(self, url, output_file, pooch=None, check_only=False):
        result = self.inner(url, output_file, pooch)
        if isinstance(output_file, (str, os.PathLike)) and os.path.exists(output_file):
            self.got = sha256_file(output_file)
        return result


def _downloader(url: str):
    if url.startswith(("http://", "https://")):
        import pooch

        return pooch.HTTPDownloader(progressbar=False, timeout=float(os.environ.get("STEMFORGE_TIMEOUT", 60)))
    return FsspecDownloader()


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def store_key(store: Store | str) -> str:
    """The cache's name for a store: 16 hex digits of the sha256 of its URL."""
    url = store.url if isinstance(store, Store) else str(store)
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def _index_copy(cache: Path, store: Store) -> Path:
    return cache / "indexes" / f"{store_key(store)}.json"


def _model_folder(cache: Path, store: Store, name: str, version: str) -> Path:
    return cache / "models" / store_key(store) / name / version


def _check_cached(path: Path, record: dict, what: str) -> bool:
    """True if ``path`` matches ``record``; a mismatching file is deleted (with a warning) and False returned."""
    if not path.exists():
        return False
    digest, size = sha256_file(path)
    if (digest, size) == (record["sha256"], record["size"]):
        return True
    path.unlink(missing_ok=True)
    log.warning(
        "cached %s failed verification (sha256 %s..., %d bytes; expected %s..., %d bytes: tampered, "
        "truncated); deleted it",
        what,
        digest[:12],
        size,
        record["sha256"][:12],
        record["size"],
    )
    return False


def _fetch(url: str, path: Path, record: dict, what: str) -> None:
    """Download ``url`` to ``path`` with pooch, enforcing ``record``'s sha256; raise clear registry errors."""
    import pooch
    import requests

    pooch.get_logger().setLevel(logging.WARNING)
    measured = _Measured(_downloader(url))
    try:
        pooch.retrieve(
            url,
            known_hash=f"sha256:{record['sha256']}",
            fname=path.name,
            path=path.parent,
            downloader=measured,
            progressbar=False,
        )
    except ValueError as err:
        if measured.got is None:
            raise RegistryError(f"cannot download {what} from {url}: {err}") from None
        digest, size = measured.got
        raise IntegrityError(
            f"{what} downloaded from {url} does not match the registry index (sha256 {digest[:12]}..., {size} "
            f"bytes; expected {record['sha256'][:12]}..., {record['size']} bytes): the file in the store is "
            f"{'truncated' if size < record['size'] else 'tampered or corrupt'}; refused, nothing cached"
        ) from None
    except requests.HTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        if status == 404:
            raise NotFoundError(f"{what} is listed in the index but missing from the store: {url} (HTTP 404)") from None
        raise StoreUnreachableError(f"cannot download {what} from {url}: HTTP {status}") from None
    except requests.RequestException as err:
        raise StoreUnreachableError(f"cannot download {what} from {url}: {type(err).__name__}") from None
    except FileNotFoundError:
        raise NotFoundError(f"{what} is listed in the index but missing from the store: {url}") from None
    except OSError as err:
        raise StoreUnreachableError(f"cannot download {what} from {url}: {err}") from None


def read_card(path: Path, name: str, version: str, weights: dict) -> dict:
    """Parse a cached card and check it describes ``name`` ``version`` and the weights the index lists."""
    try:
        card = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise IntegrityError(f"card of {name} {version} is not valid JSON: {err}") from None
    if not isinstance(card, dict):
        raise IntegrityError(f"card of {name} {version} is not a JSON object")
    if card.get("name") != name or card.get("version") != version:
        raise IntegrityError(f"card of {name} {version} describes {card.get('name')!r} {card.get('version')!r}")
    listed = (card.get("files") or {}).get("model.safetensors") or {}
    if (listed.get("sha256"), listed.get("size")) != (weights["sha256"], weights["size"]):
        raise IntegrityError(
            f"card of {name} {version} lists other weights (sha256 {listed.get('sha256')}) than "
            f"the registry index ({weights['sha256']})"
        )
    return upgrade_card(card)


def _pull_online(
    store: Store, cache: Path, name: str, target: str, index: dict, only: tuple[str, ...] = FILE_NAMES
) -> Pulled:
    version = resolve(index, name, target, store.url)
    records = index["models"][name]["versions"][version]["files"]
    folder = _model_folder(cache, store, name, version)
    files = {}
    for fname in only:
        path, record = folder / fname, records[fname]
        what = f"{fname} of {name} {version}"
        if not _check_cached(path, record, what):
            _fetch(store.file_url(record), path, record, what)
        files[fname] = path
    card = read_card(files["card.json"], name, version, records["model.safetensors"])
    if set(only) == set(FILE_NAMES):
        _write_json_atomic(
            folder / "manifest.json",
            {"name": name, "version": version, "store": store.url, "pulled": utc_now(), "files": records},
        )
    return Pulled(name, version, files, card, store.url, False, records)


def _pull_offline(store: Store, cache: Path, name: str, target: str, reason: str) -> Pulled:
    copy = _index_copy(cache, store)
    if not (_model_folder(cache, store, name, target) / "manifest.json").exists() and copy.exists():
        try:
            target = resolve(
                check_index(json.loads(copy.read_text()), str(copy)), name, target, f"{store.url} (cached index)"
            )
        except (ValueError, RegistryError) as err:
            raise StoreUnreachableError(f"{reason}; offline: {err}") from None
    try:
        validate_version(target)
    except RegistryError:
        raise StoreUnreachableError(
            f"{reason}; no cached index for this store to resolve {name}:{target} offline; give an explicit "
            "version that is in the cache"
        ) from None
    folder = _model_folder(cache, store, name, target)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        records = manifest["files"]
        if manifest.get("name") != name or manifest.get("version") != target or manifest.get("store") != store.url:
            raise ValueError("manifest names another model or store")
        for fname in FILE_NAMES:
            str(records[fname]["sha256"]), int(records[fname]["size"])
    except (OSError, ValueError, KeyError, TypeError):
        raise StoreUnreachableError(
            f"{reason}; and {name} {target} of {store.url} is not in the cache {cache}"
        ) from None
    files = {}
    for fname in FILE_NAMES:
        path = folder / fname
        if not _check_cached(path, records[fname], f"{fname} of {name} {target}"):
            raise IntegrityError(
                f"cached {fname} of {name} {target} is missing or corrupt (tampered or truncated) "
                f"and the store cannot be reached ({reason}); pull it again when online"
            )
        files[fname] = path
    card = read_card(files["card.json"], name, target, records["model.safetensors"])
    log.warning("%s; using the verified cached copy of %s %s", reason, name, target)
    return Pulled(name, target, files, card, store.url, True, records)


def pull(
    ref: str,
    version: str | None = None,
    store: str | Store | None = None,
    cache: str | os.PathLike | None = None,
    card_only: bool = False,
) -> Pulled:
    """Download (if needed) and verify a published model in the cache.

    Parameters
    ----------
    ref : str
        ``NAME``, ``NAME:VERSION`` or ``NAME:ALIAS`` (a bare name means ``latest``).
    version : str, optional
        Version or alias, instead of giving it in ``ref``.
    store : str or Store, optional
        Store URL (default ``$STEMFORGE_STORE`` or the local default store).
    cache : path, optional
        Cache folder (default :func:`cache_dir`).
    card_only : bool
        Fetch and verify only ``card.json`` (``files`` then lacks the weights).

    Returns
    -------
    Pulled
        Paths of the verified files and the parsed card.

    Raises
    ------
    IntegrityError
        A file does not match the index (tampered, truncated) — it is not kept in the cache.
    StoreUnreachableError
        The store cannot be reached and the model is not (validly) in the cache.
    NotFoundError, InvalidNameError
        Unknown model/version/alias, or an invalid reference.
    """
    name, target = parse_ref(ref, version)
    validate_name(name)
    st = store if isinstance(store, Store) else Store(store)
    root = cache_dir(cache)
    if os.environ.get("STEMFORGE_OFFLINE", "").lower() in ("1", "true", "yes"):
        return _pull_offline(st, root, name, target, "STEMFORGE_OFFLINE is set")
    try:
        index = st.read_index()
    except StoreUnreachableError as err:
        return _pull_offline(st, root, name, target, str(err))
    _write_json_atomic(_index_copy(root, st), index)
    return _pull_online(st, root, name, target, index, ("card.json",) if card_only else FILE_NAMES)
