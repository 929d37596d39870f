"""SAE metrics against reference formulas, and accuracy/loss recovered."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from families import FAMILIES

from layerdrift.tasks.dictionary import (
    DENSITY_EDGES,
    DictionarySpec,
    LayerSplices,
    build,
    density_histogram,
    reconstruction_metrics,
    recovered_metrics,
    recovered_metrics_by_layer,
)

TEXTS = ["good movie", "the plot was bad", "a lovely film really", "boring end", "great story"]
LABELS = np.array([1, 0, 1, 0, 1])


def _identity_sae(d: int):
    """A ReLU SAE with relu(x) − relu(−x) = x: a perfect reconstruction."""
    model = build(DictionarySpec(d_model=d, d_sae=2 * d, architecture="relu"))
    eye = torch.eye(d)
    with torch.no_grad():
        model.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        model.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        model.b_enc.zero_()
        model.b_dec.zero_()
    return model


def test_reconstruction_metrics_match_reference(rng):
    model = build(DictionarySpec(d_model=8, d_sae=24, k=3), torch.Generator().manual_seed(0))
    x = torch.from_numpy(rng.normal(size=(300, 8)).astype(np.float32)) + 1.0
    model.init_from_sample(x)
    metrics, frequency = reconstruction_metrics(model, x, batch_size=64)
    xn = x.double().numpy()
    with torch.no_grad():
        f = model.encode(x).double().numpy()
        r = model(x).double().numpy()
    err = xn - r
    assert metrics["mse"] == pytest.approx(np.mean(err**2), rel=1e-5)
    fvu = np.sum(err**2) / np.sum((xn - xn.mean(0)) ** 2)
    assert metrics["fvu"] == pytest.approx(fvu, rel=1e-5)
    ev = 1 - np.var(err, axis=0).sum() / np.var(xn, axis=0).sum()
    assert metrics["explained_variance"] == pytest.approx(ev, rel=1e-5)
    assert metrics["l0"] == pytest.approx(np.mean((f > 0).sum(1)))
    np.testing.assert_allclose(frequency, (f > 0).mean(0))
    assert metrics["dead_fraction"] == pytest.approx(np.mean((f > 0).sum(0) == 0))


def test_density_histogram_bins():
    frequency = np.array([0.0, 1e-9, 1e-3, 0.7, 1.0])
    counts = density_histogram(frequency)
    assert counts.sum() == 5 and counts[0] == 2  # never-firing land in the first bin
    assert counts[np.searchsorted(DENSITY_EDGES, -3.0, side="right") - 1] == 1
    assert counts[-1] == 2  # log10(0.7) and log10(1) share the top bin


def test_perfect_sae_recovers_everything_and_mean_sae_nothing(tiny_model_dir):
    mean = torch.full((32,), 0.1)
    perfect = recovered_metrics(tiny_model_dir, 1, _identity_sae(32), mean, TEXTS, LABELS)
    assert perfect["loss_sae"] == pytest.approx(perfect["loss_clean"], abs=1e-5)
    assert perfect["loss_mean"] != pytest.approx(perfect["loss_clean"], abs=1e-4)
    assert perfect["loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert math.isnan(perfect["accuracy_recovered"]) or perfect["accuracy_recovered"] == 1.0

    constant = _identity_sae(32)
    with torch.no_grad():
        constant.W_dec.zero_()
        constant.b_dec.copy_(mean)  # reconstructs every token as the mean
    ablated = recovered_metrics(tiny_model_dir, 1, constant, mean, TEXTS, LABELS)
    assert ablated["loss_recovered"] == pytest.approx(0.0, abs=1e-4)
    assert ablated["loss_mean"] == pytest.approx(perfect["loss_mean"], abs=1e-6)


def test_several_dictionaries_in_one_call_get_the_metrics_of_one_call_each(tiny_model_dir):
    """The transfer directions share a classifier load and the clean and mean passes; each
    dictionary still gets exactly (to the bit, keys in the same order) what a call of its
    own gives."""
    from layerdrift.tasks.dictionary import evaluate as module

    noisy = build(DictionarySpec(d_model=32, d_sae=64, architecture="relu"),
                  torch.Generator().manual_seed(1))  # fmt: skip
    saes = {"identity": _identity_sae(32), "noisy": noisy}
    mean = torch.full((32,), 0.1)
    texts, labels = TEXTS * 2, np.tile(LABELS, 2)
    loads = []
    original = module.load_classifier

    def counted(*args, **kwargs):
        loads.append(1)
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "load_classifier", counted)
        torch.manual_seed(0)
        splices = {1: LayerSplices(saes, mean)}
        found = recovered_metrics_by_layer(tiny_model_dir, splices, texts, labels, batch_size=4)
    together = found[1]
    assert len(loads) == 1 and list(together) == ["identity", "noisy"]
    for name, sae in saes.items():
        torch.manual_seed(0)
        alone = recovered_metrics(tiny_model_dir, 1, sae, mean, texts, labels, batch_size=4)
        assert list(together[name]) == list(alone)
        np.testing.assert_equal(together[name], alone)
    assert together["identity"]["loss_sae"] != together["noisy"]["loss_sae"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_layer_from_one_clean_pass_gets_the_metrics_of_its_own_call(family, tmp_path, caplog):
    """Every family: the SAE metrics stage scores a checkpoint's SAEs of every layer with
    one classifier load and one clean pass per batch, recording each layer's hidden state;
    each layer's numbers are, to the bit, those of a call for that layer alone."""
    from families import make_family_model

    from layerdrift.tasks.dictionary import evaluate as module

    folder = make_family_model(family, tmp_path / family)
    texts, labels = TEXTS * 3, np.tile(LABELS, 3)
    splices = {
        layer: LayerSplices(
            {
                "sae": build(
                    DictionarySpec(d_model=32, d_sae=64, architecture="relu"),
                    torch.Generator().manual_seed(layer),
                )
            },  # fmt: skip
            torch.full((32,), 0.1 * (layer + 1)),
        )
        for layer in (0, 1, 2)
    }
    loads = []
    original = module.load_classifier

    def counted(*args, **kwargs):
        loads.append(1)
        return original(*args, **kwargs)

    with caplog.at_level("WARNING"), pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "load_classifier", counted)
        torch.manual_seed(0)  # the saved folder has no head: loading draws one
        together = recovered_metrics_by_layer(folder, splices, texts, labels, batch_size=8)
    assert "in full" not in caplog.text  # each layer replayed from its own recording
    assert len(loads) == 1 and list(together) == [0, 1, 2]
    for layer, splice in splices.items():
        torch.manual_seed(0)
        alone = recovered_metrics(folder, layer, splice.models["sae"], splice.mean_activation,
                                  texts, labels, batch_size=8)  # fmt: skip
        np.testing.assert_equal(together[layer], {"sae": alone})
    assert together[0]["sae"]["loss_sae"] != together[2]["sae"]["loss_sae"]


def test_labels_beyond_the_head_are_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="do not match"):
        recovered_metrics(tiny_model_dir, 0, _identity_sae(32), torch.zeros(32), TEXTS[:1], [5])


@pytest.mark.parametrize("family", FAMILIES)
def test_spliced_passes_from_the_clean_pass_equal_full_passes(family, tmp_path, caplog):
    """Every family: the SAE and mean passes that start from the clean pass's hidden state
    give exactly the metrics of full passes through the splice; the layers below the splice
    run once per batch (ALBERT, whose one layer runs at every depth, runs in full)."""
    from families import make_family_model

    from layerdrift.tasks.dictionary import evaluate as module
    from layerdrift.tasks.modeling import find_layer_sites, load_classifier, load_tokenizer
    from layerdrift.tasks.modeling.sites import SiteRecord

    folder = make_family_model(family, tmp_path / family)
    classifier = load_classifier(folder, load_tokenizer(str(folder)))
    sae = build(DictionarySpec(d_model=32, d_sae=64, architecture="relu"),
                torch.Generator().manual_seed(0))  # fmt: skip
    mean = torch.full((32,), 0.1)
    texts, labels = TEXTS * 3, np.tile(LABELS, 3)
    module_name = find_layer_sites(classifier)[1].module
    calls = []
    original = module.load_classifier

    def counted(*args, **kwargs):
        model = original(*args, **kwargs)
        block = model.base_model.get_submodule(module_name)
        inner = next(m for m in block.modules() if getattr(m, "weight", torch.ones(1)).ndim == 2)
        inner.register_forward_hook(lambda *_: calls.append(1))
        return model

    with caplog.at_level("WARNING"), pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "load_classifier", counted)
        torch.manual_seed(0)  # the saved folder has no head: loading draws one
        replayed = recovered_metrics(folder, 1, sae, mean, texts, labels, batch_size=8)
    assert "in full" not in caplog.text
    replayed_calls, calls[:] = len(calls), []

    class Unreplayable(SiteRecord):
        def __init__(self, layer):
            super().__init__(layer, error="off for the test")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "load_classifier", counted)
        patch.setattr(module, "recording", _full_passes(Unreplayable))
        torch.manual_seed(0)
        full = recovered_metrics(folder, 1, sae, mean, texts, labels, batch_size=8)
    np.testing.assert_equal(replayed, full)  # to the bit (NaN where a denominator is 0)
    # Full: block 1 in the clean, SAE and mean pass of both batches (and in the passes that
    # find the layer sites of the model, as in the replayed call). Replayed: in the clean
    # passes, and once more to check the first replay: 3 fewer.
    saved = 0 if family == "albert" else 3
    assert len(calls) - replayed_calls == saved, (len(calls), replayed_calls)


def _full_passes(record_type):
    import contextlib

    @contextlib.contextmanager
    def recording(model, layer):
        yield record_type(layer)

    return recording
