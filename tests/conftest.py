"""Shared test setup: the process environment, a session-wide Prefect server, tiny models.

``make test`` runs the suite on two pytest-xdist workers with ``--dist loadfile``: every test
file runs whole, in order, in one worker, so module fixtures are built once and tests that
change a shared run (test_features_run's store rebuild) keep their order. Session fixtures
(the Prefect server, ``tiny_run``) are built once per worker.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_HOME", str(ROOT / ".prefect" / "tests"))
Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)

from layerdrift.env import configure_environment  # noqa: E402

configure_environment(ROOT)

from factories import make_tiny_bert, separable_texts  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server (SQLite) for every test that runs a flow."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def prefect_api_url(prefect_harness) -> str:
    """The session server's API URL, for ``layerdrift`` subprocesses whose test is not about
    the temporary server: each such run then skips that server's start and stop (~15 s).
    tests/test_signals.py and tests/test_cli.py keep the temporary server, as users run it."""
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved 2-layer, hidden-32 BERT classifier with its WordPiece tokenizer."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def separable_csv(tmp_path_factory) -> Path:
    """A CSV of 600 trivially separable texts with columns text and label."""
    path = tmp_path_factory.mktemp("data") / "separable.csv"
    separable_texts(600).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def tiny_run(prefect_harness, tiny_model_dir, separable_csv, tmp_path_factory):
    """The pipeline flow on the tiny config, once per session: (config, first outcome).

    Tests that only read a finished run share it; test_pipeline also reruns it.
    """
    import tiny_runs

    from layerdrift.config import RunConfig
    from layerdrift.flows.pipeline import pipeline

    values = tiny_runs.tiny_config(tiny_model_dir, separable_csv)
    root = tmp_path_factory.mktemp("tiny-runs")
    config = RunConfig.model_validate({**values, "runs_root": str(root)})
    with tiny_runs.one_thread():
        return config, pipeline(config)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """A headless Chromium context 1400 px wide with a fresh profile (skips when absent).

    Module-scoped: Playwright's event loop lives only while a module of page tests runs.
    """
    from browser import CHROMIUM, CHROMIUM_ARGS, WIDTH, require_browser

    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": WIDTH, "height": 900},
        )
        yield context
        context.close()


@pytest.fixture
def rng():
    """The seeded random generator every test draws from."""
    import numpy as np

    return np.random.default_rng(0)
