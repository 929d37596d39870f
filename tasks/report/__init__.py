"""The report stage: figures, a self-contained HTML report, run comparison, Prefect artifacts."""

from layerdrift.tasks.report.artifacts import publish_artifacts
from layerdrift.tasks.report.build import build_report
from layerdrift.tasks.report.compare import compare_runs
from layerdrift.tasks.report.explorer import build_explorer
from layerdrift.tasks.report.prefect_tasks import build_report_task
from layerdrift.tasks.report.tables import per_layer_table

__all__ = [
    "build_explorer",
    "build_report",
    "build_report_task",
    "compare_runs",
    "per_layer_table",
    "publish_artifacts",
]
