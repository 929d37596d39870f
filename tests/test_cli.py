"""End to end through the command line, in subprocesses, as a user would run it: the quick
preset on the bundled model and data, then every README command against that run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
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
def test_quick_preset_learns_beyond_the_majority_class(quick_run):
    final = json.loads((quick_run / "checkpoints" / "final" / "metrics.json").read_text())
    confusion = np.array(final["confusion_matrix"])  # rows true, columns predicted
    majority = confusion.sum(axis=1).max() / confusion.sum()
    assert final["val_accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    # The quick preset must learn: 0.815 against a majority rate of 0.58 when measured.
    assert final["val_accuracy"] >= max(0.70, majority + 0.1), (final["val_accuracy"], majority)
    assert (confusion.sum(axis=0) > 0.2 * confusion.sum()).all(), confusion  # both classes


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
    verify = _layerdrift("verify", str(quick_run), cwd=quick_run.parent)
    assert "verified" in verify.stdout
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
        (["run", "--runs-root", "r", "--method", "sgd"], "'full' or 'lora'"),
        (["run", "--runs-root", "r", "--checkpoint", "ft"], "is not LABEL=PATH_OR_NAME"),
        (["run", "--runs-root", "r", "--checkpoint", "ft=./no-such-model"], "does not exist"),
        (["show", "nowhere"], "not a layerdrift run directory"),
        (["show", "run", "--format", "xml"], "unknown --format 'xml'"),
        (["explore", "nowhere", "--no-open"], "not a layerdrift run directory"),
    ],
)
def test_bad_input_exits_2_with_a_reason(tmp_path, args, message):
    # A folder that passes the cheap check (a config.json), for the options checked after it.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    done = _layerdrift(*args, cwd=tmp_path, check=False)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()


def test_bad_files_exit_2_in_one_line_naming_the_file(tmp_path):
    (tmp_path / "broken.toml").write_text('name = "x"\n[data\n')
    done = _layerdrift("run", "broken.toml", "--runs-root", "r", cwd=tmp_path, check=False)
    assert done.returncode == 2, done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("error: config file broken.toml is not valid TOML: Expected ']'")
    )
    (tmp_path / "latin1.csv").write_bytes("text,label\ncaf\xe9,pos\n".encode("latin-1"))
    args = ["run", "--preset", "quick", "--dataset", "csv:latin1.csv", "--runs-root", "r"]
    done = _layerdrift(*args, cwd=tmp_path, check=False)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "CSV file latin1.csv is not UTF-8 text (byte 0xe9" in last, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("args", "code", "output"),
    [
        (["-h"], 0, "Usage:"),
        (["run", "--help"], 0, "--dask-address"),
        (["--version"], 0, "layerdrift 0.1.0"),
        (["show"], 2, "Error: Missing argument"),
        (["frobnicate"], 2, "Error: No such command 'frobnicate'"),
        (["run", "--no-such-flag"], 2, "Error: No such option: --no-such-flag"),
    ],
)
def test_usage(tmp_path, args, code, output):
    done = _layerdrift(*args, cwd=tmp_path, check=False)
    assert done.returncode == code, done.stdout + done.stderr
    assert output in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
