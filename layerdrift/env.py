"""Process environment that a user should not have to set by hand.

Called before Prefect is imported (by the CLI and by the tests). Values the user already
set are kept.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULTS: dict[str, str] = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_ENABLED": "false",
    # The default 20 s can time out on a busy two-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # Module loggers of library code reach the Prefect UI and run logs.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "layerdrift",
    # Library code also logs outside flow runs (tests, `layerdrift report`): no warning.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    # Prefect's cached task results are pickles: no task looks one up unless it asks to
    # (the pipeline's stages never do; their files on disk say what is finished).
    "PREFECT_TASKS_DEFAULT_NO_CACHE": "true",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # transformers logs a "LOAD REPORT" table on every checkpoint load (the classifier head
    # of the base model is newly initialised, as expected) and draws a "Writing model
    # shards" bar on every save: noise in run logs. Errors still show.
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


def configure_environment(project_dir: str | Path | None = None) -> dict[str, str]:
    """Set layerdrift's defaults in ``os.environ`` without overriding the user's values.

    ``PREFECT_HOME`` defaults to ``<project_dir>/.prefect`` (the current directory when not
    given) so runs keep their Prefect database beside the project. ``HF_HUB_OFFLINE`` is left
    exactly as the user set it. Returns the variables that were set.
    """
    chosen = dict(DEFAULTS)
    chosen["PREFECT_HOME"] = str(Path(project_dir or Path.cwd()).resolve() / ".prefect")
    applied = {}
    for key, value in chosen.items():
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    return applied
