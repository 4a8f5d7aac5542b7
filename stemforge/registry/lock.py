"""The store's publisher lock: ``index.lock``, created atomically, removed on release.

Local folders use ``os.open(O_CREAT | O_EXCL)``; fsspec stores use the exclusive mode ``"xb"`` (conditional
writes on s3fs/gcsfs); a backend without exclusive create falls back to write-then-read-back (best effort).
A waiting publisher polls with jitter until the store's ``lock_timeout``; it never breaks somebody else's
lock (that is racy) but says whose it is and whether that process still runs.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import time

from .errors import LockTimeoutError
from .index import LOCK, utc_now

__all__ = ["StoreLock"]

log = logging.getLogger("registry")


class StoreLock:
    """Exclusive lock on a :class:`~stemforge.registry.store.Store` (see the module docstring)."""

    def __init__(self, store, what: str):
        self.store = store
        self.token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}:{random.getrandbits(32):08x}"
        self.body = json.dumps(
            {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "since": utc_now(), "what": what}
        ).encode()
        self.held = False

    def _try_create(self) -> bool:
        st = self.store
        if st.kind == "local":
            st.local.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(st.local / LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(self.body)
            return True
        path = st._abs(LOCK)
        try:
            with st._fs.open(path, "xb") as f:
                f.write(self.body)
            return True
        except FileExistsError:
            return False
        except (NotImplementedError, ValueError, TypeError):
            # backend without exclusive create: best effort (check, write, read back our token)
            if st._fs.exists(path):
                return False
            st._fs.pipe_file(path, self.body)
            time.sleep(0.2)
            try:
                return json.loads(st._fs.cat_file(path)).get("token") == self.token
            except FileNotFoundError:
                return False

    def _holder(self) -> str:
        try:
            info = json.loads(self.store._read_bytes(LOCK))
        except Exception:  # noqa: BLE001 - vanished or unreadable meanwhile
            return "another publisher"
        text = f"{info.get('what', '?')} by pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"
        if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
            try:
                os.kill(info["pid"], 0)
            except ProcessLookupError:
                text += " (that process is no longer running: the lock is stale)"
            except PermissionError:
                pass
        return text

    def acquire(self) -> None:
        deadline = time.monotonic() + self.store.lock_timeout
        delay = 0.02
        while not self._try_create():
            if time.monotonic() > deadline:
                raise LockTimeoutError(
                    f"store {self.store.url} is locked ({self._holder()}); waited {self.store.lock_timeout:g} s. "
                    f"If no publisher is running, delete {self.store.url}/{LOCK}"
                )
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 1.5, 0.5)
        self.held = True

    def release(self) -> None:
        if not self.held:
            return
        st = self.store
        try:
            current = json.loads(st._read_bytes(LOCK)).get("token")
        except Exception:  # noqa: BLE001 - a lock file gone or unreadable is not ours
            current = None
        if current != self.token:
            log.warning("lock %s/%s was not ours any more when releasing it", st.url, LOCK)
        elif st.kind == "local":
            os.unlink(st.local / LOCK)
        else:
            st._fs.rm_file(st._abs(LOCK))
        self.held = False
