"""Shared test setup: the process environment, a session-wide Prefect server, tiny models."""

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
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved 2-layer, hidden-32 BERT classifier with its WordPiece tokenizer."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def separable_csv(tmp_path_factory) -> Path:
    """A CSV of 600 trivially separable texts with columns text and label."""
    path = tmp_path_factory.mktemp("data") / "separable.csv"
    separable_texts(600).to_csv(path, index=False)
    return path


@pytest.fixture
def rng():
    """The seeded random generator every test draws from."""
    import numpy as np

    return np.random.default_rng(0)
