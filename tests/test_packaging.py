"""The installed distribution holds one top-level package, ``layerdrift``."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_everything_under_the_layerdrift_namespace(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--wheel-dir", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("layerdrift-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith("-info")}
    assert top_level == {"layerdrift"}
    shipped = ("flows/cli.py", "tasks/dictionary/model.py", "storage/activations.py")
    assets = ("tasks/report/assets/explorer.js", "tasks/report/assets/explorer.css")
    for module in shipped + assets:
        assert f"layerdrift/{module}" in names


def test_generic_names_are_not_importable_outside_the_repository(tmp_path: Path) -> None:
    probe = (
        "import importlib.util, layerdrift.flows.cli, layerdrift.storage;"
        "print([importlib.util.find_spec(n) is None for n in ('flows', 'tasks', 'storage')])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[True, True, True]"
