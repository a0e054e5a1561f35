"""prefect.yaml: every deployment names a real flow, valid parameters and a cron schedule."""

import importlib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def deployments():
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def test_schedules_and_pools():
    from datetime import datetime

    from cronsim import CronSim

    deps = {d["name"]: d for d in deployments()}
    assert {"imagenet-family-weekly", "fine-grained-monthly"} <= set(deps)
    for name in ("imagenet-family-weekly", "fine-grained-monthly"):
        d = deps[name]
        assert d["work_pool"]["name"]
        cron = d["schedules"][0]["cron"]
        next(CronSim(cron, datetime(2026, 1, 1)))  # parses


def _cells(dep) -> list[dict]:
    """Every evaluation a deployment runs, as EvaluateParams fields."""
    p = dep["parameters"]
    if dep["entrypoint"].endswith(":evaluate"):
        return [p["params"]]
    from flows.matrix import job_cells  # the merge order the reevaluate flow uses

    return job_cells(
        p["datasets"],
        p.get("models"),
        root=p.get("root", "abs-output"),
        deployment=p.get("deployment"),
        defaults=p.get("defaults"),
    )


@pytest.mark.parametrize("dep", deployments(), ids=lambda d: d["name"])
def test_parameters_match_the_flow(dep):
    module, func = dep["entrypoint"].split(":")
    flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), func)
    flow.validate_parameters(dep["parameters"])  # pydantic check against the flow signature


@pytest.mark.parametrize("dep", deployments(), ids=lambda d: d["name"])
def test_every_cell_names_real_layouts_models_and_templates(dep):
    """What would otherwise surface only when the cron run fires: a wrong layout, template,
    model or pretrained tag, an unknown field, bad method parameters. Paths are not checked
    (they exist on the deployment's machine, not here)."""
    from flows.params import make_params, static_problems

    cells = _cells(dep)
    assert cells
    for cell in cells:
        params = make_params(**cell)  # unknown fields and wrong types fail here
        assert static_problems(params) == [], (dep["name"], cell.get("dataset"))
        assert params.deployment in (None, dep["name"])


def test_a_wrong_name_in_a_deployment_is_caught():
    from flows.params import ParameterError, make_params, static_problems

    params = make_params(
        dataset="imagenet", layout="imagenett", clip_model="ViT-B-16", clip_pretrained="opnai", templates="none"
    )
    problems = static_problems(params)
    assert any("unknown layout 'imagenett'" in p and "imagenet" in p for p in problems)
    assert any("unknown pretrained tag 'opnai'" in p for p in problems)
    with pytest.raises(ParameterError, match="templates"):
        make_params(dataset="x", templates="openai")
    with pytest.raises(ParameterError, match="unknown parameter 'datasett'"):
        make_params(datasett="x")


@pytest.mark.parametrize("spelled", ["random", "Random", "", None])
def test_random_weights_are_spelled_the_same_everywhere(spelled):
    """A matrix file or a deployment may say ``random`` for random weights, as the CLI does."""
    from flows.params import make_params, static_problems

    p = make_params(
        dataset="d",
        clip_model="abs-micro-vit",
        clip_pretrained=spelled,
        dino_model="abs-micro-dino",
        dino_pretrained=spelled,
    )
    assert p.clip_pretrained is None and p.dino_pretrained is None
    assert not [x for x in static_problems(p) if "pretrained" in x]
