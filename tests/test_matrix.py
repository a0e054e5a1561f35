"""One merge order for a job's cells (``flows.matrix``): command line, matrix file and ``reevaluate``.

Lowest first: parameter defaults < job (root, deployment) < ``defaults`` < dataset entry < model entry
< the options typed on the command line; ``abs_config`` and ``layout_options`` merge key by key. The
command line's cells are read from a parsed ``abs-eval run`` command (click's context: which options
were typed), so nothing runs. Also: sweep axes in ``abs_config`` are checked like any parameter.
"""

from __future__ import annotations

import json

import pytest
import typer

from flows.matrix import job_cells, merge_layers, read_matrix

FILE = {
    "root": "/file-root",
    "deployment": "file-dep",
    "defaults": {
        "device": "cpu",
        "dino_model": "abs-tiny-dino-vit-b16",
        "abs_config": {"n_crops": 4, "tau": 0.02},
        "layout_options": {"split": "val"},
        "deployment": "defaults-dep",
    },
    "models": [{"clip_model": "abs-tiny-vit-b16", "clip_pretrained": None, "device": "model-device"}],
    "datasets": [
        {"dataset": "a", "source": "/src/a", "abs_config": {"n_crops": 8}, "device": "dataset-device"},
        {"dataset": "b", "source": "/src/b", "layout_options": {"fold": "1"}},
    ],
}


def _cli_cells(*args: str) -> list[dict]:
    """The cells ``abs-eval run ARGS`` would run (parsed, not invoked)."""
    from flows.cli import app, run_cells

    command = typer.main.get_command(app).commands["run"]
    return run_cells(command.make_context("run", list(args)))


@pytest.fixture
def matrix(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(json.dumps(FILE))  # JSON is YAML
    return str(path)


def test_layers_override_in_order_and_dicts_merge_key_by_key():
    cells = job_cells(FILE["datasets"], FILE["models"], root="/job", deployment="job-dep", defaults=FILE["defaults"])
    a, b = cells
    assert a["root"] == "/job" and a["deployment"] == "defaults-dep"  # defaults beat the job
    assert a["device"] == "model-device"  # model entry beats dataset entry beats defaults
    assert a["abs_config"] == {"n_crops": 8, "tau": 0.02}  # the dataset's n_crops, the defaults' tau kept
    assert b["layout_options"] == {"split": "val", "fold": "1"} and b["abs_config"] == {"n_crops": 4, "tau": 0.02}
    top = merge_layers({"abs_config": {"tau": 0.1}}, {"abs_config": {"top_k": [5, 10]}}, {"abs_config": {"tau": 0.3}})
    assert top == {"abs_config": {"tau": 0.3, "top_k": [5, 10]}}
    assert merge_layers(None, {"device": "cpu"}, None) == {"device": "cpu"}


def test_the_command_line_reevaluate_and_a_matrix_file_give_the_same_cells(matrix):
    """A deployment with the file's parameters and ``abs-eval run --matrix FILE`` (no other option) agree."""
    doc = read_matrix(matrix)
    assert (doc.root, doc.deployment) == ("/file-root", "file-dep")
    from_reevaluate = job_cells(
        FILE["datasets"], FILE["models"], root=FILE["root"], deployment=FILE["deployment"], defaults=FILE["defaults"]
    )
    from_cli = _cli_cells("--matrix", matrix)
    assert from_cli == from_reevaluate  # the command line adds only what was typed


def test_typed_options_beat_the_file_and_defaults_do_not(matrix):
    a, b = _cli_cells(
        "--matrix", matrix, "--tau", "0.05", "--root", "/cli-root", "-o", "split=test", "--device", "cuda"
    )
    assert a["root"] == b["root"] == "/cli-root"  # a typed --root beats the file's root
    assert a["abs_config"] == {"n_crops": 8, "tau": 0.05} and b["abs_config"] == {"n_crops": 4, "tau": 0.05}
    assert b["layout_options"] == {"split": "test", "fold": "1"}
    assert a["device"] == "cuda"
    assert a["dino_model"] == "abs-tiny-dino-vit-b16"  # --dino-model not typed: its default overrides nothing
    # typed models replace the file's; typed datasets come after the file's
    cells = _cli_cells("--matrix", matrix, "--clip-model", "ViT-B-32", "-d", "c", "--source", "/src/c")
    assert [(c["dataset"], c.get("clip_model"), c["device"]) for c in cells] == [
        ("a", "ViT-B-32", "dataset-device"),
        ("b", "ViT-B-32", "cpu"),
        ("c", "ViT-B-32", "cpu"),
    ]


def test_options_without_a_file_give_one_cell_per_dataset_and_model():
    cells = _cli_cells(
        "-d",
        "x",
        "-d",
        "y",
        "--source",
        "/s",
        "--clip-model",
        "m1",
        "--clip-model",
        "m2",
        "--clip-pretrained",
        "random",
        "--top-k",
        "5",
    )
    assert [(c["dataset"], c["clip_model"], c["clip_pretrained"]) for c in cells] == [
        ("x", "m1", "random"),
        ("x", "m2", "random"),
        ("y", "m1", "random"),
        ("y", "m2", "random"),
    ]
    assert all(c["source"] == "/s" and c["abs_config"] == {"top_k": 5} for c in cells)
    assert "device" not in cells[0] and "root" not in cells[0]  # left to EvaluateParams' defaults


@pytest.mark.parametrize(
    "text, message",
    [
        ("[1, 2]", "expected a mapping"),
        ("{datasets: [{dataset: a}], model: []}", "unknown keys ['model']"),
        ("{datasets: []}", "no datasets"),
        ("{datasets: {dataset: a}}", "'datasets' must be a list"),
        ("{datasets: [{dataset: a}], defaults: [1]}", "'defaults' must be a mapping"),
        ("{datasets: [", "cannot be read as YAML"),
    ],
)
def test_a_bad_matrix_file_is_one_clear_error(tmp_path, text, message):
    from flows.params import ParameterError

    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ParameterError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_matrix(path)
    with pytest.raises(ParameterError, match="not found"):
        read_matrix(tmp_path / "none.yaml")


def test_sweep_axes_in_abs_config_are_checked_like_parameters():
    from flows.params import abs_axes, abs_config, make_params, point_config, static_problems, sweep_points

    p = make_params(
        dataset="d",
        clip_model="abs-tiny-vit-b16",
        clip_pretrained=None,
        dino_model="abs-tiny-dino-vit-b16",
        dino_pretrained=None,
        abs_config={"n_crops": 6, "top_k": [5, 10], "tau": [0.03, 0.05], "crop_kinds": "raw"},
    )
    assert abs_axes(p) == {"top_k": [5, 10], "tau": [0.03, 0.05], "crop_kinds": ["raw"]}
    assert abs_config(p).n_crops == 6 and abs_config(p).top_k == 20  # the base: the scalars only
    points = sweep_points(p)
    assert len(points) == 4 and points[0] == {"top_k": 5, "tau": 0.03, "crop_kinds": "raw"}
    config, matching = point_config(abs_config(p), points[-1])
    assert (config.top_k, config.tau, config.raw_crops, config.feature_crops, matching) == (
        10,
        0.05,
        True,
        False,
        "soft",
    )
    assert static_problems(p) == []
    for bad, says in (
        ({"top_k": [5, 0]}, "top_k must be >= 1"),
        ({"matching": ["mean"]}, "matching 'mean'"),
        ({"tau": []}, "list no value"),
        ({"n_descriptions": [10, 80]}, "above the base's M=50"),
    ):
        problems = static_problems(p.model_copy(update={"abs_config": bad}))
        assert len(problems) == 1 and says in problems[0], problems
