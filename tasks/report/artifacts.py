"""Prefect artifacts for a run: a markdown summary, the per-layer table, links to the report
and the explorer.

Call :func:`publish_artifacts` inside a flow run (or a task run); the artifacts attach to it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

from layerdrift.storage.rundir import EXPLORER_FILE, REPORT_FILE, RunDir
from layerdrift.tasks.report.load import load_inputs
from layerdrift.tasks.report.summary import layer_frame, summary_lines
from layerdrift.tasks.report.tables import json_records, markdown

logger = logging.getLogger(__name__)


def artifact_key(name: str, kind: str) -> str:
    """A Prefect artifact key (lowercase letters, digits, dashes) for run ``name``."""
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "run"
    return f"layerdrift-{slug}-{kind}"


def report_link(run: RunDir, name: str = REPORT_FILE) -> str:
    """A link to a page of the run: a file:// URI for local runs, the URL otherwise."""
    if run.is_local:
        return Path(run.child_url(name)).resolve().as_uri()
    return run.child_url(name)


def publish_artifacts(run: RunDir, table: pd.DataFrame | None = None) -> None:
    """Create the markdown summary, per-layer table and report link artifacts of ``run``.

    ``table`` defaults to :func:`tasks.report.per_layer_table` of the run. Must be called
    inside a Prefect flow or task run.
    """
    inputs = load_inputs(run)
    table = layer_frame(inputs) if table is None else table
    name = inputs.config.name if inputs.config else run.url.rstrip("/").rsplit("/", 1)[-1]
    lines = [f"# layerdrift: {name}", ""]
    lines += [f"- {line}" for line in summary_lines(inputs, table)] or ["No results yet."]
    if inputs.missing:
        lines += ["", "Did not run:", *[f"- {line}" for line in inputs.missing]]
    if not table.empty:
        lines += ["", "## Per layer (final vs base)", "", markdown(table)]
    lines += ["", f"Report: `{run.child_url(REPORT_FILE)}`"]
    create_markdown_artifact(
        "\n".join(lines), key=artifact_key(name, "summary"), description="layerdrift summary"
    )
    if not table.empty:
        create_table_artifact(
            json_records(table),
            key=artifact_key(name, "per-layer"),
            description="Per-layer similarity of the final checkpoint to base",
        )
    for page, kind in ((REPORT_FILE, "report"), (EXPLORER_FILE, "explorer")):
        if run.exists(page):
            create_link_artifact(
                report_link(run, page), link_text=page, key=artifact_key(name, kind)
            )
    logger.info("published Prefect artifacts for %s", run.url)
