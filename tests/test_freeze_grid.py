"""The freeze grid inside a run: one fine-tune per k with layers 0 … k frozen, its rows and
per-layer similarity in results.zarr, the recommendation read from it, and resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors.torch import load_file
from tiny_runs import one_thread, tiny_config

from layerdrift.config import RunConfig
from layerdrift.storage.checkpoints import local_checkpoint_path, read_checkpoint_metrics
from layerdrift.storage.results import open_result
from layerdrift.storage.results_schema import RESULT_GROUPS
from layerdrift.storage.rundir import FREEZE_RECORD, RunDir
from layerdrift.tasks.importance import NONE, recommend, unit_names, variant_similarity
from layerdrift.tasks.importance.run import reversion_array
from layerdrift.tasks.modeling import layer_parameters, load_classifier

GRID = [0, 1]


def _grid_config(model_dir, csv, root) -> RunConfig:
    """The tiny run with a freeze grid; no SAEs, probes, bootstrap or report (not tested here)."""
    values = tiny_config(
        model_dir, csv,
        importance={"freeze_grid": GRID},
        similarity={"bootstrap_resamples": 0, "probes": False},
        sae={"enabled": False},
        report={"enabled": False},
    )  # fmt: skip
    return RunConfig.model_validate({**values, "name": "grid", "runs_root": str(root)})


@pytest.fixture(scope="module")
def grid_run(prefect_harness, tiny_model_dir, separable_csv, tmp_path_factory):
    """The pipeline with ``importance.freeze_grid = [0, 1]``: (config, outcome, run)."""
    from layerdrift.flows.pipeline import pipeline

    config = _grid_config(tiny_model_dir, separable_csv, tmp_path_factory.mktemp("grid"))
    with one_thread():
        outcome = pipeline(config)
    return config, outcome, RunDir(outcome["run_dir"])


def _group(run: RunDir, name: str) -> xr.DataArray:
    return open_result(run.results(), name)[name].load()


def test_the_none_row_is_the_runs_own_finetune(grid_run):
    _, outcome, run = grid_run
    for stage in ("freeze:0", "freeze:1", "freeze_grid"):
        assert outcome["stages"][stage] == "ran", stage
    grid, sim = _group(run, "freeze_grid"), _group(run, "freeze_similarity")
    assert list(grid.freeze_k.values) == [NONE, "0", "1"]
    assert list(grid.frozen_through.values) == [-1, 0, 1]
    final, base = read_checkpoint_metrics(run, "final"), read_checkpoint_metrics(run, "base")
    none = grid.sel(freeze_k=NONE)
    for quantity, key in (("accuracy", "val_accuracy"), ("loss", "val_loss"),
                          ("trainable_parameters", "trainable_parameters"),
                          ("finetune_seconds", "finetune_seconds")):  # fmt: skip
        assert float(none.sel(quantity=quantity)) == final[key], quantity
    assert final["finetune_seconds"] > 0
    assert grid.attrs["base_accuracy"] == base["val_accuracy"]
    similarity = _group(run, "similarity").sel(reference="base", checkpoint="final")
    for metric in ("linear_cka", "cosine"):
        expected = similarity.sel(metric=metric).values
        assert (sim.sel(freeze_k=NONE, metric=metric).values == expected).all(), metric
    assert ((sim.sel(freeze_k=["0", "1"]) > -1) & (sim.sel(freeze_k=["0", "1"]) <= 1 + 1e-9)).all()


def test_each_variant_trains_only_the_layers_it_claims(grid_run):
    _, _, run = grid_run
    base = load_file(local_checkpoint_path(run, "base") / "model.safetensors")
    layout = layer_parameters(load_classifier(run.checkpoint("base")))
    grid = _group(run, "freeze_grid")
    for k in GRID:
        variant = run.freeze_variant(k)
        folder = Path(variant.root)
        # Only the final checkpoint is kept: no copy of base, no optimizer state.
        assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["final"]
        assert not list(folder.rglob("*.pt")) and (folder / FREEZE_RECORD).is_file()
        final = load_file(local_checkpoint_path(variant, "final") / "model.safetensors")
        frozen = set(layout.names(list(range(k + 1))))
        for name in layout.names(layout.rows()):
            same = torch.equal(base[name], final[name])
            assert same == (name in frozen), f"k={k} {name}: frozen {name in frozen}, same {same}"
        trained = layout.names([u for u in layout.rows() if u not in range(k + 1)])
        expected = sum(final[n].numel() for n in trained)
        assert float(grid.sel(freeze_k=str(k), quantity="trainable_parameters")) == expected
        assert read_checkpoint_metrics(variant, "final")["frozen_layers"] == list(range(k + 1))


def test_variant_similarity_of_the_final_model_is_the_similarity_group(grid_run):
    """The variants' similarity path, fed the run's own final checkpoint, reproduces what
    the similarity stage computed from the store."""
    config, _, run = grid_run
    found = variant_similarity(run, config, local_checkpoint_path(run, "final"))
    similarity = _group(run, "similarity").sel(reference="base", checkpoint="final")
    expected = similarity.sel(metric=["linear_cka", "cosine"]).transpose("layer", "metric")
    np.testing.assert_allclose(found, expected.values, rtol=1e-9, atol=1e-12)


def test_show_prints_the_freeze_grid(grid_run):
    from typer.testing import CliRunner

    from layerdrift.flows.cli import app

    _, _, run = grid_run
    result = CliRunner().invoke(app, ["show", run.url, "--group", "freeze_grid",
                                      "--format", "csv"])  # fmt: skip
    assert result.exit_code == 0, result.output
    header = result.output.strip().splitlines()[0].split(",")
    for column in ("freeze_k", "frozen_through", "accuracy", "loss", "trainable_parameters",
                   "finetune_seconds"):  # fmt: skip
        assert column in header, column
    assert len(result.output.strip().splitlines()) == 1 + 1 + len(GRID)


def test_status_lists_each_k(grid_run):
    from layerdrift.flows.status import run_status

    _, _, run = grid_run
    states = {(stage, piece): state for stage, piece, state in run_status(run.url)}
    for piece in ("freeze-0", "freeze-1", "freeze_grid"):
        assert states[("importance", piece)] == "complete", piece


def test_a_resumed_run_does_not_refit_finished_ks(grid_run):
    """k = 1 lost (as if the run had been killed before it finished): the rerun fits k = 1
    again, the same way, and leaves k = 0 alone."""
    from layerdrift.flows.pipeline import pipeline

    config, _, run = grid_run
    before = _group(run, "freeze_grid")
    kept = Path(run.freeze_variant(0).root)
    stamps = {p: p.stat().st_mtime_ns for p in kept.rglob("*") if p.is_file()}
    shutil.rmtree(run.freeze_variant(1).root)
    with one_thread():
        outcome = pipeline(config)
    stages = outcome["stages"]
    assert stages["freeze:0"] == "cached" and stages["freeze:1"] == "ran"
    assert stages["freeze_grid"] == "ran" and stages["finetune"] == "cached"
    assert {p: p.stat().st_mtime_ns for p in kept.rglob("*") if p.is_file()} == stamps
    after = _group(run, "freeze_grid")
    for quantity in ("accuracy", "loss", "trainable_parameters"):
        assert (after.sel(quantity=quantity) == before.sel(quantity=quantity)).all(), quantity


def _grid(accuracy: dict[str, float], base: float, num_layers: int = 2) -> xr.DataArray:
    """A freeze_grid array from accuracy per freeze_k label (other quantities 0)."""
    labels = list(accuracy)
    values = np.zeros((len(labels), 4))
    values[:, 0] = list(accuracy.values())
    through = [-1 if label == NONE else int(label) for label in labels]
    grid = RESULT_GROUPS["freeze_grid"].new(
        values, freeze_k=labels, frozen_through=("freeze_k", np.asarray(through))
    )
    return grid.assign_attrs(base_accuracy=base, num_layers=num_layers)


def test_recommendation_from_a_constructed_freeze_grid():
    reversion = reversion_array(np.zeros((4, 6, 2)), 2, [1] * 4, {})
    # Gain 0.4: k = 1 (train block 2 + head) recovers 97.5%, k = 2 (head only) 50%.
    found = recommend(reversion, freeze_grid=_grid({NONE: 0.9, "0": 0.9, "1": 0.89, "2": 0.7},
                                                   base=0.5))  # fmt: skip
    assert found.layers == (2, 3) and found.units == ("block 2", "head")
    assert found.evidence == "freeze_grid" and found.recovered == pytest.approx(0.975)
    assert found.accuracy == 0.89 and found.final_accuracy == 0.9 and found.base_accuracy == 0.5
    # No k recovers enough: fine-tune everything.
    found = recommend(reversion, freeze_grid=_grid({NONE: 0.9, "0": 0.6}, base=0.5))
    assert found.units == tuple(unit_names(2)) and found.recovered == 1.0
    assert found.evidence == "freeze_grid"
    # Fine-tuning that did not help has nothing to recover.
    assert recommend(reversion, freeze_grid=_grid({NONE: 0.5, "0": 0.6}, base=0.5)) is None
    # A grid with only the run's own row is no freeze grid: the reversion curves decide.
    only_none = _grid({NONE: 0.9}, base=0.5)
    assert recommend(reversion, freeze_grid=only_none) == recommend(reversion)
