"""prefect.yaml: every deployment names a real flow, valid parameters and a cron schedule."""

import importlib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def deployments():
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def test_schedules_and_pools():
    from cronsim import CronSim
    from datetime import datetime

    deps = {d["name"]: d for d in deployments()}
    assert {"imagenet-family-weekly", "fine-grained-monthly"} <= set(deps)
    for name in ("imagenet-family-weekly", "fine-grained-monthly"):
        d = deps[name]
        assert d["work_pool"]["name"]
        cron = d["schedules"][0]["cron"]
        next(CronSim(cron, datetime(2026, 1, 1)))  # parses


@pytest.mark.parametrize("dep", deployments(), ids=lambda d: d["name"])
def test_parameters_match_the_flow(dep):
    module, func = dep["entrypoint"].split(":")
    flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), func)
    flow.validate_parameters(dep["parameters"])  # pydantic check against the flow signature
    if func == "reevaluate":
        from flows.evaluate import _with_defaults

        p = dep["parameters"]
        for d in p["datasets"]:
            for m in p.get("models") or [{}]:
                _with_defaults({**p.get("defaults", {}), **d, **m})  # every cell is a valid evaluate() call
