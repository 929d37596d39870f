"""The explorer's data, checked against independent computations: per-latent statistics and
examples from the dictionaries' own weights, predictions from unbatched forward passes, the
subsampling rule, and a page that loads nothing from elsewhere."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from factories import make_tiny_bert
from sklearn.metrics import roc_auc_score
from test_report import CHECKPOINTS, HIDDEN, make_run

from layerdrift.storage import open_result
from layerdrift.tasks.dictionary import DictionarySpec, build, load_dictionary, save_dictionary
from layerdrift.tasks.report import build_explorer
from layerdrift.tasks.report import explorer_data as data_module
from layerdrift.tasks.report.latents import (
    CONTEXT,
    HIST_BINS,
    TOP,
    latent_tables,
    pick_examples,
)
from layerdrift.tasks.report.load import load_inputs
from layerdrift.tasks.report.predictions import probe_predictions

LAYER, D_SAE = 1, 16


@pytest.fixture(scope="module")
def dictionary_run(tmp_path_factory):
    """The synthetic run with both SAEs and a crosscoder at layer 1 and classifier folders."""
    run = make_run(tmp_path_factory.mktemp("runs"))
    saes = {}
    for seed, label in enumerate(("base", "final")):
        generator = torch.Generator().manual_seed(seed)
        sae = build(DictionarySpec(d_model=HIDDEN, d_sae=D_SAE, k=4), generator)
        save_dictionary(sae, run.sae(label, LAYER), {}, {})
        saes[label] = load_dictionary(run.sae(label, LAYER))
    spec = DictionarySpec(
        d_model=HIDDEN, d_sae=D_SAE, architecture="relu", n_models=2, l1_coefficient=1e-3
    )
    crosscoder = build(spec, torch.Generator().manual_seed(2))
    with torch.no_grad():  # lean some latents to one model, so the groups are not all shared
        rows = crosscoder.W_dec.view(D_SAE, 2, HIDDEN)
        rows[:4, 0] *= 0.01
        rows[4:8, 1] *= 0.01
    save_dictionary(crosscoder, run.crosscoder(LAYER), {}, {})
    crosscoder = load_dictionary(run.crosscoder(LAYER))
    for seed, label in enumerate(CHECKPOINTS):
        make_tiny_bert(Path(run.child_url("checkpoints", label)), seed=seed)
    return run, saes, crosscoder


def _codes(encode, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return encode(torch.from_numpy(x.astype(np.float32))).clamp_min(0).numpy()


def test_latent_tables_match_the_dictionaries(dictionary_run):
    run, saes, crosscoder = dictionary_run
    inputs = load_inputs(run)
    store = xr.open_zarr(run.activations())
    tables = {t.source: t for t in latent_tables(run, inputs.config, store)}
    assert set(tables) == {"base_sae", "finetuned_sae", "crosscoder"}
    x = store.activations.sel(layer=LAYER, checkpoint=["base", "final"]).values  # [2, T, d]
    scored = ~store.is_special.values if inputs.config.sae.exclude_special else None
    examples = store.example_of_token.values
    labels = store.label.values
    encoders = {
        "base_sae": lambda: _codes(saes["base"].encode, x[0]),
        "finetuned_sae": lambda: _codes(saes["final"].encode, x[1]),
        "crosscoder": lambda: _codes(crosscoder.encode, x.transpose(1, 0, 2)),
    }
    for source, table in tables.items():
        codes = encoders[source]()  # [T, d_sae], every token
        if scored is not None:
            codes = codes * scored[:, None]
        per_example = np.stack([codes[examples == e].max(axis=0) for e in range(len(labels))])
        for j in range(D_SAE):
            if len(np.unique(per_example[:, j])) > 1:
                expected = roc_auc_score(labels, per_example[:, j])
                assert table.auroc[j] == pytest.approx(expected, abs=1e-9), (source, j)
        np.testing.assert_allclose(table.density, (codes > 0).mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(table.max_act, codes.max(axis=0), rtol=1e-5)
        assert (table.hist.sum(axis=1) == (codes > 0).sum(axis=0)).all()
        assert _misbinned(table, codes) == 0, source

        top = int(np.argmax(per_example[:, 3]))
        assert table.examples[3, 0] == top
        tokens = codes[examples == top, 3]
        peak = int(np.argmax(tokens))
        assert table.peaks[3, 0] == peak
        window = table.windows[3, 0]
        assert window[CONTEXT] == pytest.approx(tokens[peak], rel=1e-5)
        if peak >= 1:
            assert window[CONTEXT - 1] == pytest.approx(tokens[peak - 1], rel=1e-5, abs=1e-7)
    unit = {k: v.decoder_directions().numpy()[:, 0] for k, v in saes.items()}
    unit = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in unit.items()}
    cos = unit["base"] @ unit["final"].T  # [d_base, d_final]
    assert (tables["base_sae"].partner == cos.argmax(axis=1)).all()
    assert (tables["finetuned_sae"].partner == cos.argmax(axis=0)).all()
    groups = tables["crosscoder"].group
    assert (groups[:4] == 2).all() and (groups[4:8] == 0).all()  # base decoder shrunk: ft-only


def test_pick_examples_top_then_weakest():
    maxima = np.array([[0.0, 5], [3, 4], [1, 0], [2, 3], [0.5, 2], [4, 1], [6, 0.2], [7, 0]])
    picked = pick_examples(maxima)
    assert picked.shape == (2, TOP + 3)
    assert picked[0, :TOP].tolist() == [7, 6, 5, 1, 3]
    assert picked[0, TOP:].tolist() == [4, 2, -1]  # only two active examples are left
    assert picked[1, :TOP].tolist() == [0, 1, 3, 4, 5]


def test_predictions_equal_unbatched_forward_passes(dictionary_run):
    from transformers import AutoModelForSequenceClassification

    run, _, _ = dictionary_run
    store = xr.open_zarr(run.activations())
    probs = probe_predictions(run, store)
    assert list(probs.checkpoint.values) == CHECKPOINTS
    for i, label in enumerate(CHECKPOINTS):
        path = run.child_url("checkpoints", label)
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        for e in (0, 5, 11):
            start, count = int(store.token_start[e]), int(store.token_count[e])
            ids = torch.as_tensor(
                store.token_id.values[start : start + count][None], dtype=torch.long
            )
            with torch.no_grad():
                expected = torch.softmax(model(input_ids=ids).logits, -1)[0].numpy()
            np.testing.assert_allclose(probs.values[i, e], expected, atol=1e-5)
    # A second call reads the stored group instead of running the models again.
    stored = open_result(run.results(), "probe_predictions")["probe_predictions"]
    assert stored.attrs["store_generation"] == "test-0"
    again = probe_predictions(run, store)
    np.testing.assert_array_equal(again.values, probs.values)


def _page_data(path: str) -> dict:
    text = Path(path).read_text()
    found = re.search(
        r'<script type="application/json" id="explorer-data">(.*?)</script>', text, re.S
    )
    return json.loads(found.group(1))


def test_explorer_page_is_self_contained_and_holds_the_run(dictionary_run):
    run, _, _ = dictionary_run
    path = build_explorer(run)
    assert path == run.child_url("explorer.html")
    text = Path(path).read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?!["']|data:|#)""", text)
    assert "@import" not in text and "url(" not in text
    data = _page_data(path)
    names = {g["name"] for g in data["groups"]}
    assert {"similarity", "transfer_fvu", "layer_similarity"} <= names
    assert "drift" not in names and "probe_predictions" not in names  # token-level: own place
    drift = open_result(run.results(), "drift")["drift"]
    d = data["probe"]["drift"]
    q = np.frombuffer(base64.b64decode(d["q"]["b64"]), np.uint8).reshape(d["q"]["shape"])
    np.testing.assert_allclose(q / 255 * d["scale"], drift.values, atol=d["scale"] / 510 + 1e-9)
    assert [t["source"] for t in data["latents"]["tables"]] == [
        "base_sae",
        "finetuned_sae",
        "crosscoder",
    ]
    assert data["probe"]["subsampled"] is False
    assert Path(path).read_bytes() == Path(build_explorer(run)).read_bytes()  # deterministic


def test_large_probe_sets_are_subsampled_by_the_stated_rule(dictionary_run, monkeypatch):
    run, _, _ = dictionary_run
    store = xr.open_zarr(run.activations())
    counts = store.token_count.values
    monkeypatch.setattr(data_module, "MAX_TOKENS", int(counts.sum() // 2))
    keep = data_module.kept_examples(len(counts), counts, {0, 7})
    assert {0, 7} <= set(keep.tolist())
    assert counts[keep].sum() <= counts.sum() // 2
    assert (np.diff(keep) > 0).all()
    again = data_module.kept_examples(len(counts), counts, {0, 7})
    np.testing.assert_array_equal(keep, again)  # seeded


def test_inlined_json_cannot_close_its_script_element():
    from layerdrift.tasks.report.explorer import script_json

    text = 'a "quote", </script><script>alert(1)</script> <!-- and \u2028 a separator'
    inlined = script_json({"text": [text]})
    assert "<" not in inlined and "\u2028" not in inlined
    assert json.loads(inlined) == {"text": [text]}


def test_prediction_batches_hold_examples_of_similar_length(dictionary_run, monkeypatch):
    """Every batch's padded size stays within BATCH_TOKENS (a lone wider example aside),
    and the probabilities do not depend on how the examples were batched."""
    from layerdrift.tasks.report import predictions

    run, _, _ = dictionary_run
    store = xr.open_zarr(run.activations())
    ids, starts = store.token_id.values, store.token_start.values
    counts = store.token_count.values
    model = predictions.load_classifier(run.child_url("checkpoints", CHECKPOINTS[-1]))
    whole = predictions.class_probabilities(model, ids, starts, counts)
    budget = 2 * int(np.median(counts))
    monkeypatch.setattr(predictions, "BATCH_TOKENS", budget)
    shapes = []
    handle = model.register_forward_pre_hook(
        lambda _, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    small = predictions.class_probabilities(model, ids, starts, counts)
    handle.remove()
    assert sum(n for n, _ in shapes) == len(counts) and len(shapes) > 1
    assert all(n * width <= budget or n == 1 for n, width in shapes), shapes
    np.testing.assert_allclose(small, whole, atol=1e-5)


def test_latent_tables_are_the_same_with_the_codes_kept_or_encoded_again(
    dictionary_run, monkeypatch
):
    """The second pass over a layer reuses the first pass's codes; with no room to keep
    them it reads and encodes every block again, and every table field is the same."""
    from layerdrift.tasks.report import latents

    run, _, _ = dictionary_run
    inputs = load_inputs(run)
    store = xr.open_zarr(run.activations())
    encoded = []
    original = latents._encoded

    def counted(*args):
        encoded.append(1)
        return original(*args)

    monkeypatch.setattr(latents, "_encoded", counted)
    kept = latent_tables(run, inputs.config, store)
    assert not encoded
    monkeypatch.setattr(latents, "KEEP_CODES_BYTES", 0)
    again = latent_tables(run, inputs.config, store)
    assert encoded
    for one, other in zip(kept, again, strict=True):
        for name in ("auroc", "density", "max_act", "hist", "examples", "peaks", "windows"):
            np.testing.assert_array_equal(getattr(one, name), getattr(other, name), name)


def _misbinned(table, codes: np.ndarray) -> int:
    """Active entries whose bin in ``table.hist`` differs from (0, max_act] cut in
    HIST_BINS equal bins, beyond those within 1e-4 of a bin edge (float32 rounding of the
    test's own encoding may move them)."""
    rows, cols = np.nonzero(codes > 0)
    scaled = codes[rows, cols] / table.max_act[cols] * HIST_BINS
    bins = np.minimum(scaled.astype(np.int64), HIST_BINS - 1)
    expected = np.zeros_like(table.hist)
    np.add.at(expected, (cols, bins), 1)
    near_edge = int(np.sum(np.abs(scaled - np.round(scaled)) < 1e-4))
    return max(int(np.abs(table.hist - expected).sum()) // 2 - near_edge, 0)
