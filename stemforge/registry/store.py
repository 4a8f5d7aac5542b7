"""Model stores: a folder, bucket or web server holding ``index.json`` and one folder per published version.

Layout (all paths relative to the store URL)::

    index.json                          # models, versions (file sha256/size/path or url), aliases
    index.lock                          # present only while a publisher updates the store
    <name>/<version>/model.safetensors  # weights (safetensors, no pickle)
    <name>/<version>/card.json          # model card (JSON)

Store URLs
----------
* a local path or ``file://`` URL — read and write; the lock is a file created with ``O_EXCL`` and the index
  is replaced atomically (write to a temporary file in the same folder, then ``os.replace``);
* ``http://`` / ``https://`` — read only (any static web server serving a copy of the store folder);
* any other fsspec URL (``s3://bucket/models``, ``gs://...``, ``memory://...``) when its fsspec backend is
  installed — read and write; the lock is created with fsspec's exclusive mode ``"xb"`` (conditional
  writes on s3fs/gcsfs), and the index is written as one object (object stores replace objects atomically).

Default store: ``$STEMFORGE_STORE``, else ``$XDG_DATA_HOME/stemforge/registry`` (``~/.local/share/...``).

Index format (``format: stemforge-registry``, ``format_version: 1``)::

    {"models": {"bragg-unet": {
        "task": "bragg_unet",
        "aliases": {"latest": "1.1.0", "stable": "1.0.0"},
        "versions": {"1.0.0": {"created": "...Z", "files": {
            "model.safetensors": {"path": "bragg-unet/1.0.0/model.safetensors", "sha256": "...", "size": 123},
            "card.json": {"url": "https://huggingface.co/org/repo/resolve/v1.0.0/card.json", "sha256": ...}}}}}}}

A file entry has a ``path`` relative to the store or an absolute ``url`` (a mirror); ``sha256`` and ``size``
are always checked by the downloader. ``latest`` is maintained by the store: the highest release (semantic
version precedence) after every publish.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

from .errors import (
    InvalidNameError,
    NotFoundError,
    ReadOnlyStoreError,
    RegistryError,
    StoreUnreachableError,
    VersionExistsError,
)
from .index import INDEX, check_index, empty_index, malformed, resolve, sha256_file, utc_now
from .lock import StoreLock
from .naming import FILE_NAMES, latest_version, validate_alias, validate_name, validate_relpath, validate_version

__all__ = ["Store", "default_store_url", "sha256_file", "empty_index", "check_index", "utc_now", "resolve"]

log = logging.getLogger("registry")


SHIPPED_STORE = Path(__file__).resolve().parent / "pretrained"  # the pretrained models shipped with stemforge


def seed_store(path: str | os.PathLike, source: str | os.PathLike = SHIPPED_STORE) -> bool:
    """Copy the shipped store (index, cards, weights) into a local store folder that has no index yet.

    The copy is made in a sibling temporary folder and renamed into place, so an interrupted copy never looks
    like a store. Returns True when something was copied. A folder that already holds an ``index.json`` is left
    alone (use ``python -m stemforge.registry push`` to add the shipped models to an existing store).
    """
    path, source = Path(path), Path(source)
    if (path / INDEX).exists() or not (source / INDEX).exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".seed-", dir=path.parent))
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
        if path.exists():  # an empty folder someone created: move the files in, index last
            for item in sorted(tmp.iterdir(), key=lambda p: p.name == INDEX):
                os.replace(item, path / item.name)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def sync_shipped(path: str | os.PathLike, source: str | os.PathLike = SHIPPED_STORE) -> list[str]:
    """Add to an existing local store the shipped model versions it lacks (``name:version``, returned).

    A store seeded by an older stemforge keeps its own models and aliases; a shipped version it does not hold is
    published into it (:func:`stemforge.registry.publishing.push_folder`: hashes checked, network rebuilt), with the
    shipped aliases of that version that the store has not set for the model, so that a newly shipped default
    (``bragg-centrenet:stable``) loads without a manual ``push``.
    """
    path, source = Path(path), Path(source)
    if not (path / INDEX).exists() or not (source / INDEX).exists():
        return []
    have = json.loads((path / INDEX).read_text(encoding="utf-8")).get("models", {})
    shipped = json.loads((source / INDEX).read_text(encoding="utf-8")).get("models", {})
    todo = [
        (n, v)
        for n, m in shipped.items()
        for v in m.get("versions", {})
        if v not in have.get(n, {}).get("versions", {})
    ]
    if not todo:
        return []
    from .publishing import push_folder

    added = []
    for name, version in todo:
        set_here = have.get(name, {}).get("aliases", {})
        aliases = [
            a
            for a, v in shipped[name].get("aliases", {}).items()
            if v == version and a not in set_here and a != "latest"
        ]
        push_folder(source / name / version, str(path), aliases)
        added.append(f"{name}:{version}")
    return added


def default_store_url() -> str:
    """``$STEMFORGE_STORE`` or the XDG data folder ``$XDG_DATA_HOME/stemforge/registry``.

    The XDG store is seeded with the pretrained models shipped in ``registry/pretrained`` the first time it is
    used (see :func:`seed_store`), so ``stemforge.registry.load("bragg-centrenet:stable")`` works on a fresh install.
    """
    if os.environ.get("STEMFORGE_STORE"):
        return os.environ["STEMFORGE_STORE"]
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    path = os.path.join(data, "stemforge", "registry")
    try:
        if seed_store(path):
            log.info("seeded the default store %s with the shipped pretrained models", path)
        else:
            added = sync_shipped(path)
            if added:
                log.info("added the shipped %s to the default store %s", ", ".join(added), path)
    except (OSError, RegistryError, ValueError) as err:  # a read-only home: the store keeps what it has
        log.warning("could not add the shipped models to the default store %s: %s", path, err)
    return path


class Store:
    """A registry store addressed by URL (see the module docstring).

    Parameters
    ----------
    url : str or Path, optional
        Folder path, ``file://``, ``http(s)://`` or another fsspec URL; default :func:`default_store_url`.
    lock_timeout : float, optional
        Seconds a publisher waits for another's lock (default ``$STEMFORGE_LOCK_TIMEOUT`` or 120).
    timeout : float
        Network timeout in seconds for reading an http(s) index.
    """

    def __init__(self, url: str | os.PathLike | None = None, lock_timeout: float | None = None, timeout: float = 30.0):
        raw = os.fspath(url) if url is not None else default_store_url()
        if not raw:
            raise RegistryError("empty store URL")
        self.timeout = float(timeout)
        self.lock_timeout = float(
            lock_timeout if lock_timeout is not None else os.environ.get("STEMFORGE_LOCK_TIMEOUT", 120)
        )
        self.local: Path | None = None
        self._fs = None
        self._root = ""
        if "://" not in raw:
            self.kind = "local"
            self.local = Path(raw).expanduser().absolute()
        elif raw.startswith("file://"):
            parsed = urlparse(raw)
            if parsed.netloc not in ("", "localhost"):
                raise RegistryError(f"file:// store URL {raw!r} names a remote host; use a local path")
            self.kind = "local"
            self.local = Path(unquote(parsed.path)).absolute()
        elif raw.startswith(("http://", "https://")):
            self.kind = "http"
            self.url = raw.rstrip("/")
        else:
            import fsspec

            try:
                self._fs, self._root = fsspec.core.url_to_fs(raw)
            except (ImportError, ValueError) as err:
                raise RegistryError(f"cannot open store {raw!r}: {err} (is its fsspec backend installed?)") from None
            self.kind = "fsspec"
            self._root = self._root.rstrip("/")
            self.url = raw.rstrip("/")
        if self.local is not None:
            self.url = self.local.as_uri()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # ------------------------------------------------------------------ reading
    @property
    def writable(self) -> bool:
        """False for http(s) stores."""
        return self.kind != "http"

    def file_url(self, record: Mapping) -> str:
        """Absolute URL of a file entry of the index (its mirror ``url`` or the store URL + ``path``)."""
        if "url" in record:
            return str(record["url"])
        rel = validate_relpath(record["path"])
        # http and file URLs are percent-encoded; other fsspec URLs (s3://bucket/key) take the key as it is
        return f"{self.url}/{rel}" if self.kind == "fsspec" else f"{self.url}/{quote(rel)}"

    def _abs(self, rel: str) -> str:
        return f"{self._root}/{rel}" if self._root else rel

    def read_index(self, missing_ok: bool = False) -> dict:
        """Read and validate ``index.json``.

        Parameters
        ----------
        missing_ok : bool
            Return an empty index when the store has none yet (publishing to a new store).

        Raises
        ------
        StoreUnreachableError
            The store cannot be reached (callers may fall back to a cached index).
        NotFoundError
            The store has no index and ``missing_ok`` is False.
        """
        where = f"{self.url}/{INDEX}"
        try:
            data = self._read_bytes(INDEX)
        except FileNotFoundError:
            if missing_ok:
                return empty_index()
            raise NotFoundError(f"no registry at {self.url} ({INDEX} not found)") from None
        try:
            index = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise malformed(where, f"not JSON ({err})") from None
        return check_index(index, where)

    def _read_bytes(self, rel: str) -> bytes:
        if self.kind == "local":
            try:
                return (self.local / rel).read_bytes()
            except FileNotFoundError:
                raise
            except OSError as err:
                raise StoreUnreachableError(f"cannot read {self.local / rel}: {err.strerror or err}") from None
        if self.kind == "http":
            import requests

            url = f"{self.url}/{rel}"
            try:
                resp = requests.get(url, timeout=(min(self.timeout, 10.0), self.timeout))
            except requests.RequestException as err:
                raise StoreUnreachableError(f"cannot reach {url}: {type(err).__name__}") from None
            if resp.status_code == 404:
                raise FileNotFoundError(url)
            if resp.status_code >= 400:
                raise StoreUnreachableError(f"cannot read {url}: HTTP {resp.status_code}")
            return resp.content
        try:
            return self._fs.cat_file(self._abs(rel))
        except FileNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001 - backend-specific network/auth errors
            raise StoreUnreachableError(f"cannot read {self.url}/{rel}: {type(err).__name__}: {err}") from None

    # ------------------------------------------------------------------ writing
    def _require_writable(self) -> None:
        if not self.writable:
            raise ReadOnlyStoreError(
                f"store {self.url} is read-only (http/https); publish to the folder or "
                "bucket that the web server serves"
            )

    def _write_bytes(self, rel: str, data: bytes) -> None:
        if self.kind == "local":
            path = self.local / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)  # atomic: readers see the old or the new file, never a partial one
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        else:
            # one object PUT: object stores (s3, gcs) replace objects atomically
            self._fs.pipe_file(self._abs(rel), data)

    def _put_file(self, src: Path, rel: str, sha256: str, size: int) -> None:
        if self.kind == "local":
            path = self.local / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as dst, open(src, "rb") as f:
                    shutil.copyfileobj(f, dst, 1 << 20)
                    dst.flush()
                    os.fsync(dst.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            got = sha256_file(path)
        else:
            self._fs.makedirs(self._abs(rel).rsplit("/", 1)[0], exist_ok=True)
            self._fs.put_file(str(src), self._abs(rel))
            got = (sha256, int(self._fs.size(self._abs(rel))))
        if got != (sha256, size):
            raise RegistryError(
                f"upload of {rel} to {self.url} did not verify (sha256/size {got} != "
                f"{(sha256, size)}); the store may be full or failing"
            )

    def _exists(self, rel: str) -> bool:
        if self.kind == "local":
            return (self.local / rel).exists()
        return bool(self._fs.exists(self._abs(rel)))

    def _write_index(self, index: dict) -> None:
        index["updated"] = utc_now()
        check_index(index, f"{self.url}/{INDEX} (about to be written)")
        self._write_bytes(INDEX, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())

    @contextlib.contextmanager
    def lock(self, what: str = "update") -> Iterator[None]:
        """Hold the store's lock (``index.lock``) for the duration of the ``with`` block."""
        self._require_writable()
        lock = StoreLock(self, what)
        lock.acquire()
        try:
            yield
        finally:
            lock.release()

    @contextlib.contextmanager
    def _updating(self, what: str) -> Iterator[dict]:
        """Lock, re-read the index, let the caller modify it, write it atomically, unlock."""
        with self.lock(what):
            index = self.read_index(missing_ok=True)
            yield index
            self._write_index(index)

    def add_version(
        self,
        name: str,
        version: str,
        files: Mapping[str, str | os.PathLike],
        task: str | None = None,
        aliases: tuple[str, ...] | list[str] = (),
    ) -> dict:
        """Upload the files of a new version and record it (and its aliases) in the index.

        Parameters
        ----------
        name, version : str
            Validated model name and semantic version.
        files : mapping
            ``{"model.safetensors": path, "card.json": path}`` (local files).
        task : str, optional
            Recorded on the model entry.
        aliases : sequence of str
            Aliases to point at this version (``latest`` is maintained automatically).

        Returns
        -------
        dict
            The version's index entry.

        Raises
        ------
        VersionExistsError
            The version is already published (versions are immutable).
        """
        validate_name(name)
        validate_version(version)
        aliases = [validate_alias(a) for a in aliases]
        if "latest" in aliases:
            raise InvalidNameError("'latest' is maintained automatically (highest version); do not set it")
        if sorted(files) != sorted(FILE_NAMES):
            raise RegistryError(f"a version must consist of exactly {FILE_NAMES}, got {sorted(files)}")
        self._require_writable()
        records = {}
        for fname, src in files.items():
            digest, size = sha256_file(src)
            records[fname] = {"path": f"{name}/{version}/{fname}", "sha256": digest, "size": size}
        with self._updating(f"publish {name} {version}") as index:
            model = index["models"].setdefault(name, {"versions": {}, "aliases": {}})
            if version in model["versions"]:
                raise VersionExistsError(
                    f"{name} {version} is already published in {self.url} (versions are immutable; publish a new "
                    f"version, e.g. a higher patch number, and move an alias to it)"
                )
            leftovers = [f for f in FILE_NAMES if self._exists(f"{name}/{version}/{f}")]
            if leftovers:
                log.warning(
                    "overwriting files of an interrupted publish of %s %s (not in the index): %s",
                    name,
                    version,
                    ", ".join(leftovers),
                )
            # weights first, card last: an interrupted upload leaves no card next to partial weights
            for fname in FILE_NAMES:
                self._put_file(
                    Path(files[fname]), records[fname]["path"], records[fname]["sha256"], records[fname]["size"]
                )
            entry = {"created": utc_now(), "files": records}
            model["versions"][version] = entry
            if task:
                model["task"] = task
            model.setdefault("aliases", {})
            for alias in aliases:
                model["aliases"][alias] = version
            model["aliases"]["latest"] = latest_version(model["versions"])
        return entry

    def set_alias(self, name: str, alias: str, version: str) -> str | None:
        """Point ``name:alias`` at ``version`` (must exist); returns the version it pointed to before."""
        validate_name(name)
        validate_alias(alias)
        validate_version(version)
        if alias == "latest":
            raise InvalidNameError("'latest' is maintained automatically (highest version); choose another alias")
        with self._updating(f"alias {name}:{alias}") as index:
            model = index["models"].get(name)
            if model is None or version not in model["versions"]:
                resolve(index, name, version, self.url)  # raises NotFoundError with what exists
            previous = model.setdefault("aliases", {}).get(alias)
            model["aliases"][alias] = version
        return previous

    def remove_alias(self, name: str, alias: str) -> str:
        """Delete the alias ``name:alias``; returns the version it pointed to."""
        validate_name(name)
        validate_alias(alias)
        if alias == "latest":
            raise InvalidNameError("'latest' is maintained automatically and cannot be removed")
        with self._updating(f"unalias {name}:{alias}") as index:
            model = index["models"].get(name)
            if model is None or alias not in model.get("aliases", {}):
                raise NotFoundError(f"no alias {name}:{alias} in {self.url}")
            return model["aliases"].pop(alias)
