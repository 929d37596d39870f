"""A probe set from its own source, and `layerdrift compare` across runs that share it.

Two runs of given checkpoints that name the same ``[probe]`` record the same texts; their
final-vs-final similarity per layer (streaming moments over both stores) must equal the
textbook formulas on the stores' arrays; a run with other probe texts is named as such.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tiny_runs
import xarray as xr
from factories import separable_texts

from layerdrift.config import RunConfig
from layerdrift.storage import RunDir
from layerdrift.storage.results import list_results
from layerdrift.tasks.data import UNLABELLED, load_probe_set
from layerdrift.tasks.report import compare_runs, per_layer_table
from layerdrift.tasks.report.compare import CROSS_RUN_CSV, linear_cka
from layerdrift.tasks.report.crossrun import PROBE_HINT, cross_run_similarity, incomparable


@pytest.fixture(scope="module")
def probe_csvs(tmp_path_factory):
    """The same 120 texts with and without a label column."""
    root = tmp_path_factory.mktemp("probe-data")
    frame = separable_texts(120, seed=5)
    frame.to_csv(root / "labelled.csv", index=False)
    frame[["text"]].to_csv(root / "texts.csv", index=False)
    return root / "labelled.csv", root / "texts.csv"


def _config(tiny_model_dir, separable_csv, root, **fields) -> RunConfig:
    values = tiny_runs.tiny_config(tiny_model_dir, separable_csv)
    values |= {"runs_root": str(root), **fields}
    values["similarity"] = {**values["similarity"], "bootstrap_resamples": 0}
    values["sae"] = {**values["sae"], "enabled": False}
    return RunConfig.model_validate(values)


def test_probe_set_from_its_own_source(tiny_model_dir, separable_csv, probe_csvs, tmp_path):
    labelled, texts = probe_csvs
    probe = {"dataset": f"csv:{labelled}", "size": 30, "seed": 7}
    with_labels = load_probe_set(_config(tiny_model_dir, separable_csv, tmp_path, probe=probe))
    probe["dataset"] = f"csv:{texts}"
    without = load_probe_set(_config(tiny_model_dir, separable_csv, tmp_path, probe=probe))
    assert len(with_labels[0]) == 30 and with_labels[1] == ["neg", "pos"]
    assert without[0]["text"].tolist() == with_labels[0]["text"].tolist()  # same sample
    assert (without[0]["label"] == UNLABELLED).all() and without[1] == []
    other_seed = load_probe_set(
        _config(tiny_model_dir, separable_csv, tmp_path, probe={**probe, "seed": 8})
    )
    assert other_seed[0]["text"].tolist() != without[0]["text"].tolist()


def test_compare_runs_sharing_a_probe_set(
    tiny_run, tiny_model_dir, separable_csv, probe_csvs, tmp_path
):
    from layerdrift.flows.pipeline import pipeline

    _, outcome = tiny_run
    source = RunDir(outcome["run_dir"])
    probe = {"dataset": f"csv:{probe_csvs[1]}", "size": 24, "seed": 1}
    runs = {}
    for name, label, seed in (
        ("a", "final", 1),
        ("b", outcome["checkpoints"][1], 1),
        ("c", "final", 2),
    ):
        cfg = _config(
            tiny_model_dir,
            separable_csv,
            tmp_path,
            name=name,
            checkpoints={"ft": source.path("checkpoints", label)},
            probe={**probe, "seed": seed},
            report={"enabled": name == "c", "token_pictures": 1},  # one report is enough
        )
        with tiny_runs.one_thread():
            result = pipeline(cfg)
        runs[name] = RunDir(result["run_dir"])
    report = (tmp_path / "c" / "report.html").read_text()
    assert "the probe set has no labels, so linear probes and task-specific latents" in report
    assert "01-similarity-by-layer" in report  # the given label `ft` is the final checkpoint
    table = per_layer_table(runs["c"])
    assert len(table) == 3 and table["cosine"].notna().all()
    assert "probe_accuracy" not in list_results(runs["a"].results())
    a, b = (xr.open_zarr(runs[n].activations()) for n in "ab")
    frame = cross_run_similarity(a, b)
    for layer in frame.index:
        x = a.activations.sel(checkpoint="ft", layer=layer).values.astype(np.float64)
        y = b.activations.sel(checkpoint="ft", layer=layer).values.astype(np.float64)
        cosine = np.mean(np.sum(x * y, 1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)))
        assert frame.loc[layer, "cosine"] == pytest.approx(cosine, rel=1e-6)
        assert frame.loc[layer, "linear_cka"] == pytest.approx(linear_cka(x, y), rel=1e-6)
    assert incomparable(runs["a"], runs["b"]) is None
    assert incomparable(runs["a"], runs["c"]) == f"the probe texts differ: {PROBE_HINT}"
    page = compare_runs(list(runs.values()), tmp_path / "cmp")
    assert "probe.dataset, probe.size, probe.seed" in page.read_text()
    table = pd.read_csv(tmp_path / "cmp" / CROSS_RUN_CSV)
    assert set(table["pair"]) == {"a ~ b"} and len(table) == len(frame)
