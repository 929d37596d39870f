"""The self-contained HTML report: text, tables and base64-embedded figures in one file.

Nothing is loaded from elsewhere (no scripts, fonts or stylesheets), so the file opens from
disk with no server. Table cells carry their exact value in ``data-value`` (Python ``repr``),
so tests and scripts can read the numbers back without parsing the rounded text.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass

import pandas as pd

from layerdrift.config import BUNDLED_MODEL, PAPER_MODEL, FeaturesConfig
from layerdrift.tasks.report.importance import (
    FIGURE_NAME,
    freeze_frame,
    recommendation_lines,
    reversion_frame,
    task_drift_frame,
)
from layerdrift.tasks.report.load import ReportInputs
from layerdrift.tasks.report.summary import COUNT_COLUMNS
from layerdrift.tasks.report.tokens import Sentence, sentence_html

MAX_CARDS = 48

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;
background:#fafafa}main{max-width:1100px;margin:auto;padding:1em 2em 4em;background:#fff}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.caveat{background:#fff6db;border-left:4px solid #e0a800;padding:.6em 1em}
.missing{color:#666}table.numbers{border-collapse:collapse;font-size:.85em;margin:.5em 0}
table.numbers th,table.numbers td{border:1px solid #ddd;padding:.2em .5em;text-align:right}
table.numbers th{background:#f0f0f0}figure{margin:1.5em 0}figure img{max-width:100%}
figcaption{font-size:.9em;color:#333}table.strip{border-collapse:collapse;font-size:.85em}
table.strip th{text-align:right;padding-right:.6em;font-weight:normal;color:#555;
white-space:nowrap;vertical-align:top}table.strip td{line-height:1.7}
table.strip span{padding:0 .12em;border-radius:2px;white-space:pre}
.sentence,.card li,figcaption,li{overflow-wrap:anywhere}
.card{border:1px solid #ddd;border-radius:4px;padding:.4em .8em;margin:.6em 0}
.card .tok{padding:0 .1em;border-radius:2px}.card .peak{font-weight:bold;outline:1px solid #333}
.scroll{overflow-x:auto;scrollbar-width:thin}.scroll::-webkit-scrollbar{height:10px}
.scroll::-webkit-scrollbar-thumb{background:#bbb;border-radius:5px}
table.numbers td:first-child,table.numbers th:first-child{text-align:left;white-space:nowrap}
pre{background:#f4f4f4;padding:1em;overflow-x:auto;font-size:.8em}
"""


@dataclass
class Picture:
    """A rendered figure for the page: file stem, title, PNG bytes, reading."""

    name: str
    title: str
    png: bytes
    reading: str


def cell(value) -> str:
    """One table cell: exact value in ``data-value``, rounded text inside."""
    if value is None or value is pd.NA:
        return '<td data-value="nan">–</td>'
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        if math.isnan(number):
            return '<td data-value="nan">–</td>'
        text = str(value) if isinstance(value, int) else f"{number + 0.0:.4f}"
        text = "0.0000" if text == "-0.0000" else text
        return f'<td data-value="{number!r}">{text}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def table_html(frame: pd.DataFrame, table_id: str, index: bool = False) -> str:
    """A pandas frame as an HTML table with ``data-value`` on numeric cells."""
    if index:
        frame = frame.reset_index()
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for row in frame.itertuples(index=False):
        values = [v.item() if hasattr(v, "item") else v for v in row]
        rows.append("<tr>" + "".join(cell(v) for v in values) + "</tr>")
    body = "\n".join(rows)
    return (
        f'<div class="scroll"><table class="numbers" id="{table_id}">'
        f"<thead><tr>{head}</tr></thead>\n"
        f"<tbody>\n{body}\n</tbody></table></div>"
    )


def by_statistic(table: pd.DataFrame) -> pd.DataFrame:
    """The per-layer table turned on its side: one row per statistic, one column per layer.

    A model's layers are few, its statistics many: this way the table fits the page width,
    and each row reads along the layers like the figures. Counts stay integers.
    """
    rows = {}
    for column in table.columns.drop("layer"):
        values = table[column].tolist()
        if column in COUNT_COLUMNS:
            values = [None if pd.isna(v) else int(v) for v in values]
        rows[column] = values
    frame = pd.DataFrame.from_dict(
        rows, orient="index", columns=[f"layer {int(v)}" for v in table["layer"]], dtype=object
    )
    frame.index.name = "statistic"
    return frame


def figure_html(picture: Picture) -> str:
    """A figure element with the PNG embedded as base64 and its reading as caption."""
    data = base64.b64encode(picture.png).decode("ascii")
    return (
        f'<figure id="{picture.name}"><img alt="{html.escape(picture.title)}" '
        f'src="data:image/png;base64,{data}">\n<figcaption><b>{html.escape(picture.title)}.</b> '
        f"{html.escape(picture.reading)}</figcaption></figure>"
    )


def card_reason(card: dict, high: float, low: float) -> str:
    """Why a card's latent was chosen, in words that follow the AUROC thresholds.

    ``task_specific`` cards hold the latents with the AUROC furthest from 0.5, which need not
    pass the thresholds (AUROC >= ``high`` or <= ``low``); such cards say so.
    """
    auroc = card.get("auroc")
    auroc = float("nan") if auroc is None else float(auroc)
    passes = auroc >= high or auroc <= low
    if card["reason"] == "task_specific":
        if passes:
            return f"task-specific · AUROC {auroc:.3f}"
        return (
            f"most label-related, not task-specific · AUROC {auroc:.3f} "
            f"(task-specific: ≥ {high:g} or ≤ {low:g})"
        )
    score = card.get("score")
    detail = {
        "base_only": "relative decoder norm",
        "finetuned_only": "relative decoder norm",
        "unmatched": "best cosine to the base SAE",
    }.get(card["reason"], "score")
    shown = f"{float(score):.3f}" if score is not None else "–"
    tag = " (task-specific)" if passes else ""
    return f"{card['reason']} · {detail} {shown} · AUROC {auroc:.3f}{tag}"


def card_html(card: dict, label_names: list[str], thresholds: tuple[float, float]) -> str:
    """One feature card: the latent, why it was chosen, and its top examples in context.

    ``thresholds`` are the run's (high, low) AUROC thresholds for task-specific latents.
    """
    head = (
        f"layer {card['layer']} · {card['source']} latent {card['latent']} · "
        f"{card_reason(card, *thresholds)}"
    )
    rows = []
    for ex in card.get("examples", []):
        acts = [float(a) for a in ex["activations"]]
        top = max(acts, default=0.0) or 1.0
        spans = "".join(
            f'<span class="tok{" peak" if i == ex.get("max_token") else ""}" '
            f'style="background:rgba(31,119,180,{max(a, 0.0) / top:.3f})" title="{a:.4f}">'
            f"{html.escape(str(t))}</span> "
            for i, (t, a) in enumerate(zip(ex["tokens"], acts, strict=True))
        )
        label = ex["label"]
        if label_names and isinstance(label, int) and 0 <= label < len(label_names):
            label = label_names[label]
        rows.append(f"<li>example {ex['example']} ({html.escape(str(label))}): {spans}</li>")
    return f'<div class="card"><b>{html.escape(head)}</b><ul>{"".join(rows)}</ul></div>'


def importance_section(inputs: ReportInputs, pictures: list[Picture]) -> list[str]:
    """The "Which layers to fine-tune" section (empty without ``layer_reversion``)."""
    if not inputs.has("layer_reversion"):
        return []
    out = ['<h2 id="recommendation">Which layers to fine-tune</h2><ul>']
    out += [f"<li>{html.escape(line)}</li>" for line in recommendation_lines(inputs)]
    out.append("</ul><h3>Validation accuracy of each reversion variant</h3>")
    out.append(table_html(reversion_frame(inputs), "reversion-table", index=True))
    if inputs.has("freeze_grid"):
        out.append("<h3>Freeze grid: the task fine-tuned again with layers 0 … k frozen</h3>")
        out.append(table_html(freeze_frame(inputs), "freeze-grid-table", index=True))
    if inputs.has("task_drift_importance"):
        out.append("<h3>Does drift predict importance, task by task (Spearman rho)</h3>")
        out.append(table_html(task_drift_frame(inputs), "task-drift-table", index=True))
    out += [figure_html(p) for p in pictures if p.name == FIGURE_NAME]
    return out


def render(
    inputs: ReportInputs,
    table: pd.DataFrame,
    summary: list[str],
    pictures: list[Picture],
    sentences: list[Sentence],
) -> str:
    """The whole report page as one HTML string (deterministic for the same inputs)."""
    config = inputs.config
    title = f"layerdrift report: {config.name}" if config else "layerdrift report"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body><main>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if config is not None:
        out.append(
            f"<p>model <code>{html.escape(config.model)}</code> · dataset "
            f"<code>{html.escape(config.data.dataset)}</code> · config hash "
            f"<code>{config.config_hash()}</code></p>"
        )
        if config.model in (BUNDLED_MODEL, PAPER_MODEL):
            from layerdrift.tasks.modeling import model_note  # imports torch: only when needed

            out.append(f'<p class="caveat" id="caveat">{html.escape(model_note(config.model))}</p>')
    out.append('<h2 id="summary">Summary</h2><ul>')
    out += [f"<li>{html.escape(line)}</li>" for line in summary] or ["<li>No results yet.</li>"]
    out.append("</ul>")
    if inputs.missing:
        out.append('<h3>Stages that did not run</h3><ul class="missing" id="missing">')
        out += [f"<li>{html.escape(line)}</li>" for line in inputs.missing]
        out.append("</ul>")
    out.append('<h2 id="layers">Per layer: final vs base</h2>')
    if table.empty:
        out.append('<p class="missing">similarity: not computed yet.</p>')
    else:
        out.append(
            "<p>Similarities compare the final checkpoint with base on every probe "
            "token; procrustes is a distance (0 = equal up to rotation).</p>"
        )
        out.append(table_html(by_statistic(table), "layer-table", index=True))
    if not inputs.metrics.empty:
        out.append('<h2 id="checkpoints">Checkpoints</h2>')
        metrics = inputs.metrics.copy()
        if metrics["step"].notna().all():
            metrics["step"] = metrics["step"].astype(int)
        out.append(table_html(metrics, "checkpoint-table", index=True))
    if inputs.confusion:
        names = inputs.label_names or [str(i) for i in range(len(inputs.confusion))]
        frame = pd.DataFrame(inputs.confusion, index=names, columns=names)
        frame.index.name = "true \\ predicted"
        out.append("<h3>Confusion matrix (final, validation)</h3>")
        out.append(table_html(frame, "confusion-table", index=True))
    out += importance_section(inputs, pictures)
    out.append('<h2 id="figures">Figures</h2>')
    own = ("04-", FIGURE_NAME)  # token pictures and the importance figure have own sections
    out += [figure_html(p) for p in pictures if not p.name.startswith(own)]
    tokens = [p for p in pictures if p.name.startswith("04-")]
    if tokens:
        out.append('<h2 id="tokens">Token pictures</h2>')
        for picture, sentence in zip(tokens, sentences, strict=True):
            out.append(figure_html(picture))
            out.append(sentence_html(sentence))
    if inputs.cards:
        out.append('<h2 id="cards">Feature cards</h2>')
        out.append(
            f"<p>{len(inputs.cards)} cards; the first {MAX_CARDS} are shown.</p>"
            if len(inputs.cards) > MAX_CARDS
            else ""
        )
        features = config.features if config else FeaturesConfig()
        thresholds = (features.auroc_high, features.auroc_low)
        out += [
            card_html(card, inputs.label_names, thresholds) for card in inputs.cards[:MAX_CARDS]
        ]
    if config is not None:
        out.append('<h2 id="config">Run configuration</h2><details><summary>config.json</summary>')
        text = json.dumps(config.model_dump(mode="json"), indent=2, sort_keys=True)
        out.append(f"<pre>{html.escape(text)}</pre></details>")
    out.append("</main></body></html>\n")
    return "\n".join(out)
