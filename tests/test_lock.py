"""Leases that cannot be stolen while alive: renewals replace the file whole, an unreadable
lease is not taken for a dead one, a reused pid is, nested holds share one lease, and a
signal handler can release every lease the process holds."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import psutil
import pytest

from layerdrift.storage import RunDir
from layerdrift.storage.lock import StoreLockedError, WriterLock, holding, release_all
from layerdrift.storage.rundir import RunLockedError


def test_renewal_never_lets_a_live_lease_be_taken_over(tmp_path):
    path = str(tmp_path / "writer.lock")
    holder = WriterLock(path).acquire()
    holder._stop.set()  # renewals are driven by hand below, as fast as they go
    done = threading.Event()

    def renew() -> None:
        while not done.is_set():
            holder._renew()

    renewer = threading.Thread(target=renew)
    renewer.start()
    takeovers = 0
    try:
        for _ in range(2000):
            try:
                WriterLock(path).acquire()._stop.set()
                takeovers += 1
                break
            except StoreLockedError:
                pass
    finally:
        done.set()
        renewer.join()
    assert takeovers == 0
    holder.check()  # still ours
    holder.release()
    assert not os.path.exists(path)


def test_an_unreadable_lease_is_stale_only_once_old(tmp_path):
    path = tmp_path / "writer.lock"
    path.write_bytes(b"")  # e.g. a process killed between creating and writing it
    with pytest.raises(StoreLockedError):
        WriterLock(str(path), timeout_s=60).acquire()
    old = time.time() - 120
    os.utime(path, (old, old))
    with WriterLock(str(path), timeout_s=60) as lock:
        lock.check()


def test_a_reused_pid_does_not_keep_a_dead_lease_alive(tmp_path):
    path = tmp_path / "writer.lock"
    me = psutil.Process()
    lease = {
        "pid": me.pid,  # alive, but started after the lease was taken: a reused pid
        "host": socket.gethostname(),
        "started": me.create_time() - 1000,
        "renewed": time.time(),
        "time": "then",
        "token": "old",
    }
    path.write_text(json.dumps(lease))
    with WriterLock(str(path)) as lock:
        lock.check()


def test_nested_holds_share_one_lease_and_a_second_process_is_told_who(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    with holding(run.lock()) as outer:
        with holding(run.lock()) as inner:
            assert inner is outer
        assert run.exists("run.lock")  # the inner hold did not release it
        # Another WriterLock sees a live holder, as another process would.
        with pytest.raises(RunLockedError, match=rf"run .* \(pid {os.getpid()} on host"):
            run.lock().acquire()
    assert not run.exists("run.lock")


def test_release_all_lets_go_of_every_lease(tmp_path):
    first = WriterLock(str(tmp_path / "a.lock")).acquire()
    second = WriterLock(str(tmp_path / "b.lock")).acquire()
    assert sorted(release_all()) == sorted([first.url, second.url])
    assert not (tmp_path / "a.lock").exists() and not (tmp_path / "b.lock").exists()
    assert release_all() == []
