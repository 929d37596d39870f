"""Kill anywhere, in CI: a tiny run SIGKILLed at three random moments, resumed after each,
ends identical to an uninterrupted run beside it (benchmarks/kill_soak.py does 20 trials).

The moments are drawn from a seeded generator over the reference run's timeline; where they
land depends on the machine's speed, which is the point: no moment is special.
"""

from __future__ import annotations

import importlib.util
import random
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KILLS = 3
# The tiny run spends roughly this long after writing config.json on a quiet two-core machine
# (beside the reference run); the kills are drawn inside it.
SPAN_S = 40.0


def _kill_soak():
    spec = importlib.util.spec_from_file_location("kill_soak", ROOT / "benchmarks/kill_soak.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_random_kills_then_resume_end_identical(tmp_path, prefect_api_url):
    soak = _kill_soak()
    soak._config(tmp_path)
    server = {"PREFECT_API_URL": prefect_api_url}
    reference = threading.Thread(target=soak._run, args=(tmp_path, "reference", []), kwargs=server)
    reference.start()
    moments = sorted(random.Random(12).uniform(0, SPAN_S) for _ in range(KILLS))
    delays = [b - a for a, b in zip([0.0, *moments], moments, strict=False)]
    try:
        outcome = soak._run(tmp_path, "killed", delays, **server)
    finally:
        reference.join()
    assert (tmp_path / "runs/reference/report.html").is_file(), "the reference run failed"
    run = tmp_path / "runs" / "killed"
    final = soak._mtimes(run, "**/*")
    landed = [kill for kill in outcome["kills"] if kill["landed"]]
    assert landed, outcome["kills"]
    for kill in landed:
        rewritten = [p for p, mtime in kill["finished"].items() if final.get(p) != mtime]
        assert not rewritten, f"pieces finished before the kill in {kill['stage']}: {rewritten}"
    assert soak._differences(tmp_path / "runs/reference", run) == []
