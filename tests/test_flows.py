"""The evaluate flow on a real (temporary) Prefect server: results, artifacts, validation, Dask."""

import pytest
from common import TINY_FLOW_PARAMS, demo_source
from flow_helpers import assert_same_predictions, predictions


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return demo_source(tmp_path_factory, per_class=2)


@pytest.fixture(scope="module")
def first_run(prefect_server, source, tmp_path_factory):
    from flows.evaluate import evaluate

    images, desc = source
    root = str(tmp_path_factory.mktemp("root-threads"))
    out = evaluate(
        dict(
            dataset="demo",
            source=images,
            root=root,
            descriptions=desc,
            images_per_shard=5,
            deployment="test",
            **TINY_FLOW_PARAMS,
        )
    )
    return root, out


def test_evaluate_writes_predictions_runs_and_report(first_run):
    from tasks.results.catalog import run_query
    from tasks.store import Storage

    root, out = first_run
    rows = predictions(root)
    assert len(rows) == 24 * 3  # 12 classes x 2 images, one row per method
    assert {r[4] for r in rows} == {"abs", "clip", "cupl"}  # templates="none": no clip-e
    assert out["shards_total"] == 5 and out["shards_computed"] == 5 and out["n_images"] == 24
    st = Storage(root)
    rec = st.read_json(f"runs/run={out['run_id']}/run.json")
    assert rec["status"] == "completed" and rec["n_ok"] == 24 and rec["config"] == out["config"]
    assert rec["versions_json"]["torch"] and rec["clip_weights_digest"]
    # the loaded models' grids, which the report reads instead of guessing from names
    assert rec["model_geometry"] == {
        "clip_grid": 14,
        "clip_image_size": 224,
        "clip_patch": 16,
        "dino_grid": 14,
        "dino_image_size": 224,
        "dino_patch": 16,
    }
    acc = {r["method"]: r for r in run_query(root, "accuracy", {"run_id": out["run_id"]}).to_pylist()}
    assert set(acc) == {"abs", "clip", "cupl"}  # templates="none": no clip-e
    for m, r in acc.items():
        correct = sum(1 for x in rows if x[4] == m and x[6] == x[5])
        assert r["correct"] == correct and r["n"] == 24
    assert st.exists(f"runs/run={out['run_id']}/report.md")


def test_artifacts_are_published(first_run):
    import asyncio

    from prefect.client.orchestration import get_client

    _, out = first_run

    async def keys():
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts()}

    found = asyncio.run(keys())
    # stable keys per (deployment, dataset, model): Prefect keeps their version history
    assert "accuracy-test-demo-abs-tiny-vit-b16" in found
    assert "report-test-demo-abs-tiny-vit-b16" in found

    async def report_markdown():
        async with get_client() as client:
            from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

            arts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["report-test-demo-abs-tiny-vit-b16"]))
            )
            return arts[0].data

    md = asyncio.run(report_markdown())
    assert "](methods.png)" not in md  # no relative image links: they 404 on the server
    assert "data:image/png;base64," in md


def test_flow_run_records_prefect_ids_and_readable_names(first_run):
    import asyncio
    from uuid import UUID

    from prefect.client.orchestration import get_client

    from tasks.store import Storage

    root, out = first_run
    rec = Storage(root).read_json(f"runs/run={out['run_id']}/run.json")
    assert rec["flow_run_id"] == out["flow_run_id"] and rec["deployment"] == "test"

    async def read():
        async with get_client() as client:
            return await client.read_flow_run(UUID(rec["flow_run_id"]))

    fr = asyncio.run(read())
    assert fr.name == rec["flow_run_name"] and fr.name.startswith("demo x abs-tiny-vit-b16 ")


def test_rerun_reuses_everything(first_run, source):
    from flows.evaluate import evaluate

    root, out = first_run
    images, desc = source
    again = evaluate(
        dict(
            dataset="demo",
            source=images,
            root=root,
            descriptions=desc,
            images_per_shard=5,
            deployment="test",
            **TINY_FLOW_PARAMS,
        )
    )
    assert again["config"] == out["config"]
    assert again["shards_computed"] == 0
    assert len(predictions(root)) == 24 * 3


def test_bad_parameters_fail_before_any_work(prefect_server, tmp_path, source):
    from flows.evaluate import ParameterError, evaluate

    images, desc = source
    root = tmp_path / "never-written"
    with pytest.raises(ParameterError) as err:
        evaluate(
            dict(
                dataset="demo",
                source=str(tmp_path / "no-such-folder"),
                root=str(root),
                descriptions=desc,
                **{**TINY_FLOW_PARAMS, "layout": "imagenet-z", "clip_model": "ViT-Q-1"},
            )
        )
    msg = str(err.value)
    assert "unknown layout 'imagenet-z'" in msg and "source not found" in msg and "unknown CLIP model" in msg
    assert not root.exists()
    with pytest.raises(ParameterError, match="n_crops must be >= 1"):
        evaluate(
            dict(
                dataset="demo",
                source=images,
                root=str(root),
                descriptions=desc,
                **{**TINY_FLOW_PARAMS, "abs_config": {"n_crops": 0}},
            )
        )
    assert not root.exists()


def _infer_task_runs() -> int:
    """Completed ``infer-shard`` task runs the test server knows of."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as c:
        runs = c.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="infer-shard")))
    return sum(1 for r in runs if r.state_name == "Completed")


@pytest.mark.parametrize("runner,extra", [("dask", "prefect_dask"), ("ray", "prefect_ray")])
def test_cluster_runners_give_the_same_predictions(runner, extra, first_run, source, tmp_path):
    """Dask (dev extra, runs in CI) and Ray (runs where the ray extra is installed)."""
    pytest.importorskip(extra)
    from flows.evaluate import evaluate

    root_threads, out = first_run
    images, desc = source
    root = str(tmp_path / f"root-{runner}")
    before = _infer_task_runs()
    res = evaluate(
        dict(
            dataset="demo",
            source=images,
            root=root,
            descriptions=desc,
            images_per_shard=5,
            deployment="test",
            runner=runner,
            workers=2,
            report=False,
            **TINY_FLOW_PARAMS,
        )
    )
    assert res["config"] == out["config"] and res["shards_computed"] == 5
    if runner == "dask":
        # the local workers report to the flow's own API (no temporary server per worker)
        assert _infer_task_runs() - before == 5
    # another process computes the same predictions; floats agree within rounding
    # (worker processes may pick other matmul kernels), everything else exactly
    assert_same_predictions(predictions(root), predictions(root_threads))


def test_cli_status_sql_and_help(first_run, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    root, out = first_run
    runner = CliRunner()
    res = runner.invoke(app, ["status", "--root", root])
    assert res.exit_code == 0, res.output
    assert out["run_id"] in res.output and "shards 5/5" in res.output and "errors 0" in res.output
    assert "completed" in res.output and "computed 5, reused 0" in res.output
    res = runner.invoke(app, ["sql", "run", "accuracy", "--root", root, "-p", f"run_id={out['run_id']}"])
    assert res.exit_code == 0 and "abs" in res.output and "cupl" in res.output, res.output
    csv = tmp_path / "acc.csv"
    res = runner.invoke(
        app,
        ["sql", "run", "select method, count(*) n from run_predictions group by 1", "--root", root, "--out", str(csv)],
    )
    assert res.exit_code == 0, res.output
    assert csv.read_text().splitlines()[0] == "method,n"
    res = runner.invoke(app, ["sql", "run", "no_such_query", "--root", root])
    assert res.exit_code != 0
    for cmd in (
        [],
        ["demo"],
        ["shard"],
        ["describe", "import"],
        ["describe", "generate"],
        ["run"],
        ["status"],
        ["sql", "run"],
        ["sql", "catalog"],
        ["report"],
        ["layouts"],
    ):
        res = runner.invoke(app, [*cmd, "--help"])
        assert res.exit_code == 0 and "Usage" in res.output, (cmd, res.output)


def test_cli_run_rejects_bad_layout_with_a_message(prefect_server, tmp_path, source):
    from typer.testing import CliRunner

    from flows.cli import app

    images, _ = source
    res = CliRunner().invoke(
        app, ["run", "--dataset", "x", "--source", images, "--layout", "nope", "--root", str(tmp_path / "r")]
    )
    assert res.exit_code == 2
    assert "unknown layout 'nope'" in res.output
