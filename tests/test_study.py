"""A run of several tasks (``[[tasks]]``): one fine-tune per task and seed of one tiny BERT,
recorded on one probe set in one store.

The study here has four series: task ``a`` (two labels) with seeds 0 and 1, task ``b``
(three labels, another dataset) and ``a-lora`` (task a's data with LoRA). What is checked:

- the store's checkpoint labels carry the series (``base`` once, ``a/seed-0/final``, ...);
  each series' final checkpoint has exactly the weights of a one-task fine-tune with that
  series' dataset, overrides and seed; the two seeds differ; no series trained on a probe
  text;
- ``previous`` of a series' first checkpoint is ``base``; ``similarity`` carries task, seed
  and method coordinates that select by task;
- ``cross_similarity`` holds every pair of finals with its kind (seed, task, method), and its
  linear CKA equals the O(n²) Gram-matrix formula on the store's activations;
- the report draws each task against base (seeds as a band) and every pair of finals;
- a fine-tune that fails half-way through the second series resumes from its last checkpoint
  to the same weights, and the first series is not fitted again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from factories import NEGATIVE_WORDS, POSITIVE_WORDS, separable_texts
from safetensors.torch import load_file
from tiny_runs import one_thread, tiny_config

from layerdrift.config import RunConfig
from layerdrift.storage import open_result
from layerdrift.storage.activations import open_store
from layerdrift.storage.checkpoints import (
    checkpoint_complete,
    local_checkpoint_path,
    read_checkpoint_metrics,
)
from layerdrift.storage.rundir import RunDir
from layerdrift.tasks.data import prepare_data, read_split
from layerdrift.tasks.finetune import checkpointing, finetune
from layerdrift.tasks.study import finetune_series, run_series, series_complete, series_config

SERIES = ["a/seed-0", "a/seed-1", "b", "a-lora"]
LEAVES = ["step-000005", "final"]  # 160 / 16 = 10 steps, a checkpoint at the half


@pytest.fixture(scope="module")
def csvs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study-data")
    two, three = folder / "two.csv", folder / "three.csv"
    separable_texts(600).to_csv(two, index=False)
    # A second task: every third text loses its sentiment word and is labelled "none".
    frame = separable_texts(600, seed=1)
    plain = np.arange(len(frame)) % 3 == 2
    cues = set(POSITIVE_WORDS + NEGATIVE_WORDS)
    frame.loc[plain, "text"] = frame.loc[plain, "text"].map(
        lambda text: " ".join(w for w in text.split() if w not in cues)
    )
    frame.loc[plain, "label"] = "none"
    frame.to_csv(three, index=False)
    return two, three


def study_values(model, two, three, root) -> dict:
    values = tiny_config(model, two, sae={"layers": [1]})
    values["runs_root"] = str(root)
    values["name"] = "study"
    values["tasks"] = [
        {"name": "a", "dataset": f"csv:{two}", "seeds": [0, 1]},
        {"name": "b", "dataset": f"csv:{three}"},
        {"name": "a-lora", "dataset": f"csv:{two}", "finetune": {"method": "lora"}},
    ]
    # One pair asked for, one a pair of finals already compared (not repeated).
    asked = [["a/seed-0/step-000005", "b/final"], ["a/seed-0/final", "a/seed-1/final"]]
    values["similarity"] = {**values["similarity"], "bootstrap_resamples": 5, "pairs": asked}
    return values


@pytest.fixture(scope="module")
def study(prefect_harness, tiny_model_dir, csvs, tmp_path_factory):
    from layerdrift.flows.pipeline import pipeline

    root = tmp_path_factory.mktemp("study-runs")
    config = RunConfig.model_validate(study_values(tiny_model_dir, *csvs, root))
    with one_thread():
        outcome = pipeline(config)
    return config, RunDir(config.run_url), outcome


def _weights(run: RunDir, label: str) -> dict[str, torch.Tensor]:
    return load_file(str(local_checkpoint_path(run, label) / "model.safetensors"))


def test_labels_carry_the_series_and_match_one_task_finetunes(study, tmp_path):
    config, run, outcome = study
    expected = ["base"] + [f"{s}/{leaf}" for s in SERIES for leaf in LEAVES]
    assert outcome["checkpoints"] == expected
    ds = open_store(run.activations())
    assert [str(c) for c in ds["checkpoint"].values] == expected
    for series in run_series(config):
        assert not run.task_run(series.prefix).exists("checkpoints")  # adopted, then removed
        metrics = read_checkpoint_metrics(run, series.final)
        assert (metrics["task"], metrics["series"]) == (series.task.name, series.prefix)
    # The first series, fine-tuned alone as a run of one task with the same settings.
    alone = RunDir(str(tmp_path / "alone"))
    scfg = series_config(config, run_series(config)[1])  # a/seed-1
    assert scfg.seed == 1 and scfg.data.dataset == config.tasks[0].dataset
    with one_thread():
        prepare_data(alone, scfg)
        finetune(alone, scfg)
    mine, theirs = _weights(run, "a/seed-1/final"), _weights(alone, "final")
    for name, value in theirs.items():
        torch.testing.assert_close(mine[name], value, rtol=0, atol=0)
    other_seed = _weights(run, "a/seed-0/final")
    assert any(not torch.equal(other_seed[n], mine[n]) for n in mine)
    assert read_checkpoint_metrics(run, "a-lora/final")["method"] == "lora"


def test_no_series_trains_on_a_probe_text(study):
    config, run, _ = study
    probe = set(read_split(run, "probe")["text"])
    assert len(probe) == config.data.probe_size
    for series in run_series(config):
        train = set(read_split(run.task_run(series.prefix), "train")["text"])
        assert len(train) == config.data.train_size and not train & probe
        assert set(read_split(run.task_run(series.prefix), "probe")["text"]) == probe


def test_previous_within_a_series_and_task_coordinates(study):
    config, run, _ = study
    sim = open_result(run.results(), "similarity")["similarity"]
    first_of_b = sim.sel(checkpoint="b/step-000005")
    np.testing.assert_array_equal(
        first_of_b.sel(reference="previous").values, first_of_b.sel(reference="base").values
    )
    cka = sim.sel(metric="linear_cka")
    final_vs_previous = cka.sel(checkpoint="b/final", reference="previous").values
    assert not np.allclose(final_vs_previous, cka.sel(checkpoint="b/final", reference="base"))
    of_b = sim.sel(checkpoint=sim["task"] == "b")
    assert [str(c) for c in of_b.checkpoint.values] == ["b/step-000005", "b/final"]
    assert [int(s) for s in sim["seed"].values[:3]] == [-1, 0, 0]
    assert str(sim.sel(checkpoint="a-lora/final")["method"].values) == "lora"


def _gram_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA from n×n Gram matrices (Kornblith et al. 2019, eq. 1 with HSIC)."""
    n = x.shape[0]
    h = np.eye(n) - 1.0 / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float(np.sum(k * l_) / np.sqrt(np.sum(k * k) * np.sum(l_ * l_)))


def test_cross_similarity_pairs_kinds_and_exact_cka(study):
    config, run, _ = study
    cross = open_result(run.results(), "cross_similarity")["cross_similarity"]
    finals = [f"{s}/final" for s in SERIES]
    firsts, seconds = cross["first"].values, cross["second"].values
    pairs = [(str(a), str(b)) for a, b in zip(firsts, seconds, strict=True)]
    asked = ("a/seed-0/step-000005", "b/final")
    assert pairs == [(a, b) for i, a in enumerate(finals) for b in finals[i + 1 :]] + [asked]
    kinds = dict(zip(pairs, (str(k) for k in cross["kind"].values), strict=True))
    assert kinds[asked] == "asked"
    assert kinds[("a/seed-0/final", "a/seed-1/final")] == "seed"
    assert kinds[("a/seed-0/final", "b/final")] == "task"
    assert kinds[("a/seed-0/final", "a-lora/final")] == "method"
    ci = open_result(run.results(), "cross_similarity_ci")["cross_similarity_ci"]
    assert ci.sizes["pair"] == len(pairs) and ci.sizes["bound"] == 2
    ds = open_store(run.activations())
    for first, second in [("a/seed-0/final", "b/final"), asked]:
        for layer in (0, 2):
            x = ds["activations"].sel(checkpoint=first, layer=layer).values
            y = ds["activations"].sel(checkpoint=second, layer=layer).values
            expected = _gram_linear_cka(x.astype(np.float64), y.astype(np.float64))
            got = cross.sel(pair=f"{first}~{second}", layer=layer, metric="linear_cka")
            assert float(got) == pytest.approx(expected, abs=1e-6)


def test_saes_for_every_task_final(study):
    config, run, outcome = study
    assert outcome["stages"]["features"] == "ran" and outcome["stages"]["sae-metrics"] == "ran"
    assert set(config.sae.checkpoints) == {"base", *(f"{s}/final" for s in SERIES)}
    for label in config.sae.checkpoints:
        assert run.exists("saes", label, "layer-1", "cfg.json")
    assert config.features.finetuned == "a/seed-0/final"


def test_features_compare_base_with_every_task_final(study):
    """Each task final gets its crosscoder and comparison; task_features holds them side by
    side, equal to each comparison's own file, the control shared; a head of another task
    than the probe set's scores no accuracy."""
    import json

    config, run, outcome = study
    finals = [f"{s}/final" for s in SERIES]
    assert outcome["stages"]["features:1"] == "ran"
    for label in finals[1:]:
        assert outcome["stages"][f"features:{label}:1"] == "ran"
        assert run.exists("crosscoders", *label.split("/"), "layer-1", "cfg.json")
    table = open_result(run.results(), "task_features")["task_features"]
    assert list(table["checkpoint"].values) == finals
    assert list(table["task"].values) == ["a", "a", "b", "a-lora"]
    assert list(table["seed"].values)[:2] == [0, 1]
    main = open_result(run.results(), "matched_fraction")["matched_fraction"]
    row = table.sel(checkpoint=finals[0], layer=1)
    assert float(row.sel(quantity="matched_fraction")) == float(main.sel(layer=1))
    saved = json.loads(run.read_text("features", "b", "final", "layer-1.json"))
    assert saved["finetuned"] == "b/final" and saved["checkpoints"] == ["base", "b/final"]
    b = table.sel(checkpoint=table.task == "b").squeeze("checkpoint").sel(layer=1)
    assert float(b.sel(quantity="matched_fraction")) == saved["matched_fraction"]
    assert float(b.sel(quantity="transfer_fvu_finetuned_on_base")) == pytest.approx(
        saved["transfer_fvu"]["finetuned_on_base"]
    )
    assert float(b.sel(quantity="crosscoder_shared")) == saved["crosscoder_counts"]["shared"]
    controls = table.sel(layer=1, quantity="matched_fraction_control").values
    np.testing.assert_array_equal(controls, controls[0])  # one control SAE of base for all
    # b's head was trained on other labels than the probe set's: nothing spliced into it.
    assert saved["transfer_recovery_details"] == {}
    lora = json.loads(run.read_text("features", "a-lora", "final", "layer-1.json"))
    assert set(lora["transfer_recovery_details"]) == {"base_on_finetuned", "finetuned_on_finetuned"}
    sae = open_result(run.results(), "sae_metrics")["sae_metrics"].sel(layer=1)
    assert np.isnan(float(sae.sel(checkpoint="b/final", metric="loss_recovered")))
    assert np.isfinite(float(sae.sel(checkpoint="a-lora/final", metric="loss_recovered")))


def test_resume_after_a_failure_in_the_second_series(study, tmp_path, monkeypatch, caplog):
    config, reference, _ = study
    values = study_values(config.model, config.tasks[0].dataset[4:],
                          config.tasks[1].dataset[4:], tmp_path)  # fmt: skip
    cfg = RunConfig.model_validate(values)
    run = RunDir(cfg.run_url)
    prepare_data(run, cfg)
    with one_thread():
        finetune_series(run, cfg, "a/seed-0")
    first_written = (local_checkpoint_path(run, "a/seed-0/final") / "metrics.json").stat()
    real_save, calls = checkpointing.torch.save, []

    def failing_save(obj, target, *args, **kwargs):
        calls.append(target)
        if len(calls) >= 3:  # base and step-000005 saved; dies while saving final
            raise RuntimeError("injected failure")
        return real_save(obj, target, *args, **kwargs)

    monkeypatch.setattr(checkpointing.torch, "save", failing_save)
    with one_thread(), pytest.raises(RuntimeError, match="injected"):
        finetune_series(run, cfg, "a/seed-1")
    monkeypatch.setattr(checkpointing.torch, "save", real_save)
    assert series_complete(run, cfg, "a/seed-0") and not series_complete(run, cfg, "a/seed-1")
    assert checkpoint_complete(run.task_run("a/seed-1"), "step-000005")
    with one_thread(), caplog.at_level("INFO", logger="layerdrift.tasks"):
        finetune_series(run, cfg, "a/seed-0")  # done: nothing is fitted again
        finetune_series(run, cfg, "a/seed-1")
    assert "from checkpoint step-000005" in caplog.text
    assert caplog.text.count("fine-tuning task series") == 1
    again = (local_checkpoint_path(run, "a/seed-0/final") / "metrics.json").stat()
    assert again.st_mtime_ns == first_written.st_mtime_ns
    mine, theirs = _weights(run, "a/seed-1/final"), _weights(reference, "a/seed-1/final")
    for name, value in theirs.items():
        torch.testing.assert_close(mine[name], value, rtol=0, atol=1e-6)


def test_report_draws_tasks_against_base_and_each_other(study):
    config, run, outcome = study
    assert outcome["report"] is not None
    assert run.exists("figures", "10-tasks.png")
    page = run.read_text("report.html")
    assert "Tasks against base and against each other" in page
    assert "Range across seeds: a " in page  # the reading names the seed spread
    assert "linear CKA to base is a " in page
    assert run.exists("figures", "11-task-features.png")
    assert "Features of each task against base" in page
    assert "reconstructs base activations with FVU a/seed-0/final " in page


def test_each_task_curve_starts_from_its_own_base(study):
    """Base is scored once per task (its validation split, its head); the first task's is
    the run's base checkpoint, later tasks keep theirs beside their data."""
    import json

    from layerdrift.tasks.report.figures_training import training_series
    from layerdrift.tasks.report.load import load_inputs

    config, run, _ = study
    inputs = load_inputs(run)
    assert set(inputs.series_bases) == set(SERIES)
    shared = json.loads(run.read_text("checkpoints", "base", "metrics.json"))
    assert inputs.series_bases["a/seed-0"]["val_accuracy"] == shared["val_accuracy"]
    own = json.loads(run.task_run("b").read_text("base-metrics.json"))
    assert own["task"] == "b" and own["step"] == 0
    curves = training_series(inputs.metrics, inputs.series_bases)
    assert list(curves["b"].index) == ["b/base", "b/step-000005", "b/final"]
    assert curves["b"].loc["b/base", "val_accuracy"] == own["val_accuracy"]


def test_every_task_final_is_reverted_against_its_own_base(study):
    """Each task final's layer reversion scores its own validation split against its own
    base (the run's encoder, the head its fine-tune started from): the unmodified rows are
    that final's metrics.json and that task's base-metrics.json. Drift is ranked against
    importance per task and over every (task, layer) point pooled."""
    import json

    import pandas as pd

    config, run, outcome = study
    assert outcome["stages"]["importance"] == "ran"
    table = open_result(run.results(), "task_reversion")["task_reversion"].load()
    finals = [f"{prefix}/final" for prefix in SERIES]
    assert list(table.checkpoint.values) == finals
    assert list(table.task.values) == ["a", "a", "b", "a-lora"]
    for prefix, label in zip(SERIES, finals, strict=True):
        own_base = json.loads(run.task_run(prefix).read_text("base-metrics.json"))
        for variant, metrics in (("final", read_checkpoint_metrics(run, label)),
                                 ("base", own_base)):  # fmt: skip
            row = table.sel(checkpoint=label, variant=variant)
            assert (row.sel(quantity="accuracy") == metrics["val_accuracy"]).all(), label
            loss = row.sel(quantity="loss").values
            assert np.allclose(loss, metrics["val_loss"], rtol=1e-6, atol=0), (label, variant)
    # Task b has three labels: its base head is not the run's base checkpoint's.
    assert (
        table.sel(checkpoint="b/final", variant="base", quantity="loss").values[0]
        != (read_checkpoint_metrics(run, "base")["val_loss"])
    )
    main = open_result(run.results(), "layer_reversion")["layer_reversion"].load()
    assert main.attrs["final"] == config.features.finetuned == "a/seed-0/final"
    np.testing.assert_array_equal(main.values, table.sel(checkpoint="a/seed-0/final").values)

    rho = open_result(run.results(), "task_drift_importance")["task_drift_importance"].load()
    assert list(rho.checkpoint.values) == [*finals, "pooled"]
    similarity = open_result(run.results(), "similarity")["similarity"].load()
    drift, lost = {}, {}
    for label in finals:
        sim = similarity.sel(reference="base", checkpoint=label, metric="linear_cka")
        drift[label] = 1 - sim.sel(layer=[0, 1, 2]).values.astype(np.float64)
        accuracy = table.sel(checkpoint=label, quantity="accuracy").isel(layer=slice(0, -1))
        lost[label] = (accuracy.sel(variant="final") - accuracy.sel(variant="revert")).values

    def ranked(x, y):
        x, y = pd.Series(x), pd.Series(y)
        return float("nan") if x.nunique() < 2 or y.nunique() < 2 else x.rank().corr(y.rank())

    for label in finals:
        found = float(rho.sel(checkpoint=label, measure="linear_cka"))
        np.testing.assert_allclose(found, ranked(drift[label], lost[label]), equal_nan=True)
    pooled = ranked(np.concatenate(list(drift.values())), np.concatenate(list(lost.values())))
    found = float(rho.sel(checkpoint="pooled", measure="linear_cka"))
    np.testing.assert_allclose(found, pooled, equal_nan=True)
    # One SAE layer per task: too few to rank transfer FVUs.
    assert np.isnan(rho.sel(measure="transfer_fvu").values).all()
    single = open_result(run.results(), "drift_importance")["drift_importance"].load()
    np.testing.assert_array_equal(single.values, rho.sel(checkpoint="a/seed-0/final").values)
    page = run.read_text("report.html")
    assert "The reversion study here is a/seed-0/final" in page
    assert "Across tasks, over every (task final, layer) point pooled" in page


def test_task_reversion_resumes_from_the_finals_already_reverted(study, monkeypatch):
    """A kill after three of the four finals leaves their rows: the rerun reverts the
    fourth only, to the same values."""
    import json

    from layerdrift.storage.results import write_result
    from layerdrift.tasks.importance import study as importance_study

    config, run, _ = study
    before = open_result(run.results(), "task_reversion")["task_reversion"].load()
    prints = json.loads(before.attrs["fingerprints"])
    del prints["b/final"]
    kept = [label for label in before.checkpoint.values.tolist() if label != "b/final"]
    partial = before.sel(checkpoint=kept).assign_attrs(fingerprints=json.dumps(prints))
    write_result(run.results(), "task_reversion", partial)
    assert not importance_study.task_reversion_complete(run, config)
    redone, real = [], importance_study.series_reversion

    def counted(run_, cfg_, series):
        redone.append(series.final)
        return real(run_, cfg_, series)

    monkeypatch.setattr(importance_study, "series_reversion", counted)
    with one_thread():
        after = importance_study.task_reversion(run, config)
    assert redone == ["b/final"]
    assert importance_study.task_reversion_complete(run, config)
    assert list(after.checkpoint.values) == list(before.checkpoint.values)
    np.testing.assert_array_equal(after.values, before.values)


def test_study_preset_and_defaults():
    from layerdrift.config import build_config

    cfg = build_config("study")
    assert [prefix for prefix, _, _ in cfg.series()] == ["sentiment", "topic", "sentiment-lora"]
    assert cfg.probe.dataset == "rotten-tomatoes"  # the first task's dataset
    assert cfg.sae.checkpoints == ("base", "sentiment/final", "topic/final", "sentiment-lora/final")
    assert cfg.features.finetuned == cfg.final_label == "sentiment/final"
    lora = series_config(cfg, run_series(cfg)[2])
    assert (lora.finetune.method, lora.finetune.learning_rate) == ("lora", 1e-3)
    assert (lora.data.dataset, lora.probe.seed, lora.tasks) == ("rotten-tomatoes", 0, ())
    # A run of one task keeps the hash it had before [[tasks]] existed.
    assert "tasks" not in build_config("default").model_dump(exclude_defaults=True)
    assert build_config("default").config_hash() == "5bc34f159566688f"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tasks": [{"name": "x", "dataset": "bbc-news"}] * 2}, "named twice"),
        ({"tasks": [{"name": "base", "dataset": "bbc-news"}]}, "task name 'base'"),
        ({"tasks": [{"name": "x", "dataset": "imdb"}]}, "unknown dataset 'imdb'"),
        ({"tasks": [{"name": "x", "dataset": "bbc-news", "seeds": [1, 1]}]}, "distinct"),
        (
            {"tasks": [{"name": "x", "dataset": "bbc-news", "finetune": {"method": "sgd"}}]},
            "tasks.x.finetune",
        ),
        (
            {"tasks": [{"name": "x", "dataset": "bbc-news"}], "checkpoints": {"ft": "a"}},
            "imports checkpoints",
        ),
        (
            {"tasks": [{"name": "x", "dataset": "bbc-news"}], "sae": {"checkpoints": ["final"]}},
            "not checkpoint labels of the tasks",
        ),
    ],
)
def test_bad_tasks_are_refused(change, message):
    from layerdrift.config import build_config

    with pytest.raises(ValueError, match=message):
        build_config("quick", overrides=change)


def test_preflight_names_the_task_whose_data_is_wrong(tiny_model_dir, csvs, tmp_path):
    from layerdrift.tasks.preflight import PreflightError, preflight

    values = study_values(tiny_model_dir, *csvs, tmp_path)
    values["tasks"][1] = {**values["tasks"][1], "label_column": "topic"}
    with pytest.raises(PreflightError, match="task b: .*topic"):
        preflight(RunConfig.model_validate(values))
    assert not (tmp_path / "study").exists()


def test_status_lists_each_task_and_verify_repairs_the_random_floor(study):
    """Last in this module: it damages the shared run's random store and reruns it."""
    from layerdrift.flows.pipeline import pipeline
    from layerdrift.flows.status import run_status, verify_run

    config, run, _ = study
    rows = run_status(run.url)
    assert ("finetune", "b", "complete") in rows and ("finetune", "b/final", "complete") in rows
    assert ("extract", "a-lora/final", "complete") in rows
    before = open_store(run.random_activations())["activations"].values
    chunk = next(
        p for p in Path(run.random_activations(), "activations", "c").rglob("*") if p.is_file()
    )
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    chunk.write_bytes(bytes(raw))
    damage, _ = verify_run(run.url)
    assert [d.store for d in damage] == [run.random_activations()]
    _, repaired = verify_run(run.url, repair=True)
    assert repaired and repaired[0].startswith("random.zarr: random token chunk")
    with one_thread():
        outcome = pipeline(config)
    assert outcome["stages"]["extract:random"] == "ran"
    assert outcome["stages"]["finetune:b"] == "cached"
    np.testing.assert_array_equal(open_store(run.random_activations())["activations"].values,
                                  before)  # fmt: skip
    assert verify_run(run.url) == ([], [])
