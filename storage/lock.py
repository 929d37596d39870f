"""The writer lock of a store: a lease file holding pid, host, time and a random token.

Only one process writes a store at a time. The lease is created atomically (``O_EXCL`` on a
local disk, ``open(mode="xb")`` on fsspec filesystems that support it, else write and read
back), renewed by a heartbeat thread, and removed on release. A lease is stale, and is taken
over, when its process is gone (same host, dead pid) or when it was not renewed for
``timeout_s`` seconds (a crashed process on another machine).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime

import fsspec
from fsspec.implementations.local import LocalFileSystem

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0


class StoreLockedError(RuntimeError):
    """Another live process holds the writer lock of the store."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WriterLock:
    """A lease on ``<lock_url>``; use as a context manager around every write to a store."""

    def __init__(self, lock_url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = lock_url
        self.fs, self.path = fsspec.core.url_to_fs(lock_url)
        self.timeout_s = timeout_s
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # Lease file --------------------------------------------------------------------------

    def _lease(self) -> dict:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "renewed": time.time(),
            "token": self.token,
        }

    def _read(self) -> dict | None:
        try:
            with self.fs.open(self.path, "rb") as handle:
                return json.loads(handle.read().decode() or "{}")
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:  # half-written by a dying process
            return {}

    def _create(self) -> bool:
        """Create the lease file if absent; True when this call created it."""
        payload = json.dumps(self._lease()).encode()
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        if isinstance(self.fs, LocalFileSystem):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
            return True
        try:
            with self.fs.open(self.path, "xb") as handle:
                handle.write(payload)
            return True
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError, TypeError):
            pass  # no exclusive create here: write, then check that our token stayed
        if self.fs.exists(self.path):
            return False
        with self.fs.open(self.path, "wb") as handle:
            handle.write(payload)
        time.sleep(0.05)
        return (self._read() or {}).get("token") == self.token

    def _is_stale(self, lease: dict) -> bool:
        if not lease:
            return True
        age = time.time() - float(lease.get("renewed", 0))
        if age > self.timeout_s:
            return True
        same_host = lease.get("host") == socket.gethostname()
        return same_host and not _pid_alive(int(lease.get("pid", -1)))

    # Public API --------------------------------------------------------------------------

    def acquire(self) -> WriterLock:
        """Take the lease, or raise :class:`StoreLockedError` naming the live holder."""
        for _ in range(3):
            if self._create():
                self._start_heartbeat()
                logger.debug("took writer lock %s", self.url)
                return self
            lease = self._read()
            if lease is None:
                continue  # released between our two calls
            if not self._is_stale(lease):
                raise StoreLockedError(
                    f"{self.url} is held by another writer (pid {lease.get('pid')} on host "
                    f"{lease.get('host')}, since {lease.get('time')}): wait for it to finish; "
                    f"if that process is gone, delete {self.url} or wait {self.timeout_s:.0f} s "
                    "for the lease to expire"
                )
            if (self._read() or {}).get("token") == lease.get("token"):
                logger.warning(
                    "taking over a stale writer lock %s (pid %s on %s, since %s)",
                    self.url,
                    lease.get("pid"),
                    lease.get("host"),
                    lease.get("time"),
                )
                self.fs.rm(self.path)
        raise StoreLockedError(f"could not take the writer lock {self.url}: other writers race")

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if (self._read() or {}).get("token") == self.token:
            self.fs.rm(self.path)

    def check(self) -> None:
        """Raise :class:`StoreLockedError` if the lease was lost to another writer."""
        if self.lost or (self._read() or {}).get("token") != self.token:
            self.lost = True
            raise StoreLockedError(f"lost the writer lock {self.url} to another writer: stopping")

    def _renew(self) -> None:
        if (self._read() or {}).get("token") != self.token:
            self.lost = True
            return
        with self.fs.open(self.path, "wb") as handle:
            handle.write(json.dumps(self._lease()).encode())

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        interval = max(self.timeout_s / 4, 0.05)

        def beat() -> None:
            while not self._stop.wait(interval) and not self.lost:
                try:
                    self._renew()
                except OSError as error:  # transient: try again next beat
                    logger.warning("could not renew writer lock %s: %s", self.url, error)

        self._thread = threading.Thread(target=beat, name="writer-lock-heartbeat", daemon=True)
        self._thread.start()

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
