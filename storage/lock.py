"""Leases: a lock file holding pid, host, time and a random token, renewed while held.

One lease guards a store's writers (``<store>/writer.lock``), another a whole run
(``<run>/run.lock``, held by ``layerdrift run``). A lease file is only ever replaced whole,
never rewritten in place: on a local disk it is written to a temporary file, then linked
into place (create, which fails when a lease exists) or renamed over the old one (renew); on
object storage every write is one PUT, which readers see whole. So a reader never sees a
half-written lease, and an unreadable one is stale only once it is older than the timeout.

A lease is stale, and is taken over, when its process is gone (same host, dead pid or a new
process under a reused pid) or when it was not renewed for ``timeout_s`` seconds (a crashed
process on another machine). Every lease this process holds is listed, so that a signal
handler can release them all before the process exits.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import fsspec
import psutil
from fsspec.implementations.local import LocalFileSystem

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0

# Leases held by this process: token -> lock (released by release_all on a signal).
_HELD: dict[str, WriterLock] = {}
# Re-entrant holds by lock URL: url -> (lock, depth), see ``holding``.
_NESTED: dict[str, tuple[WriterLock, int]] = {}
_REGISTRY = threading.RLock()


class StoreLockedError(RuntimeError):
    """Another live process holds the lease."""


def _process_started(pid: int) -> float | None:
    """The start time of process ``pid`` (seconds since the epoch), None when it is gone."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:  # exists, owned by someone else
        return -1.0


class WriterLock:
    """A lease on ``<lock_url>``; use as a context manager around every write it guards.

    ``what`` names the guarded thing in the error a second holder gets (default: the lease
    file), and ``error`` is the class of that error.
    """

    def __init__(
        self,
        lock_url: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        what: str | None = None,
        error: type[StoreLockedError] = StoreLockedError,
    ) -> None:
        self.url = lock_url
        self.fs, self.path = fsspec.core.url_to_fs(lock_url)
        self.timeout_s = timeout_s
        self.what = what or lock_url
        self.error = error
        self.token = uuid.uuid4().hex
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # Lease file --------------------------------------------------------------------------

    def _lease(self) -> dict:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _process_started(os.getpid()),
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "renewed": time.time(),
            "token": self.token,
        }

    def _read(self) -> dict | None:
        """The lease now on disk: None when there is none, {} when it cannot be parsed."""
        try:
            with self.fs.open(self.path, "rb") as handle:
                return json.loads(handle.read().decode() or "{}")
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):  # written by something else
            return {}

    def _write(self, exclusive: bool) -> bool:
        """Write our lease whole; with ``exclusive``, only if there is none (True if written)."""
        payload = json.dumps(self._lease()).encode()
        self.fs.makedirs(self.path.rsplit("/", 1)[0], exist_ok=True)
        if isinstance(self.fs, LocalFileSystem):
            tmp = f"{self.path}.{self.token}.tmp"
            with open(tmp, "wb") as handle:
                handle.write(payload)
            try:
                if not exclusive:
                    os.replace(tmp, self.path)
                    return True
                os.link(tmp, self.path)  # atomic, and fails when a lease exists
                return True
            except FileExistsError:
                return False
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        if not exclusive:
            with self.fs.open(self.path, "wb") as handle:
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

    def _file_age(self) -> float:
        try:
            modified = self.fs.modified(self.path)
        except (FileNotFoundError, NotImplementedError):
            return 0.0
        return time.time() - modified.timestamp()

    def is_stale(self, lease: dict) -> bool:
        """Whether ``lease`` belongs to a process that is gone (the next taker takes it over)."""
        if not lease:  # unreadable: only a crash while creating it, or not ours at all
            return self._file_age() > self.timeout_s
        if time.time() - float(lease.get("renewed", 0)) > self.timeout_s:
            return True
        if lease.get("host") != socket.gethostname():
            return False
        started = _process_started(int(lease.get("pid", -1)))
        recorded = lease.get("started")
        if started is None:
            return True
        # A reused pid: the process now running under it started after the lease was taken.
        return recorded is not None and started > 0 and abs(started - float(recorded)) > 1.0

    def _locked(self, lease: dict) -> StoreLockedError:
        return self.error(
            f"{self.what} is held by another process (pid {lease.get('pid')} on host "
            f"{lease.get('host')}, since {lease.get('time')}): wait for it to finish or stop "
            f"it; a lease whose process died is taken over at once on the same host, or after "
            f"{self.timeout_s:.0f} s without renewal"
        )

    # Public API --------------------------------------------------------------------------

    def holder(self) -> dict | None:
        """The lease on disk now ({} when unreadable), or None when nobody holds it."""
        return self._read()

    def acquire(self) -> WriterLock:
        """Take the lease, or raise :attr:`error` naming the live holder's host and pid."""
        for _ in range(3):
            if self._write(exclusive=True):
                self._start_heartbeat()
                with _REGISTRY:
                    _HELD[self.token] = self
                logger.debug("took lease %s", self.url)
                return self
            lease = self._read()
            if lease is None:
                continue  # released between our two calls
            if not self.is_stale(lease):
                raise self._locked(lease)
            if (self._read() or {}).get("token") == lease.get("token"):
                logger.warning(
                    "taking over a stale lease %s (pid %s on %s, since %s)",
                    self.url,
                    lease.get("pid"),
                    lease.get("host"),
                    lease.get("time"),
                )
                self.fs.rm(self.path)
        raise self.error(f"could not take the lease {self.url}: other processes race for it")

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
            self._thread = None
        with _REGISTRY:
            _HELD.pop(self.token, None)
        if (self._read() or {}).get("token") == self.token:
            self.fs.rm(self.path)

    def check(self) -> None:
        """Raise :attr:`error` if the lease was lost to another process."""
        if self.lost or (self._read() or {}).get("token") != self.token:
            self.lost = True
            raise self.error(f"lost the lease {self.url} to another process: stopping")

    def _renew(self) -> None:
        if (self._read() or {}).get("token") != self.token:
            self.lost = True
            return
        self._write(exclusive=False)

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        interval = max(self.timeout_s / 4, 0.05)

        def beat() -> None:
            while not self._stop.wait(interval) and not self.lost:
                try:
                    self._renew()
                except OSError as error:  # transient: try again next beat
                    logger.warning("could not renew lease %s: %s", self.url, error)

        self._thread = threading.Thread(target=beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


@contextmanager
def holding(lock: WriterLock) -> Iterator[WriterLock]:
    """Hold ``lock`` for the block; nested holds of the same URL in this process share one.

    ``layerdrift run`` takes the run's lease before it starts Prefect, and the flow takes it
    again (it must also hold it when a Prefect worker runs it): the inner hold is free.
    """
    with _REGISTRY:
        held, depth = _NESTED.get(lock.url, (None, 0))
        if held is None:
            held = lock.acquire()
        _NESTED[lock.url] = (held, depth + 1)
    try:
        yield held
    finally:
        with _REGISTRY:
            _, depth = _NESTED[lock.url]
            if depth == 1:
                del _NESTED[lock.url]
                held.release()
            else:
                _NESTED[lock.url] = (held, depth - 1)


def release_all() -> list[str]:
    """Release every lease this process holds (called before exiting on a signal).

    Returns the lease URLs released.
    """
    with _REGISTRY:
        held = list(_HELD.values())
        _NESTED.clear()
    released = []
    for lock in held:
        try:
            lock.release()
            released.append(lock.url)
        except OSError as error:
            logger.warning("could not release lease %s: %s", lock.url, error)
    return released
