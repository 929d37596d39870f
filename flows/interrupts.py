"""Stopping ``layerdrift`` cleanly on SIGINT or SIGTERM, and fast when Prefect's server dies.

Every stage writes idempotent pieces and records them as it goes, so a run may stop at any
instant and the next run resumes (the kill tests show it for SIGKILL). Stopping is therefore
quick and hard: on SIGINT or SIGTERM the process releases its leases (the run lock and any
store lease), stops its child processes (the temporary Prefect server), prints one line and
exits with 128 + the signal number (130, 143).

The flow runs in a worker thread while the main thread waits: Python runs signal handlers
in the main thread only, and this way Prefect's own SIGTERM handler, which reports the
crash to the API server (and retries for minutes when that server is gone), is never
installed. The main thread also watches the temporary Prefect server and stops the run with
one line if it dies.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import psutil

from layerdrift.storage.lock import release_all

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
EXIT_SERVER_LOST = 1
# The temporary server runs `uvicorn ... prefect.server.api.server:create_app`.
SERVER_APP = "prefect.server.api.server:create_app"
POLL_S = 0.5


def _stop_children(timeout_s: float = 3.0) -> None:
    """Terminate this process's children (the temporary Prefect server), then kill them."""
    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=timeout_s)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def stop_now(message: str, code: int) -> None:
    """Release every lease, stop child processes, print ``message`` and exit with ``code``.

    Exits at once (``os._exit``): the flow thread is abandoned mid-piece, which resumes like
    any interruption.
    """
    release_all()
    _stop_children()
    sys.stdout.flush()
    sys.stderr.write("\n" + message + "\n")  # a progress bar may hold the current line
    sys.stderr.flush()
    os._exit(code)


def _on_signal(signum: int, frame: Any) -> None:
    name = signal.Signals(signum).name
    stop_now(
        f"interrupted by {name}: stopped, leases released; run the same command again to resume",
        EXIT_CODES[signal.Signals(signum)],
    )


def install_signal_handlers() -> None:
    """Handle SIGINT and SIGTERM with :func:`stop_now` (call from the main thread)."""
    for signum in EXIT_CODES:
        signal.signal(signum, _on_signal)


def _temporary_server() -> psutil.Process | None:
    """The temporary Prefect server this process started, if it runs."""
    for child in psutil.Process().children():
        try:
            if SERVER_APP in " ".join(child.cmdline()) and not _gone(child):
                return child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def _gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def run_in_worker(target: Callable[..., Any], *args: Any) -> Any:
    """Run ``target(*args)`` in a worker thread and return its result (or raise its error).

    Meanwhile the main thread handles signals and, when Prefect started a temporary server
    (no ``PREFECT_API_URL``), watches it: if it dies, the run stops with one line.
    """
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = target(*args)
        except BaseException as error:  # handed to the main thread as it is
            outcome["error"] = error

    worker = threading.Thread(target=work, name="layerdrift-flow", daemon=True)
    install_signal_handlers()
    watch = not os.environ.get("PREFECT_API_URL")
    server = None
    worker.start()
    while worker.is_alive():
        worker.join(POLL_S)
        if not watch or not worker.is_alive():
            continue
        if server is None or _gone(server):
            # None yet, or gone: a server that lost a port race at startup is replaced.
            server, lost = _temporary_server(), server
            if server is None and lost is not None:
                stop_now(
                    f"error: the temporary Prefect server (pid {lost.pid}) stopped during the "
                    "run; what finished is kept: run the same command again to resume",
                    EXIT_SERVER_LOST,
                )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
