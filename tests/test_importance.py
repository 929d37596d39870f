"""Which layers matter: the adapter's layer parameters, reversion and transplant, the
recommendation, drift against importance, and frozen layers in fine-tuning."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from factories import separable_texts
from families import FAMILIES, make_family_model

from layerdrift.tasks.finetune.batches import encode_texts
from layerdrift.tasks.finetune.evaluate import evaluate
from layerdrift.tasks.importance import (
    VARIANTS,
    base_weights,
    drift_importance,
    recommend,
    reversion_values,
    unit_names,
)
from layerdrift.tasks.importance.run import reversion_array
from layerdrift.tasks.modeling import (
    SharedLayersError,
    layer_parameters,
    load_classifier,
    load_tokenizer,
)

TRAINED = 1  # the one layer the one-layer fine-tune trains (block 1)


def _classifier(folder):
    tokenizer = load_tokenizer(str(folder))
    return load_classifier(folder, tokenizer, ["neg", "pos"]), tokenizer


def _hidden(model, ids) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model.eval()(input_ids=ids, output_hidden_states=True)
    return [*out.hidden_states, out.logits]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """Tiny saved models of a few families, made once for this module (by name)."""
    root = tmp_path_factory.mktemp("families")
    return {f: make_family_model(f, root / f) for f in ("gpt2", "electra", "llama")}


@pytest.mark.parametrize("family", ["gpt2", "electra", "llama"])
def test_layer_parameters_own_exactly_their_hidden_state(family, family_dirs):
    """Perturbing layer l's parameters changes hidden_states[l] onward and nothing before."""
    model, tokenizer = _classifier(family_dirs[family])
    layout = layer_parameters(model)
    units = layout.rows()
    named = dict(model.named_parameters())
    listed = layout.names(units) + list(layout.unused)
    assert sorted(listed) == sorted(named), "every parameter in exactly one unit"
    assert len(units) == model.config.num_hidden_layers + 2
    embedding = model.get_input_embeddings().weight
    assert any(named[n] is embedding for n in layout.layers[0])
    ids = torch.as_tensor([tokenizer("the movie was good and great")["input_ids"]])
    clean = _hidden(model, ids)
    generator = torch.Generator().manual_seed(0)
    for row, unit in enumerate(units):
        saved = {n: named[n].detach().clone() for n in layout.names([unit])}
        with torch.no_grad():
            for name in saved:
                named[name].add_(torch.randn(named[name].shape, generator=generator))
        moved = _hidden(model, ids)
        with torch.no_grad():
            for name, value in saved.items():
                named[name].copy_(value)
        assert all(torch.equal(a, b) for a, b in zip(clean[:row], moved[:row], strict=True))
        assert not torch.allclose(clean[row], moved[row]), f"{family} unit {unit}"


def test_shared_layers_are_refused_by_name(tmp_path):
    model, _ = _classifier(make_family_model("albert", tmp_path / "albert"))
    with pytest.raises(SharedLayersError, match=r"'albert' reuses the parameters of .*albert_"):
        layer_parameters(model)


@pytest.fixture(scope="module")
def one_layer_finetune(tiny_model_dir):
    """Tiny BERT fine-tuned with every unit frozen (head included) but block ``TRAINED``:
    (base, final, layout, evaluate)."""
    base, tokenizer = _classifier(tiny_model_dir)
    layout = layer_parameters(base)
    final = copy.deepcopy(base)
    trained = set(layout.names([TRAINED]))
    params = [p for n, p in final.named_parameters() if n in trained]
    frame = separable_texts(320, seed=3)
    texts, labels = frame["text"].tolist(), (frame["label"] == "pos").to_numpy(np.int64)
    train, val = slice(0, 256), slice(256, None)
    encoded = encode_texts(tokenizer, texts, 32)
    val_enc = {k: v[val] for k, v in encoded.items()}
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    order = torch.randperm(256, generator=torch.Generator().manual_seed(0)).numpy()
    final.eval()  # no dropout: the fixture trains the same weights every time
    for _ in range(3):
        for start in range(0, 256, 16):
            batch = tokenizer([texts[i] for i in order[start : start + 16]], padding=True,
                              return_tensors="pt")  # fmt: skip
            target = torch.as_tensor(labels[train][order[start : start + 16]])
            loss = torch.nn.functional.cross_entropy(final(**batch).logits, target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    def score(model):
        found = evaluate(model, val_enc, labels[val], 32, torch.device("cpu"), 0, 2)
        return found["val_accuracy"], found["val_loss"]

    return base, final, layout, score


def test_only_the_trained_layer_matters(one_layer_finetune):
    base, final, layout, score = one_layer_finetune
    before = {n: p.detach().clone() for n, p in final.named_parameters()}
    values = reversion_values(final, base_weights(base, layout), layout, score)
    assert all(torch.equal(before[n], p) for n, p in final.named_parameters()), "left unchanged"
    v = {name: values[:, i] for i, name in enumerate(VARIANTS)}  # each (unit, quantity)
    final_score, base_score = np.array(score(final)), np.array(score(base))
    assert final_score[0] > base_score[0] + 0.1, "the one layer learned the task"
    assert (v["final"] == final_score).all() and (v["base"] == base_score).all()
    for row in range(len(layout.rows())):
        trained = row == TRAINED
        assert (v["revert"][row] == (base_score if trained else final_score)).all()
        assert (v["transplant"][row] == (final_score if trained else base_score)).all()
        # Cumulative forms: a step from final to base where the trained layer joins the set.
        assert (v["revert_through"][row] == (base_score if row >= TRAINED else final_score)).all()
        assert (v["revert_from"][row] == (base_score if row <= TRAINED else final_score)).all()
    array = reversion_array(values, layout.num_layers, [1] * len(layout.rows()), {})
    found = recommend(array)
    assert found.layers == (TRAINED,) and found.units == ("block 1",)
    assert found.evidence == "transplant" and found.recovered == 1.0


def _reversion(accuracy_by_variant: dict[str, list[float]]) -> xr.DataArray:
    """A layer_reversion array for 2 layers + head from accuracies per variant (loss 0)."""
    values = np.zeros((4, len(VARIANTS), 2))
    for i, name in enumerate(VARIANTS):
        values[:, i, 0] = accuracy_by_variant[name]
    return reversion_array(values, 2, [1, 1, 1, 1], {})


def test_recommendation_takes_the_smallest_set_that_recovers_enough():
    flat = {"final": [0.9] * 4, "base": [0.5] * 4}
    # No single unit recovers 95% of the gain (0.4), the last two (block 2 + head) do.
    found = recommend(_reversion(flat | {
        "revert": [0.9, 0.85, 0.7, 0.7],
        "transplant": [0.5, 0.55, 0.7, 0.7],
        "revert_from": [0.5, 0.5, 0.5, 0.7],
        "revert_through": [0.9, 0.89, 0.6, 0.5],
    }))  # fmt: skip
    assert found.layers == (2, 3) and found.units == ("block 2", "head")
    assert found.evidence == "revert_through" and found.recovered == pytest.approx(0.975)
    # Fine-tuning that lost accuracy has nothing to recover.
    worse = {name: [0.5] * 4 for name in VARIANTS} | {"base": [0.6] * 4}
    assert recommend(_reversion(worse)) is None
    assert unit_names(2) == [
        "embeddings", "block 1", "block 2", "head"
    ]  # fmt: skip


def test_drift_importance_is_spearman_over_layers():
    from scipy.stats import spearmanr

    accuracy = {"final": [0.9] * 4, "base": [0.5] * 4, "transplant": [0.5] * 4,
                "revert_from": [0.5] * 4, "revert_through": [0.5] * 4,
                "revert": [0.9, 0.8, 0.6, 0.5]}  # fmt: skip
    reversion = _reversion(accuracy)
    cka, cosine = [0.99, 0.9, 0.5], [0.99, 0.95, 0.97]
    sim = np.stack([cka, cosine], axis=-1)[None, None]  # reference, checkpoint, layer, metric
    similarity = xr.DataArray(
        sim, dims=("reference", "checkpoint", "layer", "metric"),
        coords={"reference": ["base"], "checkpoint": ["final"], "layer": [0, 1, 2],
                "metric": ["linear_cka", "cosine"]},
    )  # fmt: skip
    rho = drift_importance(similarity, reversion)
    lost = [0.0, 0.1, 0.3]
    assert float(rho.sel(measure="linear_cka")) == pytest.approx(1.0)
    expected = spearmanr(1 - np.array(cosine), lost).statistic
    assert float(rho.sel(measure="cosine")) == pytest.approx(expected)
    # No features compared: the transfer measure is NaN, and says it had no layer.
    assert np.isnan(float(rho.sel(measure="transfer_fvu"))) and rho.attrs["transfer_layers"] == []
    # The base SAE's FVU on the fine-tuned tokens is drift as it is (higher: moved more).
    fvu = xr.DataArray([0.5, 0.2, 0.9], dims=("layer",), coords={"layer": [2, 0, 1]})
    rho = drift_importance(similarity, reversion, fvu)
    assert float(rho.sel(measure="transfer_fvu")) == pytest.approx(
        spearmanr([0.2, 0.9, 0.5], lost).statistic
    )
    assert rho.attrs["transfer_layers"] == [0, 1, 2]
    # Two layers with SAEs are too few to rank: NaN, not ±1.
    rho = drift_importance(similarity, reversion, fvu.sel(layer=[0, 1]))
    assert np.isnan(float(rho.sel(measure="transfer_fvu")))
    assert rho.attrs["transfer_layers"] == [0, 1]


def test_pooled_correlation_ranks_every_task_and_layer_together():
    from layerdrift.tasks.importance.correlation import LayerEvidence, correlations

    first = LayerEvidence((0, 1, 2), {"linear_cka": np.array([0.1, 0.2, 0.3]),
                                      "cosine": np.array([0.3, 0.2, 0.1]),
                                      "transfer_fvu": np.array([np.nan] * 3)},
                          np.array([0.0, 0.1, 0.2]))  # fmt: skip
    second = LayerEvidence((0, 1, 2), {"linear_cka": np.array([0.4, 0.5, 0.6]),
                                       "cosine": np.array([0.0, 0.5, 0.4]),
                                       "transfer_fvu": np.array([0.2, 0.1, np.nan])},
                           np.array([0.3, 0.4, 0.5]))  # fmt: skip
    pooled = correlations([first, second])
    ranks = {m: pd.Series(np.concatenate([first.drift[m], second.drift[m]])).rank()
             for m in ("linear_cka", "cosine")}  # fmt: skip
    lost = pd.Series(np.concatenate([first.lost, second.lost])).rank()
    assert pooled[0] == pytest.approx(ranks["linear_cka"].corr(lost)) == pytest.approx(1.0)
    assert pooled[1] == pytest.approx(ranks["cosine"].corr(lost))
    assert np.isnan(pooled[2])  # two known points across both tasks


def test_the_pipeline_writes_reversion_that_reproduces_the_checkpoints(tiny_run):
    from layerdrift.storage.checkpoints import read_checkpoint_metrics
    from layerdrift.storage.results import open_result
    from layerdrift.storage.rundir import RunDir
    from layerdrift.tasks.report.tables import group_table

    _, outcome = tiny_run
    assert outcome["stages"]["importance"] == "ran"
    run = RunDir(outcome["run_dir"])
    array = open_result(run.results(), "layer_reversion")["layer_reversion"].load()
    assert list(array["unit"].values) == ["embeddings", "block 1", "block 2", "head"]
    for label in ("final", "base"):
        metrics = read_checkpoint_metrics(run, label)
        row = array.sel(variant=label)
        assert (row.sel(quantity="accuracy") == metrics["val_accuracy"]).all(), label
        assert np.allclose(row.sel(quantity="loss"), metrics["val_loss"], rtol=1e-6, atol=0)
    # Reverting everything is base, whichever end the cumulative forms start from.
    assert (array.sel(variant="revert_from").isel(layer=0) == array.sel(variant="base")).all()
    assert (array.sel(variant="revert_through").isel(layer=-1) == array.sel(variant="base")).all()
    assert array["parameters"].sum() == sum(
        p.numel() for p in load_classifier(run.checkpoint("final")).parameters()
    )
    rho = open_result(run.results(), "drift_importance")["drift_importance"]
    assert set(rho.measure.values) == {"linear_cka", "cosine", "transfer_fvu"}
    assert np.all(np.isnan(rho.values) | (np.abs(rho.values) <= 1))
    # Taken again once the features stage wrote its transfer FVUs, over the SAE layers.
    assert outcome["stages"]["drift-importance"] == "ran"
    transfer = open_result(run.results(), "transfer_fvu")["transfer_fvu"]
    drift = transfer.sel(direction="base_on_finetuned").sel(layer=[0, 1, 2]).values
    accuracy = array.sel(quantity="accuracy").isel(layer=slice(0, -1))
    lost = (accuracy.sel(variant="final") - accuracy.sel(variant="revert")).values
    assert rho.attrs["transfer_layers"] == [0, 1, 2]
    expected = pd.Series(drift).rank().corr(pd.Series(lost).rank())
    found = float(rho.sel(measure="transfer_fvu"))
    assert (np.isnan(found) and np.isnan(expected)) or found == pytest.approx(expected)
    table = group_table(run, "layer_reversion")
    assert {"layer", "variant", "unit", "accuracy", "loss"} <= set(table.columns)
    assert len(table) == 4 * len(VARIANTS)


def test_freeze_layers_trains_only_the_other_layers(tmp_path, tiny_model_dir, separable_csv):
    from safetensors.torch import load_file
    from tiny_runs import tiny_config

    from layerdrift.config import RunConfig
    from layerdrift.storage.checkpoints import local_checkpoint_path, read_checkpoint_metrics
    from layerdrift.storage.rundir import RunDir
    from layerdrift.tasks.data import prepare_data
    from layerdrift.tasks.finetune import finetune

    values = tiny_config(tiny_model_dir, separable_csv, finetune={"freeze_layers": 1})
    cfg = RunConfig.model_validate({**values, "runs_root": str(tmp_path)})
    assert cfg.finetune.frozen() == (0, 1)
    run = RunDir(cfg.run_url)
    prepare_data(run, cfg)
    finetune(run, cfg)
    base, final = (load_file(local_checkpoint_path(run, c) / "model.safetensors")
                   for c in ("base", "final"))  # fmt: skip
    layout = layer_parameters(load_classifier(run.checkpoint("final")))
    frozen = set(layout.names([0, 1]))
    for name in layout.names(layout.rows()):
        same = torch.equal(base[name], final[name])
        assert same == (name in frozen), f"{name}: frozen {name in frozen}, unchanged {same}"
    metrics = read_checkpoint_metrics(run, "final")
    trainable = sum(final[n].numel() for n in layout.names([2, "head"]))
    assert metrics["trainable_parameters"] == trainable
    assert metrics["frozen_layers"] == [0, 1]
    assert metrics["total_parameters"] == sum(t.numel() for t in final.values())


def test_freeze_layers_are_checked_against_the_model(tiny_model_dir, separable_csv):
    from tiny_runs import tiny_config

    from layerdrift.config import RunConfig
    from layerdrift.tasks.modeling import inspect_model
    from layerdrift.tasks.preflight import PreflightError, check_frozen_layers

    info = inspect_model(str(tiny_model_dir))
    for value, bad in ((3, "[3]"), ([0, 2, 5], "[5]")):
        values = tiny_config(tiny_model_dir, separable_csv, finetune={"freeze_layers": value})
        cfg = RunConfig.model_validate(values)
        with pytest.raises(PreflightError) as caught:
            check_frozen_layers(cfg, info)
        assert str(caught.value) == (
            f"finetune.freeze_layers = {cfg.finetune.freeze_layers!r} names layers {bad}, but "
            f"model {tiny_model_dir} has layers 0 (embeddings) to 2: use k <= 2 or indices "
            "in that range"
        )
    check_frozen_layers(RunConfig.model_validate(tiny_config(tiny_model_dir, separable_csv,
                        finetune={"freeze_layers": 2})), info)  # fmt: skip
    with pytest.raises(ValueError, match=r"freeze_layers \[-1\] are negative"):
        RunConfig.model_validate({"finetune": {"freeze_layers": [-1, 2]}})


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "albert"])
def test_replayed_layers_give_the_scores_of_full_passes_in_every_family(family, tmp_path, caplog):
    """Every family, decoders included: the scores with shared layers replayed
    (:mod:`.replay`) are exactly those of a copy of final with the variant's units loaded
    from base by ``load_state_dict`` (an independent construction), and the first block
    runs far fewer times than once per variant and batch."""
    from layerdrift.tasks.importance import reverted_units
    from layerdrift.tasks.modeling import find_layer_sites

    base, tokenizer = _classifier(make_family_model(family, tmp_path / family))
    final = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in final.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    frame = separable_texts(20, seed=7)
    encoded = encode_texts(tokenizer, frame["text"].tolist(), 24)
    labels = (frame["label"] == "pos").to_numpy(np.int64)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def score(model):
        found = evaluate(model, encoded, labels, 8, torch.device("cpu"), pad, 2)
        return found["val_accuracy"], found["val_loss"]

    layout = layer_parameters(final)
    site = find_layer_sites(final)[1]
    calls = []
    block = final.base_model.get_submodule(site.module)
    inner = next(m for m in block.modules() if getattr(m, "weight", torch.ones(1)).ndim == 2)
    handle = inner.register_forward_hook(lambda *_: calls.append(1))  # skipped when replayed
    with caplog.at_level("WARNING"):
        values = reversion_values(final, base_weights(base, layout), layout, score)
    handle.remove()
    assert "in full" not in caplog.text
    units, state = layout.rows(), base.state_dict()
    built, expected = copy.deepcopy(final), {}
    for row in range(len(units)):
        for v, variant in enumerate(VARIANTS):
            reverted = reverted_units(variant, row, units)
            if reverted not in expected:
                built.load_state_dict(final.state_dict())
                built.load_state_dict({n: state[n] for n in layout.names(reverted)}, strict=False)
                expected[reverted] = score(built)
            assert tuple(values[row, v]) == expected[reverted], (family, units[row], variant)
    assert tuple(values[0, VARIANTS.index("revert_from")]) == score(base)
    assert tuple(values[-1, VARIANTS.index("final")]) == score(final)
    # 12 distinct variants of a 2-layer model: full passes would run block 1 12 times per
    # batch. It need run once per distinct weights of units 0 and 1 (4), and once more for
    # the check of the first replay.
    prefixes = {tuple(u in r for u in units[:2]) for r in expected}
    assert len(prefixes) == 4 and len(calls) == 5 * -(-len(labels) // 8), len(calls)
