"""Job-level mistakes from the command line: one ``error:`` line, exit code 2, before Prefect or any model.

Issue 17, item 3. Each mistake is tried through the real CLI (typer's CliRunner in this
process, or a fresh interpreter where imports are the point): a path typo for every
command, a root or ``--out`` that cannot be written for every command that writes, a
DINO model whose grid ABS cannot use, weights that are neither cached nor downloadable,
a missing checkpoint, and ``random``/``null``/paths as pretrained in a matrix file or a
deployment parameter. Speed is printed (``-s``), not asserted; what is asserted is that
torch, open_clip, timm and Prefect are not even imported when a path is wrong.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from common import invoke_cli as _invoke
from common import one_error_line as _one_error_line

REPO = Path(__file__).resolve().parent.parent

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
LOCAL_API = "starting a local Prefect API"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from common import demo_source

    return demo_source(tmp_path_factory, per_class=1)


@pytest.fixture
def blocker(tmp_path) -> Path:
    """A regular file where a folder is expected."""
    f = tmp_path / "a-file"
    f.write_text("x")
    return f


def _no_error_output_beyond_one_line(res) -> str:
    line = _one_error_line(res)
    assert LOCAL_API not in res.output  # Prefect's temporary API was never started
    return line


# ---------------------------------------------------------------------- path typos: fast, no heavy imports
_CHECK = r"""
import json, sys, time
t = time.perf_counter()
sys.argv = ["abs-eval", *json.loads(sys.argv[1])]
from flows.cli import main
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "open_clip", "timm", "prefect", "duckdb") if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy, "seconds": time.perf_counter() - t}))
"""


def _cli_in_fresh_interpreter(args: list[str], tmp_path: Path) -> tuple[dict, str]:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "ABS_EVAL_NO_GUARDIAN": "1"}
    res = subprocess.run(
        [sys.executable, "-c", _CHECK, json.dumps(args)], capture_output=True, text=True, cwd=REPO, env=env, timeout=120
    )
    return json.loads(res.stdout.strip().splitlines()[-1]), res.stderr


TYPO = "/no/such/abs-eval-dir"
TYPO_COMMANDS = {
    "run": ["run", "-d", "x", "--source", TYPO, *TINY_RUN],
    "run-default-models": ["run", "-d", "x", "--source", TYPO],
    "run-descriptions": ["run", "-d", "x", "--source", "{src}", "--descriptions", TYPO + ".json", *TINY_RUN],
    "shard": ["shard", "folder", TYPO, "-d", "x"],
    "describe-import": ["describe", "import", TYPO + ".json", "-d", "x"],
    "status": ["status", "--root", TYPO],
    "sql-run": ["sql", "run", "accuracy", "--root", TYPO],
    "sql-catalog": ["sql", "catalog", "--root", TYPO, "--out", "{tmp}/c.duckdb"],
    "export": ["export", "--root", TYPO, "--out", "{tmp}/export"],
    "report": ["report", "r1", "--root", TYPO],
    "demo-root-under-a-file": ["demo", "--root", "{blocker}/demo"],
}


@pytest.mark.parametrize("name", list(TYPO_COMMANDS))
def test_a_path_typo_fails_in_one_line_before_torch_or_prefect_is_imported(name, tmp_path, source, blocker):
    args = [a.format(src=source[0], tmp=tmp_path, blocker=blocker) for a in TYPO_COMMANDS[name]]
    if name != "demo-root-under-a-file" and "--root" not in args:
        args += ["--root", str(tmp_path / "root")]
    got, stderr = _cli_in_fresh_interpreter(args, tmp_path)
    print(f"\n[benchmark] abs-eval {name} with a path typo: {got['seconds']:.2f} s to the error line")
    assert got["code"] == 2, stderr
    assert "Traceback" not in stderr and LOCAL_API not in stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and len(stderr.strip().splitlines()) == 1, stderr
    assert TYPO in errors[0] or str(blocker) in errors[0]
    assert got["heavy"] == [], f"imported before the check failed: {got['heavy']}"
    assert not (tmp_path / "root").exists() and not (tmp_path / "export").exists()


# ---------------------------------------------------------------------- unwritable roots and outputs
def _unwritable(tmp_path: Path, blocker: Path) -> list[str]:
    places = [str(blocker), str(blocker / "sub")]
    if sys.platform.startswith("linux") and os.path.isdir("/proc/self"):
        places.append("/proc/abs-eval-x")  # exists as a folder, nothing can be created in it
    return places


def test_every_command_that_writes_refuses_an_unwritable_root(tmp_path, source, blocker):
    images, desc = source
    for place in _unwritable(tmp_path, blocker):
        for args in (
            ["run", "-d", "x", "--source", images, "--descriptions", desc, *TINY_RUN],
            ["demo"],
            ["shard", "folder", images, "-d", "x"],
            ["describe", "import", desc, "-d", "x"],
            ["describe", "generate", "-d", "x", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"],
        ):
            line = _no_error_output_beyond_one_line(_invoke(*args, "--root", place))
            assert line.startswith(f"error: cannot write to {place}") and "--root" in line, (args, line)


def test_every_output_file_or_folder_is_checked_before_any_work(tmp_path, source, blocker):
    from test_sql import build_results

    root = build_results(str(tmp_path / "results")).root
    for place in _unwritable(tmp_path, blocker):
        for args in (
            ["sql", "run", "runs", "--out", f"{place}/x.csv"],
            ["sql", "catalog", "--out", f"{place}/c.duckdb"],
            ["export", "--out", place],
        ):
            line = _one_error_line(_invoke(*args, "--root", root))
            assert line.startswith("error: cannot write to") and "--out" in line, (args, line)
    line = _one_error_line(_invoke("sql", "run", "runs", "--root", root, "--out", str(tmp_path / "no" / "x.csv")))
    assert "does not exist" in line
    line = _one_error_line(_invoke("sql", "catalog", "--root", root, "--out", str(tmp_path)))
    assert "is a folder" in line
    line = _one_error_line(_invoke("report", "r1", "--root", str(blocker)))
    assert "not a folder" in line
    # a writable place still works, and a catalog creates its folder
    res = _invoke("sql", "catalog", "--root", root, "--out", str(tmp_path / "new" / "c.duckdb"))
    assert res.exit_code == 0 and (tmp_path / "new" / "c.duckdb").exists(), res.output
    assert not list(Path(tmp_path).glob("**/.abs-eval-probe-*"))  # the write probes leave nothing


def test_a_missing_root_is_a_mistake_but_an_empty_one_is_not(tmp_path):
    empty = tmp_path / "empty-root"
    empty.mkdir()
    res = _invoke("status", "--root", str(empty))
    assert res.exit_code == 0 and "no runs under" in res.output
    res = _invoke("sql", "run", "accuracy", "--root", str(empty))
    assert res.exit_code == 0 and "no runs under" in res.output
    line = _one_error_line(_invoke("status", "--root", str(tmp_path / "typo")))
    assert "no runs under" in line and "no such folder" in line


def test_remote_roots_are_not_probed_and_unknown_protocols_are_named():
    import fsspec

    from flows.preflight import PreflightError, check_root_exists, check_writable_dir

    fs = fsspec.filesystem("memory")
    check_writable_dir("memory://abs-eval-preflight/root")
    check_root_exists("memory://abs-eval-preflight/root")
    assert not fs.exists("/abs-eval-preflight")  # nothing created, nothing changed
    res = _invoke("status", "--root", "memory://abs-eval-preflight/none")
    assert res.exit_code == 0 and "no runs under" in res.output
    with pytest.raises(PreflightError, match="Protocol not known: nosuchfs"):
        check_writable_dir("nosuchfs://bucket/x")
    line = _one_error_line(_invoke("status", "--root", "nosuchfs://bucket/x"))
    assert "nosuchfs" in line


# ---------------------------------------------------------------------- models ABS cannot use
def test_a_dino_model_with_another_grid_and_an_unsplittable_clip_fail_before_prefect(tmp_path, source):
    images, desc = source
    root = tmp_path / "root"
    res = _invoke(
        "run",
        "-d",
        "x",
        "--source",
        images,
        "--descriptions",
        desc,
        "--root",
        str(root),
        "--clip-model",
        "abs-tiny-vit-b16",
        "--clip-pretrained",
        "random",
        "--dino-model",
        "vit_base_patch8_224.dino",
        "--dino-pretrained",
        "random",
    )
    line = _no_error_output_beyond_one_line(res)
    assert "vit_base_patch8_224.dino" in line and "28x28" in line and "14x14" in line
    assert not root.exists()  # nothing sharded
    res = _invoke(
        "run",
        "-d",
        "x",
        "--source",
        images,
        "--descriptions",
        desc,
        "--root",
        str(root),
        "--clip-model",
        "RN50",
        "--clip-pretrained",
        "random",
        "--dino-model",
        "abs-tiny-dino-vit-b16",
        "--dino-pretrained",
        "random",
    )
    line = _no_error_output_beyond_one_line(res)
    assert "RN50" in line and "VisionTransformer" in line
    assert not root.exists()


def test_the_grid_rule_is_the_one_the_run_enforces():
    from flows.preflight import model_problems
    from tasks.defaults import DINO_GRID

    assert model_problems("abs-tiny-vit-b16", "abs-tiny-dino-vit-b16") == []
    assert model_problems("abs-micro-vit", "abs-micro-dino") == []  # 56 px, patch 4: also 14 x 14
    assert model_problems("ViT-B-16", "vit_base_patch16_224.dino") == []
    [problem] = model_problems("ViT-B-16", "vit_small_patch14_dinov2.lvd142m")
    assert f"{DINO_GRID}x{DINO_GRID}" in problem and "37x37" in problem


# ---------------------------------------------------------------------- weights
@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache on a machine that says it is offline (no download is tried)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "hf-cache"


@pytest.mark.parametrize(
    "models",
    [
        [
            "--clip-model",
            "abs-tiny-vit-b16",
            "--clip-pretrained",
            "random",
            "--dino-model",
            "vit_base_patch16_224.dino",
            "--dino-pretrained",
            "timm",
        ],
        [
            "--clip-model",
            "ViT-B-16",
            "--clip-pretrained",
            "openai",
            "--dino-model",
            "abs-tiny-dino-vit-b16",
            "--dino-pretrained",
            "random",
        ],
    ],
    ids=["dino-timm", "clip-openai"],
)
def test_unavailable_weights_fail_in_one_line_before_prefect(models, offline_hub, tmp_path, source):
    images, desc = source
    root = tmp_path / "root"
    t = time.perf_counter()
    res = _invoke(
        "run",
        "-d",
        "x",
        "--source",
        images,
        "--descriptions",
        desc,
        "--root",
        str(root),
        "--templates",
        "none",
        *models,
    )
    print(f"\n[benchmark] unavailable weights ({models[1]}/{models[5]}): {time.perf_counter() - t:.2f} s")
    line = _no_error_output_beyond_one_line(res)
    kind = "DINO" if "timm" in models else "CLIP"
    assert line.startswith(f"error: {kind} weights") and "not in the local cache" in line
    assert "checkpoint path" in line and "random" in line
    assert not root.exists()


def test_cached_weights_are_found_without_the_network(offline_hub):
    from flows.preflight import fetch_weights

    snap = offline_hub / "models--timm--vit_base_patch16_224.dino" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(b"weights")
    (offline_hub / "models--timm--vit_base_patch16_224.dino" / "refs").mkdir()
    (offline_hub / "models--timm--vit_base_patch16_224.dino" / "refs" / "main").write_text("abc123")
    assert fetch_weights("DINO", "vit_base_patch16_224.dino", "timm") == str(snap / "model.safetensors")
    assert fetch_weights("DINO", "abs-tiny-dino-vit-b16", None) is None  # random weights: nothing to fetch


def test_a_missing_checkpoint_path_is_one_line(tmp_path, source):
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
        "abs-tiny-vit-b16",
        "--clip-pretrained",
        str(tmp_path / "clip.pt"),
        "--dino-model",
        "abs-tiny-dino-vit-b16",
        "--dino-pretrained",
        "random",
    )
    line = _no_error_output_beyond_one_line(res)
    assert f"clip_pretrained: checkpoint file not found: {tmp_path / 'clip.pt'}" in line


# ---------------------------------------------------------------------- matrix files and deployments
@pytest.mark.parametrize("value", ["random", "RANDOM", None, "null", "none", ""])
def test_random_weights_are_spelled_the_same_everywhere(value):
    """The CLI's --clip-pretrained, a matrix file's value and a deployment's parameter are one rule."""
    from flows.params import EvaluateParams, make_params

    assert make_params(dataset="x", clip_pretrained=value, dino_pretrained=value).clip_pretrained is None
    # what Prefect does with a deployment's parameters for the evaluate flow
    p = EvaluateParams.model_validate({"dataset": "x", "clip_pretrained": value, "dino_pretrained": value})
    assert p.clip_pretrained is None and p.dino_pretrained is None


def test_a_matrix_file_follows_the_cli_rules_for_pretrained(tmp_path, source):
    images, desc = source
    root = tmp_path / "root"

    def matrix(models: list[dict], **defaults) -> str:
        f = tmp_path / "m.yaml"
        f.write_text(
            json.dumps(
                {
                    "defaults": {"templates": "none", "dino_model": "vit_base_patch8_224.dino", **defaults},
                    "models": models,
                    "datasets": [{"dataset": "x", "source": images, "layout": "folder", "descriptions": desc}],
                }
            )
        )
        return str(f)

    # random / null / RANDOM pass the tag checks of a model without tags: the first mistake found is the
    # (deliberate) DINO grid, for every cell
    m = matrix(
        [{"clip_model": "abs-tiny-vit-b16", "clip_pretrained": v} for v in ("random", None, "RANDOM")],
        dino_pretrained="random",
    )
    res = _invoke("run", "--matrix", m, "--root", str(root))
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert res.output.count("28x28 grid") == 1  # three cells of the same model pair: one message
    assert "pretrained tag" not in res.output and "its tags are" not in res.output
    # a path that does not exist: the same line as from the command line
    m = matrix([{"clip_model": "abs-tiny-vit-b16", "clip_pretrained": str(tmp_path / "ckpt.pt")}], dino_pretrained=None)
    from_matrix = _one_error_line(_invoke("run", "--matrix", m, "--root", str(root)))
    from_cli = _one_error_line(
        _invoke(
            "run",
            "-d",
            "x",
            "--source",
            images,
            "--descriptions",
            desc,
            "--root",
            str(root),
            "--templates",
            "none",
            "--clip-model",
            "abs-tiny-vit-b16",
            "--clip-pretrained",
            str(tmp_path / "ckpt.pt"),
            "--dino-model",
            "vit_base_patch8_224.dino",
            "--dino-pretrained",
            "random",
        )
    )
    assert from_matrix == from_cli and "checkpoint file not found" in from_cli
    assert not root.exists()


def test_layout_aliases_and_spellings_pass_the_name_check():
    """``--layout wds`` (an alias of ``webdataset``) and other spellings of a registered name are
    accepted, as the dataset registry accepts them; an unknown one still gets its nearest name."""
    from flows.preflight import name_problems

    for layout in ("wds", "webdataset", "WebDataset", "folder", "imagenet"):
        assert name_problems("ok", layout) == [], layout
    assert any("unknown layout 'imagenett'" in p and "imagenet" in p for p in name_problems("ok", "imagenett"))
