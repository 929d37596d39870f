"""How the pipeline flow calls a stage: resumable caching that agrees with the files on disk.

Every stage task is cached on its inputs and its source (``INPUTS + TASK_SOURCE``) with the
result persisted beside the run, so a rerun of the same run reuses finished stages. A cache
hit only stands for files on disk, so the flow checks those files first: when they are gone
or incomplete, the cache is refreshed and the stage runs again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect import Task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from layerdrift.storage import RunDir

STAGE_CACHE_POLICY = INPUTS + TASK_SOURCE


@dataclass
class StageLedger:
    """Runs stage tasks for one run directory and records which ran and which were cached."""

    run: RunDir
    outcomes: dict[str, str] = field(default_factory=dict)

    def call(self, name: str, stage: Task, *args: Any, done: bool, **kwargs: Any) -> Any:
        """Run ``stage(*args, **kwargs)`` through Prefect's cache and return its result.

        ``done`` says whether the files the stage produces are complete on disk; when they
        are not, a cached result is not trusted and the stage runs again.
        """
        configured = stage.with_options(
            cache_policy=STAGE_CACHE_POLICY,
            persist_result=True,
            result_storage=self.run.prefect_results(),
            refresh_cache=not done,
        )
        state = configured(*args, return_state=True, **kwargs)
        value = state.result()
        self.outcomes[name] = "cached" if state.name == "Cached" else "ran"
        return value

    def skipped(self, name: str, why: str) -> None:
        """Record a stage that the configuration switched off."""
        self.outcomes[name] = f"skipped ({why})"
