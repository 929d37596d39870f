"""End to end through the command line, in subprocesses, as a user would run it: the quick
preset on the bundled model and data, then every README command against that run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERDRIFT = [sys.executable, "-m", "layerdrift.flows.cli"]


def _layerdrift(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [*LAYERDRIFT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    if check and done.returncode != 0:
        raise AssertionError(f"layerdrift {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    return done


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    """`layerdrift run --preset quick` on minilm-l6 and rotten-tomatoes, once per module."""
    work = tmp_path_factory.mktemp("cli")
    done = _layerdrift("run", "--preset", "quick", "--runs-root", str(work / "runs"), cwd=work)
    assert "report" in done.stdout, done.stdout
    return work / "runs" / "quick"


@pytest.mark.slow
def test_quick_run_fine_tunes_and_reports(quick_run):
    metrics = {
        label: json.loads((quick_run / "checkpoints" / label / "metrics.json").read_text())
        for label in ("base", "final")
    }
    assert metrics["final"]["val_accuracy"] > metrics["base"]["val_accuracy"]
    assert (quick_run / "report.html").stat().st_size > 10_000
    assert (quick_run / "similarity.csv").is_file()


@pytest.mark.slow
def test_rerun_resumes_without_redoing_anything(quick_run):
    done = _layerdrift(
        "run", "--preset", "quick", "--runs-root", str(quick_run.parent), cwd=quick_run.parent
    )
    stages = re.search(r"stages (.*)", done.stdout).group(1)
    assert "=ran" not in stages, stages


@pytest.mark.slow
def test_show_status_and_report_commands(quick_run):
    show = _layerdrift("show", str(quick_run), cwd=quick_run.parent)
    assert "final vs base" in show.stdout
    status = _layerdrift("status", str(quick_run), cwd=quick_run.parent)
    assert "missing" not in status.stdout and "complete" in status.stdout
    before = (quick_run / "report.html").read_bytes()
    _layerdrift("report", str(quick_run), cwd=quick_run.parent)
    assert (quick_run / "report.html").read_bytes() == before


@pytest.mark.slow
def test_readme_python_snippets_run_against_a_real_run(quick_run):
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks
    for block in blocks:
        code = block.replace("runs/default", str(quick_run))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, f"README snippet failed:\n{code}\n{done.stderr[-3000:]}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--runs-root", "r", "--dataset", "imdb"], "unknown dataset 'imdb'"),
        (["run", "--runs-root", "r", "--model", "./no-such-model"], "does not exist"),
        (["run", "--runs-root", "r", "--preset", "huge"], "unknown preset 'huge'"),
        (["show", "nowhere"], "not a layerdrift run directory"),
        (["show", "nowhere", "--format", "xml"], "unknown --format 'xml'"),
        (["explore", "nowhere", "--no-open"], "not a layerdrift run directory"),
    ],
)
def test_bad_input_exits_2_with_a_reason(tmp_path, args, message):
    done = _layerdrift(*args, cwd=tmp_path, check=False)
    assert done.returncode == 2, done.stderr
    assert message in " ".join(done.stderr.split())
