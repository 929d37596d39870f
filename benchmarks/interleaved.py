"""Versions of one computation timed side by side: alternately, in one process.

On a shared machine the load drifts within minutes, so each benchmark that compares two
versions runs them in turn, repeat after repeat, and compares medians: whatever the load
does falls on both alike.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def interleaved(
    versions: dict[str, Callable[[], T]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, T]]:
    """Call every version once per repeat, in order; returns the seconds of each call by
    version, and each version's result of its last call."""
    seconds: dict[str, list[float]] = {name: [] for name in versions}
    results: dict[str, T] = {}
    for _ in range(repeats):
        for name, version in versions.items():
            start = time.perf_counter()
            results[name] = version()
            seconds[name].append(time.perf_counter() - start)
    return seconds, results


def print_medians(what: str, seconds: dict[str, list[float]]) -> dict[str, float]:
    """Print a markdown table (version, median seconds, every call) headed ``what``;
    returns the medians by version."""
    median = {name: statistics.median(found) for name, found in seconds.items()}
    print(f"| {what} | median s | runs |")
    print("|---|---|---|")
    for name, found in seconds.items():
        print(f"| {name} | {median[name]:.2f} | {', '.join(f'{t:.2f}' for t in found)} |")
    return median


def machine_fields(load_before: tuple[float, float, float]) -> dict:
    """What a result file records of the machine it was measured on: torch's threads, the
    load average before (``load_before``) and after, and the platform."""
    import torch

    return {
        "threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": platform.platform(),
    }
