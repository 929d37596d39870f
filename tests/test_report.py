"""The report stage on a synthetic run directory: figures, HTML, tables, determinism."""

from __future__ import annotations

import hashlib
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from factories import make_activation_store, write_results_from_schema

from layerdrift.config import build_config
from layerdrift.storage import RunDir, open_result, save_run_config, write_result
from layerdrift.storage.results_schema import RESULT_GROUPS
from layerdrift.tasks.modeling import BUNDLED_NOTE
from layerdrift.tasks.report import build_report, compare_runs, per_layer_table
from layerdrift.tasks.report.claims import similarity_sentence
from layerdrift.tasks.report.compare import linear_cka

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ["base", "step-000010", "final"]
SIM_METRICS = list(RESULT_GROUPS["similarity"].labels["metric"])
N_LAYERS, HIDDEN = 4, 8
pytestmark = pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _reversion() -> xr.DataArray:
    """layer_reversion of a run where only block 3 matters (base 0.5, final 0.8, as the
    checkpoints' metrics): its transplant recovers 0.29 of the 0.3 gain."""
    group = RESULT_GROUPS["layer_reversion"]
    variants = list(group.labels["variant"])
    rows = N_LAYERS + 1  # layers 0 … 3 and the head
    values = np.zeros((rows, len(variants), 2))
    accuracy = {
        "final": [0.8] * rows,
        "base": [0.5] * rows,
        "revert": [0.8, 0.8, 0.8, 0.5, 0.8],
        "transplant": [0.5, 0.5, 0.5, 0.79, 0.5],
        "revert_from": [0.5, 0.5, 0.5, 0.5, 0.8],
        "revert_through": [0.8, 0.8, 0.8, 0.5, 0.5],
    }
    for i, variant in enumerate(variants):
        values[:, i, 0] = accuracy[variant]
    names = ["embeddings", "block 1", "block 2", "block 3", "head"]
    return group.new(values, layer=np.arange(rows), unit=("layer", names),
                     parameters=("layer", np.full(rows, 100)))  # fmt: skip


def make_run(
    root: Path, name: str = "synthetic", model: str = "minilm-l6", full: bool = True, seed: int = 0
) -> RunDir:
    """A run directory with config, metrics, a store and results; ``full`` adds SAE/features."""
    rng = np.random.default_rng(seed)
    config = build_config("quick", overrides={"name": name, "runs_root": str(root), "model": model})
    run = RunDir(config.run_url)
    save_run_config(run, config.to_json(), config.config_hash())
    for i, label in enumerate(CHECKPOINTS):
        metrics = {
            "label": label,
            "step": 10 * i,
            "epoch": 0.5 * i,
            "train_loss": None if i == 0 else 0.7 - 0.2 * i,
            "val_loss": 0.7 - 0.15 * i,
            "val_accuracy": 0.5 + 0.15 * i,
            "confusion_matrix": [[40, 10], [8 + i, 42]],
            "label_names": ["neg", "pos"],
        }
        run.write_text(json.dumps(metrics), "checkpoints", label, "metrics.json")

    counts = [int(c) for c in rng.integers(4, 9, size=12)]
    n_tok = sum(counts)
    base = rng.normal(size=(N_LAYERS, n_tok, HIDDEN))
    scale = np.linspace(0.0, 1.5, N_LAYERS)[:, None, None]
    acts = np.stack([base + k * scale * rng.normal(size=base.shape) for k in (0, 0.5, 1.0)])
    make_activation_store(
        run.activations(), acts.astype(np.float32), counts, checkpoints=CHECKPOINTS, token_chunk=32
    )
    store = xr.open_zarr(run.activations())
    drift = 1.0 - _cos_rows(acts[:, :, :, :], acts[0][None])
    edges = np.linspace(0.0, 1.0, 11)
    coords = {
        "checkpoint": CHECKPOINTS,
        "layer": np.arange(N_LAYERS),
        "layer_other": np.arange(N_LAYERS),
        "reference": ["base", "previous"],
        "dictionary": ["base_sae", "finetuned_sae", "crosscoder"],
        "bin": edges[:-1],
        "bin_upper": ("bin", edges[1:]),
        "token": np.arange(store.sizes["token"]),
        **{k: ("token", store[k].values) for k in ("token_id", "token_text", "position")},
        **{k: ("token", store[k].values) for k in ("is_special", "example_of_token")},
    }
    overrides = {
        "layer_similarity": {"checkpoint": ["base", "final"]},
        "sae_metrics": {"checkpoint": ["base", "final"]},
    }
    stages = ("similarity", "sae", "features") if full else ("similarity",)
    url = run.results()
    written = write_results_from_schema(url, rng, coords, stages, overrides)
    write_result(url, "drift", written["drift"].copy(data=drift.astype(np.float32)))
    sim = written["similarity"].copy()
    sim.loc[{"reference": "base", "checkpoint": "base"}] = 1.0  # base vs base
    write_result(url, "similarity", sim)
    bounds = np.stack([sim.values - 0.02, np.minimum(sim.values + 0.02, 1.0)], axis=-1)
    ci = RESULT_GROUPS["similarity_ci"].new(bounds, **{d: sim[d].values for d in sim.dims})
    write_result(url, "similarity_ci", ci.assign_attrs(level=0.95, resamples=200, groups=20))
    write_result(url, "majority_rate", RESULT_GROUPS["majority_rate"].new(np.float64(0.5)))
    if not full:
        return run
    write_result(url, "layer_reversion", _reversion())
    rho = RESULT_GROUPS["drift_importance"].new(np.array([0.4, -0.2, np.nan]))
    write_result(url, "drift_importance", rho)
    card = {
        "layer": 2,
        "source": "crosscoder",
        "latent": 17,
        "reason": "finetuned_only",
        "auroc": 0.91,
        "score": 0.97,
        "examples": [
            {
                "example": 3,
                "label": 1,
                "tokens": ["the", "<film>", "good"],
                "activations": [0.0, 1.3, 0.2],
                "max_token": 1,
            }
        ],
    }
    run.write_text(json.dumps([card]), "features", "cards.json")
    return run


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[RunDir, str]:
    """A complete synthetic run and its report, built once for the read-only tests."""
    run = make_run(tmp_path_factory.mktemp("runs"))
    return run, build_report(run)


@pytest.fixture
def run(built) -> RunDir:
    """The complete synthetic run (its report already built)."""
    return built[0]


class Collector(HTMLParser):
    """Checks nesting and gathers images, figures, tables and element ids."""

    VOID = {"meta", "link", "img", "br", "hr", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.images: list[dict] = []
        self.ids: set[str] = set()
        self.tables: dict[str, list[list[tuple[str | None, str]]]] = {}
        self._table: str | None = None
        self._cell: str | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag not in self.VOID:
            self.stack.append(tag)
        if "id" in attrs:
            assert attrs["id"] not in self.ids, f"duplicate id {attrs['id']}"
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs)
        if tag == "table" and "id" in attrs:
            self._table = attrs["id"]
            self.tables[self._table] = []
        if tag == "tr" and self._table:
            self.tables[self._table].append([])
        if tag == "td" and self._table:
            self._cell = attrs.get("data-value")
            self.tables[self._table][-1].append((self._cell, ""))

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()
        if tag == "table":
            self._table = None

    def handle_data(self, data):
        self.text.append(data)


def parse(path: str) -> Collector:
    """Parse a report and check every element is closed."""
    text = Path(path).read_text()
    assert text.startswith("<!DOCTYPE html>")
    parser = Collector()
    parser.feed(text)
    parser.close()
    assert parser.stack == [], f"unclosed elements {parser.stack}"
    return parser


def test_report_is_valid_html_with_every_figure(built):
    run, path = built
    assert path == run.child_url("report.html")
    page = parse(path)
    figures = sorted(p.name for p in Path(run.child_url("figures")).glob("*.png"))
    expected = [
        "01-similarity-by-layer",
        "02-evolution",
        "03-layer-by-layer-cka",
        "04-tokens-1",
        "04-tokens-2",
        "05-probe-accuracy",
        "06-sae-metrics",
        "07-feature-composition",
        "08-finetuning-curves",
        "09-layer-importance",
    ]
    assert figures == [f"{name}.png" for name in expected]
    for name in expected:
        data = Path(run.child_url("figures", f"{name}.png")).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000, name
        assert name in page.ids
    embedded = [img["src"] for img in page.images]
    assert len(embedded) == len(expected)
    assert all(src.startswith("data:image/png;base64,") for src in embedded)
    text = " ".join(page.text)
    assert BUNDLED_NOTE in text
    assert "layer 2 · crosscoder latent 17 · finetuned_only" in text
    assert "example 3 (pos):" in text and "<film>" in text  # label name, escaped token
    assert "Stages that did not run" not in text
    assert "Bands: 95% bootstrap intervals over probe examples (200 resamples" in text
    assert "probe on shuffled labels scores" in text
    assert "Fine-tune block 3 and keep the rest at base" in text
    assert "96.7% of the gain from base (0.500) to full fine-tuning (0.800)" in text
    assert "variant transplant: base with only that unit fine-tuned" in text
    assert "1 − linear CKA: 0.40, 1 − cosine: -0.20, base SAE" in text
    assert "FVU on the fine-tuned tokens: too few layers or nothing to rank" in text
    assert "reversion-table" in page.ids and "recommendation" in page.ids


def test_report_tables_equal_results(built):
    run, path = built
    page = parse(path)
    rows = page.tables["layer-table"]  # one row per statistic, one column per layer
    sim = open_result(run.results(), "similarity")["similarity"].sel(
        reference="base", checkpoint="final"
    )
    probe = open_result(run.results(), "probe_accuracy")["probe_accuracy"]
    drift = open_result(run.results(), "drift")["drift"].sel(checkpoint="final")
    table = per_layer_table(run)
    assert list(table.columns[:3]) == ["layer", "cosine", "linear_cka"]
    assert len(rows) == table.shape[1]  # the header row, then one row per statistic
    assert all(len(row) == 1 + N_LAYERS for row in rows[1:])
    named = zip(table.columns[1:], rows[1:], strict=True)
    stats = {name: [float(v) for v, _ in row[1:]] for name, row in named}
    counts = open_result(run.results(), "crosscoder_counts")["crosscoder_counts"]
    assert stats["crosscoder_shared"] == [float(v) for v in counts.sel(group="shared").values]
    for layer in range(N_LAYERS):
        values = {name: stat[layer] for name, stat in stats.items()}
        for metric in SIM_METRICS:
            assert values[metric] == float(sim.sel(layer=layer, metric=metric))
        assert values["probe_final"] == float(
            probe.sel(checkpoint="final", layer=layer, pooling="mean")
        )
        assert values["drift_mean"] == pytest.approx(float(drift.sel(layer=layer).mean()))
        control = open_result(run.results(), "probe_control_accuracy")["probe_control_accuracy"]
        assert values["probe_control_final"] == float(
            control.sel(checkpoint="final", layer=layer, pooling="mean")
        )
        assert values["probe_majority"] == 0.5
        for name in ("matched_fraction", "relative_norm_deviation"):
            assert values[name] == float(open_result(run.results(), name)[name].sel(layer=layer))
    ckpt = page.tables["checkpoint-table"]
    assert [float(v) for v, _ in ckpt[3][-1:]] == [pytest.approx(0.8)]


def test_report_is_deterministic(built):
    run, path = built
    first = Path(path).read_bytes()
    pngs = {p.name: p.read_bytes() for p in Path(run.child_url("figures")).glob("*.png")}
    second = Path(build_report(run)).read_bytes()
    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()
    assert pngs == {p.name: p.read_bytes() for p in Path(run.child_url("figures")).glob("*.png")}
    # `layerdrift report` in a fresh process writes the same bytes again.
    import subprocess
    import sys

    cli = [sys.executable, "-m", "layerdrift.flows.cli", "report", run.url]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(path).read_bytes() == first


def test_missing_optional_stages_are_listed(tmp_path):
    run = make_run(tmp_path, model=str(tmp_path / "some-model"), full=False)
    page = parse(build_report(run))
    text = " ".join(page.text)
    assert "sae: results.zarr has no `sae_metrics`" in text
    assert "features: no features/cards.json" in text
    assert BUNDLED_NOTE not in text
    assert "06-sae-metrics" not in page.ids and "07-feature-composition" not in page.ids
    assert not Path(run.child_url("figures", "06-sae-metrics.png")).exists()


def test_report_without_results_still_builds(tmp_path):
    config = build_config("quick", overrides={"name": "empty", "runs_root": str(tmp_path)})
    run = RunDir(config.run_url)
    save_run_config(run, config.to_json(), config.config_hash())
    page = parse(build_report(run))
    assert "similarity: not computed yet." in " ".join(page.text)
    assert per_layer_table(run).empty


def test_not_a_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a layerdrift run directory"):
        build_report(RunDir(str(tmp_path / "nothing")))


def test_similarity_sentence():
    import pandas as pd

    cos = pd.Series([0.99, 0.95, 0.91, 0.6, 0.4], index=range(5))
    assert similarity_sentence(cos) == (
        "Mean per-token cosine of final to base stays ≥ 0.9 up to layer 2 and falls to 0.400 "
        "at layer 4."
    )
    assert "stays ≥ 0.9 at every layer" in similarity_sentence(pd.Series([0.99, 0.95]))


def test_linear_cka_matches_gram_formula(rng):
    x, y = rng.normal(size=(50, 6)), rng.normal(size=(50, 4))
    h = np.eye(50) - 1 / 50
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    reference = np.sum(k * l_) / (np.linalg.norm(k) * np.linalg.norm(l_))
    assert linear_cka(x, y) == pytest.approx(reference, rel=1e-10)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert linear_cka(x, 3 * x @ q + 1) == pytest.approx(1.0)


def test_compare_runs(tmp_path):
    a = make_run(tmp_path, "sentiment", full=False)
    b = make_run(tmp_path, "topic", full=False, seed=0)
    path = compare_runs([a, b], tmp_path / "cmp")
    page = parse(str(path))
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 5000
    rows = page.tables["compare-table"]
    # Same probe tokens and the same seed: identical final activations, CKA 1 at every layer.
    header_free = rows[1:]
    assert all(float(row[-1][0]) == pytest.approx(1.0) for row in header_free)
    other = make_run(tmp_path, "other", full=False, seed=3)  # another probe set
    page = parse(str(compare_runs([a, b, other], tmp_path / "cmp3")))
    header = page.tables["compare-table"][1:]
    assert all(len(row) == 1 + 6 + 1 for row in header)  # layer, 2 metrics x 3 runs, 1 pair
    assert "No final-vs-final CKA for sentiment ~ other" in " ".join(page.text)
    with pytest.raises(ValueError, match="at least two"):
        compare_runs([a], tmp_path / "cmp")


def test_token_pictures_colour_by_sae_latent(tmp_path):
    import torch

    from layerdrift.tasks.dictionary import DictionarySpec, build, save_dictionary
    from layerdrift.tasks.report.load import load_inputs
    from layerdrift.tasks.report.tokens import add_latents, choose_sentences

    run = make_run(tmp_path, full=False)
    sae = build(DictionarySpec(d_model=HIDDEN, d_sae=16, k=4), torch.Generator().manual_seed(0))
    save_dictionary(sae, run.sae("final", 1), {}, {})
    inputs = load_inputs(run)
    sentences = choose_sentences(inputs, 2)
    assert add_latents(inputs, sentences)
    store = xr.open_zarr(run.activations())
    for s in sentences:
        assert len(s.latents) == 1
        x = store.activations.sel(checkpoint="final", layer=1).values[s.example_tokens()]
        codes = sae.encode(torch.from_numpy(x.astype(np.float32))).detach().numpy()
        latent = int(np.argmax(codes.max(axis=0)))
        name, values = s.latents[0]
        assert name == f"layer 1 · latent {latent}"
        np.testing.assert_allclose(values, codes[:, latent], rtol=1e-5, atol=1e-6)
    text = " ".join(parse(build_report(run)).text)
    assert f"layer 1 · latent {latent}" in text


def test_sentence_choice_covers_both_ends_and_labels(run):
    from layerdrift.tasks.report.load import load_inputs
    from layerdrift.tasks.report.tokens import choose_sentences, pick_order

    assert pick_order(2, 4) == [(0, "highest"), (1, "lowest"), (0, "lowest"), (1, "highest")]
    assert pick_order(3, 6)[3:] == [(0, "lowest"), (1, "highest"), (2, "lowest")]
    inputs = load_inputs(run)
    sentences = choose_sentences(inputs, 4)
    drift = inputs.results["drift"].sel(checkpoint="final")
    means = drift.mean("layer").to_series().groupby(drift.example_of_token.values).mean()
    labels = xr.open_zarr(run.activations()).label.values
    neg = means[labels[means.index] == 0]
    assert sentences[0].example == int(neg.idxmax()) and sentences[0].label == "neg"
    assert sentences[2].example == int(neg.idxmin())
    assert sentences[1].label == "pos" and sentences[1].kind == "lowest"
    assert len({s.example for s in sentences}) == 4


def test_report_on_an_fsspec_url():
    import fsspec

    run = make_run("memory://report-test", full=False)
    url = build_report(run)
    assert url == run.child_url("report.html") and url.startswith("memory://")
    fs = fsspec.filesystem("memory")
    text = fs.cat(url).decode()
    assert text.count("data:image/png;base64,") == 7  # figures 1-5 (two token pictures), 8
    assert fs.exists("memory://report-test/synthetic/figures/01-similarity-by-layer.png")
    assert per_layer_table(run).shape[0] == N_LAYERS


def test_card_labels_follow_the_thresholds():
    from layerdrift.tasks.report.html import card_reason

    card = {"reason": "task_specific", "auroc": 0.35, "score": 0.15}
    assert card_reason(card, 0.75, 0.25) == (
        "most label-related, not task-specific · AUROC 0.350 (task-specific: ≥ 0.75 or ≤ 0.25)"
    )
    assert card_reason(card, 0.6, 0.4) == "task-specific · AUROC 0.350"
    assert card_reason({**card, "auroc": 0.8}, 0.75, 0.25) == "task-specific · AUROC 0.800"
    lean = {"reason": "finetuned_only", "auroc": 0.9, "score": 0.97}
    assert card_reason(lean, 0.75, 0.25) == (
        "finetuned_only · relative decoder norm 0.970 · AUROC 0.900 (task-specific)"
    )


def test_summaries_say_none_instead_of_an_extreme_of_zero():
    import pandas as pd

    from layerdrift.tasks.report.claims import finetuned_only_sentence
    from layerdrift.tasks.report.figures_training import fig_features
    from layerdrift.tasks.report.load import ReportInputs

    assert finetuned_only_sentence(pd.Series([0.0, 0.0, 0.0])) == (
        "No crosscoder latent is specific to the fine-tuned model at any layer."
    )
    assert finetuned_only_sentence(pd.Series([0.0, 0.015, 0.0])) == (
        "Crosscoder latents specific to the fine-tuned model are most common at layer 1 "
        "(1.5% of live latents)."
    )
    layers = {"layer": [0, 3, 6]}
    results = {
        "crosscoder_counts": xr.DataArray(
            [[0, 10, 0]] * 3, dims=("layer", "group"),
            coords={**layers, "group": ["base_only", "shared", "finetuned_only"]},
        ),
        "matched_fraction": xr.DataArray([1.0, 1.0, 1.0], dims="layer", coords=layers),
    }  # fmt: skip
    inputs = ReportInputs(None, None, pd.DataFrame(), None, [], results, [])
    plot = fig_features(inputs)
    assert plot.reading == (
        "No crosscoder latent is fine-tuned-only at any layer; no final-SAE latent is "
        "unmatched at any layer."
    )


def test_summary_claims_speak_only_of_differences_that_clear_their_intervals():
    import pandas as pd

    from layerdrift.tasks.report.claims import (
        cka_drop_sentence,
        finetuned_only_sentence,
        matching_control_sentence,
    )

    cka = pd.Series([0.99, 0.95, 0.60], index=[0, 1, 2])
    apart = pd.DataFrame({"low": [0.98, 0.93, 0.50], "high": [1.0, 0.97, 0.70]}, index=cka.index)
    assert "beyond both layers' 95% intervals" in cka_drop_sentence(cka, apart)
    wide = apart.assign(low=[0.98, 0.40, 0.30], high=[1.0, 0.97, 0.90])
    assert cka_drop_sentence(cka, wide) == (
        "Linear CKA drops most between layers 1 and 2 (0.950 → 0.600); the layers' 95% "
        "intervals overlap (0.400–0.970 and 0.300–0.900), so that drop is not a clear one; "
        "it ends at 0.600."
    )
    layered = pd.DataFrame(
        {"matched_fraction": [0.99, 0.40, 0.10], "matched_fraction_control": [0.01, 0.70, 0.12]},
        index=[0, 3, 6],
    )
    bounds = pd.DataFrame(
        {"low": [0.98, 0.35, 0.05], "high": [1.0, 0.45, 0.15],
         "control_low": [0.0, 0.65, 0.08], "control_high": [0.02, 0.75, 0.16]},
        index=[0, 3, 6],
    )  # fmt: skip
    assert matching_control_sentence(layered, bounds) == (
        "Fewer final-SAE latents match base than a control SAE's at layers 3 (0.400 vs "
        "control 0.700); at layers 0, 6 the matching does not discriminate."
    )
    shrunk = layered.assign(matched_fraction_control=[0.01, 0.30, 0.05])
    assert matching_control_sentence(shrunk, None).startswith(
        "SAE matching does not discriminate at this budget"
    )
    alike = layered.assign(matched_fraction_control=[0.0, 0.0, 0.0])  # the quick run's
    assert "(control 0.000, final 0.100–0.990)" in matching_control_sentence(alike, None)
    share = pd.Series([0.0, 0.02, 0.01], index=[0, 3, 6])
    clear = pd.DataFrame({"low": [0.0, 0.015, 0.0], "high": [0.0, 0.03, 0.012]}, index=share.index)
    assert finetuned_only_sentence(share, clear).endswith(
        "(2.0% of live latents), above every other layer's 95% interval."
    )
    overlap = clear.assign(low=[0.0, 0.005, 0.0], high=[0.0, 0.03, 0.02])
    assert "so the peak is not a clear one" in finetuned_only_sentence(share, overlap)


def test_transfer_probe_and_cosine_claims_clear_their_control_or_say_not():
    import pandas as pd

    from layerdrift.tasks.report.claims import (
        probe_sentence,
        similarity_sentence,
        transfer_sentence,
    )

    layered = pd.DataFrame(
        {"transfer_fvu_finetuned_on_base": [0.33, 0.71], "transfer_fvu_control": [0.32, 0.52]},
        index=[0, 6],
    )
    bounds = pd.DataFrame(
        {"low": [0.30, 0.65], "high": [0.36, 0.77],
         "control_low": [0.29, 0.48], "control_high": [0.35, 0.56]},
        index=[0, 6],
    )  # fmt: skip
    assert transfer_sentence(layered, bounds) == (
        "The fine-tuned SAE reconstructs base tokens worse than a second base SAE does at "
        "layers 6 (0.710 vs control 0.520); elsewhere the transfer FVU is within its control "
        "(layer 0 0.330 (0.300–0.360) vs control 0.320 (0.290–0.350)): at this budget the "
        "comparison does not discriminate."
    )
    # Layer 6's intervals overlap once the control's widens: no layer discriminates.
    wide = bounds.assign(control_high=[0.35, 0.70])
    assert transfer_sentence(layered, wide).startswith(
        "At every layer the transfer FVU is within its control (layer 0 0.330"
    )
    # Without intervals the point values decide.
    assert "at layers 0, 6 (0.330 vs control 0.320" in transfer_sentence(layered, None)

    probes = pd.DataFrame(
        {"probe_final": [0.62, 0.81], "probe_base": [0.60, 0.70],
         "probe_control_final": [0.55, 0.52], "probe_majority": [0.64, 0.64]},
        index=[0, 6],
    )  # fmt: skip
    assert probe_sentence(probes) == (
        "A linear probe on the final checkpoint is most accurate at layer 6 (0.810; base "
        "there: 0.700), above its controls (the same probe on shuffled labels scores 0.520 "
        "there, and always guessing the majority class 0.640); at layers 0 the probe does "
        "not beat them."
    )
    chance = probes.assign(probe_final=[0.60, 0.63])
    assert probe_sentence(chance).startswith(
        "No linear probe on the final checkpoint beats its controls: the best, layer 6 "
        "(0.630), is within them"
    )

    cos = pd.Series([0.99, 0.95, 0.40], index=[0, 1, 2])
    apart = pd.DataFrame({"low": [0.98, 0.9, 0.3], "high": [1.0, 0.97, 0.5]}, index=cos.index)
    assert similarity_sentence(cos, bounds=apart).endswith(
        "falls to 0.400 at layer 2, beyond the 95% intervals of layers 0 and 2."
    )
    wide = apart.assign(low=[0.3, 0.3, 0.2])
    assert similarity_sentence(cos, bounds=wide).endswith(
        "the 95% intervals of layers 0 and 2 overlap (0.300–1.000 and 0.200–0.500), so that "
        "fall is not a clear one."
    )


def test_feature_figure_draws_the_controls_and_bands():
    import pandas as pd

    from layerdrift.tasks.report.figures_training import fig_features
    from layerdrift.tasks.report.load import ReportInputs

    layers = {"layer": [0, 3, 6]}
    bound = {**layers, "bound": ["low", "high"]}
    directions = [
        "base_on_finetuned",
        "finetuned_on_base",
        "base_on_base",
        "finetuned_on_finetuned",
    ]
    results = {
        "matched_fraction": xr.DataArray([0.9, 0.5, 0.1], dims="layer", coords=layers),
        "matched_fraction_control": xr.DataArray([0.2, 0.2, 0.2], dims="layer", coords=layers),
        "matched_fraction_ci": xr.DataArray(
            [[0.85, 0.95], [0.45, 0.55], [0.05, 0.15]], dims=("layer", "bound"), coords=bound
        ),
        "transfer_fvu": xr.DataArray(
            np.full((4, 3), 0.2), dims=("direction", "layer"),
            coords={"direction": directions, **layers},
        ),
        "transfer_fvu_control": xr.DataArray([0.2, 0.21, 0.22], dims="layer", coords=layers),
        "transfer_fvu_ci": xr.DataArray(
            np.stack([np.full((4, 3), 0.15), np.full((4, 3), 0.25)], -1),
            dims=("direction", "layer", "bound"),
            coords={"direction": directions, **bound},
        ),
        "transfer_fvu_control_ci": xr.DataArray(
            [[0.1, 0.3]] * 3, dims=("layer", "bound"), coords=bound
        ),
    }  # fmt: skip
    plot = fig_features(ReportInputs(None, None, pd.DataFrame(), None, [], results, []))
    matched_ax, fvu_ax = plot.figure.axes[:2]
    labels = [line.get_label() for line in matched_ax.get_lines()]
    assert "control: 2nd base SAE (another seed)" in labels
    assert len(matched_ax.collections) == 1  # the matched fraction's band
    assert "control: 2nd base SAE on base" in [t.get_text() for t in fvu_ax.get_legend().texts]
    assert len(fvu_ax.collections) == 5  # a band per direction and the control's


def test_the_recommendation_comes_from_the_freeze_grid_when_the_run_has_one(tmp_path):
    """With a freeze grid the report recommends from it (saying so), draws its curve on the
    reversion panel at x = k and shows its table; the reversion table stays."""
    import matplotlib.pyplot as plt

    from layerdrift.tasks.report.html import importance_section
    from layerdrift.tasks.report.importance import FREEZE_LABEL, fig_importance
    from layerdrift.tasks.report.load import load_inputs

    run = make_run(tmp_path, name="frozen")
    labels, through = ["none", "0", "2", "3"], [-1, 0, 2, 3]
    values = np.zeros((4, 4))
    values[:, 0] = [0.8, 0.8, 0.79, 0.6]  # gain 0.3 over base 0.5: k = 2 recovers 96.7%
    coords = {"freeze_k": labels, "frozen_through": ("freeze_k", np.asarray(through))}
    grid = RESULT_GROUPS["freeze_grid"].new(values, **coords)
    write_result(run.results(), "freeze_grid", grid.assign_attrs(base_accuracy=0.5))
    inputs = load_inputs(run)
    page = " ".join(importance_section(inputs, []))
    assert "Fine-tune block 3, head and keep the rest at base" in page
    assert "Evidence: from the freeze grid" in page
    assert "k = 0: 0.800, k = 2: 0.790, k = 3: 0.600" in page
    assert 'id="freeze-grid-table"' in page and 'id="reversion-table"' in page
    plot = fig_importance(inputs)
    top = plot.figure.axes[0]
    (curve,) = [line for line in top.get_lines() if line.get_label() == FREEZE_LABEL]
    assert list(curve.get_xdata()) == [0, 2, 3]
    assert list(curve.get_ydata()) == [0.8, 0.79, 0.6]
    plt.close(plot.figure)
