"""``explorer.html``: the interactive page of a run, one self-contained file.

The page inlines its stylesheet, its script (``assets/explorer.js``, plain JavaScript
drawing SVG, no libraries) and its data (:mod:`tasks.report.explorer_data`), so it opens
from disk with no server and no network. Views: per-layer curves of every results group
(with interval bands where a ``<group>_ci`` exists), a token × layer drift picture of any
probe example with each checkpoint's prediction, a latent browser per layer and dictionary,
layer and checkpoint matrices, and every group as a table. The URL fragment holds the view
and its selection (``#view=latents&source=crosscoder&layer=3&latent=17``), so a link opens
the same view.
"""

from __future__ import annotations

import html
import json
import logging
from importlib.resources import files

from layerdrift.storage.rundir import EXPLORER_FILE, RunDir
from layerdrift.tasks.report.explorer_data import explorer_data
from layerdrift.tasks.report.latents import latent_tables
from layerdrift.tasks.report.load import ReportInputs, load_inputs
from layerdrift.tasks.report.predictions import probe_predictions
from layerdrift.tasks.report.tokens import open_store

logger = logging.getLogger(__name__)

ASSETS = files("layerdrift.tasks.report") / "assets"


def asset(name: str) -> str:
    """The text of one bundled asset (``explorer.js``, ``explorer.css``)."""
    return (ASSETS / name).read_text(encoding="utf-8")


def script_json(data: dict) -> str:
    """``data`` as JSON that is safe inside a ``<script>`` element.

    Every ``<`` is written ``\\u003c`` (still the same JSON string), so no text from the run
    (a probe sentence holding ``</script>`` or ``<!--``) can end or bend the element.
    """
    text = json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def page(data: dict) -> str:
    """The whole explorer page as one HTML string (deterministic for the same data)."""
    title = f"layerdrift explorer: {data['run']['name']}"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<link rel="icon" href="data:,">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{asset('explorer.css')}</style></head><body>",
            f'<header><h1>{html.escape(title)}</h1><nav id="tabs"></nav></header>',
            '<main id="view"></main><div id="tooltip" hidden></div>',
            '<footer id="rules"></footer>',
            f'<script type="application/json" id="explorer-data">{script_json(data)}</script>',
            f"<script>{asset('explorer.js')}</script>",
            "</body></html>\n",
        ]
    )


def write_explorer(inputs: ReportInputs) -> str:
    """Compute what the page needs from ``inputs``' run, write ``explorer.html``; its URL.

    Reads the activation store for the probe tokens, runs the checkpoints' classifiers once
    (``probe_predictions``) and streams every dictionary over its layer (the latents).
    """
    run = inputs.run
    store = open_store(inputs)
    probs = tables = None
    if store is not None:
        probs = probe_predictions(run, store)
        tables = latent_tables(run, inputs.config, store) if inputs.config else []
    text = page(explorer_data(inputs, store, probs, tables or []))
    run.write_text(text, EXPLORER_FILE)
    path = run.child_url(EXPLORER_FILE)
    logger.info("explorer: %.1f MB written to %s", len(text.encode()) / 1e6, path)
    return path


def build_explorer(run: RunDir) -> str:
    """Write ``<run>/explorer.html`` from the run's stores; return its path or URL."""
    return write_explorer(load_inputs(run))
