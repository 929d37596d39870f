"""``layerdrift show``: full column names, every results group, four formats, and the
README's feature table reproduced by one command."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report import make_run
from typer.testing import CliRunner

from layerdrift.flows.cli import app
from layerdrift.storage import open_result
from layerdrift.tasks.report import per_layer_table

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs"))


def _show(*args: str) -> str:
    result = CliRunner().invoke(app, ["show", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_terminal_table_has_full_names_and_fits(run):
    out = _show(run.url)
    for name in ("linear_cka", "debiased_cka", "procrustes", "sae_fvu_final", "matched_fraction",
                 "transfer_fvu_base_on_finetuned", "crosscoder_finetuned_only",
                 "task_specific_finetuned_sae", "finetuned_only_share"):  # fmt: skip
        assert name in out, name
    assert not re.search(r"\b(cka|dcka|procr|ft_only)\b", out)
    assert max(len(line) for line in out.splitlines()) <= 140


def test_csv_and_json_round_trip(run):
    table = per_layer_table(run)
    frame = pd.read_csv(io.StringIO(_show(run.url, "--format", "csv")))
    pd.testing.assert_frame_equal(frame, table, check_dtype=False)
    records = json.loads(_show(run.url, "--format", "json"))
    assert [r["cosine"] for r in records] == table["cosine"].tolist()


def test_any_group(run):
    fvu = open_result(run.results(), "transfer_fvu")["transfer_fvu"]
    frame = pd.read_csv(io.StringIO(_show(run.url, "--group", "transfer_fvu", "--format", "csv")))
    assert frame["direction"].tolist() == [str(d) for d in fvu.direction.values]
    np.testing.assert_allclose(frame[[str(v) for v in fvu.layer.values]].values, fvu.values)
    drift = json.loads(_show(run.url, "--group", "drift", "--format", "json"))
    assert len(drift) == open_result(run.results(), "drift")["drift"].size  # long: token rows
    assert {"checkpoint", "layer", "token", "token_text", "drift"} <= set(drift[0])
    result = CliRunner().invoke(app, ["show", run.url, "--group", "nothing"])
    assert "has no results group 'nothing'; groups: auroc_hist, best_match" in str(result.exception)


def test_the_readme_feature_table_is_one_command(run):
    out = _show(run.url, "--table", "features", "--format", "markdown")
    readme = (ROOT / "README.md").read_text()
    header = next(line for line in readme.splitlines() if line.startswith("| layer | cosine"))
    assert out.splitlines()[0] == header
    assert "--table features --format markdown" in readme
    counts = open_result(run.results(), "crosscoder_counts")["crosscoder_counts"]
    first = out.splitlines()[2].split(" | ")
    assert first[6] == " / ".join(str(int(v)) for v in counts.sel(layer=0).values)
