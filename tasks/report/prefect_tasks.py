"""Prefect wrapper of the report stage (the flow wires it; the logic is in build.py)."""

from __future__ import annotations

from prefect import task

from layerdrift.storage.rundir import RunDir
from layerdrift.tasks.report.build import build_report
from layerdrift.tasks.retry import retry_unless_bad_input


@task(name="report", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_unless_bad_input)
def build_report_task(run: RunDir) -> str:
    """Build figures and ``report.html`` for ``run``; returns the report path or URL."""
    return build_report(run)
