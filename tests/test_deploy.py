"""The README's deployment walkthrough on loopback: a Prefect server, the process work pool,
``prefect deploy --all``, a worker, and one triggered run of ``nightly-quick``.

The deployment's parameters are overridden to the tiny model and CSV, so the run takes about
a minute; the rest is server, deploy and worker start-up.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from tiny_runs import ROOT, cli_env, tail, tiny_config

from layerdrift.config import RunConfig

PREFECT = [str(Path(sys.executable).parent / "prefect"), "--no-prompt"]
POOL = "layerdrift-process"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _prefect(*args: str, env: dict[str, str], timeout: float = 180) -> str:
    done = subprocess.run(
        [*PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
    return done.stdout


def _background(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*PREFECT, *args],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_healthy(api: str, server: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, f"prefect server exited:\n{tail(log)}"
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"prefect server not healthy in {timeout_s} s:\n{tail(log)}")


def _wait_for_flow_run(api: str, run_id: str, logs: list[Path], timeout_s: float = 420) -> str:
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        state = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state"]["type"]
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return state
        time.sleep(2)
    raise AssertionError(f"flow run still {state} after {timeout_s} s:\n{tail(logs[-1])}")


@pytest.mark.slow
def test_deploy_all_then_a_worker_runs_nightly_quick(tmp_path, tiny_model_dir, separable_csv):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = cli_env(
        tmp_path / "prefect-home",
        PREFECT_API_URL=api,
        LAYERDRIFT_PROJECT_DIR=str(ROOT),
        PREFECT_SERVER_UI_ENABLED="false",
    )
    logs = [tmp_path / "server.log", tmp_path / "worker.log"]
    processes = [
        _background(["server", "start", "--host", "127.0.0.1", "--port", str(port)], env, logs[0])
    ]
    try:
        _wait_healthy(api, processes[0], logs[0])
        _prefect("work-pool", "create", "--type", "process", POOL, env=env)
        deployed = _prefect("deploy", "--all", env=env, timeout=300)
        assert "nightly-quick" in deployed, deployed
        processes.append(_background(["worker", "start", "--pool", POOL], env, logs[1]))

        values = tiny_config(tiny_model_dir, separable_csv)
        values |= {"name": "nightly-quick", "runs_root": str(tmp_path / "r")}
        # The server checks parameters against RunConfig's JSON schema, which knows only the
        # nested [sae.dictionary]/[sae.training] form; the flat TOML spellings are accepted
        # by RunConfig's own validation, so send the validated config.
        config = RunConfig.model_validate(values).model_dump(mode="json")
        out = _prefect(
            "deployment",
            "run",
            "layerdrift-pipeline/nightly-quick",
            "--params",
            json.dumps({"config": config}),
            env=env,
        )
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)
        state = _wait_for_flow_run(api, run_id, logs)
        assert state == "COMPLETED", f"flow run {state}:\n{tail(logs[1], 8000)}"
        report = tmp_path / "r" / "nightly-quick" / "report.html"
        assert report.is_file() and report.stat().st_size > 10_000
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
