"""The command line as a user meets it: Prefect start-up settings, one-line errors, outputs.

Job mistakes are tried from the command line and must fail with exit code 2, one
``error:`` line and no traceback, before Prefect starts or anything is written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from common import invoke_cli as _invoke
from common import one_error_line as _one_error_line
from typer.testing import CliRunner

from flows.cli import app

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------- Prefect start-up
def _configured_env(tmp_path: Path, env: dict[str, str], profile: str | None = None) -> dict[str, str]:
    """Run configure_prefect in a fresh interpreter (Prefect reads settings at import)."""
    home = tmp_path / "prefect-home"
    home.mkdir(exist_ok=True)
    if profile is not None:
        (home / "profiles.toml").write_text(profile)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    code = (
        "import json, os, sys; from flows.prefect_env import configure_prefect; "
        "local = configure_prefect(announce=True); "
        "from prefect.settings import get_current_settings; s = get_current_settings(); "
        "print(json.dumps({'local': local, 'timeout': s.server.ephemeral.startup_timeout_seconds}))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, "PREFECT_HOME": str(home), **env},
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["stderr"] = res.stderr
    return out


def test_local_api_gets_a_cold_start_timeout_and_an_announcement(tmp_path):
    from flows.prefect_env import LOCAL_API_STARTUP_TIMEOUT_S

    got = _configured_env(tmp_path, {})
    assert got["local"] and got["timeout"] == LOCAL_API_STARTUP_TIMEOUT_S > 20  # Prefect's own default is 20 s
    assert "starting a local Prefect API" in got["stderr"] and "can take a minute" in got["stderr"]


def test_a_users_own_timeout_wins(tmp_path):
    got = _configured_env(tmp_path, {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "45"})
    assert got["timeout"] == 45
    profile = 'active = "mine"\n[profiles.mine]\nPREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS = "77"\n'
    got = _configured_env(tmp_path, {}, profile)
    assert got["timeout"] == 77


def test_a_configured_server_is_not_announced(tmp_path):
    got = _configured_env(tmp_path, {"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert not got["local"] and "starting a local Prefect API" not in got["stderr"]


# ---------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from common import demo_source

    return demo_source(tmp_path_factory, per_class=1)


TINY_RUN = [
    "--clip-model",
    "abs-tiny-vit-b16",
    "--clip-pretrained",
    "random",
    "--dino-model",
    "abs-tiny-dino-vit-b16",
    "--dino-pretrained",
    "random",
    "--templates",
    "none",
]


# ---------------------------------------------------------------------- run: job mistakes
def test_run_empty_folder_fails_in_one_line_before_any_work(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    root = tmp_path / "root"
    line = _one_error_line(_invoke("run", "-d", "x", "--source", str(empty), "--root", str(root), *TINY_RUN))
    assert str(empty) in line
    assert not root.exists()


def test_run_manifest_without_label_fails_in_one_line(tmp_path):
    man = tmp_path / "list.csv"
    man.write_text("path\na.jpg\n")
    root = tmp_path / "root"
    line = _one_error_line(
        _invoke("run", "-d", "x", "--layout", "manifest", "--source", str(man), "--root", str(root), *TINY_RUN)
    )
    assert "label" in line
    assert not root.exists()


def test_descriptions_for_another_class_list_fail_before_sharding(tmp_path, source):
    images, _ = source
    other = tmp_path / "other.json"
    other.write_text(json.dumps({f"thing {i}": [f"a photo of thing {i}."] for i in range(5)}))
    root = tmp_path / "root"
    res = _invoke("run", "-d", "x", "--source", images, "--descriptions", str(other), "--root", str(root), *TINY_RUN)
    line = _one_error_line(res)
    assert "descriptions" in line
    assert not root.exists()  # nothing sharded


def test_one_class_folder_is_refused_unless_asked(tmp_path, source):
    images, desc = source
    one = tmp_path / "one"
    first = sorted(Path(images).iterdir())[0]
    (one / first.name).mkdir(parents=True)
    for f in first.iterdir():
        (one / first.name / f.name).write_bytes(f.read_bytes())
    line = _one_error_line(
        _invoke(
            "run", "-d", "x", "--source", str(one), "--descriptions", desc, "--root", str(tmp_path / "root"), *TINY_RUN
        )
    )
    assert "--allow-single-class" in line


def test_unknown_pretrained_tag_lists_the_valid_ones(tmp_path, source):
    images, desc = source
    res = _invoke(
        "run",
        "-d",
        "x",
        "--source",
        images,
        "--descriptions",
        desc,
        "--root",
        str(tmp_path / "r"),
        "--clip-model",
        "ViT-B-16",
        "--clip-pretrained",
        "opnai",
    )
    line = _one_error_line(res)
    assert "'opnai'" in line and "openai" in line and "laion2b_s34b_b88k" in line


def test_unknown_layout_and_missing_source_are_listed_together(tmp_path):
    res = _invoke(
        "run",
        "-d",
        "x",
        "--source",
        str(tmp_path / "nope"),
        "--layout",
        "nope",
        "--root",
        str(tmp_path / "r"),
        *TINY_RUN,
    )
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "unknown layout 'nope'" in res.output and "source not found" in res.output


def test_run_help_is_readable_at_80_columns():
    res = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert res.exit_code == 0
    assert max(len(ln) for ln in res.output.splitlines()) <= 80
    for opt in (
        "--alpha",
        "--beta",
        "--tau",
        "--tau-sample",
        "--seed",
        "--option",
        "--prompt",
        "--templates",
        "--images-per-batch",
    ):
        assert opt in res.output, opt
    assert "ABS method (paper defaults)" in res.output


def test_layouts_describes_every_layout():
    from tasks.datasets import list_layouts

    res = _invoke("layouts")
    lines = {ln.split()[0]: ln for ln in res.output.splitlines() if ln.strip()}
    assert set(list_layouts()) <= set(lines)
    assert all(len(lines[name].split(None, 1)) == 2 for name in list_layouts())


# ---------------------------------------------------------------------- sql, status, report
@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A root with one completed run (hand-built rows, no models, no Prefect)."""
    from test_sql import build_results

    return build_results(str(tmp_path_factory.mktemp("cli-results")))


def test_sql_bad_column_is_one_line(results):
    line = _one_error_line(_invoke("sql", "run", "select no_such_column from runs", "--root", results.root))
    assert "no_such_column" in line
    line = _one_error_line(_invoke("sql", "run", "select * from no_such_table", "--root", results.root))
    assert "no_such_table" in line


def test_sql_outputs(results, tmp_path):
    res = _invoke("sql", "run", "runs", "--root", results.root, "--out", "-")
    assert res.exit_code == 0 and res.output.splitlines()[0].startswith("run_id,status,")
    res = _invoke("sql", "run", "runs", "--root", results.root, "--out", "-", "--format", "jsonl")
    assert res.exit_code == 0 and json.loads(res.output.splitlines()[0])["run_id"]
    assert "unknown output extension '.txt'" in _one_error_line(
        _invoke("sql", "run", "runs", "--root", results.root, "--out", str(tmp_path / "x.txt"))
    )
    assert "--out" in _one_error_line(_invoke("sql", "run", "runs", "--root", results.root, "--format", "csv"))
    assert not (tmp_path / "x.txt").exists()


def test_accuracy_fits_80_columns_with_the_numbers_first(results):
    res = CliRunner().invoke(app, ["sql", "run", "accuracy", "--root", results.root], env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split()[:7] == ["method", "accuracy", "ci_low", "ci_high", "n", "n_error", "run_id"]
    table = [ln for ln in lines if not ln.startswith("(")]
    assert max(len(ln) for ln in table) <= 80
    assert any(ln.split()[0] == "abs" and ln.split()[6] == "r1" for ln in lines[2:] if ln.split())


def test_empty_answers_are_explained(results, tmp_path):
    res = _invoke("sql", "run", "gallery", "--root", results.root)
    assert res.exit_code == 0 and "needs -p run_id=" in res.output
    (tmp_path / "empty-root").mkdir()  # an existing empty root (a missing one is an error: test_preflight)
    res = _invoke("sql", "run", "accuracy", "--root", str(tmp_path / "empty-root"))
    assert res.exit_code == 0 and "no runs under" in res.output and "empty-root" in res.output
    res = _invoke("sql", "list")
    assert "gallery" in res.output and "parameters: run_id (required)" in res.output


def test_status_and_report_of_an_unknown_run(results):
    line = _one_error_line(_invoke("status", "--run", "nope", "--root", results.root))
    assert "'nope'" in line and results.root in line
    line = _one_error_line(_invoke("report", "nope", "--root", results.root))
    assert "'nope'" in line


def test_catalog_of_a_memory_root_is_refused_in_one_line():
    line = _one_error_line(_invoke("sql", "catalog", "--root", "memory://cli-test", "--out", "/tmp/x.duckdb"))
    assert "memory://" in line


# ---------------------------------------------------------------------- matrix and models
def test_models_lists_vits_with_tags_and_dino_models():
    res = _invoke("models")
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.strip().startswith("ViT-B-16:"))
    assert "openai" in line and "laion2b_s34b_b88k" in line
    assert "abs-tiny-vit-b16" in res.output and "vit_base_patch16_224.dino" in res.output
    assert not any(ln.strip().startswith("RN50:") for ln in res.output.splitlines())  # ResNets cannot be split
    assert any(ln.strip().startswith("RN50:") for ln in _invoke("models", "--all").output.splitlines())


def test_unknown_model_names_the_nearest(tmp_path, source):
    images, desc = source
    line = _one_error_line(
        _invoke(
            "run",
            "-d",
            "x",
            "--source",
            images,
            "--descriptions",
            desc,
            "--root",
            str(tmp_path / "r"),
            "--clip-model",
            "ViT-B-61",
        )
    )
    assert "unknown CLIP model 'ViT-B-61'" in line and "ViT-B-16" in line


def test_matrix_file_runs_every_cell_and_a_failing_cell_does_not_stop_the_others(prefect_server, tmp_path, source):
    """Two datasets x one model through the reevaluate flow; the second cell's DINO checkpoint is
    broken (found by the loader, not before), so it fails at run time while the first completes."""
    images, desc = source
    broken = tmp_path / "broken-dino.pt"
    broken.write_bytes(b"not a checkpoint")
    root = tmp_path / "root"
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(
        json.dumps(
            {  # JSON is YAML
                "defaults": {
                    "templates": "none",
                    "dino_model": "abs-tiny-dino-vit-b16",
                    "dino_pretrained": None,
                    "abs_config": {"n_crops": 4, "top_k": 4, "n_descriptions": 4},
                    "images_per_shard": 12,
                },
                "models": [{"clip_model": "abs-tiny-vit-b16", "clip_pretrained": None}],
                "datasets": [
                    {"dataset": "good", "source": images, "layout": "folder", "descriptions": desc},
                    {
                        "dataset": "bad",
                        "source": images,
                        "layout": "folder",
                        "descriptions": desc,
                        "dino_pretrained": str(broken),
                    },
                ],
            }
        )
    )
    # a real process, as a user runs it (Prefect's log handlers outlive a CliRunner's streams)
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "COLUMNS": "120"}
    res = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--matrix", str(matrix), "--root", str(root)],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert res.returncode == 1, res.stdout + res.stderr[-3000:]  # one cell failed
    assert "2 cells (1 completed)" in res.stdout
    table = res.stdout[res.stdout.index("2 cells") :]
    good = next(ln for ln in table.splitlines() if ln.startswith("good x"))
    bad = next(ln for ln in table.splitlines() if ln.startswith("bad x"))
    assert "completed" in good and "failed" in bad
    from tasks.results.progress import run_progress

    runs = run_progress(str(root))
    assert [(r["dataset"], r["status"]) for r in runs] == [("good", "completed")]


def test_several_datasets_from_options_need_matching_counts(tmp_path, source):
    images, desc = source
    line = _one_error_line(
        _invoke(
            "run",
            "-d",
            "a",
            "-d",
            "b",
            "--source",
            images,
            "--source",
            images,
            "--source",
            images,
            "--root",
            str(tmp_path / "r"),
            *TINY_RUN,
        )
    )
    assert "3 --source values for 2 --dataset values" in line
    bad = tmp_path / "m.toml"
    bad.write_text("datasets = [ { dataset = 'x' ")
    assert "cannot be read as TOML" in _one_error_line(_invoke("run", "--matrix", str(bad)))


def test_run_options_take_their_defaults_and_help_from_the_parameters():
    """Each single-valued ``run`` option named like an ``EvaluateParams`` field has that field's
    default and help (one source: flows/params.py), and the method options show the paper's values."""
    import typer

    from flows.cli import app
    from flows.params import EvaluateParams
    from tasks import defaults

    run = typer.main.get_command(app).commands["run"]
    checked = 0
    for p in run.params:
        field = EvaluateParams.model_fields.get(p.name)
        if field is None or getattr(p, "multiple", False) or p.name == "root":
            continue
        assert p.default == field.default, p.name
        assert (field.description or "") in (p.help or ""), p.name
        checked += 1
    assert checked >= 14
    helps = {p.name: p.help for p in run.params}
    assert f"({defaults.ABS.n_crops})" in helps["n_crops"] and f"({defaults.ABS.tau})" in helps["tau"]
