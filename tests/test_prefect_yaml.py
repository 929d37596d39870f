"""prefect.yaml parses, and every deployment's entrypoint imports and names a flow."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from layerdrift.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]


def _deployments() -> list[dict]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def test_every_entrypoint_imports_a_flow():
    from prefect import Flow

    for deployment in _deployments():
        file_name, flow_name = deployment["entrypoint"].split(":")
        spec = importlib.util.spec_from_file_location(f"entry_{flow_name}", ROOT / file_name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert isinstance(getattr(module, flow_name), Flow), deployment["name"]


def test_deployment_parameters_are_valid_configs():
    names = set()
    for deployment in _deployments():
        config = RunConfig.model_validate(deployment["parameters"]["config"])
        names.add(deployment["name"])
        assert config.name == deployment["name"]
    assert {"nightly-quick", "sentiment-default", "topic-default", "paper-bert-imdb"} <= names


def test_the_nightly_schedule_is_a_cron_with_a_timezone():
    nightly = next(d for d in _deployments() if d["name"] == "nightly-quick")
    (schedule,) = nightly["schedules"]
    assert len(schedule["cron"].split()) == 5
    assert schedule["timezone"]
    assert nightly["work_pool"]["name"] == "layerdrift-process"
