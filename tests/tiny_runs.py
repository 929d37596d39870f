"""Helpers for tests that run the ``layerdrift`` command line in subprocesses on a tiny config.

The tiny config (2-layer hidden-32 BERT from factories.py, a separable CSV) runs the whole
pipeline in about a minute, so the orchestration tests (resume, deployments, scale-out) stay
within the suite's time budget. The bundled model is only used by test_cli.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LAYERDRIFT = [sys.executable, "-m", "layerdrift.flows.cli"]


def tiny_config(model_dir: Path, csv: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """The tiny run config as a dict (``sections`` override whole-section fields)."""
    config: dict[str, Any] = {
        "name": "tiny",
        "model": str(model_dir),
        "device": "cpu",
        "data": {
            "dataset": f"csv:{csv}",
            "train_size": 160,
            "val_size": 60,
            "probe_size": 40,
            "max_length": 32,
        },
        "finetune": {
            "epochs": 1,
            "batch_size": 16,
            "learning_rate": 1e-3,
            "checkpoints": [0.0, 0.5, 1.0],
        },
        "extract": {"token_chunk": 128},
        "similarity": {"probe_folds": 2},
        "sae": {"token_budget": 2048, "batch_size": 256, "expansion_factor": 2, "k": 4},
        "report": {"token_pictures": 1},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            config[section] = {**config.get(section, {}), **values}
        else:
            config[section] = values
    return config


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block (in-process runs of the tiny pipeline).

    A rerun that rebuilds a checkpoint must give the same weights as the first run; with
    another thread count (which other tests change) float sums differ, and so would the
    weights, the store identity and everything after it.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def to_toml(config: dict[str, Any]) -> str:
    """Render a two-level config dict as TOML (scalars, lists, one table per section)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    top = [f"{k} = {value(v)}" for k, v in config.items() if not isinstance(v, dict)]
    tables = [
        f"\n[{k}]\n" + "\n".join(f"{kk} = {value(vv)}" for kk, vv in v.items())
        for k, v in config.items()
        if isinstance(v, dict)
    ]
    return "\n".join(top) + "\n" + "\n".join(tables) + "\n"


def cli_env(prefect_home: Path, **extra: str) -> dict[str, str]:
    """Environment for a ``layerdrift`` subprocess: offline, one BLAS thread, own Prefect home.

    One thread per process makes float reductions identical from run to run on one machine.
    """
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env.update(
        PYTHONPATH=str(ROOT),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        PREFECT_HOME=str(prefect_home),
    )
    env.update(extra)
    return env


def start_cli(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start ``python -m flows.cli ARGS`` in its own process group, output into ``log``."""
    handle = log.open("ab")
    return subprocess.Popen(
        [*LAYERDRIFT, *args],
        cwd=cwd,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def tail(log: Path, chars: int = 4000) -> str:
    """The end of a log file, for assertion messages."""
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


def wait_until(
    process: subprocess.Popen,
    reached: Callable[[], bool],
    what: str,
    log: Path,
    timeout_s: float = 400,
    poll_s: float = 0.05,
) -> None:
    """Poll until ``reached()`` while the CLI ``process`` runs.

    Fails with the log's tail when the process ends first or ``timeout_s`` passes (then the
    process group is killed, so no run outlives its test). ``what`` names the awaited event
    in the failure message.
    """
    deadline = time.monotonic() + timeout_s
    while not reached():
        if process.poll() is not None:
            raise AssertionError(f"run ended before {what}:\n{tail(log)}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError(f"no {what} in {timeout_s} s:\n{tail(log)}")
        time.sleep(poll_s)
