"""How the pipeline flow calls a stage: the files on disk say what is finished.

A stage whose outputs are complete on disk (its ``done`` check) is not run again and is
reported ``cached``: its outputs are the cache. Nothing else is: Prefect persists no task
result and looks none up (``NO_CACHE``, ``persist_result=False``), because Prefect's result
files are pickles, and a pickle read back from a shared, copied or downloaded run folder
would run whatever code it names. What a later stage needs from an earlier one is read back
from that stage's files (the checkpoint labels from ``checkpoints/``, and so on).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prefect import Task
from prefect.cache_policies import NO_CACHE

from layerdrift.storage import RunDir

CACHED, RAN = "cached", "ran"


def uncached(stage: Task) -> Task:
    """``stage`` with neither result persistence nor cache lookups."""
    return stage.with_options(cache_policy=NO_CACHE, persist_result=False)


@dataclass
class StageLedger:
    """Runs stage tasks for one run directory and records which ran and which were reused.

    ``seconds`` holds the wall time of each stage that ran (retries included).
    """

    run: RunDir
    outcomes: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def call(self, name: str, stage: Task, *args: Any, done: bool, **kwargs: Any) -> None:
        """Run ``stage(*args, **kwargs)`` unless ``done`` says its files are complete.

        Raises the stage's error when it fails (after its Prefect retries).
        """
        if done:
            self.outcomes[name] = CACHED
            return
        with self.timed(name):
            uncached(stage)(*args, **kwargs)
        self.outcomes[name] = RAN

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Record the wall time of the block as stage ``name``'s."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - started

    def skipped(self, name: str, why: str) -> None:
        """Record a stage that the configuration switched off."""
        self.outcomes[name] = f"skipped ({why})"
