"""Token pictures (figure 4): chosen probe sentences drawn token × layer.

Sentences are chosen by their mean drift at the final checkpoint (mean over layers and
tokens): for each label the highest and the lowest, alternating so that even two pictures
show both ends and both labels. Each is drawn as a heatmap of drift (layers × tokens, the
tokens as labels) and, in the HTML, as coloured token strips: drift per layer and, where the
final checkpoint has SAEs, the activation of the latent that fires most on the sentence.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import xarray as xr

from layerdrift.tasks.report.figures import Plot
from layerdrift.tasks.report.load import ReportInputs

logger = logging.getLogger(__name__)

MAX_TOKENS_DRAWN = 80


@dataclass
class Sentence:
    """One chosen probe sentence: its tokens and drift [layer, token] at the final checkpoint."""

    example: int
    label: str
    kind: str
    mean_drift: float
    text: str
    tokens: list[str]
    layers: list[int]
    drift: np.ndarray
    start: int
    latents: list[tuple[str, np.ndarray]] = field(default_factory=list)

    def example_tokens(self) -> slice:
        """The sentence's range along the store's ``token`` dimension."""
        return slice(self.start, self.start + len(self.tokens))


def open_store(inputs: ReportInputs) -> xr.Dataset | None:
    """The activation store of the run, or None when it does not exist."""
    if not inputs.run.exists("activations.zarr"):
        return None
    return xr.open_zarr(inputs.run.activations())


def pick_order(n_labels: int, n: int) -> list[tuple[int, str]]:
    """The first ``n`` (label index, ``highest``/``lowest``) picks, alternating ends."""
    picks = []
    for k in range(2 * n_labels):
        kind = ("highest", "lowest")[(k % n_labels + k // n_labels) % 2]
        picks.append((k % n_labels, kind))
    return picks[:n]


def choose_sentences(inputs: ReportInputs, n: int) -> list[Sentence]:
    """Up to ``n`` sentences with the highest and lowest mean final drift, per label."""
    if n <= 0 or not inputs.has("drift") or inputs.final not in inputs.results["drift"].checkpoint:
        return []
    drift = inputs.results["drift"].sel(checkpoint=inputs.final)
    example_of_token = drift.example_of_token.values
    per_token = drift.mean("layer").values
    means = pd.Series(per_token).groupby(example_of_token).mean()
    store = open_store(inputs)
    if store is not None:
        labels = pd.Series(store.label.values[means.index], index=means.index)
    else:
        labels = pd.Series(0, index=means.index)
    values = sorted(labels.unique())
    chosen: list[Sentence] = []
    for label_index, kind in pick_order(len(values), 2 * len(values)):
        if len(chosen) == n:
            break
        group = means[labels == values[label_index]].drop(
            [s.example for s in chosen], errors="ignore"
        )
        if group.empty:
            continue
        example = int(group.idxmax() if kind == "highest" else group.idxmin())
        chosen.append(
            _sentence(inputs, drift, store, example, values[label_index], kind, group[example])
        )
    return chosen


def _sentence(inputs, drift, store, example, label, kind, mean) -> Sentence:
    mask = drift.example_of_token.values == example
    tokens = [str(t) for t in drift.token_text.values[mask]]
    names = inputs.label_names
    name = names[int(label)] if store is not None and 0 <= int(label) < len(names) else str(label)
    text = str(store.text.values[example]) if store is not None else " ".join(tokens)
    start = int(np.flatnonzero(mask)[0])
    values = drift.values[:, mask].astype(np.float64)
    layers = [int(v) for v in drift.layer.values]
    return Sentence(example, name, kind, float(mean), text, tokens, layers, values, start)


def add_latents(inputs: ReportInputs, sentences: list[Sentence]) -> bool:
    """Attach, per layer with a final-checkpoint SAE, the top latent's activation per token.

    Returns False (and attaches nothing) when there are no SAEs or no activation store.
    """
    store = open_store(inputs)
    if store is None or not sentences:
        return False
    try:
        import torch

        from layerdrift.storage.saes import sae_exists
        from layerdrift.tasks.dictionary import load_dictionary
    except ImportError as error:
        logger.info("report: token latents skipped (%s)", error)
        return False
    found = False
    for layer in [int(v) for v in store.layer.values]:
        url = inputs.run.sae(inputs.final, layer)
        if not sae_exists(url):
            continue
        sae, found = load_dictionary(url).eval(), True
        for s in sentences:
            x = store.activations.sel(checkpoint=inputs.final, layer=layer)
            x_TD = np.asarray(x.isel(token=s.example_tokens()), np.float32)
            with torch.no_grad():
                codes_TF = sae.encode(torch.from_numpy(x_TD)).numpy()
            latent = int(np.argmax(codes_TF.max(axis=0)))
            s.latents.append((f"layer {layer} · latent {latent}", codes_TF[:, latent]))
    return found


def token_plots(sentences: list[Sentence]) -> list[Plot]:
    """Figure 4: one drift heatmap (layers × tokens) per sentence, on a shared colour scale."""
    if not sentences:
        return []
    vmax = max(float(np.nanmax(s.drift)) for s in sentences) or 1.0
    plots = []
    for i, s in enumerate(sentences, start=1):
        shown = min(len(s.tokens), MAX_TOKENS_DRAWN)
        frame = pd.DataFrame(s.drift[:, :shown], index=s.layers, columns=range(shown))
        fig, ax = plt.subplots(figsize=(max(5.0, 0.3 * shown + 2.0), 0.35 * len(s.layers) + 1.6))
        sns.heatmap(frame, ax=ax, vmin=0, vmax=vmax, cmap="rocket_r", cbar_kws={"label": "drift"})
        ax.set_xticks(np.arange(shown) + 0.5, s.tokens[:shown], rotation=90, fontsize=8)
        ax.set(ylabel="layer", title=f"example {s.example} ({s.label}), {s.kind} mean drift")
        cut = f" (first {shown} of {len(s.tokens)} tokens)" if shown < len(s.tokens) else ""
        last = s.drift[-1]
        top = s.tokens[int(np.argmax(last))]
        reading = (
            f"Mean drift {s.mean_drift:.3f}{cut}; at layer {s.layers[-1]} the token that moved "
            f"most is “{top}” ({last.max():.3f})."
        )
        plots.append(Plot(f"04-tokens-{i}", f"Token picture {i}: {s.kind} drift", fig, reading))
    return plots


def token_strip(rows: list[tuple[str, list[str], np.ndarray]], rgb: str) -> str:
    """HTML table of coloured tokens: one row per (label, tokens, values [token]).

    Every row shares one colour scale (its maximum is the largest value in ``rows``).
    """
    vmax = max((float(np.max(v)) for _, _, v in rows if len(v)), default=0.0) or 1.0
    out = ['<table class="strip">']
    for label, tokens, values in rows:
        cells = " ".join(  # spaces let a long sentence wrap inside the page
            f'<span style="background:rgba({rgb},{max(0.0, float(v)) / vmax:.3f})" '
            f'title="{float(v):.4f}">{html.escape(t)}</span>'
            for t, v in zip(tokens, values, strict=True)
        )
        out.append(f"<tr><th>{html.escape(label)}</th><td>{cells}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def sentence_html(s: Sentence) -> str:
    """The sentence coloured by drift at every layer, then by its SAE latents if any."""
    parts = [
        f'<p class="sentence"><b>example {s.example}</b> ({html.escape(s.label)}, '
        f"{s.kind} mean drift {s.mean_drift:.3f}): {html.escape(s.text)}</p>"
    ]
    rows = [(f"layer {layer} drift", s.tokens, s.drift[i]) for i, layer in enumerate(s.layers)]
    parts.append(token_strip(rows, "214,39,40"))
    if s.latents:
        parts.append(token_strip([(n, s.tokens, v) for n, v in s.latents], "31,119,180"))
    return "\n".join(parts)
