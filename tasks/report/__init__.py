"""The report stage: figures, a self-contained HTML report, run comparison, Prefect artifacts."""

from tasks.report.artifacts import publish_artifacts
from tasks.report.build import build_report
from tasks.report.compare import compare_runs
from tasks.report.prefect_tasks import build_report_task
from tasks.report.summary import per_layer_table

__all__ = [
    "build_report",
    "build_report_task",
    "compare_runs",
    "per_layer_table",
    "publish_artifacts",
]
