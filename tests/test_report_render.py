"""The report in a browser (headless chromium, when installed) and as Prefect artifacts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report import make_run

from layerdrift.tasks.report import build_report, per_layer_table, publish_artifacts
from layerdrift.tasks.report.artifacts import artifact_key

pytestmark = pytest.mark.filterwarnings("ignore::zarr.errors.UnstableSpecificationWarning")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--enable-logging=stderr",
    "--v=0",
]
# Reports the page's image state in its title once everything has loaded.
IMAGE_PROBE = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images];
  const ok = imgs.filter((i) => i.complete && i.naturalWidth > 0).length;
  document.title = "images " + ok + "/" + imgs.length;
});</script>"""


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    command = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (apt-get install chromium)")
def test_report_renders_in_chromium(tmp_path):
    run = make_run(tmp_path / "runs")
    report = Path(build_report(run))
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", IMAGE_PROBE + "</body>"))
    dom = _chromium(["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], tmp_path / "p1")
    title = re.search(r"<title>(.*?)</title>", dom.stdout)
    assert title is not None, dom.stderr[-2000:]
    n_images = report.read_text().count("<img ")
    assert title.group(1) == f"images {n_images}/{n_images}"

    shot = tmp_path / "report.png"
    result = _chromium(
        ["--window-size=1200,2400", f"--screenshot={shot}", report.as_uri()], tmp_path / "p2"
    )
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    # The check can fail: a page that logs an error is caught the same way.
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!DOCTYPE html><html><body><script>console.error("boom")</script></body></html>'
    )
    control = _chromium([f"--screenshot={tmp_path / 'bad.png'}", bad.as_uri()], tmp_path / "p3")
    assert any("CONSOLE" in line and "boom" in line for line in control.stderr.splitlines())
    assert shot.stat().st_size > 20_000, "the screenshot is nearly empty"


def test_publish_artifacts_in_a_flow(tmp_path, prefect_harness):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    run = make_run(tmp_path, name="Art_Run")
    build_report(run)
    table = per_layer_table(run)

    @flow
    def tiny() -> str:
        from prefect.runtime import flow_run

        publish_artifacts(run)
        return flow_run.id

    flow_run_id = tiny()
    kinds = ("summary", "per-layer", "report", "explorer")
    keys = [artifact_key("Art_Run", kind) for kind in kinds]
    assert keys[0] == "layerdrift-art-run-summary"
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys))
        )
    by_key = {a.key: a for a in found}
    assert set(by_key) == set(keys)
    assert "Mean per-token cosine" in by_key[keys[0]].data
    rows = by_key[keys[1]].data
    rows = json.loads(rows) if isinstance(rows, str) else rows
    assert [r["cosine"] for r in rows] == table["cosine"].tolist()
    for key, page in zip(keys[2:], ("report.html", "explorer.html"), strict=True):
        link = Path(run.child_url(page)).resolve().as_uri()
        assert by_key[key].data == f"[{page}]({link})"
    assert {str(a.flow_run_id) for a in found} == {flow_run_id}
