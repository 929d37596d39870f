"""explorer.html and report.html of the shared tiny run, in headless Chromium at 1400 px.

Each test clicks through one view and checks what the page shows against the stores: the
value of a hovered point, the colours of a searched example's tokens, the examples and
partner of a chosen latent (recomputed from the SAE's weights), deep links, and that the
page logs no error and fetches nothing. Screenshots go to $LAYERDRIFT_SCREENSHOTS when set.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
import xarray as xr
from browser import Watched

from layerdrift.storage import RunDir, open_result, write_result
from layerdrift.tasks.dictionary import load_dictionary
from layerdrift.tasks.report import build_explorer

LAYER = 1


@pytest.fixture(scope="module")
def run(tiny_run) -> RunDir:
    """The tiny run, its explorer.html written by the report stage."""
    run = RunDir(tiny_run[1]["run_dir"])
    assert run.exists("explorer.html")
    return run


@pytest.fixture
def page(chromium):
    """A watched page; after the test: no console errors and no request leaving the file."""
    watched = Watched(chromium)
    yield watched
    watched.page.close()
    watched.check_clean()


def _result(run: RunDir, name: str) -> xr.DataArray:
    return open_result(run.results(), name)[name].load()


def _number(text: str) -> float:
    """The value a tooltip states: the first number after its colon (an interval may follow)."""
    return float(re.findall(r"-?\d+\.\d+", text.split(": ", 1)[-1])[0])


def _point_to(p, selector: str) -> str:
    """Move the mouse onto a chart point, as a user would; the tooltip's text."""
    box = p.locator(selector).bounding_box()
    p.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    tip = p.locator("#tooltip")
    assert tip.is_visible()
    return tip.inner_text()


def _only_series(p, keep: str) -> None:
    """Click the legend entries of every other series off, as a user would to read one curve
    whose points sit on others' (the random floor stretches the axis, so near-1 values of
    several series fall on one pixel)."""
    for item in p.locator("#curve-panel g.legend").all():
        if item.get_attribute("data-series") != keep:
            item.click()


def test_layer_curves_show_the_hovered_value(run, page, tmp_path):
    p = page.open(run.child_url("explorer.html"), "#view=curves&group=similarity&facet=cosine")
    sim = _result(run, "similarity")
    _only_series(p, "base · final")
    for layer in (0, 1, 2):
        text = _point_to(p, f'#curve-panel circle[data-series="base · final"][data-x="{layer}"]')
        assert text.startswith(f"base · final · layer {layer}: ")
        expected = float(
            sim.sel(reference="base", checkpoint="final", layer=layer, metric="cosine")
        )
        assert _number(text) == pytest.approx(expected, abs=5e-5)
    p.locator('#curve-panel button[data-choice="linear_cka"]').click()
    assert "facet=linear_cka" in p.url
    point = p.locator('#curve-panel circle[data-series="base · final"][data-x="2"]')
    expected = float(sim.sel(reference="base", checkpoint="final", layer=2, metric="linear_cka"))
    assert float(point.get_attribute("data-value")) == pytest.approx(expected, rel=1e-5)
    p.locator('button[data-group="probe_accuracy"]').click()
    assert p.locator("#curve-panel h2").inner_text().startswith("probe_accuracy")
    assert page.overflow() == 0
    page.screenshot("explorer-curves", tmp_path)


def test_interval_bands_are_drawn_from_a_ci_group(run, page, tmp_path):
    copy = RunDir(str(tmp_path / "with-ci"))
    shutil.copytree(run.root, copy.root, ignore=shutil.ignore_patterns(".prefect-results"))
    sim = _result(copy, "similarity")
    bounds = xr.concat([sim - 0.05, sim + 0.05], dim=xr.DataArray(["low", "high"], dims="bound"))
    bounds = bounds.transpose(*sim.dims, "bound").rename("similarity_ci")
    write_result(copy.results(), "similarity_ci", bounds)
    p = page.open(build_explorer(copy), "#view=curves&group=similarity&facet=cosine")
    assert p.locator("#curve-panel polygon.band").count() >= 1
    _only_series(p, "base · final")
    text = _point_to(p, '#curve-panel circle[data-series="base · final"][data-x="1"]')
    assert text.startswith("base · final · layer 1: ")
    value = float(sim.sel(reference="base", checkpoint="final", layer=1, metric="cosine"))
    low, high = re.search(r"interval (\S+) – (\S+)\)", text).groups()
    assert float(low) == pytest.approx(value - 0.05, abs=5e-5)
    assert float(high) == pytest.approx(value + 0.05, abs=5e-5)


def test_a_searched_example_shows_its_drift_and_predictions(run, page, tmp_path):
    store = xr.open_zarr(run.activations())
    example = 7
    text = str(store.text.values[example])
    p = page.open(run.child_url("explorer.html"), "#view=tokens")
    p.locator("#token-search").fill(text)
    hits = p.locator("#search-results li[data-example]")
    assert hits.count() >= 1
    p.locator(f'#search-results li[data-example="{example}"]').click()
    assert f"example={example}" in p.url
    assert p.locator("#example-text").inner_text() == text
    drift = _result(run, "drift").sel(checkpoint="final")
    start, count = int(store.token_start[example]), int(store.token_count[example])
    expected = drift.values[:, start : start + count]  # [layer, token]
    scale = float(np.nanmax(_result(run, "drift").values))
    cells = p.locator("#drift-grid tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.querySelectorAll('td')].map(td => "
        "[td.textContent, Number(td.dataset.value), td.getAttribute('style')]))"
    )
    tokens = [str(t) for t in store.token_text.values[start : start + count]]
    assert len(cells) == expected.shape[0]
    for layer, row in enumerate(cells):
        assert [c[0] for c in row] == tokens
        values = np.array([c[1] for c in row])
        np.testing.assert_allclose(values, expected[layer], atol=scale / 510 + 1e-6)
        alphas = np.array([float(re.search(r",([\d.]+)\)", c[2]).group(1)) for c in row])
        np.testing.assert_allclose(alphas, np.clip(expected[layer], 0, None) / scale, atol=0.003)
    probs = _result(run, "probe_predictions")
    names = ["neg", "pos"]
    rows = p.locator("#predictions tbody tr")
    assert rows.count() == probs.sizes["checkpoint"]
    for i, checkpoint in enumerate(probs.checkpoint.values):
        cells_text = rows.nth(i).locator("td").all_inner_texts()
        best = int(np.argmax(probs.values[i, example]))
        assert cells_text[:3] == [checkpoint, names[best], f"{probs.values[i, example, best]:.3f}"]
    assert page.overflow() == 0
    page.screenshot("explorer-tokens", tmp_path)
    p.locator('#token-panel button[data-choice="base"]').click()
    base_values = p.locator("#drift-grid td").evaluate_all("t => t.map(x => Number(x.dataset.q))")
    assert max(base_values) <= 1  # base against itself: no drift


def _independent_latent(run: RunDir, checkpoint: str, layer: int, latent: int):
    """Per-example maxima and codes of one SAE latent, computed here from its weights."""
    store = xr.open_zarr(run.activations())
    x = store.activations.sel(checkpoint=checkpoint, layer=layer).values.astype(np.float32)
    sae = load_dictionary(run.sae(checkpoint, layer))
    with torch.no_grad():
        codes = sae.encode(torch.from_numpy(x)).clamp_min(0).numpy()
    examples = store.example_of_token.values
    maxima = np.stack([codes[examples == e].max(axis=0) for e in range(store.sizes["example"])])
    return codes, maxima, sae


def test_latent_browser_sorts_and_shows_examples_and_partner(run, page, tmp_path):
    fragment = f"#view=latents&source=finetuned_sae&layer={LAYER}"
    p = page.open(run.child_url("explorer.html"), fragment)
    p.locator('th[data-sort="auroc"]').click()
    first = p.locator("#latent-table tbody tr").first
    latent = int(first.get_attribute("data-latent"))
    aurocs = p.locator("#latent-table tbody tr td:nth-child(2)").all_inner_texts()
    shown = [float(a) for a in aurocs if a != "–"]
    assert shown == sorted(shown, reverse=True)
    first.click()
    assert f"latent={latent}" in p.url
    detail = p.locator("#latent-detail")
    assert detail.locator("h2").inner_text() == f"layer {LAYER} · fine-tuned SAE latent {latent}"
    codes, maxima, sae = _independent_latent(run, "final", LAYER, latent)
    top_example = int(np.argmax(maxima[:, latent]))
    line = detail.locator("#top-examples .example").first
    assert int(line.get_attribute("data-example")) == top_example
    store = xr.open_zarr(run.activations())
    start = int(store.token_start[top_example])
    count = int(store.token_count[top_example])
    on_example = codes[start : start + count, latent]
    peak = line.locator(".tok.peak")
    assert peak.inner_text() == str(store.token_text.values[start + int(np.argmax(on_example))])
    tolerance = float(codes[:, latent].max()) / 500  # 256 levels of the latent's maximum
    peak_value = float(peak.get_attribute("data-value"))
    assert peak_value == pytest.approx(float(on_example.max()), abs=tolerance)
    counts = detail.locator("#latent-hist rect").evaluate_all("r => r.map(x => +x.dataset.count)")
    assert len(counts) == 16 and sum(counts) == int((codes[:, latent] > 0).sum())
    assert page.overflow() == 0
    page.screenshot("explorer-latents", tmp_path)

    base = load_dictionary(run.sae("base", LAYER))
    w_f = sae.W_dec.detach().numpy()
    w_b = base.W_dec.detach().numpy()
    cos = (w_b / np.linalg.norm(w_b, axis=1, keepdims=True)) @ (
        w_f[latent] / np.linalg.norm(w_f[latent])
    )
    detail.locator("#partner a").click()
    partner = int(np.argmax(cos))
    expected = f"layer {LAYER} · base SAE latent {partner}"
    assert p.locator("#latent-detail h2").inner_text() == expected
    assert "source=base_sae" in p.url and f"latent={partner}" in p.url


def test_crosscoder_latents_sort_by_group(run, page):
    p = page.open(run.child_url("explorer.html"), f"#view=latents&source=crosscoder&layer={LAYER}")
    p.locator('th[data-sort="group"]').click()
    groups = p.locator("#latent-table tbody tr td:nth-child(6)").all_inner_texts()
    order = {"base_only": 0, "shared": 1, "finetuned_only": 2}
    assert set(groups) <= set(order)
    assert [order[g] for g in groups] == sorted((order[g] for g in groups), reverse=True)


def test_deep_links_select_view_layer_latent_and_example(run, page):
    url = run.child_url("explorer.html")
    p = page.open(url, "#view=latents&source=base_sae&layer=2&latent=5")
    assert p.locator("#latent-detail h2").inner_text() == "layer 2 · base SAE latent 5"
    assert p.locator('#latent-table tr.chosen[data-latent="5"]').count() in (0, 1)
    p = page.open(url, "#view=tokens&example=3&checkpoint=step-000005")
    assert p.locator("#token-panel h2").inner_text().startswith("example 3 · label ")
    assert p.locator('#token-panel button.on[data-choice="step-000005"]').count() == 1


def test_matrices_and_group_tables(run, page, tmp_path):
    p = page.open(run.child_url("explorer.html"), "#view=matrices&group=layer_similarity")
    matrix = _result(run, "layer_similarity")
    checkpoint = str(matrix.checkpoint.values[-1])
    metric = str(matrix.metric.values[0])
    cells = p.locator("#matrix tbody tr").evaluate_all(
        "rows => rows.map(r => [...r.querySelectorAll('td')].map(td => Number(td.dataset.value)))"
    )
    expected = matrix.sel(checkpoint=checkpoint, metric=metric).transpose("layer_other", "layer")
    np.testing.assert_allclose(np.array(cells), expected.values, rtol=1e-5)
    page.screenshot("explorer-matrices", tmp_path)
    p = page.open(run.child_url("explorer.html"), "#view=groups&group=transfer_fvu")
    fvu = _result(run, "transfer_fvu")
    assert p.locator("#group-table tbody tr").count() == fvu.size
    page.screenshot("explorer-groups", tmp_path)


def test_report_fits_1400_px(run, page, tmp_path):
    p = page.open(run.child_url("report.html"))
    assert page.overflow() == 0
    reach = p.evaluate(
        """() => {
        const box = document.querySelector('#layer-table').parentElement;
        box.scrollLeft = box.scrollWidth;
        const cells = document.querySelectorAll('#layer-table th');
        const last = cells[cells.length - 1].getBoundingClientRect();
        return [last.right, box.getBoundingClientRect().right, cells[cells.length - 1].textContent];
    }"""
    )
    assert reach[0] <= reach[1] + 1, reach  # the last column can be scrolled into view
    strips = p.evaluate(
        "[...document.querySelectorAll('table.strip, .sentence, .card')].map("
        "e => e.getBoundingClientRect().right)"
    )
    main_right = p.evaluate("document.querySelector('main').getBoundingClientRect().right")
    assert strips and max(strips) <= main_right + 1
    page.screenshot("report-1400", tmp_path)
